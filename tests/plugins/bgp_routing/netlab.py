"""A small BGP test bed in network namespaces: a switch netns with a bridge, node namespaces each running the
bgp_routing plugin in an in-process :class:`kr_core.agent.Agent` (gobgpd inside the node netns), pods behind
each node's kube-bridge, and an ``ext`` namespace running BIRD 2 as the external router.

Everything is torn down by :meth:`NetLab.close` (daemons stopped by PID, namespaces deleted), which the
fixtures call even when a test fails.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kr_core.agent import Agent
from kr_core.config import Settings
from kr_core.model import Node
from kr_core.net import netns
from kr_core.plugins import from_classes
from kr_core.watch import FeedSource
from kr_plugins.bgp_routing.plugin import Plugin

log = logging.getLogger("netlab")

NET = "192.168.100"
EXT_IP = f"{NET}.100"
EXT_ASN = 64600


def prefixes_24(n: int, base: int = 100) -> list[str]:
    """``n`` distinct /24 prefixes from ``base``.0.0.0 on."""
    return [f"{base + i // 65536}.{(i // 256) % 256}.{i % 256}.0/24" for i in range(n)]


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def sh(ns: str | None, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return netns.run(ns, list(argv), check=check)


@dataclass
class LabNode:
    name: str
    index: int
    ns: str
    ip: str
    pod_cidr: str
    pod_ns: str
    pod_ip: str
    annotations: dict[str, str] = field(default_factory=dict)
    provider_id: str = ""
    agent: Agent | None = None
    feed: FeedSource | None = None

    def node(self) -> Node:
        return Node.from_json({
            "metadata": {"name": self.name, "annotations": dict(self.annotations), "resourceVersion": str(time.time_ns())},
            "spec": {"podCIDRs": [self.pod_cidr], **({"providerID": self.provider_id} if self.provider_id else {})},
            "status": {"addresses": [{"type": "InternalIP", "address": self.ip}],
                       "conditions": [{"type": "Ready", "status": "True"}]},
        })

    def plugin(self) -> Plugin:
        assert self.agent is not None and self.agent.host is not None
        return self.agent.host.get("bgp_routing").instance  # type: ignore[attr-defined,no-any-return]

    def routes(self, table: str = "main") -> str:
        return sh(self.ns, "ip", "route", "show", "proto", "17", "table", table).stdout


class NetLab:
    def __init__(self, n_nodes: int = 2, *, subnets: list[int] | None = None) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.tmp = Path(tempfile.mkdtemp(prefix=f"krbgp-{self.tag}-"))
        self.sw = f"kb{self.tag}-sw"
        self.ext = f"kb{self.tag}-ext"
        self.nodes: list[LabNode] = []
        self.namespaces: list[str] = []
        self.bird: subprocess.Popen[bytes] | None = None
        self.bird_sock = str(self.tmp / "bird.ctl")
        self._build(n_nodes, subnets)

    # ---------------------------------------------------------------------------- topology
    def _ns(self, name: str) -> str:
        netns.create(name)
        self.namespaces.append(name)
        return name

    def _attach(self, ns: str, cidr: str, port: str) -> None:
        sh(None, "ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", self.sw)
        sh(self.sw, "ip", "link", "set", port, "master", "br0", "up")
        sh(ns, "ip", "addr", "add", cidr, "dev", "eth0")
        sh(ns, "ip", "link", "set", "eth0", "up")

    def _build(self, n: int, subnets: list[int] | None) -> None:
        self._ns(self.sw)
        sh(self.sw, "ip", "link", "add", "br0", "type", "bridge")
        sh(self.sw, "ip", "link", "set", "br0", "up")
        for i in range(1, n + 1):
            self.add_node_ns(i, (subnets or [])[i - 1] if subnets else None)

    def add_node_ns(self, i: int, subnet: int | None = None) -> LabNode:
        """Node netns ``i``: eth0 on the switch (192.168.100.i/24, or 10.<subnet>.0.i/24 with a route to the
        other subnets through the switch's router), a kube-bridge and one pod."""
        ns = self._ns(f"kb{self.tag}-n{i}")
        if subnet is None:
            ip, cidr = f"{NET}.{i}", f"{NET}.{i}/24"
        else:  # routed topology: every node in its own /24, the switch netns routes between them
            ip, cidr = f"10.{subnet}.0.{i}", f"10.{subnet}.0.{i}/24"
        self._attach(ns, cidr, f"p{i}")
        if subnet is not None:
            sh(self.sw, "ip", "addr", "add", f"10.{subnet}.0.254/24", "dev", "br0", check=False)
            sh(self.sw, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            sh(ns, "ip", "route", "add", "default", "via", f"10.{subnet}.0.254")
        pod_ns = self._ns(f"kb{self.tag}-pod{i}")
        pod_cidr, pod_ip = f"10.244.{i}.0/24", f"10.244.{i}.2"
        sh(ns, "ip", "link", "add", "kube-bridge", "type", "bridge")
        sh(ns, "ip", "link", "set", "kube-bridge", "up")
        sh(None, "ip", "link", "add", "eth0", "netns", pod_ns, "type", "veth", "peer", "name", "veth0", "netns", ns)
        sh(ns, "ip", "link", "set", "veth0", "master", "kube-bridge", "up")
        sh(pod_ns, "ip", "addr", "add", f"{pod_ip}/24", "dev", "eth0")
        sh(pod_ns, "ip", "link", "set", "eth0", "up")
        sh(pod_ns, "ip", "route", "add", "default", "via", f"10.244.{i}.1")
        node = LabNode(f"node-{i}", i, ns, ip, pod_cidr, pod_ns, pod_ip)
        self.nodes.append(node)
        return node

    # ---------------------------------------------------------------------------- agents
    def settings(self, node: LabNode, **flags: Any) -> Settings:
        values = {"hostname-override": node.name, "injected-routes-sync-period": 60.0, "enable-overlay": False,
                  "health-port": 0, "metrics-port": 0, "service-cluster-ip-range": ["10.96.0.0/12"]}
        values.update(flags)
        return Settings(values)

    def all_nodes(self) -> list[Node]:
        return [n.node() for n in self.nodes if n.agent is not None or n.feed is not None]

    def start_agent(self, node: LabNode, extra_objects: list[Any] | None = None, **flags: Any) -> Agent:
        node.feed = FeedSource([n.node() for n in self.nodes] + list(extra_objects or []))
        section = {"netns": node.ns, "cni_conf_file": str(self.tmp / node.name / "10-kuberouter.conf"),
                   "gobgpd_log_level": "info"}
        agent = Agent(self.settings(node, **flags), from_classes([Plugin]), {"bgp_routing": section}, node.feed,
                      node=node.name, state_dir=str(self.tmp / node.name), serve_http=False)
        node.agent = agent
        agent.start()
        return agent

    def publish(self, obj: Any, how: str = "update") -> None:
        """Give every running agent the same change."""
        for n in self.nodes:
            if n.feed is not None and n.agent is not None:
                getattr(n.feed, how)(obj)

    def stop_agent(self, node: LabNode) -> None:
        if node.agent is not None:
            with contextlib.suppress(Exception):
                node.agent.stop()
            node.agent = None

    # ---------------------------------------------------------------------------- ext / BIRD
    def start_bird(self, neighbors: list[LabNode], *, exports: list[str] | None = None, extra: str = "",
                   exports_disabled: bool = False, template_extra: str = "") -> None:
        """BIRD in ``ext`` peering with ``neighbors``; ``exports`` are announced by a static protocol named
        ``announced`` (``birdc enable/disable announced`` switches them)."""
        self._ns(self.ext)
        self._attach(self.ext, f"{EXT_IP}/24", "pext")
        static = ""
        if exports:
            routes = "\n".join(f"  route {p} via {EXT_IP};" for p in exports)
            static = (f"protocol static announced {{ ipv4; {'disabled; ' if exports_disabled else ''}\n"
                      f"{routes}\n}}\n")
        export_filter = 'where proto = "announced"' if exports else "none"
        peers = "".join(f"protocol bgp {n.name.replace('-', '_')} from k8snode {{ neighbor {n.ip} as 64512; }}\n"
                        for n in neighbors)
        conf = (f'log "{self.tmp}/bird.log" all;\nrouter id {EXT_IP};\nprotocol device {{ }}\n{static}\n'
                f"template bgp k8snode {{ local {EXT_IP} as {EXT_ASN}; ipv4 {{ import all; export {export_filter}; }};\n"
                f"  hold time 9; connect retry time 1; {template_extra} }}\n{extra}\n{peers}")
        path = self.tmp / "bird.conf"
        path.write_text(conf)
        r = sh(None, "bird", "-p", "-c", str(path), check=False)
        assert r.returncode == 0, r.stderr
        self.bird = subprocess.Popen(["ip", "netns", "exec", self.ext, "bird", "-f", "-c", str(path), "-s",
                                      self.bird_sock], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_for(lambda: os.path.exists(self.bird_sock), 10, "BIRD control socket")

    def birdc(self, *args: str) -> str:
        return subprocess.run(["birdc", "-s", self.bird_sock, *args], capture_output=True, text=True, timeout=10).stdout

    def bird_routes(self) -> str:
        return self.birdc("show", "route", "all")

    def peer_with_bird_announcing(self, node: LabNode, prefixes: list[str], timeout: float = 30) -> None:
        """BIRD holding ``prefixes`` for ``node`` in its protocol ``announced`` (disabled: ``birdc enable
        announced`` sends them all at once), the node's agent peering with BIRD by its peers annotation,
        session established."""
        self.start_bird([node], exports=prefixes, exports_disabled=True)
        node.annotations = {"kube-router.io/peers": f"- remoteip: {EXT_IP}\n  remoteasn: 64600\n"}
        self.start_agent(node)
        self.wait_established(node, [EXT_IP], timeout=timeout)

    # ---------------------------------------------------------------------------- probes
    def ping(self, src: LabNode, dst_ip: str) -> bool:
        return sh(src.pod_ns, "ping", "-c1", "-W1", dst_ip, check=False).returncode == 0

    def peer_states(self, node: LabNode) -> dict[str, str]:
        return {p.address: p.state for p in node.plugin().peer_status()}

    def wait_established(self, node: LabNode, addresses: list[str], timeout: float = 30) -> None:
        wait_for(lambda: all(self.peer_states(node).get(a) == "ESTABLISHED" for a in addresses), timeout,
                 f"{node.name}: sessions to {addresses} established")

    # ---------------------------------------------------------------------------- teardown
    def close(self) -> None:
        for n in self.nodes:
            self.stop_agent(n)
        if self.bird is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.bird.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                self.bird.wait(5)
        for ns in reversed(self.namespaces):
            with contextlib.suppress(Exception):
                netns.delete(ns)
        shutil.rmtree(self.tmp, ignore_errors=True)
