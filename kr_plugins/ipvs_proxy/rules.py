"""Pure rendering of the proxy's iptables chains and ipsets, per IP family.

Chains (all kr-owned, rewritten whole through ``iptables-restore --noflush`` when their content changes):

* filter ``KUBE-ROUTER-SERVICES``: the IPVS INPUT firewall, entered from INPUT position 1 for
  destinations in ``kube-router-svip``. loadBalancerSourceRanges filters first, then the accepted ICMP
  types, then VIP:port pairs from ``kube-router-svip-prt`` (ACCEPT with ``--ipvs-permit-all``, else RETURN
  so the rest of INPUT decides), then REJECT of everything else to a VIP that is not a local node address.
* nat ``KUBE-ROUTER-HAIRPIN``: hairpin SNAT, entered from POSTROUTING with ``-m ipvs --vdir ORIGINAL``;
  present only while some Service needs hairpin.
* nat ``KUBE-ROUTER-IPVS-SNAT``: kube-router's masquerade rules (SNAT of IPVS-NATed traffic to the node IP
  when neither end is in this node's pod CIDRs; with ``--masquerade-all`` unconditionally), entered from
  POSTROUTING with ``-m ipvs --vdir ORIGINAL --vmethod MASQ``, after the hairpin jump.

Sets: ``kube-router-svip`` (hash:ip), ``kube-router-svip-prt`` (hash:ip,port), ``kube-router-local-ips``
(hash:ip), IPv6 ones ``inet6:``-prefixed; all ``timeout 0`` as kube-router makes them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from kr_core.net.ipset import IpSet

from .model import PROTO_NAMES, HairpinRule, SourceRangeRule

CHAIN_SERVICES = "KUBE-ROUTER-SERVICES"
CHAIN_HAIRPIN = "KUBE-ROUTER-HAIRPIN"
CHAIN_SNAT = "KUBE-ROUTER-IPVS-SNAT"
SET_SVIP = "kube-router-svip"
SET_SVIP_PRT = "kube-router-svip-prt"
SET_LOCAL_IPS = "kube-router-local-ips"
OWNED_SETS = (SET_SVIP, SET_SVIP_PRT, SET_LOCAL_IPS)
JUMP_INPUT_COMMENT = "handle traffic to IPVS service IPs in custom chain"
JUMP_HAIRPIN_COMMENT = "kube-router hairpin SNAT for IPVS services"
JUMP_SNAT_COMMENT = "kube-router SNAT of IPVS-forwarded traffic"

Rule = list[str]


def _c(text: str) -> list[str]:
    return ["-m", "comment", "--comment", text]


def host(addr: str, family: int) -> str:
    return f"{addr}/{32 if family == 4 else 128}"


def set_family(family: int) -> str:
    return "inet" if family == 4 else "inet6"


def kernel_set(name: str, family: int) -> str:
    return name if family == 4 else f"inet6:{name}"


def input_jump(family: int) -> Rule:
    """The INPUT rule (position 1) into the firewall chain (its comment is added by ``ensure_jump``)."""
    return ["-m", "set", "--match-set", kernel_set(SET_SVIP, family), "dst", "-j", CHAIN_SERVICES]


def hairpin_jump() -> Rule:
    return ["-m", "ipvs", "--vdir", "ORIGINAL", "-j", CHAIN_HAIRPIN]


def snat_jump() -> Rule:
    return ["-m", "ipvs", "--vdir", "ORIGINAL", "--vmethod", "MASQ", "-j", CHAIN_SNAT]


def firewall_rules(family: int, source_ranges: Sequence[SourceRangeRule], permit_all: bool = True) -> list[Rule]:
    """Content of ``KUBE-ROUTER-SERVICES`` for one family."""
    rules: list[Rule] = []
    for r in source_ranges:
        proto = PROTO_NAMES[r.proto]
        match = ["-d", host(r.vip, family), "-p", proto, "-m", proto, "--dport", str(r.port)]
        cmt = _c(f"{r.service} loadBalancerSourceRanges")
        rules += [[*match, "-s", src, *cmt, "-j", "ACCEPT"] for src in r.ranges]
        rules.append([*match, *cmt, "-j", "REJECT", "--reject-with",
                      "icmp-port-unreachable" if family == 4 else "icmp6-port-unreachable"])
    if family == 4:
        for t in ("echo-request", "destination-unreachable", "time-exceeded"):
            rules.append(["-p", "icmp", "-m", "icmp", "--icmp-type", t, *_c(f"allow icmp {t} to service IPs"),
                          "-j", "ACCEPT"])
    else:
        for t in ("echo-request", "destination-unreachable", "time-exceeded", "echo-reply",
                  "neighbour-solicitation", "neighbour-advertisement", "packet-too-big"):
            rules.append(["-p", "ipv6-icmp", "-m", "icmp6", "--icmpv6-type", t,
                          *_c(f"allow icmp {t} to service IPs"), "-j", "ACCEPT"])
    rules.append(["-m", "set", "--match-set", kernel_set(SET_SVIP_PRT, family), "dst,dst",
                  *_c("allow input traffic to ipvs services"), "-j", "ACCEPT" if permit_all else "RETURN"])
    rules.append(["-m", "set", "!", "--match-set", kernel_set(SET_LOCAL_IPS, family), "dst",
                  *_c("reject all unexpected traffic to service IPs"), "-j", "REJECT", "--reject-with",
                  "icmp-port-unreachable" if family == 4 else "icmp6-port-unreachable"])
    return rules


def hairpin_rules(family: int, rules: Iterable[HairpinRule]) -> list[Rule]:
    """Content of ``KUBE-ROUTER-HAIRPIN`` (kube-router's rule shape)."""
    out: list[Rule] = []
    for r in sorted(set(rules)):
        if r.family != family:
            continue
        ep = host(r.ep, family)
        out.append(["-s", ep, "-d", ep, "-m", "ipvs", "--vaddr", host(r.vip, family), "--vport", str(r.port),
                    *_c(f"hairpin {r.vip}:{r.port} -> {r.ep}"), "-j", "SNAT", "--to-source", r.vip])
    return out


def snat_rules(family: int, node_ip: str, pod_cidrs: Sequence[str], masquerade_all: bool,
               random_fully: bool = True) -> list[Rule]:
    """Content of ``KUBE-ROUTER-IPVS-SNAT``: SNAT to the node IP unless an end is a local pod."""
    if not node_ip:
        return []
    tail = ["-j", "SNAT", "--to-source", node_ip] + (["--random-fully"] if random_fully else [])
    cidrs = [c for c in pod_cidrs if (":" in c) == (family == 6)]
    rules: list[Rule] = []
    if masquerade_all:
        rules.append([*_c("masquerade all IPVS-forwarded traffic (--masquerade-all)"), *tail])
    if cidrs:
        neg: list[str] = []
        for c in cidrs:
            neg += ["!", "-s", c, "!", "-d", c]
        rules.append([*neg, *_c("SNAT IPVS-forwarded traffic from outside this node's pods"), *tail])
    else:
        rules.append([*_c("SNAT IPVS-forwarded traffic (no pod CIDR known)"), *tail])
    return rules


def ipsets(family: int, svip: Iterable[str], svip_prt: Iterable[str], local_ips: Iterable[str]) -> list[IpSet]:
    """The three firewall sets of one family, each created with a hash size fitting its entries."""
    fam = set_family(family)
    out = []
    for name, kind, entries in ((SET_SVIP, "hash:ip", svip), (SET_SVIP_PRT, "hash:ip,port", svip_prt),
                                (SET_LOCAL_IPS, "hash:ip", local_ips)):
        members = tuple(sorted(entries))
        out.append(IpSet(name, kind, fam, members, hashsize=hashsize_for(len(members))))
    return out


def hashsize_for(n: int) -> int:
    """The power of two >= ``n`` (at least 1,024, ipset's default): a temporary set created this size is
    filled without the kernel growing and rehashing it on the way (10k members from 1,024 buckets took
    several resizes). Resizing is ignored when ``create -exist`` compares a set's options."""
    size = 1024
    while size < n:
        size *= 2
    return size
