"""kube-router's command-line flags: names, kinds, defaults and help, exactly as kube-router v2.x has them.

``kr run`` accepts every one of them, and every one is also a top-level key of the config file. Values are
parsed here (Go durations, pflag booleans and slices); cross-field rules live in :mod:`kr_core.config`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

BOOL, STR, INT, DURATION, LIST, INTLIST = "bool", "str", "int", "duration", "list", "intlist"


@dataclass(frozen=True)
class Flag:
    name: str
    kind: str
    default: Any
    help: str
    group: str = "general"
    short: str | None = None

    @property
    def attr(self) -> str:
        """The Python attribute name of the flag on :class:`kr_core.config.Settings`."""
        return self.name.replace("-", "_")


def _f(name: str, kind: str, default: Any, help: str, group: str = "general", short: str | None = None) -> Flag:
    return Flag(name, kind, default, help, group, short)


FLAGS: tuple[Flag, ...] = (
    # --- general / cross-cutting (kube-router reference section 2.1)
    _f("run-router", BOOL, True, "Enables Pod Networking -- Advertises and learns the routes to Pods via iBGP."),
    _f("run-service-proxy", BOOL, True, "Enables Service Proxy -- sets up IPVS for Kubernetes Services."),
    _f("run-firewall", BOOL, True, "Enables Network Policy -- sets up iptables to provide ingress firewall for pods."),
    _f("run-loadbalancer", BOOL, False, "Enable loadbalancer address allocator."),
    _f("kubeconfig", STR, "", "Path to kubeconfig file with authorization information (the master location is set by the master flag)."),
    _f("master", STR, "", "The address of the Kubernetes API server (overrides any value in kubeconfig)."),
    _f("hostname-override", STR, "", "Overrides the NodeName of the node. Set this if kube-router is unable to determine your NodeName automatically."),
    _f("cache-sync-timeout", DURATION, 60.0, "The timeout for cache synchronization (e.g. '5s', '1m'). Must be greater than 0."),
    _f("cleanup-config", BOOL, False, "Cleanup iptables rules, ipvs, ipset configuration and exit."),
    _f("enable-ipv4", BOOL, True, "Enables IPv4 support."),
    _f("enable-ipv6", BOOL, False, "Enables IPv6 support."),
    _f("service-cluster-ip-range", LIST, ["10.96.0.0/12"], "CIDR values from which service cluster IPs are assigned (can be specified up to 2 times)."),
    _f("service-external-ip-range", LIST, [], "Specify external IP CIDRs that are used for inter-cluster communication (can be specified multiple times)."),
    _f("loadbalancer-ip-range", LIST, [], "CIDR values from which loadbalancer services addresses are assigned (can be specified multiple times)."),
    _f("strict-external-ip-validation", BOOL, True, "Reject externalIPs and loadBalancer IPs outside the configured ranges."),
    _f("service-node-port-range", STR, "30000-32767", "NodePort range specified with either a hyphen or colon."),
    _f("health-addr", STR, "", "Health check address to listen on (default: all local addresses)."),
    _f("health-port", INT, 20244, "Health check port, 0 = Disabled."),
    _f("metrics-addr", STR, "", "Prometheus metrics address to listen on (default: all local addresses)."),
    _f("metrics-port", INT, 0, "Prometheus metrics port to use (0 = disabled)."),
    _f("metrics-path", STR, "/metrics", "Prometheus metrics path."),
    _f("enable-pprof", BOOL, False, "Enables a profiling endpoint (Python: a /debug/stacks dump on the health port)."),
    _f("v", STR, "0", "log level for V logs", short="v"),
    # --- service proxy (2.2)
    _f("ipvs-sync-period", DURATION, 300.0, "The delay between ipvs config synchronizations (e.g. '5s', '1m', '2h22m'). Must be greater than 0.", "service-proxy"),
    _f("ipvs-graceful-termination", BOOL, False, "Enables the experimental IPVS graceful terminaton capability.", "service-proxy"),
    _f("ipvs-graceful-period", DURATION, 30.0, "The graceful period before removing destinations from IPVS services (e.g. '5s', '1m', '2h22m').", "service-proxy"),
    _f("ipvs-permit-all", BOOL, True, "Enables rule to accept all incoming traffic to service VIP's on the node.", "service-proxy"),
    _f("excluded-cidrs", LIST, [], "Excluded CIDRs are used to exclude IPVS rules from deletion.", "service-proxy"),
    _f("hairpin-mode", BOOL, False, "Add iptables rules for every Service Endpoint to support hairpin traffic.", "service-proxy"),
    _f("masquerade-all", BOOL, False, "SNAT all traffic to cluster IP/node port.", "service-proxy"),
    _f("nodeport-bindon-all-ip", BOOL, False, "For service of NodePort type create IPVS service that listens on all IP's of the node.", "service-proxy"),
    _f("runtime-endpoint", STR, "", "Path to CRI compatible container runtime socket (used for DSR mode).", "service-proxy"),
    _f("service-tcp-timeout", DURATION, 0.0, "Specify TCP timeout for IPVS services in standard duration syntax (e.g. '5s', '1m'), default 0s preserves default system value.", "service-proxy"),
    _f("service-tcpfin-timeout", DURATION, 0.0, "Specify TCP FIN timeout for IPVS services in standard duration syntax (e.g. '5s', '1m'), default 0s preserves default system value.", "service-proxy"),
    _f("service-udp-timeout", DURATION, 0.0, "Specify UDP timeout for IPVS services in standard duration syntax (e.g. '5s', '1m'), default 0s preserves default system value.", "service-proxy"),
    # kr's own (kube-router has no such flag): how VIPs are made local on the node
    _f("service-vip-mode", STR, "address", "How Service VIPs are made local: \"address\" (kube-router's layout: each VIP an address on kube-dummy-if plus its local-table route) or \"route\" (kr: the local-table route alone, no address; the kernel cost stays linear in the VIP count).", "service-proxy"),
    # --- firewall / network policy (2.3)
    _f("iptables-sync-period", DURATION, 300.0, "The delay between iptables rule synchronizations (e.g. '5s', '1m'). Must be greater than 0.", "network-policy"),
    _f("netpol-default-deny", BOOL, False, "Reject traffic to and from local pods whose firewall chain is not yet programmed.", "network-policy"),
    _f("use-nftables-for-netpol", BOOL, False, "Use the native nftables network-policy backend (the nft_netpol plugin) instead of iptables.", "network-policy"),
    # --- routing / BGP / overlay / CNI (2.4)
    _f("routes-sync-period", DURATION, 300.0, "The delay between route updates and advertisements (e.g. '5s', '1m', '2h22m'). Must be greater than 0.", "pod-routing"),
    _f("injected-routes-sync-period", DURATION, 60.0, "The delay between route table synchronizations (e.g. '5s', '1m', '2h22m'). Must be greater than 0.", "pod-routing"),
    _f("advertise-pod-cidr", BOOL, True, "Add Node's POD cidr to the RIB so that it gets advertised to the BGP peers.", "pod-routing"),
    _f("advertise-cluster-ip", BOOL, False, "Add Cluster IP of the service to the RIB so that it gets advertises to the BGP peers.", "pod-routing"),
    _f("advertise-external-ip", BOOL, False, "Add External IP of service to the RIB so that it gets advertised to the BGP peers.", "pod-routing"),
    _f("advertise-loadbalancer-ip", BOOL, False, "Add LoadBalancer IP of service status as set by the LB provider to the RIB so that it gets advertised to the BGP peers.", "pod-routing"),
    _f("cluster-asn", INT, 0, "ASN number under which cluster nodes will run iBGP (0 = 64512).", "pod-routing"),
    _f("nodes-full-mesh", BOOL, True, "Each node in the cluster will setup BGP peering with rest of the nodes.", "pod-routing"),
    _f("enable-ibgp", BOOL, True, "Enables peering with nodes with the same ASN, if disabled will only peer with external BGP peers.", "pod-routing"),
    _f("peer-router-ips", LIST, [], "The ip address of the external router to which all nodes will peer and advertise the cluster ip and pod cidr's.", "pod-routing"),
    _f("peer-router-asns", INTLIST, [], "ASN numbers of the BGP peer to which cluster nodes will advertise cluster ip and node's pod cidr.", "pod-routing"),
    _f("peer-router-ports", INTLIST, [], "The remote port of the external BGP to which all nodes will peer. If not set, default BGP port (179) will be used.", "pod-routing"),
    _f("peer-router-passwords", LIST, [], "Password for authenticating against the BGP peer defined with \"--peer-router-ips\".", "pod-routing"),
    _f("peer-router-passwords-file", STR, "", "Path to file containing password for authenticating against the BGP peer defined with \"--peer-router-ips\".", "pod-routing"),
    _f("peer-router-multihop-ttl", INT, 0, "Enable eBGP multihop supports -- sets multihop-ttl. (Relevant only if ttl >= 2)", "pod-routing"),
    _f("bgp-port", INT, 179, "The port open for incoming BGP connections and to use for connecting with other BGP peers.", "pod-routing"),
    _f("bgp-holdtime", DURATION, 90.0, "This parameter is mainly used to modify the holdtime declared to BGP peer (3s <= holdtime <= 18h12m16s).", "pod-routing"),
    _f("bgp-graceful-restart", BOOL, False, "Enables the BGP Graceful Restart capability so that routes are preserved on unexpected restarts.", "pod-routing"),
    _f("bgp-graceful-restart-time", DURATION, 90.0, "BGP Graceful restart time according to RFC4724 3, maximum 4095s.", "pod-routing"),
    _f("bgp-graceful-restart-deferral-time", DURATION, 360.0, "BGP Graceful restart deferral time according to RFC4724 4.1, maximum 18h.", "pod-routing"),
    _f("router-id", STR, "", "BGP router-id. Must be specified in a ipv6 only cluster, \"generate\" can be specified to generate the router id.", "pod-routing"),
    _f("override-nexthop", BOOL, False, "Override the next-hop in bgp routes sent to peers with the local ip.", "pod-routing"),
    _f("gobgp-admin-address", STR, "127.0.0.1", "Address for the GoBGP admin gRPC API to listen on (always also on loopback).", "pod-routing"),
    _f("gobgp-admin-port", INT, 50051, "Port to connect to GoBGP for administrative purposes. Setting this to 0 will disable the GoBGP gRPC server.", "pod-routing"),
    _f("enable-bfd", BOOL, False, "Enables BFD for the global BGP peers.", "pod-routing"),
    _f("bfd-port", INT, 3784, "BFD UDP port.", "pod-routing"),
    _f("bfd-detection-multiplier", INT, 3, "BFD detection multiplier (1-255).", "pod-routing"),
    _f("bfd-desired-min-tx-interval", INT, 1000, "BFD desired minimum transmit interval in milliseconds.", "pod-routing"),
    _f("bfd-required-min-rx-interval", INT, 1000, "BFD required minimum receive interval in milliseconds.", "pod-routing"),
    _f("enable-overlay", BOOL, True, "When enable-overlay is set to true, IP-in-IP tunneling is used for pod-to-pod networking across nodes in different subnets.", "pod-routing"),
    _f("overlay-type", STR, "subnet", "Possible values: subnet,full - When set to \"subnet\", the default, default \"--enable-overlay=true\" behavior is used. When set to \"full\", it changes \"--enable-overlay=true\" default behavior so that IP-in-IP tunneling is used for pod-to-pod networking across nodes regardless of the subnet the nodes are in.", "pod-routing"),
    _f("overlay-encap", STR, "ipip", "Valid encapsulation types are \"ipip\" or \"fou\" (if set to \"fou\", the udp port can be specified via \"overlay-encap-port\").", "pod-routing"),
    _f("overlay-encap-port", INT, 5555, "Overlay tunnel encapsulation port (only used for \"fou\" encapsulation).", "pod-routing"),
    _f("enable-pod-egress", BOOL, True, "SNAT traffic from Pods to destinations outside the cluster.", "pod-routing"),
    _f("enable-cni", BOOL, True, "Enable CNI plugin. Disable if you want to use kube-router features alongside another CNI plugin.", "pod-routing"),
    _f("auto-mtu", BOOL, True, "Auto detect and set the largest possible MTU for kube-bridge and pod interfaces (also accounts for IPIP overlay network when enabled).", "pod-routing"),
    _f("disable-source-dest-check", BOOL, True, "Disable the source-dest-check attribute for AWS EC2 instances. When this option is false, it must be set some other way.", "pod-routing"),
    # --- LoadBalancer allocator (2.5)
    _f("loadbalancer-default-class", BOOL, True, "Handle loadbalancer services without a class.", "loadbalancer"),
    _f("loadbalancer-sync-period", DURATION, 60.0, "The delay between checking for missed services (e.g. '5s', '1m'). Must be greater than 0.", "loadbalancer"),
)

FLAGS_BY_NAME: dict[str, Flag] = {f.name: f for f in FLAGS}

# Role switches: the kube-router flag that turns a role on and off.
ROLE_SWITCHES: dict[str, str] = {
    "pod-routing": "run-router",
    "service-proxy": "run-service-proxy",
    "network-policy": "run-firewall",
    "loadbalancer": "run-loadbalancer",
}

_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | int | float) -> float:
    """Parse a Go duration ('300ms', '1m30s', '2h22m', '0') into seconds. Plain numbers (from YAML) are seconds."""
    if isinstance(text, bool):
        raise ValueError(f"invalid duration {text!r}")
    if isinstance(text, (int, float)):
        return float(text)
    s = text.strip()
    sign = 1.0
    if s[:1] in "+-" and s:
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    pos, total = 0, 0.0
    if not s:
        raise ValueError(f"invalid duration {text!r}")
    for m in _DURATION_RE.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s):
        raise ValueError(f"invalid duration {text!r} (use Go syntax such as '5s', '1m', '2h22m')")
    return sign * total


def format_duration(seconds: float) -> str:
    """Render seconds the way Go prints durations ('5m0s', '1m30s', '500ms')."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    out = ""
    if h:
        out += f"{int(h)}h"
    if h or m:
        out += f"{int(m)}m"
    return out + f"{s:g}s"


def parse_bool(text: str | bool) -> bool:
    """pflag's strconv.ParseBool."""
    if isinstance(text, bool):
        return text
    t = str(text).strip()
    if t in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if t in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise ValueError(f"invalid boolean {text!r}")


def parse_value(flag: Flag, value: Any) -> Any:
    """Parse a value for ``flag`` from the command line (str) or the config file (YAML scalar or list)."""
    k = flag.kind
    if k == BOOL:
        return parse_bool(value)
    if k == DURATION:
        return parse_duration(value)
    if k == INT:
        if isinstance(value, bool):
            raise ValueError(f"invalid integer {value!r}")
        return int(value)
    if k == STR:
        if isinstance(value, (dict, list)):
            raise ValueError(f"expected a string, got {type(value).__name__}")
        return str(value)
    items = value if isinstance(value, list) else [value]
    out: list[Any] = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if part == "" and k == INTLIST:
                continue
            out.append(int(part) if k == INTLIST else part)
    if k == LIST and out == [""]:
        return []
    return out
