"""What every network-policy backend needs besides the model: its options, the pod-event filter (AC-N9), and
the removal of the *other* backends' state when a node switches backends.

kube-router deletes the other backend's state at start so that switching is clean; kr's backends do the
same after their first successful apply (so the node is never without enforcement: for a moment both
backends enforce the same policies, and an intersection of two equal rule sets is the same rule set).

* :func:`remove_iptables_state`: kr's (and kube-router's) iptables chains, the jumps into them and the
  ipsets, in both iptables modes and both families. Found by prefix, nothing else is touched.
* :func:`remove_nft_state`: the ``inet kube-router-netpol`` table of nft_netpol and kube-router's own nft
  tables (``ip kube-router-filter-ipv4``, ``ip6 kube-router-filter-ipv6``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kr_core.model import Pod

from . import naming

log = logging.getLogger("kr.netpol")

NFT_TABLE = ("inet", "kube-router-netpol")
#: every nft table a network-policy backend of kr or kube-router may have left
NFT_TABLES = (NFT_TABLE, ("ip", "kube-router-filter-ipv4"), ("ip6", "kube-router-filter-ipv6"))
#: the network-policy chains of the iptables backend: its three top-level chains by name (other KUBE-ROUTER-*
#: chains belong to other roles, e.g. the proxy's KUBE-ROUTER-SERVICES), policy and pod chains by prefix
IPTABLES_CHAIN_PREFIXES = (*naming.TOP_CHAINS.values(), naming.POLICY_CHAIN_PREFIX, naming.POD_CHAIN_PREFIX)
IPSET_PREFIXES = (naming.SRC_SET_PREFIX, naming.DST_SET_PREFIX, naming.LOCAL_PODS_SET,
                  "inet6:" + naming.SRC_SET_PREFIX, "inet6:" + naming.DST_SET_PREFIX, "inet6:" + naming.LOCAL_PODS_SET)


@dataclass(frozen=True)
class Options:
    """What a backend's rendering needs from the flags and the node."""

    families: tuple[int, ...] = (4,)
    default_deny: bool = False
    pod_cidrs: tuple[str, ...] = ()  # this node's
    cluster_ranges: tuple[str, ...] = ()
    external_ranges: tuple[str, ...] = ()  # external-IP and LoadBalancer-IP ranges
    node_port_range: tuple[int, int] = (30000, 32767)
    nflog: bool = True


def options_from(ctx: Any, *, nflog: bool = True) -> Options:
    """:class:`Options` from a :class:`kr_core.PluginContext` (flags + this node's pod CIDRs from the cache).

    ``--netpol-default-deny`` needs the node's pod CIDRs; without them it is disabled with a warning (as
    kube-router)."""
    s = ctx.settings
    node = ctx.caches.nodes.get(ctx.node_name)
    cidrs = tuple(node.pod_cidrs) if node is not None else ()
    deny = bool(s["netpol-default-deny"])
    if deny and not cidrs:
        ctx.log.warning("--netpol-default-deny needs this node's pod CIDRs (node %s has none): disabled",
                        ctx.node_name)
        deny = False
    return Options(families=tuple(s.families), default_deny=deny, pod_cidrs=cidrs,
                   cluster_ranges=tuple(s.service_cluster_ip_range),
                   external_ranges=tuple(s.service_external_ip_range) + tuple(s.loadbalancer_ip_range),
                   node_port_range=tuple(s.node_port_range), nflog=nflog)  # type: ignore[arg-type]


def pod_changed(old: Pod | None, new: Pod | None) -> bool:
    """AC-N9: an update matters only if phase, pod IPs, host IP, labels (or node, host network) changed."""
    if old is None or new is None:
        return True
    return (old.phase != new.phase or old.pod_ips != new.pod_ips or old.host_ip != new.host_ip
            or old.meta.labels != new.meta.labels or old.node_name != new.node_name
            or old.host_network != new.host_network)


# ------------------------------------------------------------------------------------ switching backends

