"""The lab's network: a switch namespace with a bridge, the control-plane, node and ext namespaces on it,
each node's ``kube-bridge``, and the per-pod namespaces behind it.

Nothing here touches the root namespace: every ``ip`` command runs with ``-n <lab netns>``, veth pairs
are created directly between two lab namespaces.
"""

from __future__ import annotations

import ipaddress
import logging

from kr_core.lab import netns
from kr_core.lab.netns import ip, ip_batch
from kr_core.lab.state import LabState, NodeInfo

log = logging.getLogger("kr.lab.topology")

SWITCH_BRIDGE = "br0"
KUBE_BRIDGE = "kube-bridge"
#: kube-router's CNI setup (bridge plugin, kube-router's own sysctls) for a node.
NODE_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.bridge.bridge-nf-call-ip6tables": "1",
}
NODE_SYSCTLS_V6 = {"net.ipv6.conf.all.forwarding": "1"}


def _prefix(net: str | None) -> int:
    return ipaddress.ip_network(net).prefixlen if net else 0


def create_switch(st: LabState) -> None:
    sw = st.ns("sw")
    netns.add(sw)
    ip_batch([
        "link set lo up",
        f"link add {SWITCH_BRIDGE} type bridge",
        f"link set {SWITCH_BRIDGE} up",
    ], ns=sw)
    log.info("lab %s: switch %s/%s up", st.name, sw, SWITCH_BRIDGE)


def attach(st: LabState, what: str, ip4: str, ip6: str | None) -> str:
    """Create netns ``<lab>-<what>`` plugged into the switch with eth0 = ``ip4`` (and ``ip6``)."""
    ns, sw = st.ns(what), st.ns("sw")
    netns.add(ns)
    port = what[:15]
    ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns, ns=sw)
    ip_batch([f"link set {port} master {SWITCH_BRIDGE}", f"link set {port} up"], ns=sw)
    cmds = ["link set lo up", f"addr add {ip4}/{_prefix(st.net4)} dev eth0"]
    if ip6:
        cmds.append(f"addr add {ip6}/{_prefix(st.net6)} dev eth0 nodad")
    cmds.append("link set eth0 up")
    ip_batch(cmds, ns=ns)
    if ip6:
        netns.sysctl(ns, {"net.ipv6.conf.all.accept_dad": "0", "net.ipv6.conf.eth0.accept_dad": "0"})
    log.info("lab %s: %s attached as %s%s", st.name, ns, ip4, f", {ip6}" if ip6 else "")
    return ns


def setup_ext(st: LabState) -> None:
    """ext: a client outside the cluster, and the nodes' default gateway (it routes nothing else)."""
    ns = st.ns("ext")
    vals = {"net.ipv4.ip_forward": "1"}
    if st.ipv6:
        vals.update(NODE_SYSCTLS_V6)
    netns.sysctl(ns, vals)


def gateway(cidr: str) -> str:
    """The kube-bridge address of a pod CIDR (its first host address, as kube-router's CNI config)."""
    net = ipaddress.ip_network(cidr)
    return str(net.network_address + 1)


def ensure_br_netfilter() -> bool:
    """Load br_netfilter if it is a module (as kube-router's CNI setup needs); False if it is unavailable."""
    import os

    if os.path.exists("/proc/sys/net/bridge"):
        return True
    netns.run(["modprobe", "br_netfilter"], check=False)
    if os.path.exists("/proc/sys/net/bridge"):
        log.info("loaded br_netfilter")
        return True
    log.warning("br_netfilter is not available: bridged pod traffic bypasses iptables on this kernel")
    return False


def setup_node(st: LabState, node: NodeInfo) -> None:
    """Sysctls, kube-bridge with the gateway address of each pod CIDR, default route via ext."""
    ns = node.netns
    vals = dict(NODE_SYSCTLS)
    if not ensure_br_netfilter():
        vals = {k: v for k, v in vals.items() if not k.startswith("net.bridge.")}
    if st.ipv6:
        vals.update(NODE_SYSCTLS_V6)
    netns.sysctl(ns, vals)
    cmds = [f"link add {KUBE_BRIDGE} type bridge"]
    for cidr in node.pod_cidrs:
        net = ipaddress.ip_network(cidr)
        cmds.append(f"addr add {gateway(cidr)}/{net.prefixlen} dev {KUBE_BRIDGE}" + (" nodad" if net.version == 6 else ""))
    cmds.append(f"link set {KUBE_BRIDGE} up")
    cmds.append(f"route add default via {st.ext_ip4}")
    if st.ipv6 and st.ext_ip6:
        cmds.append(f"route add default via {st.ext_ip6}")
    ip_batch(cmds, ns=ns)
    log.info("lab %s: %s: %s %s, default via ext", st.name, node.name, KUBE_BRIDGE, ",".join(node.pod_cidrs))


def static_routes(st: LabState) -> None:
    """Opt-in (``--static-routes``): every node (and ext) routes every other node's pod CIDRs to it."""
    for node in st.nodes:
        cmds = []
        for other in st.nodes:
            if other.name == node.name:
                continue
            for cidr in other.pod_cidrs:
                via = other.ip6 if ipaddress.ip_network(cidr).version == 6 else other.ip4
                if via:
                    cmds.append(f"route replace {cidr} via {via}")
        ip_batch(cmds, ns=node.netns)
    cmds = []
    for other in st.nodes:
        for cidr in other.pod_cidrs:
            via = other.ip6 if ipaddress.ip_network(cidr).version == 6 else other.ip4
            if via:
                cmds.append(f"route replace {cidr} via {via}")
    ip_batch(cmds, ns=st.ns("ext"))
    log.info("lab %s: static pod-CIDR routes between %d nodes and ext", st.name, len(st.nodes))


# ------------------------------------------------------------------------------------------ pods


def pod_veth(pod_ns: str) -> str:
    """The node-side veth of a pod: ``veth`` + the 8 hex of its netns name (12 characters)."""
    return "veth" + pod_ns.rsplit("-", 1)[1]


def add_pod(node_ns: str, pod_ns: str, addrs: list[tuple[str, int, str]]) -> None:
    """Create ``pod_ns`` behind the node's kube-bridge with ``addrs`` [(ip, prefixlen, gateway)]."""
    netns.add(pod_ns)
    veth = pod_veth(pod_ns)
    ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", pod_ns, ns=node_ns)
    ip_batch([f"link set {veth} master {KUBE_BRIDGE}", f"link set {veth} up"], ns=node_ns)
    cmds = ["link set lo up"]
    for addr, plen, _ in addrs:
        cmds.append(f"addr add {addr}/{plen} dev eth0" + (" nodad" if ":" in addr else ""))
    cmds.append("link set eth0 up")
    for _addr, _, gw in addrs:
        cmds.append(f"route add default via {gw}")
    ip_batch(cmds, ns=pod_ns)


def del_pod(node_ns: str, pod_ns: str) -> None:
    """Remove a pod's namespace (its veth pair goes with it)."""
    for pid in netns.pids(pod_ns):
        import os
        import signal

        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    netns.delete(pod_ns)
    ip("link", "del", pod_veth(pod_ns), ns=node_ns, check=False)
