"""Pure rendering: the desired state (:class:`kr_core.net.netpol.Desired`) -> iptables chains and ipsets.

Layout (kube-router's, filter table, per family; names from :mod:`kr_core.net.netpol.naming`):

* ``KUBE-ROUTER-INPUT/FORWARD/OUTPUT``, jumped to from the top of INPUT/FORWARD/OUTPUT: the service
  whitelist (INPUT only), one jump per local pod and direction into its pod chain, ``KUBE-NWPLCY-TAIL``,
  ACCEPT on mark 0x20000;
* ``KUBE-NWPLCY-COMMON`` (INVALID drop, RELATED/ESTABLISHED accept, essential ICMP),
  ``KUBE-NWPLCY-DEFAULT`` (mark 0x10000 = allowed), ``KUBE-NWPLCY-TAIL`` (default-deny rejects + ACCEPT);
* ``KUBE-POD-FW-<h>`` per local pod: COMMON, host-local source accepted, DEFAULT for a direction no
  policy isolates, jumps into the policy chains, NFLOG + REJECT without mark 0x10000, mark 0x20000;
* ``KUBE-NWPLCY-<h>`` per policy, direction and family, only for policies selecting a local pod: for each
  rule x peer kind x port, a MARK rule and a RETURN rule on the same match.

Rules reference sets, never pod addresses (except a pod chain's own address), so membership changes are
set changes only. Everything here is a pure function of its inputs; golden tests pin the text.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from kr_core.net.ipset import IpSet
from kr_core.net.iptables import clean_comment, quote_arg
from kr_core.net.netpol import naming
from kr_core.net.netpol.desired import Desired, LocalPod
from kr_core.net.netpol.model import EGRESS, INGRESS, CompiledPolicy, NamedPortGroup, RuleSpec

MARK_ALLOWED = "0x10000/0x10000"
MARK_OK = "0x20000/0x20000"
NFLOG_GROUP = 100
IPSET_FAMILY = {4: "inet", 6: "inet6"}


@dataclass(frozen=True)
class Options:
    """What the rendering needs from the flags and the node."""

    families: tuple[int, ...] = (4,)
    default_deny: bool = False
    pod_cidrs: tuple[str, ...] = ()  # this node's
    cluster_ranges: tuple[str, ...] = ()
    external_ranges: tuple[str, ...] = ()
    node_port_range: tuple[int, int] = (30000, 32767)
    nflog: bool = True


@dataclass
class Ruleset:
    """Everything of one family: ``chains`` {name: [rule text]} in render order, and the sets they use."""

    family: int
    chains: dict[str, list[str]] = field(default_factory=dict)
    sets: dict[str, IpSet] = field(default_factory=dict)


def _r(*args: str) -> str:
    return " ".join(quote_arg(a) for a in args)


def _comment(text: str) -> list[str]:
    return ["-m", "comment", "--comment", clean_comment(text)]


def _set(name: str, direction: str, family: int, negate: bool = False) -> list[str]:
    kernel = ("inet6:" + name) if family == 6 and not name.startswith("inet6:") else name
    return ["-m", "set", *(["!"] if negate else []), "--match-set", kernel, direction]


def _in_family(cidr: str, family: int) -> bool:
    return (":" in cidr) == (family == 6)


# ------------------------------------------------------------------------------------------- helpers

def common_chain(family: int) -> list[str]:
    rules = [_r(*_comment("rule to drop invalid state for pod"), "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"),
             _r(*_comment("rule for stateful firewall for pod"), "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
                "-j", "ACCEPT")]
    if family == 4:
        types = ["echo-request", "destination-unreachable", "time-exceeded"]
        rules += [_r(*_comment(f"allow icmp {t} messages"), "-p", "icmp", "--icmp-type", t, "-j", "ACCEPT")
                  for t in types]
    else:
        types = ["echo-request", "destination-unreachable", "time-exceeded", "neighbor-solicitation",
                 "neighbor-advertisement", "echo-reply"]
        rules += [_r(*_comment(f"allow icmp {t} messages"), "-p", "ipv6-icmp", "--icmpv6-type", t, "-j", "ACCEPT")
                  for t in types]
    return rules


def default_chain() -> list[str]:
    return [_r(*_comment("rule to mark traffic matching a network policy"), "-j", "MARK", "--set-xmark", MARK_ALLOWED)]


def tail_chain(opts: Options, family: int) -> list[str]:
    """AC-N7: per pod CIDR two REJECTs for addresses not yet programmed, ACCEPT on 0x20000, then two REJECTs."""
    cidrs = [c for c in opts.pod_cidrs if _in_family(c, family)] if opts.default_deny else []
    rules = []
    for c in cidrs:
        rules.append(_r(*_comment("reject traffic from local pods not yet programmed"), "-s", c,
                        *_set(naming.LOCAL_PODS_SET, "src", family, negate=True), "-j", "REJECT"))
        rules.append(_r(*_comment("reject traffic to local pods not yet programmed"), "-d", c,
                        *_set(naming.LOCAL_PODS_SET, "dst", family, negate=True), "-j", "REJECT"))
    rules.append(_r(*_comment("rule to explicitly ACCEPT traffic that comply to network policies"),
                    "-m", "mark", "--mark", MARK_OK, "-j", "ACCEPT"))
    for c in cidrs:
        rules.append(_r(*_comment("default deny: reject unmarked traffic from the pod CIDR"), "-s", c, "-j", "REJECT"))
        rules.append(_r(*_comment("default deny: reject unmarked traffic to the pod CIDR"), "-d", c, "-j", "REJECT"))
    return rules


def input_whitelist(opts: Options, family: int) -> list[str]:
    rules = []
    for c in opts.cluster_ranges:
        if _in_family(c, family):
            rules.append(_r(*_comment("allow traffic to primary/secondary cluster IP range"), "-d", c, "-j", "RETURN"))
    lo, hi = opts.node_port_range
    for proto in ("tcp", "udp", "sctp"):
        rules.append(_r(*_comment(f"allow LOCAL {proto.upper()} traffic to node ports"), "-p", proto,
                        "-m", "addrtype", "--dst-type", "LOCAL", "-m", "multiport", "--dports", f"{lo}:{hi}",
                        "-j", "RETURN"))
    for c in opts.external_ranges:
        if _in_family(c, family):
            rules.append(_r(*_comment("allow traffic to external IP range"), "-d", c, "-j", "RETURN"))
    return rules


# ------------------------------------------------------------------------------------------- policies

def _port_matches(rule: RuleSpec, groups: Iterable[NamedPortGroup], cp: CompiledPolicy,
                  family: int) -> list[tuple[list[str], str]]:
    """(match args, kind suffix) per port alternative; ``[([], "")]`` when the rule matches every port."""
    if rule.all_ports:
        return [([], "")]
    out: list[tuple[list[str], str]] = []
    for p in rule.ports:
        m = ["-p", p.protocol.lower()]
        if p.port is not None:
            m += ["--dport", f"{p.port}:{p.end_port}" if p.end_port else str(p.port)]
        out.append((m, ""))
    for g in sorted(groups, key=lambda g: (g.index, g.protocol, g.port)):
        if g.direction == rule.direction and g.rule == rule.index:
            out.append((["-p", g.protocol.lower(), "--dport", str(g.port),
                         *_set(cp.named_port_set(g, family), "dst", family)], " namedport"))
    return out


@functools.lru_cache(maxsize=8192)
def cached_policy_rules(cp: CompiledPolicy, direction: str, family: int,
                        groups: frozenset[NamedPortGroup]) -> tuple[str, ...]:
    """:func:`policy_rules`, memoised: a policy's text is recomputed only when it or its named-port groups change."""
    return tuple(policy_rules(cp, direction, family, groups))


