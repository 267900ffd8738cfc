"""Pure rendering: the desired state (:class:`kr_core.net.netpol.Desired`) -> one nftables ``inet`` table.

Layout of ``table inet kube-router-netpol`` (dual stack in one table):

* base chains, ``policy accept``, one per hook and direction, so a verdict needs no packet marks:

  - ``KUBE-ROUTER-INPUT`` (input, filter): the service whitelist (cluster ranges, local NodePorts, external
    and LB ranges: ``return``), then egress of local pods: ``ip saddr vmap @kube-router-egress-ipv4``;
  - ``KUBE-ROUTER-FORWARD-EGRESS`` / ``KUBE-ROUTER-OUTPUT-EGRESS`` (forward / output, filter - 1): egress;
  - ``KUBE-ROUTER-FORWARD`` / ``KUBE-ROUTER-OUTPUT`` (forward / output, filter): ingress,
    ``ip daddr vmap @kube-router-ingress-ipv4``;

  each ends with a jump to ``KUBE-NWPLCY-TAIL`` (``--netpol-default-deny``: reject traffic from or to the
  node's pod CIDRs whose address is not in ``kube-router-local-pods-ipv4/6``, i.e. not programmed yet);
* verdict maps ``kube-router-{ingress,egress}-ipv{4,6}``: local pod address -> ``jump`` its pod chain. Only
  pods a policy isolates in that direction are in the map; the others pass (kube-router's DEFAULT chain);
* ``KUBE-POD-FW-<h>-INGRESS`` / ``-EGRESS`` per local pod and isolated direction, independent of the pod's
  address: ``KUBE-NWPLCY-COMMON`` (invalid: drop; established/related and essential ICMP: accept),
  (ingress) traffic from the node itself accepted, a jump per policy, then ``log group 100`` (10/minute)
  and ``reject``;
* ``KUBE-NWPLCY-<h>`` per policy and direction (both families in one chain), only for policies that
  isolate a local pod: one ``accept`` rule per rule x peer kind x port group. A policy chain is only reached
  from the chains of pods it selects, so no rule needs to match the policy's own targets;
* named sets: rule peer pods (``ipv4_addr``/``ipv6_addr``), named-port pods, and ipBlocks as interval
  sets holding ``cidr`` minus its ``except``\\ s (computed here: one lookup, no separate except set).

Rules reference sets and chains, never pod addresses, so a pod appearing, leaving, changing labels or IPs
changes set and map elements only; its own chain is written once when it first needs one.
Everything here is pure; golden tests pin the JSON.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kr_core.net.netpol import naming
from kr_core.net.netpol.backend import NFT_TABLE, Options
from kr_core.net.netpol.desired import Desired, LocalPod
from kr_core.net.netpol.model import EGRESS, INGRESS, CompiledPolicy, NamedPortGroup, RuleSpec, SetContent

FAMILY, TABLE = NFT_TABLE
NFLOG_GROUP = 100
COMMENT_MAX = 120  # nftables' limit is 128
ADDR = {4: "ip", 6: "ip6"}
ADDR_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
FAMILY_SUFFIX = {4: "ipv4", 6: "ipv6"}

EGRESS_PRIORITY = -1  # before the ingress chains of the same hook (order does not change the verdict)
#: base chain -> (hook, priority, direction it dispatches)
BASE_CHAINS: dict[str, tuple[str, int, str]] = {
    naming.INPUT_CHAIN: ("input", 0, EGRESS),
    naming.FORWARD_CHAIN + "-EGRESS": ("forward", EGRESS_PRIORITY, EGRESS),
    naming.OUTPUT_CHAIN + "-EGRESS": ("output", EGRESS_PRIORITY, EGRESS),
    naming.FORWARD_CHAIN: ("forward", 0, INGRESS),
    naming.OUTPUT_CHAIN: ("output", 0, INGRESS),
}

Expr = dict[str, Any]
Rule = tuple[Expr, ...]  # a rule's "expr" list, with an optional {"comment": ...} first item


# ------------------------------------------------------------------------------------------- names

def verdict_map(direction: str, family: int) -> str:
    return f"kube-router-{direction}-{FAMILY_SUFFIX[family]}"


def local_pods_set(family: int) -> str:
    return f"{naming.LOCAL_PODS_SET}-{FAMILY_SUFFIX[family]}"


def policy_chain(namespace: str, name: str, direction: str) -> str:
    """``KUBE-NWPLCY-`` + h(ns + name + "inet" + direction): one chain for both families."""
    return naming.POLICY_CHAIN_PREFIX + naming.short_hash(f"{namespace}{name}inet{direction}")


def pod_chain(namespace: str, pod: str, direction: str) -> str:
    return f"{naming.pod_chain(namespace, pod)}-{direction.upper()}"


# ---------------------------------------------------------------------------------------- the result

@dataclass(frozen=True, slots=True)
class SetSpec:
    name: str
    family: int
    interval: bool = False

    @property
    def type(self) -> str:
        return ADDR_TYPE[self.family]


@dataclass
class Ruleset:
    """The whole table: ``chains`` {name: rules} (base chains included), ``sets`` with their ``elements``
    (``None`` for a set whose elements the caller diffs itself), ``maps`` {name: {address: chain}}."""

    chains: dict[str, tuple[Rule, ...]] = field(default_factory=dict)
    sets: dict[str, SetSpec] = field(default_factory=dict)
    elements: dict[str, frozenset[str] | None] = field(default_factory=dict)
    maps: dict[str, dict[str, str]] = field(default_factory=dict)
    families: tuple[int, ...] = (4,)


# ------------------------------------------------------------------------------------ expressions

def comment(text: str) -> Expr:
    if not text.isprintable() or '"' in text or "\\" in text:
        text = "".join(c for c in text if c.isprintable() and c not in '"\\')
    return {"comment": text[:COMMENT_MAX]}


def _match(left: Expr, right: Any, op: str = "==") -> Expr:
    return {"match": {"op": op, "left": left, "right": right}}


def addr(family: int, field_: str) -> Expr:
    return {"payload": {"protocol": ADDR[family], "field": field_}}


def in_set(family: int, field_: str, name: str, negate: bool = False) -> Expr:
    return _match(addr(family, field_), "@" + name, "!=" if negate else "==")


def _prefix(cidr: str) -> Any:
    net = ipaddress.ip_network(cidr, strict=False)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


ACCEPT: Expr = {"accept": None}
REJECT: Expr = {"reject": None}
RETURN: Expr = {"return": None}


def jump(chain: str) -> Expr:
    return {"jump": {"target": chain}}


def _port_value(specs: list[tuple[int, int | None]]) -> Any:
    vals: list[Any] = [p if not end else {"range": [p, end]} for p, end in specs]
    return vals[0] if len(vals) == 1 else {"set": vals}


# ------------------------------------------------------------------------------------ intervals

def interval_elements(entries: Iterable[str], excepts: Iterable[str]) -> frozenset[str]:
    """``entries`` minus ``excepts`` as disjoint interval-set elements: "a.b.c.d", "net/len" or "lo-hi"."""
    def span(c: str) -> tuple[int, int, int]:
        n = ipaddress.ip_network(c, strict=False)
        return n.version, int(n.network_address), int(n.broadcast_address)

    out: set[str] = set()
    spans = [span(e) for e in entries]
    cuts = [span(e) for e in excepts]
    for fam in sorted({s[0] for s in spans}):
        merged: list[list[int]] = []
        for _, lo, hi in sorted(s for s in spans if s[0] == fam):
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        for _, clo, chi in sorted(c for c in cuts if c[0] == fam):
            nxt: list[list[int]] = []
            for lo, hi in merged:
                if chi < lo or clo > hi:
                    nxt.append([lo, hi])
                    continue
                if lo < clo:
                    nxt.append([lo, clo - 1])
                if chi < hi:
                    nxt.append([chi + 1, hi])
            merged = nxt
        make = ipaddress.IPv4Address if fam == 4 else ipaddress.IPv6Address
        for lo, hi in merged:
            out.add(_interval_text(make(lo), make(hi), lo, hi, 32 if fam == 4 else 128))
    return frozenset(out)


def _interval_text(a: Any, b: Any, lo: int, hi: int, bits: int) -> str:
    if lo == hi:
        return str(a)
    size = hi - lo + 1
    if size & (size - 1) == 0 and lo % size == 0:
        return f"{a}/{bits - size.bit_length() + 1}"
    return f"{a}-{b}"


def element_json(elem: str) -> Any:
    if "/" in elem:
        return _prefix(elem)
    if "-" in elem:
        lo, hi = elem.split("-", 1)
        return {"range": [lo, hi]}
    return elem


# ------------------------------------------------------------------------------------ helper chains

def common_chain() -> tuple[Rule, ...]:
    v4 = ["echo-request", "destination-unreachable", "time-exceeded"]
    v6 = [*v4, "nd-neighbor-solicit", "nd-neighbor-advert", "echo-reply"]
    ct = {"ct": {"key": "state"}}
    return (
        (comment("rule to drop invalid state for pod"), _match(ct, "invalid", "in"), {"drop": None}),
        (comment("rule for stateful firewall for pod"), _match(ct, ["established", "related"], "in"), ACCEPT),
        (comment("allow essential icmp messages"),
         _match({"payload": {"protocol": "icmp", "field": "type"}}, {"set": v4}), ACCEPT),
        (comment("allow essential icmpv6 messages"),
         _match({"payload": {"protocol": "icmpv6", "field": "type"}}, {"set": v6}), ACCEPT),
    )


def _in_family(cidr: str, family: int) -> bool:
    return (":" in cidr) == (family == 6)


def tail_chain(opts: Options) -> tuple[Rule, ...]:
    """``--netpol-default-deny``: traffic from or to a pod CIDR address not yet programmed is rejected."""
    if not opts.default_deny:
        return ()
    rules: list[Rule] = []
    for f in opts.families:
        for c in opts.pod_cidrs:
            if not _in_family(c, f):
                continue
            for fld, what in (("saddr", "from"), ("daddr", "to")):
                rules.append((comment(f"reject traffic {what} local pods not yet programmed"),
                              _match(addr(f, fld), _prefix(c)), in_set(f, fld, local_pods_set(f), negate=True),
                              REJECT))
    return tuple(rules)


def input_whitelist(opts: Options) -> list[Rule]:
    rules: list[Rule] = []
    for f in opts.families:
        for c in opts.cluster_ranges:
            if _in_family(c, f):
                rules.append((comment("allow traffic to primary/secondary cluster IP range"),
                              _match(addr(f, "daddr"), _prefix(c)), RETURN))
    lo, hi = opts.node_port_range
    rules.append((comment("allow LOCAL TCP/UDP/SCTP traffic to node ports"),
                  _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local"),
                  _match({"meta": {"key": "l4proto"}}, {"set": ["tcp", "udp", "sctp"]}),
                  _match({"payload": {"protocol": "th", "field": "dport"}}, {"range": [lo, hi]}), RETURN))
    for f in opts.families:
        for c in opts.external_ranges:
            if _in_family(c, f):
                rules.append((comment("allow traffic to external IP range"),
                              _match(addr(f, "daddr"), _prefix(c)), RETURN))
    return rules


def base_chain(name: str, opts: Options) -> tuple[Rule, ...]:
    _, _, direction = BASE_CHAINS[name]
    rules = input_whitelist(opts) if name == naming.INPUT_CHAIN else []
    fld = "daddr" if direction == INGRESS else "saddr"
    for f in opts.families:
        rules.append((comment(f"dispatch {direction} of local pods to their chains"),
                      {"vmap": {"key": addr(f, fld), "data": "@" + verdict_map(direction, f)}}))
    rules.append((jump(naming.TAIL_CHAIN),))
    return tuple(rules)


# --------------------------------------------------------------------------------------- policies

def _port_alternatives(rule: RuleSpec, groups: Iterable[NamedPortGroup], cp: CompiledPolicy,
                       existing: Mapping[str, Any] | set[str] | None) -> list[tuple[list[Expr], int | None, str]]:
    """(match, family or None, kind suffix) per port alternative; one empty match when every port matches."""
    if rule.all_ports:
        return [([], None, "")]
    out: list[tuple[list[Expr], int | None, str]] = []
    by_proto: dict[str, list[tuple[int, int | None]] | None] = {}
    for p in rule.ports:
        if p.port is None:
            by_proto[p.protocol] = None  # every port of the protocol
        elif by_proto.get(p.protocol, []) is not None:
            by_proto.setdefault(p.protocol, []).append((p.port, p.end_port))  # type: ignore[union-attr]
    for proto in sorted(by_proto):
        specs = by_proto[proto]
        if specs is None:
            out.append(([_match({"meta": {"key": "l4proto"}}, proto.lower())], None, ""))
        else:
            out.append(([_match({"payload": {"protocol": proto.lower(), "field": "dport"}},
                                _port_value(sorted(set(specs), key=lambda s: (s[0], s[1] or 0))))], None, ""))
    for g in sorted(groups, key=lambda g: (g.index, g.protocol, g.port)):
        if g.direction != rule.direction or g.rule != rule.index:
            continue
        for f in cp.families:
            name = cp.named_port_set(g, f)
            if existing is not None and name not in existing:
                continue
            out.append(([in_set(f, "daddr", name),
                         _match({"payload": {"protocol": g.protocol.lower(), "field": "dport"}}, g.port)],
                        f, " namedport"))
    return out


def policy_rules(cp: CompiledPolicy, direction: str, groups: Iterable[NamedPortGroup] = (),
                 existing: Mapping[str, Any] | set[str] | None = None) -> tuple[Rule, ...]:
    """The chain of one policy and direction: an ``accept`` per (rule x peer kind x port alternative).

    ``existing`` (names of sets that exist) drops named-port alternatives whose set is missing.
    """
    peer_fld = "saddr" if direction == INGRESS else "daddr"
    groups = tuple(groups)
    rules: list[Rule] = []
    for rule in cp.rules(direction):
        peers: list[tuple[list[Expr], int | None, str]] = []
        if rule.all_peers:
            peers.append(([], None, "any"))
        else:
            for f in cp.families:
                if rule.pod_peers:
                    peers.append(([in_set(f, peer_fld, cp.peer_set(direction, rule.index, f))], f, "pods"))
                for b in rule.ipblocks_of(f):
                    peers.append(([in_set(f, peer_fld, b.name)], f, "ipblock"))
        for peer_m, pf, kind in peers:
            for port_m, qf, suffix in _port_alternatives(rule, groups, cp, existing):
                if pf is not None and qf is not None and pf != qf:
                    continue
                c = comment(f"{cp.namespace}/{cp.name} {direction} rule {rule.index} {kind}{suffix}")
                rules.append((c, *peer_m, *port_m, ACCEPT))
    return tuple(rules)


def policy_sets(cp: CompiledPolicy, desired: Desired) -> list[SetSpec]:
    """The sets the rules of ``cp`` reference (no target sets: the pod chains already know the targets)."""
    out: list[SetSpec] = []
    for direction in cp.directions():
        for rule in cp.rules(direction):
            if rule.pod_peers:
                out += [SetSpec(cp.peer_set(direction, rule.index, f), f) for f in cp.families]
            out += [SetSpec(b.name, b.family, interval=True) for b in rule.ipblocks]
    for g in desired.groups_of(cp.key):
        out += [SetSpec(cp.named_port_set(g, f), f) for f in cp.families if cp.named_port_set(g, f) in desired.sets]
    return out


def set_elements(spec: SetSpec, content: SetContent | None) -> frozenset[str]:
    if content is None:
        return frozenset()
    if spec.interval:
        return interval_elements(content.entries, content.nomatch)
    return frozenset(content.entries)


# -------------------------------------------------------------------------------------------- pods

def pod_chain_rules(pod: LocalPod, direction: str, policies: Mapping[str, CompiledPolicy],
                    opts: Options) -> tuple[Rule, ...]:
    rules: list[Rule] = [(jump(naming.COMMON_CHAIN),)]
    if direction == INGRESS:
        rules.append((comment("rule to permit the traffic to pods when source is the pod's local node"),
                      _match({"fib": {"result": "type", "flags": ["saddr"]}}, "local"), ACCEPT))
    for key in (pod.ingress if direction == INGRESS else pod.egress):
        cp = policies[key]
        rules.append((comment(f"run through nw policy {cp.namespace}/{cp.name}"),
                      jump(policy_chain(cp.namespace, cp.name, direction))))
    what = "destined for" if direction == INGRESS else "from"
    if opts.nflog:
        rules.append((comment(f"rule to log dropped traffic {what} POD name:{pod.name} namespace: {pod.namespace}"),
                      {"limit": {"rate": 10, "burst": 10, "per": "minute"}}, {"log": {"group": NFLOG_GROUP}}))
    rules.append((comment(f"rule to REJECT traffic {what} POD name:{pod.name} namespace: {pod.namespace}"), REJECT))
    return tuple(rules)


# ------------------------------------------------------------------------------------------ all of it

class Renderer:
    """Renders a :class:`Ruleset`, reusing the chains of policies and pods that did not change (same
    compiled policy object and named-port groups; same :class:`LocalPod`), so re-rendering after one pod
    event costs a few dictionary lookups per policy rather than building every rule again.
    The output is the same as a fresh :func:`render`."""

    def __init__(self) -> None:
        self.need: dict[tuple[str, str], int] = {}  # (policy key, direction) -> local pods it isolates
        self._pol: dict[tuple[str, str], tuple[CompiledPolicy, frozenset[NamedPortGroup], frozenset[str],
                                               tuple[Rule, ...]]] = {}
        self._pod: dict[tuple[LocalPod, str, Options], tuple[Rule, ...]] = {}
        self._psets: dict[str, tuple[CompiledPolicy, frozenset[NamedPortGroup], tuple[SetSpec, ...]]] = {}

    def forget(self) -> None:
        """Drop the reused chains (after a refused transaction the retry renders everything afresh)."""
        self._pol.clear()
        self._pod.clear()
        self._psets.clear()

    def render(self, desired: Desired, opts: Options, *, elements: bool = True) -> Ruleset:
        """Everything this node needs. ``elements=False``: set elements left as ``None`` (the caller moves
        members itself); only the structure (chains, set definitions, maps) is computed."""
        rs = Ruleset(families=opts.families)
        local = sorted(desired.local.values(), key=lambda p: p.key)
        needed: dict[str, set[str]] = {}
        for pod in local:
            for k in pod.ingress:
                needed.setdefault(k, set()).add(INGRESS)
            for k in pod.egress:
                needed.setdefault(k, set()).add(EGRESS)
        for name in BASE_CHAINS:
            rs.chains[name] = base_chain(name, opts)
        rs.chains[naming.COMMON_CHAIN] = common_chain()
        rs.chains[naming.TAIL_CHAIN] = tail_chain(opts)
        self.need = {(k, d): 0 for k, ds in needed.items() for d in ds}
        for pod in local:
            for k in pod.ingress:
                self.need[(k, INGRESS)] += 1
            for k in pod.egress:
                self.need[(k, EGRESS)] += 1
        for key in sorted(needed):
            cp = desired.policies[key]
            groups = desired.groups_of(key)
            specs = self._policy_sets(cp, groups, desired)
            names = frozenset(s.name for s in specs)
            for direction in sorted(needed[key]):
                rs.chains[policy_chain(cp.namespace, cp.name, direction)] = self._policy_rules(cp, direction,
                                                                                               groups, names)
            for s in specs:
                rs.sets[s.name] = s
                rs.elements[s.name] = set_elements(s, desired.sets.get(s.name)) if elements else None
        for f in opts.families:
            for d in (INGRESS, EGRESS):
                rs.maps[verdict_map(d, f)] = {}
        for pod in local:
            for d in (INGRESS, EGRESS):
                if not (pod.ingress if d == INGRESS else pod.egress):
                    continue
                chain = pod_chain(pod.namespace, pod.name, d)
                rs.chains[chain] = self._pod_rules(pod, d, desired.policies, opts)
                for f in opts.families:
                    for ip in pod.ips_of(f):
                        rs.maps[verdict_map(d, f)][ip] = chain
        if opts.default_deny:
            for f in opts.families:
                rs.sets[local_pods_set(f)] = SetSpec(local_pods_set(f), f)
                rs.elements[local_pods_set(f)] = frozenset(ip for p in local for ip in p.ips_of(f))
        return rs

    def update_pod(self, prev: Ruleset, desired: Desired, before: LocalPod | None, after: LocalPod | None,
                   opts: Options) -> Ruleset:
        """``prev`` (the last ruleset, rendered with ``opts``) changed for one local pod: its chains and map
        elements, the policies it alone needed (or now needs), the local-pods set. Elements of sets that
        stay are ``None`` (the caller moves members); new sets get theirs from ``desired``.
        Equal to :meth:`render` with ``elements=False`` plus those new sets, in O(changed)."""
        rs = Ruleset(dict(prev.chains), dict(prev.sets), dict.fromkeys(prev.sets), dict(prev.maps), prev.families)
        touched: set[str] = set()
        for pod, sign in ((before, -1), (after, 1)):
            if pod is None:
                continue
            for d, pols in ((INGRESS, pod.ingress), (EGRESS, pod.egress)):
                if not pols:
                    continue
                chain = pod_chain(pod.namespace, pod.name, d)
                for f in opts.families:
                    m = verdict_map(d, f)
                    if m not in touched:
                        rs.maps[m] = dict(rs.maps[m])
                        touched.add(m)
                    for ip in pod.ips_of(f):
                        if sign < 0:
                            rs.maps[m].pop(ip, None)
                        else:
                            rs.maps[m][ip] = chain
                if sign < 0:
                    rs.chains.pop(chain, None)
                else:
                    rs.chains[chain] = self._pod_rules(pod, d, desired.policies, opts)
                for k in pols:
                    self.need[(k, d)] = self.need.get((k, d), 0) + sign
        changed = {k for (k, _), n in self.need.items() if n <= 0} | set(after.ingress + after.egress if after else ())
        for key in sorted(changed):
            dirs = [d for d in (INGRESS, EGRESS) if self.need.get((key, d), 0) > 0]
            cp = desired.policies.get(key)
            for d in (INGRESS, EGRESS):
                if self.need.get((key, d), 1) <= 0:
                    del self.need[(key, d)]
                if cp is not None and d not in dirs:
                    rs.chains.pop(policy_chain(cp.namespace, cp.name, d), None)
            if cp is None:
                continue
            old_specs = self._psets[key][2] if key in self._psets else ()
            groups = desired.groups_of(key)
            specs = self._policy_sets(cp, groups, desired)
            names = frozenset(s.name for s in specs)
            if not dirs:
                specs = tuple({s.name: s for s in (*old_specs, *specs)}.values())
            for d in dirs:
                c = policy_chain(cp.namespace, cp.name, d)
                if c not in rs.chains:
                    rs.chains[c] = self._policy_rules(cp, d, groups, names)
            for s in specs:
                if dirs and s.name not in rs.sets:
                    rs.sets[s.name] = s
                    rs.elements[s.name] = set_elements(s, desired.sets.get(s.name))
                elif not dirs:
                    rs.sets.pop(s.name, None)
                    rs.elements.pop(s.name, None)
        if opts.default_deny:
            for f in opts.families:
                name = local_pods_set(f)
                e = set(prev.elements.get(name) or ())
                e.difference_update(before.ips_of(f) if before else ())
                e.update(after.ips_of(f) if after else ())
                rs.elements[name] = frozenset(e)
        return rs

    def _policy_rules(self, cp: CompiledPolicy, direction: str, groups: frozenset[NamedPortGroup],
                      names: frozenset[str]) -> tuple[Rule, ...]:
        hit = self._pol.get((cp.key, direction))
        if hit is not None and hit[0] is cp and hit[1] == groups and hit[2] == names:
            return hit[3]
        rules = policy_rules(cp, direction, groups, names)
        self._pol[(cp.key, direction)] = (cp, groups, names, rules)
        return rules

    def _policy_sets(self, cp: CompiledPolicy, groups: frozenset[NamedPortGroup],
                     desired: Desired) -> tuple[SetSpec, ...]:
        hit = self._psets.get(cp.key)
        if hit is not None and hit[0] is cp and hit[1] == groups:
            return hit[2]
        specs = tuple(policy_sets(cp, desired))
        self._psets[cp.key] = (cp, groups, specs)
        return specs

    def _pod_rules(self, pod: LocalPod, direction: str, policies: Mapping[str, CompiledPolicy],
                   opts: Options) -> tuple[Rule, ...]:
        k = (pod, direction, opts)
        hit = self._pod.get(k)
        if hit is None:
            if len(self._pod) > 20000:
                self._pod.clear()
            hit = self._pod[k] = pod_chain_rules(pod, direction, policies, opts)
        return hit


def render(desired: Desired, opts: Options) -> Ruleset:
    """Everything this node needs, from scratch."""
    return Renderer().render(desired, opts)


# ---------------------------------------------------------------------------------------- to JSON

def _obj(kind: str, name: str, **extra: Any) -> dict[str, Any]:
    return {kind: {"family": FAMILY, "table": TABLE, "name": name, **extra}}


def table_cmd() -> dict[str, Any]:
    return {"table": {"family": FAMILY, "name": TABLE}}


def chain_cmd(name: str) -> dict[str, Any]:
    if name in BASE_CHAINS:
        hook, prio, _ = BASE_CHAINS[name]
        return _obj("chain", name, type="filter", hook=hook, prio=prio, policy="accept")
    return _obj("chain", name)


def rule_cmd(chain: str, rule: Rule) -> dict[str, Any]:
    body: dict[str, Any] = {"family": FAMILY, "table": TABLE, "chain": chain}
    exprs = list(rule)
    if exprs and "comment" in exprs[0]:
        body["comment"] = exprs.pop(0)["comment"]
    body["expr"] = exprs
    return {"rule": body}


def set_cmd(spec: SetSpec) -> dict[str, Any]:
    return _obj("set", spec.name, type=spec.type, **({"flags": ["interval"]} if spec.interval else {}))


def map_cmd(name: str) -> dict[str, Any]:
    fam = 6 if name.endswith("ipv6") else 4
    return _obj("map", name, type=ADDR_TYPE[fam], map="verdict")


def elements_cmd(name: str, elems: Iterable[str]) -> dict[str, Any]:
    return {"element": {"family": FAMILY, "table": TABLE, "name": name,
                        "elem": [element_json(e) for e in sorted(elems)]}}


def map_elements_cmd(name: str, items: Iterable[tuple[str, str]]) -> dict[str, Any]:
    return {"element": {"family": FAMILY, "table": TABLE, "name": name,
                        "elem": [[ip, jump(chain)] for ip, chain in sorted(items)]}}


def map_keys_cmd(name: str, keys: Iterable[str]) -> dict[str, Any]:
    return {"element": {"family": FAMILY, "table": TABLE, "name": name, "elem": sorted(keys)}}


def create_commands(rs: Ruleset) -> list[dict[str, Any]]:
    """The ``add`` commands that build ``rs`` in an empty table (sets, maps, chains, then rules)."""
    cmds: list[dict[str, Any]] = [{"add": table_cmd()}]
    for name in sorted(rs.sets):
        cmds.append({"add": set_cmd(rs.sets[name])})
        elems = rs.elements.get(name)
        if elems:
            cmds.append({"add": elements_cmd(name, elems)})
    chains = _chain_order(rs)
    cmds += [{"add": chain_cmd(c)} for c in chains]
    for name in sorted(rs.maps):
        cmds.append({"add": map_cmd(name)})
        if rs.maps[name]:
            cmds.append({"add": map_elements_cmd(name, rs.maps[name].items())})
    for c in chains:
        cmds += _rule_cmds(c, rs.chains[c])
    return cmds


_RULE_CMDS: dict[tuple[str, int], tuple[tuple[Rule, ...], list[dict[str, Any]]]] = {}


def _rule_cmds(chain: str, rules: tuple[Rule, ...]) -> list[dict[str, Any]]:
    """The ``add rule`` commands of one chain, the same dict objects for the same rules tuple (the
    :class:`Renderer` reuses the tuples of unchanged chains, so :func:`.text.to_text` can reuse their text).
    Keyed by identity; the tuple is kept in the value so its id cannot be reused. Treat them as read-only."""
    hit = _RULE_CMDS.get((chain, id(rules)))
    if hit is not None and hit[0] is rules:
        return hit[1]
    if len(_RULE_CMDS) > 20000:
        _RULE_CMDS.clear()
    got = [{"add": rule_cmd(chain, r)} for r in rules]
    _RULE_CMDS[(chain, id(rules))] = (rules, got)
    return got


def _chain_order(rs: Ruleset) -> list[str]:
    """Helper and policy chains first, base chains last (what they jump to exists before they see traffic)."""
    return sorted(rs.chains, key=lambda c: (c in BASE_CHAINS, c.startswith(naming.POD_CHAIN_PREFIX), c))
