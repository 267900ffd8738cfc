"""The desired network-policy state of one node, built from the caches and kept up to date per pod.

:class:`Desired` holds every compiled policy, and for the policies this node needs (those selecting at
least one local pod) their sets with members and their named-port groups; for each local pod the policies
that select it per direction. Policies no local pod needs get no sets: their chains are not programmed on
this node, so their members would be work for nothing. A policy becoming needed (a local pod appears or is
relabelled) gets its sets then, from the pod index.

Sets are computed by set algebra over a :class:`~.podindex.PodIndex` (labels -> pods), so a full build
costs about one pass over the pods plus a few set operations per selector, not pods x selectors matches.
:meth:`Desired.update_pod` moves one pod's memberships and reports what changed, so a backend can tell a
membership-only change (set add/del) from one that changes rule text (a new named-port group, a local
pod's policies, a policy that starts or stops selecting a local pod).

Both network-policy backends (iptables + ipset, nftables) build their rules from this.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from kr_core.model import LabelSelector, Namespace, NetworkPolicy, Pod

from .model import (
    EGRESS,
    INGRESS,
    CompiledPolicy,
    Membership,
    NamedPortGroup,
    NsView,
    SetContent,
    compile_policy,
    could_match,
    ip_family,
    ns_view,
    static_sets,
    view_memberships,
)
from .podindex import EMPTY, PodIndex


@dataclass(frozen=True, slots=True)
class LocalPod:
    """A local, actionable pod and the policies (keys, sorted) that isolate it per direction."""

    key: str
    namespace: str
    name: str
    ips: tuple[str, ...]
    ingress: tuple[str, ...] = ()
    egress: tuple[str, ...] = ()

    def ips_of(self, family: int) -> tuple[str, ...]:
        return tuple(ip for ip in self.ips if ip_family(ip) == family)


@dataclass
class PodDelta:
    """What one change did: set members added/removed; whether rule text may have changed."""

    added: list[Membership] = field(default_factory=list)
    removed: list[Membership] = field(default_factory=list)
    groups_changed: set[str] = field(default_factory=set)  # policy keys whose named-port groups changed
    local_changed: bool = False  # a local pod appeared, went, changed IPs or policies

    @property
    def rules_changed(self) -> bool:
        return bool(self.groups_changed) or self.local_changed

    def merge(self, other: PodDelta) -> None:
        self.added += other.added
        self.removed += other.removed
        self.groups_changed |= other.groups_changed
        self.local_changed |= other.local_changed


@dataclass(frozen=True, slots=True)
class PolicyHead:
    """What deciding whether a policy selects a pod needs, without compiling its rules."""

    key: str
    namespace: str
    pod_selector: LabelSelector
    ingress: bool
    egress: bool
    obj: NetworkPolicy

    @classmethod
    def of(cls, pol: NetworkPolicy) -> PolicyHead:
        types = {t.lower() for t in pol.policy_types}
        return cls(pol.key, pol.meta.namespace, pol.pod_selector, INGRESS in types, EGRESS in types, pol)


class CompiledPolicies(Mapping[str, CompiledPolicy]):
    """Every policy by key, compiled when first looked up (and again when its object changes).

    Only the policies a node needs are ever looked up on the hot paths, so a node compiles those, not all
    of the cluster's; bad input of a policy is therefore reported by the nodes where it selects a pod."""

    def __init__(self, families: tuple[int, ...], on_problem: Callable[[str, str], None]) -> None:
        self.families = families
        self.on_problem = on_problem
        self.heads: dict[str, PolicyHead] = {}
        self._compiled: dict[str, tuple[NetworkPolicy, CompiledPolicy]] = {}

    def __getitem__(self, key: str) -> CompiledPolicy:
        head = self.heads[key]
        hit = self._compiled.get(key)
        if hit is not None and hit[0] is head.obj:
            return hit[1]
        cp = compile_policy(head.obj, self.families)
        for msg in cp.problems:
            self.on_problem(cp.key, msg)
        self._compiled[key] = (head.obj, cp)
        return cp

    def __iter__(self) -> Iterator[str]:
        return iter(self.heads)

    def __len__(self) -> int:
        return len(self.heads)

    def __contains__(self, key: object) -> bool:
        return key in self.heads

    def forget_stale(self) -> None:
        """Drop compiled policies whose object is gone or replaced."""
        self._compiled = {k: v for k, v in self._compiled.items()
                          if (h := self.heads.get(k)) is not None and h.obj is v[0]}