def policy_rules(cp: CompiledPolicy, direction: str, family: int, groups: Iterable[NamedPortGroup] = (),
                 sets: set[str] | None = None) -> list[str]:
    """The rules of one policy chain (one direction, one family): MARK + RETURN per (peer kind x port).

    ``sets`` (names that exist) drops alternatives whose set is missing; None keeps all.
    """
    own_dir, peer_dir = ("dst", "src") if direction == INGRESS else ("src", "dst")
    own = _set(cp.target_set(direction, family), own_dir, family)
    rules: list[str] = []
    groups = tuple(groups)
    for rule in cp.rules(direction):
        peers: list[tuple[list[str], str]] = []
        if rule.all_peers:
            peers.append(([], "any"))
        else:
            if rule.pod_peers:
                peers.append((_set(cp.peer_set(direction, rule.index, family), peer_dir, family), "pods"))
            for b in rule.ipblocks_of(family):
                peers.append((_set(b.name, peer_dir, family), "ipblock"))
        for peer_m, kind in peers:
            for port_m, suffix in _port_matches(rule, groups, cp, family):
                match = [*own, *peer_m, *port_m]
                if sets is not None and any(a not in sets and a.removeprefix("inet6:") not in sets
                                            for a in _set_names(match)):
                    continue
                c = _comment(f"{cp.namespace}/{cp.name} {direction} {kind}{suffix}")
                rules.append(_r(*match, *c, "-j", "MARK", "--set-xmark", MARK_ALLOWED))
                rules.append(_r(*match, *c, "-m", "mark", "--mark", MARK_ALLOWED, "-j", "RETURN"))
    return rules


