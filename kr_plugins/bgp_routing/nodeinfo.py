"""What kube-router reads from a Node: pod CIDRs (AC-R7), BGP annotations (AC-R4, communities, prepend).

:func:`node_bgp` turns one Node into a :class:`NodeBgp` plus a list of problems; a bad value skips only that
attribute, so everything else is still configured.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from kr_core.model import Node

ANN_POD_CIDR = "kube-router.io/pod-cidr"
ANN_POD_CIDRS = "kube-router.io/pod-cidrs"
ANN_NODE_ASN = "kube-router.io/node.asn"
ANN_RR_SERVER = "kube-router.io/rr.server"
ANN_RR_CLIENT = "kube-router.io/rr.client"
ANN_COMMUNITIES = "kube-router.io/node.bgp.communities"
ANN_IMPORT_REJECT = "kube-router.io/node.bgp.customimportreject"
ANN_PREPEND_AS = "kube-router.io/path-prepend.as"
ANN_PREPEND_N = "kube-router.io/path-prepend.repeat-n"
ANN_LOCAL_ADDRESSES = "kube-router.io/bgp-local-addresses"

# GoBGP's well-known community names (bgp.WellKnownCommunityNameMap)
WELL_KNOWN_COMMUNITIES = {
    "internet": 0x00000000, "planned-shut": 0xFFFF0000, "accept-own": 0xFFFF0001,
    "route-filter-translated-v4": 0xFFFF0002, "route-filter-v4": 0xFFFF0003,
    "route-filter-translated-v6": 0xFFFF0004, "route-filter-v6": 0xFFFF0005, "llgr-stale": 0xFFFF0006,
    "no-llgr": 0xFFFF0007, "blackhole": 0xFFFF029A, "no-export": 0xFFFFFF01, "no-advertise": 0xFFFFFF02,
    "no-export-subconfed": 0xFFFFFF03, "no-peer": 0xFFFFFF04,
}


def valid_community(text: str) -> bool:
    """A 32-bit number, ``A:B`` with two 16-bit halves, or a well-known name (``no-export``)."""
    t = text.strip()
    if t.isdigit():
        return int(t) <= 0xFFFFFFFF
    a, sep, b = t.partition(":")
    if sep:
        return a.isdigit() and b.isdigit() and int(a) <= 0xFFFF and int(b) <= 0xFFFF
    return t.lower() in WELL_KNOWN_COMMUNITIES


def parse_cluster_id(text: str) -> str:
    """A route-reflector cluster id: a uint32 or an IPv4 address, returned in IPv4 form. ValueError if neither."""
    t = text.strip()
    if t.isdigit() and int(t) <= 0xFFFFFFFF:
        return str(ipaddress.IPv4Address(int(t)))
    try:
        return str(ipaddress.IPv4Address(t))
    except ValueError:
        raise ValueError(f"route reflector cluster id {text!r} is neither a uint32 nor an IPv4 address") from None


def pod_cidrs(node: Node) -> tuple[tuple[str, ...], list[str]]:
    """The node's pod CIDRs: ``pod-cidr`` (if parseable) > ``pod-cidrs`` (bad items skipped) > ``spec.podCIDRs``."""
    ann = node.meta.annotations
    problems: list[str] = []
    single = ann.get(ANN_POD_CIDR, "").strip()
    if single:
        try:
            return (str(ipaddress.ip_network(single, strict=False)),), problems
        except ValueError:
            problems.append(f"{ANN_POD_CIDR}={single!r} is not a CIDR; ignored")
    many = ann.get(ANN_POD_CIDRS, "").strip()
    if many:
        out = []
        for item in many.split(","):
            try:
                out.append(str(ipaddress.ip_network(item.strip(), strict=False)))
            except ValueError:
                problems.append(f"{ANN_POD_CIDRS}: {item.strip()!r} is not a CIDR; skipped")
        if out:
            return tuple(out), problems
    out = []
    for c in node.pod_cidrs:
        try:
            out.append(str(ipaddress.ip_network(c, strict=False)))
        except ValueError:
            problems.append(f"spec.podCIDRs: {c!r} is not a CIDR; skipped")
    return tuple(out), problems


def node_ips(node: Node) -> tuple[str, ...]:
    """Internal then External addresses that are IPs (kube-router's node-ips set)."""
    out = []
    for t in ("InternalIP", "ExternalIP"):
        for a in node.addresses_of(t):
            try:
                out.append(str(ipaddress.ip_address(a)))
            except ValueError:
                continue
    return tuple(dict.fromkeys(out))


