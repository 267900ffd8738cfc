"""The policy model kube-router builds, compiled once per policy and matched per pod.

A :class:`CompiledPolicy` is everything about one NetworkPolicy that does not depend on pods: whether it
isolates ingress and/or egress, its target selector, and per rule the pod peers (namespace selector AND
pod selector), the ipBlocks per family with their excepts, the numeric ports (protocol, port, endPort) and
the named ports. Bad input (a CIDR the server let through, an unknown protocol, a port out of range) is
recorded in ``problems`` and that peer or port is skipped; the rest of the policy stands.

Which pods a policy touches is computed per pod by :func:`memberships`: the (set, address) pairs one pod
contributes (policy target sets, rule peer sets, named-port sets). The sets a backend programs are the
union over pods, so a pod appearing, disappearing or changing labels changes set membership only; the
rule text depends only on the compiled policy and on which named-port groups exist
(:class:`NamedPortGroup`).

Semantics follow the API (and kube-router where the API is silent):

* ``policyTypes`` absent means Ingress (+ Egress when egress rules exist; the model's parser applies this);
* a rule with no peers matches every peer, a rule with no ports every port; a rule whose peers (or ports)
  were all invalid matches nothing;
* peers are pods that are actionable (an IP, not host-network, not finished);
* ``endPort`` below ``port`` is ignored (kube-router); named ports resolve against the destination pod's
  container ports (the target for ingress, the peer for egress);
* ipBlock ``/0`` becomes two halves (hash:net cannot hold /0): 0.0.0.0/1 + 128.0.0.0/1, and ::/1 + 8000::/1
  (kube-router's 2000::/3 + fd00::/8 silently drops the rest of IPv6);
* the ipBlocks of one rule share one hash:net set with excepts as ``nomatch`` entries, except when that
  would be wrong (an except inside another block of the same rule): then each block gets its own set.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from kr_core.model import LabelSelector, NetworkPolicy, Pod, PolicyPort, PolicyRule

from . import naming

PROTOCOLS = ("TCP", "UDP", "SCTP")
INGRESS = "ingress"
EGRESS = "egress"


def ip_family(ip: str) -> int:
    """4 or 6 (addresses come from the API server, which validated them: no parsing needed)."""
    return 6 if ":" in ip else 4


@dataclass(frozen=True, slots=True)
class PortSpec:
    """A numeric port match. ``port`` None: every port of the protocol."""

    protocol: str
    port: int | None = None
    end_port: int | None = None


@dataclass(frozen=True, slots=True)
class NamedPort:
    index: int  # position in the rule's ports
    name: str
    protocol: str


@dataclass(frozen=True, slots=True)
class NamedPortGroup:
    """A named port of one rule resolved to one (protocol, number): its set holds the pods resolving it so."""

    direction: str
    rule: int
    index: int
    protocol: str
    port: int


@dataclass(frozen=True, slots=True)
class PodPeer:
    namespace_selector: LabelSelector | None
    pod_selector: LabelSelector | None


@dataclass(frozen=True, slots=True)
class IpBlockSet:
    """One hash:net set of a rule: ``entries`` match, ``nomatch`` are the excepts."""

    name: str
    family: int
    entries: tuple[str, ...]
    nomatch: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RuleSpec:
    direction: str
    index: int
    all_peers: bool
    pod_peers: tuple[PodPeer, ...] = ()
    ipblocks: tuple[IpBlockSet, ...] = ()
    all_ports: bool = True
    ports: tuple[PortSpec, ...] = ()
    named_ports: tuple[NamedPort, ...] = ()

    def ipblocks_of(self, family: int) -> tuple[IpBlockSet, ...]:
        return tuple(b for b in self.ipblocks if b.family == family)


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    namespace: str
    name: str
    pod_selector: LabelSelector
    ingress: bool
    egress: bool
    ingress_rules: tuple[RuleSpec, ...] = ()
    egress_rules: tuple[RuleSpec, ...] = ()
    problems: tuple[str, ...] = ()
    families: tuple[int, ...] = (4,)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def rules(self, direction: str) -> tuple[RuleSpec, ...]:
        return self.ingress_rules if direction == INGRESS else self.egress_rules

    def directions(self) -> tuple[str, ...]:
        return tuple(d for d, on in ((INGRESS, self.ingress), (EGRESS, self.egress)) if on)

    def target_set(self, direction: str, family: int) -> str:
        return naming.target_set(self.namespace, self.name, family, direction)

    def peer_set(self, direction: str, rule: int, family: int) -> str:
        return naming.peer_pod_set(self.namespace, self.name, direction, rule, family)

    def named_port_set(self, g: NamedPortGroup, family: int) -> str:
        return naming.named_port_set(self.namespace, self.name, g.direction, g.rule,
                                     f"{g.index}{g.protocol}{g.port}", family)

    @property
    def cross_namespace(self) -> bool:
        """Can a pod of another namespace be in one of its sets? (namespaceSelector peers; egress named ports
        resolved on any pod.) Pods of other namespaces need not be matched against other policies."""
        for rule in (*self.ingress_rules, *self.egress_rules):
            if any(p.namespace_selector is not None for p in rule.pod_peers):
                return True
            if rule.direction == EGRESS and rule.named_ports and (rule.all_peers or rule.ipblocks):
                return True
        return False

    def may_select_from(self, namespace: str, ns_labels: Mapping[str, str] | None) -> bool:
        """Can a pod of ``namespace`` be in one of this policy's sets? (A cheap per-namespace pre-filter.)"""
        if namespace == self.namespace:
            return True
        for rule in (*self.ingress_rules, *self.egress_rules):
            for p in rule.pod_peers:
                if p.namespace_selector is not None and ns_labels is not None and p.namespace_selector.matches(ns_labels):
                    return True
            if rule.direction == EGRESS and rule.named_ports and (rule.all_peers or rule.ipblocks):
                return True
        return False

    def selects(self, pod: Pod) -> bool:
        return pod.meta.namespace == self.namespace and self.pod_selector.matches(pod.meta.labels)