def _set_names(args: Sequence[str]) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == "--match-set"]


# --------------------------------------------------------------------------------------------- pods

def pod_chain(pod: LocalPod, desired: Desired, family: int, opts: Options) -> list[str]:
    names = tuple((desired.policies[k].namespace, desired.policies[k].name) for k in (*pod.ingress, *pod.egress))
    return list(_pod_chain(pod, names, family, opts))


@functools.lru_cache(maxsize=8192)
def _pod_chain(pod: LocalPod, names: tuple[tuple[str, str], ...], family: int, opts: Options) -> tuple[str, ...]:
    ip = pod.ips_of(family)[0]
    rules = [_r("-j", naming.COMMON_CHAIN),
             _r(*_comment("rule to permit the traffic to pods when source is the pod's local node"),
                "-d", ip, "-m", "addrtype", "--src-type", "LOCAL", "-j", "ACCEPT")]
    if not pod.egress:
        rules.append(_r(*_comment("run through default egress network policy chain"), "-s", ip,
                        "-j", naming.DEFAULT_CHAIN))
    if not pod.ingress:
        rules.append(_r(*_comment("run through default ingress network policy chain"), "-d", ip,
                        "-j", naming.DEFAULT_CHAIN))
    n_in = len(pod.ingress)
    for i, (ns, name) in enumerate(names):
        direction, flag = (INGRESS, "-d") if i < n_in else (EGRESS, "-s")
        rules.append(_r(*_comment(f"run through nw policy {name}"), flag, ip,
                        "-j", naming.policy_chain(ns, name, family, direction)))
    unmarked = ["-m", "mark", "!", "--mark", MARK_ALLOWED]
    if opts.nflog:
        rules.append(_r(*_comment(f"rule to log dropped traffic POD name:{pod.name} namespace: {pod.namespace}"),
                        *unmarked, "-m", "limit", "--limit", "10/minute", "--limit-burst", "10",
                        "-j", "NFLOG", "--nflog-group", str(NFLOG_GROUP)))
    rules.append(_r(*_comment(f"rule to REJECT traffic destined for POD name:{pod.name} namespace: {pod.namespace}"),
                    *unmarked, "-j", "REJECT"))
    rules.append(_r("-j", "MARK", "--set-xmark", "0x0/0x10000"))
    rules.append(_r(*_comment("set mark to ACCEPT traffic that comply to network policies"),
                    "-j", "MARK", "--set-xmark", MARK_OK))
    return tuple(rules)


