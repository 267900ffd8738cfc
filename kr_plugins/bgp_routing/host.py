"""kube-router's host setup for pod networking: kube-bridge, the CNI config, FORWARD accepts, pod egress
masquerade, the ``kube-router-pod-subnets`` / ``kube-router-node-ips`` ipsets, the overlay ``ip rule``.

:func:`render_cni_conf` and :func:`ipsets_for` are pure; :class:`Host` applies through ``kr_core.net``
(iptables restore with comment-identified jumps, ipset restore with swap) inside ``netns`` (None: here).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kr_core.net import netns as kr_netns
from kr_core.net import sysctl
from kr_core.net.ipset import IpSet, IpsetRunner
from kr_core.net.iptables import Family, Iptables, detect_mode, render_rule

log = logging.getLogger("kr.bgp_routing.host")

BRIDGE = "kube-bridge"
POD_SUBNETS_SET = "kube-router-pod-subnets"
NODE_IPS_SET = "kube-router-node-ips"
OVERLAY_TABLE = 77
DEFAULT_CNI_CONF = "/etc/cni/net.d/10-kuberouter.conf"
FWD_COMMENTS = ("kube-router: allow traffic from kube-bridge", "kube-router: allow traffic to kube-bridge",
                "kube-router: allow traffic to the node interface")
MASQ_COMMENT = "kube-router: SNAT pod egress traffic"


def render_cni_conf(existing: dict[str, Any] | None, pod_cidrs: Iterable[str], mtu: int | None) -> dict[str, Any]:
    """kube-router's CNI update: insert missing pod CIDRs as host-local ranges, set the MTU, keep the rest.

    Works on a ``.conf`` (one bridge plugin) or a ``.conflist`` (the bridge entry of ``plugins``).
    """
    conf = json.loads(json.dumps(existing)) if existing else {
        "cniVersion": "0.3.0", "name": "mynet", "type": "bridge", "bridge": BRIDGE, "isDefaultGateway": True,
        "ipam": {"type": "host-local"},
    }
    target = conf
    if "plugins" in conf:
        target = next((p for p in conf["plugins"] if p.get("type") == "bridge"), None)
        if target is None:
            target = {"type": "bridge", "bridge": BRIDGE, "isDefaultGateway": True, "ipam": {"type": "host-local"}}
            conf["plugins"].insert(0, target)
    ipam = target.setdefault("ipam", {"type": "host-local"})
    ranges = ipam.setdefault("ranges", [])
    have = {r.get("subnet") for rs in ranges for r in rs}
    if ipam.get("subnet"):  # the single-subnet form: fold into ranges
        have.add(ipam["subnet"])
    for c in pod_cidrs:
        if c not in have:
            ranges.append([{"subnet": c}])
    if mtu:
        target["mtu"] = mtu
    return conf


def ipsets_for(members: dict[str, set[str]], families: Iterable[int]) -> list[IpSet]:
    out = []
    for fam in families:
        f = "inet" if fam == 4 else "inet6"
        out.append(IpSet(POD_SUBNETS_SET, "hash:net", f, tuple(sorted(members.get(f"pod-subnets{fam}", ())))))
        out.append(IpSet(NODE_IPS_SET, "hash:ip", f, tuple(sorted(members.get(f"node-ips{fam}", ())))))
    return out


def masquerade_rule(fam: int, random_fully: bool = True) -> list[str]:
    pods = POD_SUBNETS_SET if fam == 4 else "inet6:" + POD_SUBNETS_SET
    nodes = NODE_IPS_SET if fam == 4 else "inet6:" + NODE_IPS_SET
    return ["-m", "set", "--match-set", pods, "src", "-m", "set", "!", "--match-set", pods, "dst",
            "-m", "set", "!", "--match-set", nodes, "dst", "-j", "MASQUERADE", *(["--random-fully"] if random_fully else [])]


class Host:
    def __init__(self, *, netns: str | None = None, families: Iterable[int] = (4,)) -> None:
        self.netns = netns
        self.families = tuple(families)
        self.ipset = IpsetRunner(netns=netns)
        self._ipt: dict[int, Iptables] = {}
        self.committed_sets: list[IpSet] | None = None
        self.committed_cni: str | None = None

    def ipt(self, fam: int) -> Iptables:
        if fam not in self._ipt:
            f = Family.V4 if fam == 4 else Family.V6
            self._ipt[fam] = Iptables(detect_mode(f, netns=self.netns), f, netns=self.netns)
        return self._ipt[fam]

    def sysctls(self) -> None:
        sysctl.set("net.ipv4.ip_forward", 1, netns=self.netns)
        with contextlib.suppress(OSError):
            sysctl.set("net.bridge.bridge-nf-call-iptables", 1, netns=self.netns)
        if 6 in self.families:
            sysctl.set("net.ipv6.conf.all.forwarding", 1, netns=self.netns)

    def ensure_bridge(self, pod_cidrs: Iterable[str], mtu: int | None) -> None:
        """Create/bring up kube-bridge with the pod CIDRs' gateway addresses (the bridge CNI's isGateway)."""
        run = kr_netns.run
        if run(self.netns, ["ip", "link", "show", BRIDGE], check=False).returncode != 0:
            run(self.netns, ["ip", "link", "add", BRIDGE, "type", "bridge"])
            log.info("%s created", BRIDGE)
        if mtu:
            run(self.netns, ["ip", "link", "set", BRIDGE, "mtu", str(mtu)], check=False)
        run(self.netns, ["ip", "link", "set", BRIDGE, "up"])
        have = run(self.netns, ["ip", "-o", "addr", "show", "dev", BRIDGE]).stdout
        for c in pod_cidrs:
            net = ipaddress.ip_network(c, strict=False)
            gw = f"{net.network_address + 1}/{net.prefixlen}"
            if f" {gw} " not in have:
                run(self.netns, ["ip", "addr", "add", gw, "dev", BRIDGE], check=False)

    def write_cni(self, path: str, pod_cidrs: Iterable[str], mtu: int | None) -> bool:
        p = Path(path)
        existing = None
        if p.exists():
            with contextlib.suppress(ValueError, OSError):
                existing = json.loads(p.read_text())
        text = json.dumps(render_cni_conf(existing, pod_cidrs, mtu), indent=2) + "\n"
        if p.exists() and p.read_text() == text:
            self.committed_cni = text
            return False
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, p)
        self.committed_cni = text
        log.info("CNI config %s written (pod CIDRs %s)", path, ",".join(pod_cidrs))
        return True

    def ensure_rule(self, fam: int, table: str, chain: str, rule: list[str], comment: str) -> bool:
        """Insert ``rule`` (tagged with ``comment``) at the top of ``chain`` if it is not there, as kube-router's
        routing controller does. Unlike :meth:`Iptables.ensure_jump` it never moves a present rule back to the
        top: the network-policy plugin inserts its jump above these accepts and must stay first."""
        ipt = self.ipt(fam)
        cut = next((i for i, a in enumerate(rule) if a in ("-j", "-g")), len(rule))
        full = [*rule[:cut], "-m", "comment", "--comment", comment, *rule[cut:]]
        if ipt.exists(table, chain, full):
            return False
        ipt.remove_jump(table, chain, comment)  # an older variant of this rule
        ipt.restore(f"*{table}\n-I {chain} 1 {render_rule(full)}\nCOMMIT\n")
        log.info("%s/%s: inserted %r", table, chain, comment)
        return True

    def forward_accepts(self, node_iface: str) -> None:
        for fam in self.families:
            self.ensure_rule(fam, "filter", "FORWARD", ["-i", BRIDGE, "-j", "ACCEPT"], FWD_COMMENTS[0])
            self.ensure_rule(fam, "filter", "FORWARD", ["-o", BRIDGE, "-j", "ACCEPT"], FWD_COMMENTS[1])
            if node_iface:
                self.ensure_rule(fam, "filter", "FORWARD", ["-o", node_iface, "-j", "ACCEPT"], FWD_COMMENTS[2])

    def sync_ipsets(self, sets: list[IpSet]) -> bool:
        if sets == self.committed_sets:
            return False
        self.ipset.sync(sets)
        self.committed_sets = sets
        return True

    def pod_egress(self, enabled: bool) -> None:
        for fam in self.families:
            ipt = self.ipt(fam)
            if enabled:
                try:
                    self.ensure_rule(fam, "nat", "POSTROUTING", masquerade_rule(fam), MASQ_COMMENT)
                except Exception:  # older kernels/iptables without --random-fully
                    self.ensure_rule(fam, "nat", "POSTROUTING", masquerade_rule(fam, False), MASQ_COMMENT)
            else:
                ipt.remove_jump("nat", "POSTROUTING", MASQ_COMMENT)

    def overlay_rules(self, pod_cidrs: Iterable[str], enabled: bool) -> None:
        for c in pod_cidrs:
            fam = "-6" if ":" in c else "-4"
            have = kr_netns.run(self.netns, ["ip", fam, "rule", "show", "from", c, "table", str(OVERLAY_TABLE)]).stdout
            if enabled and not have.strip():
                kr_netns.run(self.netns, ["ip", fam, "rule", "add", "from", c, "table", str(OVERLAY_TABLE)])
            elif not enabled and have.strip():
                kr_netns.run(self.netns, ["ip", fam, "rule", "del", "from", c, "table", str(OVERLAY_TABLE)], check=False)

    def iface_of(self, ip: str) -> tuple[str, list[str], int | None]:
        """(interface holding ``ip``, the subnets of every address on it, its MTU)."""
        out = kr_netns.run(self.netns, ["ip", "-o", "addr", "show"]).stdout
        iface = ""
        for line in out.splitlines():
            parts = line.split()
            if len(parts) > 3 and parts[3].split("/")[0] == ip:
                iface = parts[1]
        if not iface:
            return "", [], None
        subnets = []
        for line in out.splitlines():
            parts = line.split()
            if len(parts) > 3 and parts[1] == iface and parts[2] in ("inet", "inet6"):
                subnets.append(str(ipaddress.ip_network(parts[3], strict=False)))
        mtu = None
        link = kr_netns.run(self.netns, ["ip", "-o", "link", "show", "dev", iface], check=False).stdout.split()
        if "mtu" in link:
            mtu = int(link[link.index("mtu") + 1])
        return iface, subnets, mtu

    def cleanup(self) -> None:
        """Remove what this module installs (idempotent)."""
        for fam in self.families:
            ipt = self.ipt(fam)
            for c in FWD_COMMENTS:
                with contextlib.suppress(Exception):
                    ipt.remove_jump("filter", "FORWARD", c)
            with contextlib.suppress(Exception):
                ipt.remove_jump("nat", "POSTROUTING", MASQ_COMMENT)
        for name in (POD_SUBNETS_SET, NODE_IPS_SET, "inet6:" + POD_SUBNETS_SET, "inet6:" + NODE_IPS_SET):
            with contextlib.suppress(Exception):
                self.ipset.destroy(name)