class Desired:
    """Desired state for one node. Not thread-safe: owned by the plugin's worker."""

    def __init__(self, node_name: str, families: Iterable[int] = (4,), *,
                 on_problem: Callable[[str, str], None] | None = None) -> None:
        self.node_name = node_name
        self.families = tuple(sorted(set(families)))
        self.on_problem = on_problem or (lambda key, msg: None)
        self.policies = CompiledPolicies(self.families, lambda key, msg: self.on_problem(key, msg))
        self.index = PodIndex(self.families, node_name)
        self._reset()

    def _reset(self) -> None:
        self.policies.heads = {}
        self.by_ns: dict[str, list[PolicyHead]] = {}  # policies by their namespace (the pods they target)
        self.ns_labels: dict[str, Mapping[str, str]] = {}
        self.local: dict[str, LocalPod] = {}
        self.need: Counter[str] = Counter()  # policy key -> local pods it selects
        self.sets: dict[str, SetContent] = {}
        self.set_owner: dict[str, tuple[str, NamedPortGroup | None]] = {}  # set -> (policy, named-port group)
        self.policy_sets: dict[str, set[str]] = {}  # needed policy -> its sets
        self.groups: dict[str, Counter[NamedPortGroup]] = {}  # needed policy -> group -> sets of the group
        self._cands: dict[str, list[NsView]] = {}  # namespace -> needed policies that may put its pods in sets
        self._ns_sel: dict[LabelSelector, tuple[str, ...]] = {}  # namespace selector -> namespaces

    @property
    def pods(self) -> Mapping[str, Pod]:
        """Actionable pods (with an address of the node's families) by key."""
        return self.index.pods

    # ------------------------------------------------------------------------------------- full build
    def build(self, policies: Iterable[NetworkPolicy], pods: Iterable[Pod], namespaces: Iterable[Namespace]) -> None:
        """Rebuild everything (a full sync): every set, local pod and need is computed afresh from the
        objects given. What depends on one immutable object only is reused while the object is the same:
        a pod's index entries (:meth:`PodIndex.resync`), a policy's head and compiled form."""
        before = self.policies.heads
        self._reset()
        self.ns_labels = {ns.meta.name: ns.meta.labels for ns in namespaces}
        heads = self.policies.heads
        for pol in policies:
            h = before.get(pol.key)
            if h is None or h.obj is not pol:
                h = PolicyHead.of(pol)
            heads[pol.key] = h
            self.by_ns.setdefault(h.namespace, []).append(h)
        self.policies.forget_stale()
        idx = self.index
        idx.resync(pods)
        for key in idx.local:
            lp = self._local_of(idx.pods[key])
            if lp is not None:
                self.local[key] = lp
                self.need.update(dict.fromkeys((*lp.ingress, *lp.egress), 1))
        for key in sorted(self.need):
            self._materialize(self.policies[key])

    # ----------------------------------------------------------------------------------- per pod
    def update_pod(self, key: str, pod: Pod | None) -> PodDelta:
        """Move pod ``key`` to its new state (``None``: deleted) and report the difference."""
        idx = self.index
        old = idx.pods.get(key)
        new = pod if pod is not None and idx.accepts(pod) else None
        old_m = self._members(old) if old is not None else frozenset()
        if old is not None:
            idx.remove(key)
        if new is not None:
            idx.add(key, new)
        delta = PodDelta()
        before = self.local.pop(key, None)
        after = self._local_of(new) if new is not None and new.node_name == self.node_name else None
        if after is not None:
            self.local[key] = after
        if before != after:
            delta.local_changed = True
            self._needs_changed(((before, -1), (after, 1)))
        new_m = self._members(new) if new is not None else frozenset()
        self._move(key, old_m - new_m, new_m - old_m, delta)
        return delta

    def update_policy(self, key: str, pol: NetworkPolicy | None) -> PodDelta:
        """Recompile one policy (``None``: deleted); only its sets and the local pods of its namespace move."""
        heads = self.policies.heads
        old = heads.pop(key, None)
        if old is not None:
            self.by_ns[old.namespace].remove(old)
            if key in self.policy_sets:
                self._dematerialize(key)
        ns = old.namespace if old is not None else (pol.meta.namespace if pol is not None else "")
        if pol is not None:
            h = heads[key] = PolicyHead.of(pol)
            self.by_ns.setdefault(h.namespace, []).append(h)
        self.policies.forget_stale()
        changes = []
        for lk, lp in list(self.local.items()):
            if lp.namespace == ns:
                after = self._local_of(self.index.pods[lk])
                if after != lp:
                    changes += [(lp, -1), (after, 1)]
                    if after is None:
                        del self.local[lk]
                    else:
                        self.local[lk] = after
        self._needs_changed(changes)
        if key in self.need and key not in self.policy_sets:  # still needed: its new sets
            self._materialize(self.policies[key])
        self._cands.clear()
        return PodDelta(local_changed=True)

    def update_namespace(self, name: str, ns: Namespace | None) -> PodDelta:
        """A namespace's labels changed: re-match its pods against namespace selectors (local pods' own
        policies do not depend on namespace labels)."""
        delta = PodDelta()
        labels = ns.meta.labels if ns is not None else None
        if self.ns_labels.get(name) == labels:
            return delta
        keys = sorted(self.index.by_ns.get(name, ()))
        pods = self.index.pods
        old = {k: self._members(pods[k]) for k in keys}
        self.set_namespace(ns, name)
        for k in keys:
            new = self._members(pods[k])
            self._move(k, old[k] - new, new - old[k], delta)
        return delta

    def set_namespace(self, ns: Namespace | None, name: str) -> bool:
        """Record a namespace's labels; True when they changed (the caller moves memberships)."""
        labels = ns.meta.labels if ns is not None else None
        if self.ns_labels.get(name) == labels:
            return False
        if labels is None:
            self.ns_labels.pop(name, None)
        else:
            self.ns_labels[name] = labels
        self._cands.pop(name, None)
        self._ns_sel.clear()
        return True

    # ------------------------------------------------------------------------------- local pods
    def _local_of(self, pod: Pod) -> LocalPod | None:
        if pod.node_name != self.node_name:
            return None
        ips = tuple(ip for ip in pod.pod_ips if ip_family(ip) in self.families)
        if not ips:
            return None
        ing: list[str] = []
        eg: list[str] = []
        labels = pod.meta.labels
        for h in self.by_ns.get(pod.meta.namespace, ()):
            if h.pod_selector.matches(labels):
                if h.ingress:
                    ing.append(h.key)
                if h.egress:
                    eg.append(h.key)
        return LocalPod(pod.meta.key, pod.meta.namespace, pod.meta.name, ips, tuple(sorted(ing)), tuple(sorted(eg)))

    def _needs_changed(self, changes: Iterable[tuple[LocalPod | None, int]]) -> None:
        """Count local pods per policy; policies that stop being needed lose their sets, new ones get theirs."""
        touched: set[str] = set()
        for lp, sign in changes:
            if lp is not None:
                for k in set(lp.ingress + lp.egress):
                    self.need[k] += sign
                    touched.add(k)
        changed = False
        for k in sorted(touched):
            if self.need[k] <= 0:
                del self.need[k]
                if k in self.policy_sets:
                    self._dematerialize(k)
                    changed = True
            elif k not in self.policy_sets:
                self._materialize(self.policies[k])
                changed = True
        if changed:
            self._cands.clear()

    # ---------------------------------------------------------------------------------- set algebra
    def _namespaces(self, sel: LabelSelector) -> tuple[str, ...]:
        got = self._ns_sel.get(sel)
        if got is None:
            got = self._ns_sel[sel] = tuple(n for n, labels in self.ns_labels.items() if sel.matches(labels))
        return got

    def _peers(self, cp: CompiledPolicy, rule: Any) -> AbstractSet[str]:
        idx = self.index
        out: AbstractSet[str] = EMPTY
        for p in rule.pod_peers:
            if p.namespace_selector is None:
                got = [idx.select(cp.namespace, p.pod_selector)]
            else:
                got = [idx.select(n, p.pod_selector) for n in self._namespaces(p.namespace_selector)]
            for s in got:
                if s:
                    out = s if not out else out | s
        return out

    def _materialize(self, cp: CompiledPolicy) -> None:
        """Create the sets of a policy this node now needs, with their members (from the index)."""
        idx, key = self.index, cp.key
        names = self.policy_sets[key] = set()
        self.groups[key] = Counter()
        for s in static_sets(cp):
            self.sets[s.name] = s
            self.set_owner[s.name] = (key, None)
            names.add(s.name)
        for d in cp.directions():
            targets = idx.select(cp.namespace, cp.pod_selector)
            for f in cp.families:
                self.sets[cp.target_set(d, f)].entries.update(idx.addresses(targets, f))
            for rule in cp.rules(d):
                peers = self._peers(cp, rule) if rule.pod_peers else EMPTY
                if rule.pod_peers:
                    for f in cp.families:
                        self.sets[cp.peer_set(d, rule.index, f)].entries.update(idx.addresses(peers, f))
                if not rule.named_ports:
                    continue
                # named ports resolve on the destination: the targets (ingress), the peers or any pod (egress)
                anyone = d == EGRESS and (rule.all_peers or bool(rule.ipblocks))
                dest = targets if d == INGRESS else peers
                for np in rule.named_ports:
                    for num, keys in idx.named(np.name, np.protocol).items():
                        members = keys if anyone else keys & dest
                        if not members:
                            continue
                        g = NamedPortGroup(d, rule.index, np.index, np.protocol, num)
                        for f in cp.families:
                            ips = idx.addresses(members, f)
                            if ips:
                                self._new_group_set(cp, g, f).entries.update(ips)

    def _new_group_set(self, cp: CompiledPolicy, g: NamedPortGroup, family: int) -> SetContent:
        name = cp.named_port_set(g, family)
        s = self.sets[name] = SetContent(name, family)
        self.set_owner[name] = (cp.key, g)
        self.policy_sets[cp.key].add(name)
        self.groups[cp.key][g] += 1
        return s

    def _dematerialize(self, key: str) -> None:
        for name in self.policy_sets.pop(key, ()):
            self.sets.pop(name, None)
            self.set_owner.pop(name, None)
        self.groups.pop(key, None)

    # ----------------------------------------------------------------------------- memberships
    def _candidates(self, namespace: str) -> list[NsView]:
        got = self._cands.get(namespace)
        if got is None:
            labels = self.ns_labels.get(namespace)
            got = self._cands[namespace] = [
                ns_view(cp, namespace, labels) for k in sorted(self.policy_sets)
                if (cp := self.policies[k]).namespace == namespace or cp.may_select_from(namespace, labels)]
        return got

    def _members(self, pod: Pod) -> frozenset[Membership]:
        """The memberships ``pod`` has in the sets of the needed policies."""
        labels = pod.meta.labels
        return frozenset(m for v in self._candidates(pod.meta.namespace) if could_match(v, labels)
                         for m in view_memberships(v, pod))


    def _move(self, key: str, gone: AbstractSet[Membership], came: AbstractSet[Membership], delta: PodDelta) -> None:
        for m in came:
            s = self.sets.get(m.set_name)
            if s is None:
                if m.group is None:  # a set of a policy that is not needed: not kept
                    continue
                s = self._new_group_set(self.policies[m.policy], m.group, m.family)
                delta.groups_changed.add(m.policy)
            if m.ip not in s.entries:
                s.entries.add(m.ip)
                s.rendered = None
                delta.added.append(m)
        for m in gone:
            s = self.sets.get(m.set_name)
            if s is None or m.ip not in s.entries or self._still_member(key, m):
                continue
            s.entries.discard(m.ip)
            s.rendered = None
            delta.removed.append(m)
            if m.group is not None and not s.entries:  # a named-port set lives while some pod resolves it so
                del self.sets[m.set_name]
                del self.set_owner[m.set_name]
                self.policy_sets[m.policy].discard(m.set_name)
                gc = self.groups[m.policy]
                gc[m.group] -= 1
                if gc[m.group] <= 0:
                    del gc[m.group]
                    delta.groups_changed.add(m.policy)

    def _still_member(self, key: str, m: Membership) -> bool:
        """Does another pod with the same address (a finished pod's IP reused) keep ``m``?"""
        others = self.index.holders(m.ip)
        return any(m in self._members(self.index.pods[o]) for o in others if o != key)

    # ------------------------------------------------------------------------------------- queries
    def needed_policies(self) -> set[str]:
        """Policies that select at least one local pod (only these get chains and sets on this node)."""
        return set(self.need)

    def groups_of(self, key: str) -> frozenset[NamedPortGroup]:
        return frozenset(g for g, n in self.groups.get(key, Counter()).items() if n > 0)

    def sets_of(self, key: str) -> set[str]:
        """Names of the sets the rules of policy ``key`` reference (static sets + existing named-port sets)."""
        return set(self.policy_sets.get(key, ()))