# ------------------------------------------------------------------------------------------- compiling

def _split_zero(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> list[str]:
    if net.prefixlen == 0:
        return [str(n) for n in net.subnets(prefixlen_diff=1)]
    return [str(net)]


def _compile_ipblocks(pol: NetworkPolicy, direction: str, idx: int, rule: PolicyRule, families: tuple[int, ...],
                      problems: list[str]) -> tuple[IpBlockSet, ...]:
    blocks: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, list]] = []
    where = f"{direction} rule {idx}"
    for peer in rule.peers:
        if peer.ip_block is None:
            continue
        try:
            net = ipaddress.ip_network(peer.ip_block.cidr, strict=False)
        except ValueError:
            problems.append(f"{where}: invalid ipBlock cidr {peer.ip_block.cidr!r}: peer skipped")
            continue
        excepts = []
        for e in peer.ip_block.except_:
            try:
                en = ipaddress.ip_network(e, strict=False)
            except ValueError:
                problems.append(f"{where}: invalid ipBlock except {e!r}: except skipped")
                continue
            if en.version != net.version or not en.subnet_of(net):  # type: ignore[arg-type]
                problems.append(f"{where}: except {e!r} is not inside {peer.ip_block.cidr!r}: except skipped")
                continue
            excepts.append(en)
        if net.version not in families:
            problems.append(f"{where}: ipBlock {peer.ip_block.cidr} of a disabled IP family ignored")
            continue
        blocks.append((net, excepts))
    out: list[IpBlockSet] = []
    for fam in families:
        fb = [(n, ex) for n, ex in blocks if n.version == fam]
        if not fb:
            continue
        shared_ok = all(not (other.supernet_of(e) or other == e)  # type: ignore[arg-type]
                        for i, (_, ex) in enumerate(fb) for e in ex
                        for j, (other, _) in enumerate(fb) if j != i)
        groups = [fb] if shared_ok else [[b] for b in fb]
        for gi, group in enumerate(groups):
            entries = tuple(dict.fromkeys(s for n, _ in group for s in _split_zero(n)))
            nomatch = tuple(dict.fromkeys(s for _, ex in group for e in ex for s in _split_zero(e)))
            name = naming.ipblock_set(pol.meta.namespace, pol.meta.name, direction, idx, fam,
                                      None if shared_ok else gi)
            out.append(IpBlockSet(name, fam, entries, tuple(x for x in nomatch if x not in entries)))
    return tuple(out)