def remove_iptables_state(families: Iterable[int] = (4, 6), *, netns: str | None = None) -> int:
    """Remove the iptables backend's chains, jumps and ipsets (both modes, both families). Returns how many
    chains and sets went. Tools that are missing or fail mean there is nothing of ours there."""
    from kr_core.net.ipset import IpsetRunner
    from kr_core.net.iptables import Family, Iptables, Mode, chain_names

    fam = {4: Family.V4, 6: Family.V6}
    removed = 0
    for f in families:
        for mode in Mode:
            try:
                ipt = Iptables(mode, fam[f], netns=netns)
                names = [n for n in chain_names(ipt.save("filter"), IPTABLES_CHAIN_PREFIXES)
                         if n.startswith((naming.POLICY_CHAIN_PREFIX, naming.POD_CHAIN_PREFIX))
                         or n in naming.TOP_CHAINS.values()]
                for builtin, chain in naming.TOP_CHAINS.items():
                    ipt.remove_jump("filter", builtin, naming.jump_comment(chain))
                if names:
                    ipt.apply({}, delete={"filter": names})
                    removed += len(names)
                    log.info("%s: removed %d network-policy chain(s) of the iptables backend", ipt, len(names))
            except Exception as exc:  # noqa: BLE001 - no such tool / module: nothing of ours
                log.debug("iptables %s IPv%d: nothing removed: %s", mode, f, exc)
    try:
        ipset = IpsetRunner(netns=netns)
        sets = ipset.list_names(IPSET_PREFIXES)
        if sets:
            ipset.restore("".join(f"destroy {n}\n" for n in sets))
            removed += len(sets)
            log.info("removed %d ipset(s) of the iptables backend", len(sets))
    except Exception as exc:  # noqa: BLE001
        log.debug("ipset: nothing removed: %s", exc)
    return removed


def remove_nft_state(nft: Any = None, *, netns: str | None = None) -> int:
    """Delete nft_netpol's table and kube-router's nft tables; ``nft`` an existing :class:`kr_core.net.nft.Nft`.
    Returns how many tables went."""
    try:
        from kr_core.net.nft import Nft, list_tables

        present = [t for t in NFT_TABLES if t in list_tables(netns)]
        if not present:  # the usual case, without loading libnftables and its ruleset cache
            return 0
        if nft is None:
            nft = Nft(netns=netns)
        n = 0
        for family, name in present:
            if nft.delete_table(family, name):
                n += 1
        return n
    except Exception as exc:  # noqa: BLE001 - no libnftables / no nf_tables: nothing of ours
        log.debug("nft: nothing removed: %s", exc)
        return 0


# ------------------------------------------------------------------------------------ metrics and bad input

class BackendMetrics:
    """What both network-policy backends export: kube-router's series, plus ``kr_<backend>_bad_input_total``."""

    def __init__(self, registry: Any, backend: str) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.sync = Histogram("kube_router_controller_iptables_sync_time", "Time to sync network policy",
                              registry=registry)
        self.chains = Gauge("kube_router_controller_policy_chains", "Active policy chains", registry=registry)
        self.sets = Gauge("kube_router_controller_policy_ipsets", "Active policy ipsets", registry=registry)
        self.problems = Counter(f"kr_{backend}_bad_input_total",
                                "Policy rules/peers/ports skipped because of bad input", registry=registry)


class ProblemLog:
    """``on_problem`` for :class:`~kr_core.net.netpol.Desired`: bad input is logged against the policy once per
    (object, message) and counted every first time; the rest of the dataplane goes on."""

    def __init__(self, log: logging.Logger, counter: Any, limit: int = 10000) -> None:
        self.log, self.counter, self.limit = log, counter, limit
        self.seen: set[tuple[str, str]] = set()

    def __call__(self, key: str, msg: str) -> None:
        if (key, msg) in self.seen:
            return  # logged when first seen; a full sync recompiles every policy
        if len(self.seen) > self.limit:
            self.seen.clear()
        self.seen.add((key, msg))
        self.counter.inc()
        self.log.warning("network policy %s: %s: skipped for that rule only", key, msg)