def node_ip_of_family(node: Node, family: int) -> str:
    """Primary IP if of ``family``, else the first Internal then External address of that family, else ''."""
    primary = node.primary_ip
    try:
        if primary and ipaddress.ip_address(primary).version == family:
            return primary
    except ValueError:
        pass
    for ip in node_ips(node):
        if ipaddress.ip_address(ip).version == family:
            return ip
    return ""


@dataclass(frozen=True)
class NodeBgp:
    """The BGP-relevant view of one node's annotations."""

    asn: int | None = None
    rr_server: str = ""  # cluster id (IPv4 form) or ''
    rr_client: str = ""
    communities: tuple[str, ...] = ()
    prepend_asn: int | None = None
    prepend_repeat: int = 0
    import_reject: tuple[str, ...] = ()
    local_addresses: tuple[str, ...] = ()
    problems: tuple[str, ...] = field(default=(), compare=False)


def node_bgp(annotations: Mapping[str, str]) -> NodeBgp:
    problems: list[str] = []
    asn: int | None = None
    raw = annotations.get(ANN_NODE_ASN, "").strip()
    if raw:
        try:
            asn = int(raw)
            if not 1 <= asn <= 4294967294:
                raise ValueError
        except ValueError:
            problems.append(f"{ANN_NODE_ASN}={raw!r} is not a valid ASN; ignored")
            asn = None
    rr = {}
    for key in (ANN_RR_SERVER, ANN_RR_CLIENT):
        v = annotations.get(key, "")
        rr[key] = ""
        if v.strip():
            try:
                rr[key] = parse_cluster_id(v)
            except ValueError as e:
                problems.append(f"{key}: {e}; ignored")
    communities = []
    for c in _split(annotations.get(ANN_COMMUNITIES, "")):
        if valid_community(c):
            communities.append(c.lower() if not c[0].isdigit() else c)
        else:
            problems.append(f"{ANN_COMMUNITIES}: {c!r} is not a valid community; skipped")
    prepend_asn, repeat = None, 0
    pa, pn = annotations.get(ANN_PREPEND_AS, "").strip(), annotations.get(ANN_PREPEND_N, "").strip()
    if pa or pn:
        try:
            if not (pa and pn):
                raise ValueError("both path-prepend.as and path-prepend.repeat-n are required")
            prepend_asn, repeat = int(pa), int(pn)
            if not 1 <= prepend_asn <= 4294967294 or not 1 <= repeat <= 255:
                raise ValueError(f"prepend ASN {pa} / repeat {pn} out of range")
        except ValueError as e:
            problems.append(f"path prepend ignored: {e}")
            prepend_asn, repeat = None, 0
    reject = []
    for c in _split(annotations.get(ANN_IMPORT_REJECT, "")):
        try:
            reject.append(str(ipaddress.ip_network(c, strict=False)))
        except ValueError:
            problems.append(f"{ANN_IMPORT_REJECT}: {c!r} is not a CIDR; skipped")
    local = []
    for a in _split(annotations.get(ANN_LOCAL_ADDRESSES, "")):
        try:
            local.append(str(ipaddress.ip_address(a)))
        except ValueError:
            problems.append(f"{ANN_LOCAL_ADDRESSES}: {a!r} is not an IP; skipped")
    return NodeBgp(asn=asn, rr_server=rr[ANN_RR_SERVER], rr_client=rr[ANN_RR_CLIENT], communities=tuple(communities),
                   prepend_asn=prepend_asn, prepend_repeat=repeat, import_reject=tuple(reject),
                   local_addresses=tuple(local), problems=tuple(problems))


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def cluster_ipsets(nodes: Iterable[Node]) -> dict[str, set[str]]:
    """Members of kube-router's ``kube-router-pod-subnets`` and ``kube-router-node-ips`` sets per family.

    Keys: ``pod-subnets4``, ``pod-subnets6``, ``node-ips4``, ``node-ips6``.
    """
    out: dict[str, set[str]] = {"pod-subnets4": set(), "pod-subnets6": set(), "node-ips4": set(), "node-ips6": set()}
    for n in nodes:
        for c in pod_cidrs(n)[0]:
            out[f"pod-subnets{ipaddress.ip_network(c).version}"].add(c)
        for ip in node_ips(n):
            out[f"node-ips{ipaddress.ip_address(ip).version}"].add(ip)
    return out