def _compile_ports(direction: str, idx: int, ports: tuple[PolicyPort, ...],
                   problems: list[str]) -> tuple[bool, tuple[PortSpec, ...], tuple[NamedPort, ...]]:
    if not ports:
        return True, (), ()
    specs: list[PortSpec] = []
    named: list[NamedPort] = []
    for pi, p in enumerate(ports):
        proto = (p.protocol or "TCP").upper()
        where = f"{direction} rule {idx} port {pi}"
        if proto not in PROTOCOLS:
            problems.append(f"{where}: unknown protocol {p.protocol!r}: port skipped")
            continue
        if p.port is None:
            specs.append(PortSpec(proto))
        elif isinstance(p.port, int):
            if not 1 <= p.port <= 65535:
                problems.append(f"{where}: port {p.port} out of range: port skipped")
                continue
            end = p.end_port
            if end is not None and not (p.port < end <= 65535):
                if end != p.port:
                    problems.append(f"{where}: endPort {end} ignored (port {p.port})")
                end = None
            specs.append(PortSpec(proto, p.port, end))
        elif p.port.isdigit():
            specs.append(PortSpec(proto, int(p.port)))
        else:
            named.append(NamedPort(pi, p.port, proto))
    return False, tuple(dict.fromkeys(specs)), tuple(named)


def compile_policy(pol: NetworkPolicy, families: Iterable[int] = (4,)) -> CompiledPolicy:
    fams = tuple(sorted(set(families)))
    problems: list[str] = []
    types = {t.lower() for t in pol.policy_types}
    for t in types - {INGRESS, EGRESS}:
        problems.append(f"unknown policyType {t!r} ignored")
    compiled: dict[str, list[RuleSpec]] = {INGRESS: [], EGRESS: []}
    for direction, rules in ((INGRESS, pol.ingress), (EGRESS, pol.egress)):
        if direction not in types:
            continue
        for idx, rule in enumerate(rules):
            pod_peers = tuple(PodPeer(p.namespace_selector, p.pod_selector) for p in rule.peers
                              if p.ip_block is None and (p.pod_selector is not None or p.namespace_selector is not None))
            for p in rule.peers:
                if p.ip_block is None and p.pod_selector is None and p.namespace_selector is None:
                    problems.append(f"{direction} rule {idx}: empty peer skipped")
            ipblocks = _compile_ipblocks(pol, direction, idx, rule, fams, problems)
            all_ports, ports, named = _compile_ports(direction, idx, rule.ports, problems)
            if not all_ports and not ports and not named:
                problems.append(f"{direction} rule {idx}: no valid port left: the rule allows nothing")
            compiled[direction].append(RuleSpec(direction, idx, not rule.peers, pod_peers, ipblocks,
                                                all_ports, ports, named))
    return CompiledPolicy(pol.meta.namespace, pol.meta.name, pol.pod_selector, INGRESS in types, EGRESS in types,
                          tuple(compiled[INGRESS]), tuple(compiled[EGRESS]), tuple(problems), fams)


# ------------------------------------------------------------------------------------------- matching

def peer_selects(peer: PodPeer, policy_ns: str, pod: Pod, ns_labels: Mapping[str, str] | None) -> bool:
    """Does a pod peer (namespaceSelector AND podSelector) select ``pod``? ``ns_labels`` None: no such namespace."""
    if peer.namespace_selector is None:
        if pod.meta.namespace != policy_ns:
            return False
    elif ns_labels is None or not peer.namespace_selector.matches(ns_labels):
        return False
    return peer.pod_selector is None or peer.pod_selector.matches(pod.meta.labels)


def resolve_named(pod: Pod, np: NamedPort) -> int | None:
    for cp in pod.ports:
        if cp.name == np.name and (cp.protocol or "TCP").upper() == np.protocol:
            return cp.container_port
    return None


@dataclass(frozen=True, slots=True)
class Membership:
    """One (set, address) a pod contributes; ``group`` is set for named-port sets."""

    set_name: str
    family: int
    ip: str
    policy: str = ""
    group: NamedPortGroup | None = None


@dataclass(frozen=True, slots=True)
class NsView:
    """A policy as seen by the pods of one namespace: the namespace selectors already evaluated.

    ``rules`` holds, per (direction, rule), the pod selectors of the peers that apply to this namespace
    (``None`` in the list: any pod of it), and whether the rule's named ports resolve on its pods.
    """

    cp: CompiledPolicy
    targets: bool  # the policy's own namespace
    rules: tuple[tuple[str, RuleSpec, tuple[LabelSelector | None, ...], bool], ...]
    selectors: tuple[LabelSelector | None, ...] = ()  # every selector that can put a pod of it into a set
    any_pod: bool = False  # egress named ports resolved on any pod: every pod may be a member