@functools.lru_cache(maxsize=16384)
def _pod_jumps(pod: LocalPod, family: int) -> tuple[str, tuple[str, str], tuple[str, str]] | None:
    """The jumps into one pod's chain: (INPUT, FORWARD pair, OUTPUT pair), memoised per pod."""
    ips = pod.ips_of(family)
    if not ips:
        return None
    chain = naming.pod_chain(pod.namespace, pod.name)
    c = _comment(f"rule to jump traffic from POD name:{pod.name} namespace: {pod.namespace} to chain {chain}")
    d = _comment(f"rule to jump traffic destined to POD name:{pod.name} namespace: {pod.namespace} to chain {chain}")
    src = _r(*c, "-s", ips[0], "-j", chain)
    dst = _r(*d, "-d", ips[0], "-j", chain)
    return src, (dst, src), (dst, src)


def top_chains(local: Sequence[LocalPod], family: int, opts: Options) -> dict[str, list[str]]:
    inp = input_whitelist(opts, family)
    fwd: list[str] = []
    out: list[str] = []
    for pod in local:
        j = _pod_jumps(pod, family)
        if j is None:
            continue
        inp.append(j[0])
        fwd.extend(j[1])
        out.extend(j[2])
    tail = [_r("-j", naming.TAIL_CHAIN),
            _r(*_comment("rule to explicitly ACCEPT traffic that comply to network policies"),
               "-m", "mark", "--mark", MARK_OK, "-j", "ACCEPT")]
    return {naming.INPUT_CHAIN: inp + tail, naming.FORWARD_CHAIN: fwd + tail, naming.OUTPUT_CHAIN: out + tail}


# ------------------------------------------------------------------------------------------ all of it

def render(desired: Desired, family: int, opts: Options) -> Ruleset:
    """Everything this node needs for ``family``."""
    rs = Ruleset(family)
    local = sorted((p for p in desired.local.values() if p.ips_of(family)), key=lambda p: p.key)
    rs.chains[naming.COMMON_CHAIN] = common_chain(family)
    rs.chains[naming.DEFAULT_CHAIN] = default_chain()
    rs.chains[naming.TAIL_CHAIN] = tail_chain(opts, family)
    needed: dict[str, set[str]] = {}
    for pod in local:
        for k in pod.ingress:
            needed.setdefault(k, set()).add(INGRESS)
        for k in pod.egress:
            needed.setdefault(k, set()).add(EGRESS)
    for key in sorted(needed):
        cp = desired.policies[key]
        existing = desired.sets_of(key)
        groups = desired.groups_of(key)
        for direction in sorted(needed[key]):
            chain = naming.policy_chain(cp.namespace, cp.name, family, direction)
            rs.chains[chain] = list(cached_policy_rules(cp, direction, family, groups))
        for name in sorted(existing):
            s = desired.sets[name]
            if s.family == family:
                if s.rendered is None:  # cleared by Desired whenever a member changes
                    s.rendered = IpSet(name, s.type, IPSET_FAMILY[family], tuple(sorted(s.entries)),
                                       tuple(sorted(s.nomatch)))
                rs.sets[name] = s.rendered
    for pod in local:
        rs.chains[naming.pod_chain(pod.namespace, pod.name)] = pod_chain(pod, desired, family, opts)
    rs.chains.update(top_chains(local, family, opts))
    if opts.default_deny:
        rs.sets[naming.LOCAL_PODS_SET] = IpSet(naming.LOCAL_PODS_SET, "hash:ip", IPSET_FAMILY[family],
                                               tuple(sorted(ip for p in local for ip in p.ips_of(family))))
    return rs