def ns_view(cp: CompiledPolicy, namespace: str, ns_labels: Mapping[str, str] | None) -> NsView:
    own = namespace == cp.namespace
    rules = []
    for direction in cp.directions():
        for rule in cp.rules(direction):
            sels = tuple(p.pod_selector for p in rule.pod_peers
                         if (p.namespace_selector is None and own)
                         or (p.namespace_selector is not None and ns_labels is not None
                             and p.namespace_selector.matches(ns_labels)))
            named = bool(rule.named_ports) and (own if direction == INGRESS else True)
            rules.append((direction, rule, sels, named))
    selectors = ((cp.pod_selector,) if own else ()) + tuple(s for _, _, sels, _ in rules for s in sels)
    any_pod = any(d == EGRESS and named and (r.all_peers or bool(r.ipblocks)) for d, r, _, named in rules)
    return NsView(cp, own, tuple(rules), tuple(dict.fromkeys(selectors)), any_pod)


def could_match(v: NsView, labels: Mapping[str, str], memo: dict[tuple[Any, Any], bool] | None = None) -> bool:
    """Cheap pre-check: can a pod with ``labels`` be in any set of this view? (``memo``: selector results by
    (selector, labels); equal selectors of different policies share an entry.)"""
    if v.any_pod:
        return True
    for sel in v.selectors:
        if sel is None:
            return True
        if memo is None:
            if sel.matches(labels):
                return True
            continue
        k = (sel, labels)
        hit = memo.get(k)
        if hit is None:
            hit = memo[k] = sel.matches(labels)
        if hit:
            return True
    return False


def _sel_matches(sel: LabelSelector | None, labels: Mapping[str, str]) -> bool:
    return sel is None or sel.matches(labels)


def view_memberships(v: NsView, pod: Pod) -> Iterator[Membership]:
    """:func:`memberships` for a pod of the view's namespace (the hot path: no namespace work per pod)."""
    cp = v.cp
    ips = [(ip_family(ip), ip) for ip in pod.pod_ips]
    ips = [(f, ip) for f, ip in ips if f in cp.families]
    if not ips or not pod.actionable:
        return
    labels = pod.meta.labels
    target = v.targets and cp.pod_selector.matches(labels)
    done: set[str] = set()
    for direction, rule, sels, named in v.rules:
        if target and direction not in done:
            done.add(direction)
            for f, ip in ips:
                yield Membership(cp.target_set(direction, f), f, ip, cp.key)
        is_peer = any(_sel_matches(s, labels) for s in sels)
        if is_peer:
            for f, ip in ips:
                yield Membership(cp.peer_set(direction, rule.index, f), f, ip, cp.key)
        # named ports resolve on the destination: the target (ingress) or a peer / any pod (egress)
        if named and (target if direction == INGRESS else (is_peer or rule.all_peers or bool(rule.ipblocks))):
            for np in rule.named_ports:
                num = resolve_named(pod, np)
                if num is None:
                    continue
                g = NamedPortGroup(direction, rule.index, np.index, np.protocol, num)
                for f, ip in ips:
                    yield Membership(cp.named_port_set(g, f), f, ip, cp.key, g)
    if target:  # a direction without rules still has its target set
        for direction in cp.directions():
            if direction not in done:
                for f, ip in ips:
                    yield Membership(cp.target_set(direction, f), f, ip, cp.key)


def memberships(cp: CompiledPolicy, pod: Pod, ns_labels: Mapping[str, str] | None) -> Iterator[Membership]:
    """The hash:ip sets of ``cp`` that ``pod`` belongs to (nothing for a pod that is not actionable)."""
    return view_memberships(ns_view(cp, pod.meta.namespace, ns_labels), pod)


@dataclass
class SetContent:
    name: str
    family: int
    type: str = "hash:ip"
    entries: set[str] = field(default_factory=set)
    nomatch: set[str] = field(default_factory=set)
    rendered: Any = field(default=None, compare=False)  # a backend's rendering, cleared when members change


def static_sets(cp: CompiledPolicy) -> Iterator[SetContent]:
    """Sets that exist whatever the pods: target sets (also when empty), peer sets, ipBlock sets."""
    for direction in cp.directions():
        for f in cp.families:
            yield SetContent(cp.target_set(direction, f), f)
        for rule in cp.rules(direction):
            if rule.pod_peers:
                for f in cp.families:
                    yield SetContent(cp.peer_set(direction, rule.index, f), f)
            for b in rule.ipblocks:
                yield SetContent(b.name, b.family, "hash:net", set(b.entries), set(b.nomatch))
