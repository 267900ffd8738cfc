"""The desired network-policy state of one node, built from the caches and kept up to date per pod.

:class:`Desired` holds the compiled policies, every set with its members, the named-port groups that
exist, and for each local pod the policies that select it per direction. :meth:`Desired.update_pod` moves
one pod's memberships and reports what changed, so a backend can tell a membership-only change (set
add/del) from one that changes rule text (a new named-port group, a local pod's policies, a policy that
starts or stops selecting a local pod).

Both network-policy backends (iptables + ipset, nftables) build their rules from this.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from kr_core.model import Namespace, NetworkPolicy, Pod

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

_PLACEHOLDER = {4: "0.0.0.1", 6: "::1"}


@functools.lru_cache(maxsize=16384)
def _static_names(cp: CompiledPolicy) -> frozenset[str]:
    return frozenset(s.name for s in static_sets(cp))


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
    """What one pod's change did: set members added/removed; whether rule text may have changed."""

    added: list[Membership] = field(default_factory=list)
    removed: list[Membership] = field(default_factory=list)
    groups_changed: set[str] = field(default_factory=set)  # policy keys whose named-port groups changed
    local_changed: bool = False  # a local pod appeared, went, changed IPs or policies

    @property
    def rules_changed(self) -> bool:
        return bool(self.groups_changed) or self.local_changed


class Desired:
    """Desired state for one node. Not thread-safe: owned by the plugin's worker."""

    def __init__(self, node_name: str, families: Iterable[int] = (4,), *,
                 on_problem: Callable[[str, str], None] | None = None) -> None:
        self.node_name = node_name
        self.families = tuple(sorted(set(families)))
        self.on_problem = on_problem or (lambda key, msg: None)
        self.policies: dict[str, CompiledPolicy] = {}
        self.sets: dict[str, SetContent] = {}
        self.refs: dict[str, Counter[str]] = {}
        self.groups: dict[str, Counter[NamedPortGroup]] = {}
        self.target_sets: dict[str, tuple[str, str]] = {}  # set name -> (policy key, direction)
        self.pod_members: dict[str, frozenset[Membership]] = {}
        self.local: dict[str, LocalPod] = {}
        self.ns_labels: dict[str, Mapping[str, str]] = {}
        self.by_ns: dict[str, list[CompiledPolicy]] = {}  # policies whose sets a pod of that namespace may be in
        self.cross: list[CompiledPolicy] = []  # ... plus these, for a pod of any namespace
        self._cands: dict[str, list[NsView]] = {}  # namespace -> policies that may select its pods
        self._sel_memo: dict[tuple[Any, Any], bool] = {}  # (selector, labels) -> matches, during build()
        self.pods: dict[str, Pod] = {}  # actionable pods by key
        self.pods_by_ns: dict[str, set[str]] = {}

    # ------------------------------------------------------------------------------------- full build
    def build(self, policies: Iterable[NetworkPolicy], pods: Iterable[Pod], namespaces: Iterable[Namespace]) -> None:
        """Rebuild everything (a full sync)."""
        self.__init__(self.node_name, self.families, on_problem=self.on_problem)  # type: ignore[misc]
        self.ns_labels = {ns.meta.name: ns.meta.labels for ns in namespaces}
        for pol in sorted(policies, key=lambda p: p.key):
            cp = compile_policy(pol, self.families)
            for msg in cp.problems:
                self.on_problem(cp.key, msg)
            self.policies[cp.key] = cp
            for s in static_sets(cp):
                self.sets.setdefault(s.name, s)
            for d in cp.directions():
                for f in cp.families:
                    self.target_sets[cp.target_set(d, f)] = (cp.key, d)
        for cp in self.policies.values():
            (self.cross if cp.cross_namespace else self.by_ns.setdefault(cp.namespace, [])).append(cp)
        memo: dict[tuple, list[Membership]] = {}
        for pod in pods:
            if not pod.actionable:
                continue
            self._remember(pod.key, pod)
            fams = tuple(sorted({ip_family(ip) for ip in pod.pod_ips}))
            mkey = (pod.meta.namespace, pod.meta.labels, pod.ports, fams)
            tmpl = memo.get(mkey)
            if tmpl is None:
                probe = replace(pod, pod_ips=tuple(_PLACEHOLDER[f] for f in fams))
                labels = pod.meta.labels
                tmpl = memo[mkey] = [m for v in self._candidates(pod.meta.namespace)
                                     if could_match(v, labels, self._sel_memo) for m in view_memberships(v, probe)]
            by_fam = {f: [ip for ip in pod.pod_ips if ip_family(ip) == f] for f in fams}
            members = frozenset(Membership(m.set_name, m.family, ip, m.policy, m.group)
                                for m in tmpl for ip in by_fam[m.family])
            self._add_members(pod.key, members)
            self._set_local(pod)
        self._sel_memo.clear()

    # ----------------------------------------------------------------------------------- per pod
    def _candidates(self, namespace: str) -> list[NsView]:
        got = self._cands.get(namespace)
        if got is None:
            labels = self.ns_labels.get(namespace)
            got = self._cands[namespace] = [ns_view(cp, namespace, labels) for cp in (
                *self.by_ns.get(namespace, ()), *(cp for cp in self.cross if cp.may_select_from(namespace, labels)))]
        return got

    def members_of(self, pod: Pod) -> frozenset[Membership]:
        labels = pod.meta.labels
        return frozenset(m for v in self._candidates(pod.meta.namespace) if could_match(v, labels)
                         for m in view_memberships(v, pod))

    def _remember(self, key: str, pod: Pod | None) -> None:
        old = self.pods.pop(key, None)
        if old is not None:
            self.pods_by_ns.get(old.meta.namespace, set()).discard(key)
        if pod is not None and pod.actionable:
            self.pods[key] = pod
            self.pods_by_ns.setdefault(pod.meta.namespace, set()).add(key)

    def update_pod(self, key: str, pod: Pod | None) -> PodDelta:
        """Move pod ``key`` to its new state (``None``: deleted) and report the difference."""
        self._remember(key, pod)
        old = self.pod_members.get(key, frozenset())
        new = self.members_of(pod) if pod is not None and pod.actionable else frozenset()
        delta = PodDelta()
        gone, came = old - new, new - old
        delta.removed = self._remove_members(key, gone, delta)
        self.pod_members.pop(key, None)
        delta.added = self._add_members(key, new, delta, only=came)
        before = self.local.get(key)
        self.local.pop(key, None)
        if pod is not None:
            self._set_local(pod)
        delta.local_changed = before != self.local.get(key)
        return delta

    def update_policy(self, key: str, pol: NetworkPolicy | None) -> PodDelta:
        """Recompile one policy (``None``: deleted) and move only its memberships (no full rebuild)."""
        delta = PodDelta(local_changed=True)
        old = self.policies.pop(key, None)
        if old is not None:
            for pk, members in list(self.pod_members.items()):
                mine = frozenset(m for m in members if m.policy == key)
                if mine:
                    delta.removed += self._remove_members(pk, mine, delta)
                    self.pod_members[pk] = members - mine
            for s in static_sets(old):
                self.sets.pop(s.name, None)
                self.refs.pop(s.name, None)
            self.groups.pop(key, None)
            self.target_sets = {n: t for n, t in self.target_sets.items() if t[0] != key}
            (self.cross if old.cross_namespace else self.by_ns.get(old.namespace, [])).remove(old)
        if pol is not None:
            cp = compile_policy(pol, self.families)
            for msg in cp.problems:
                self.on_problem(cp.key, msg)
            self.policies[key] = cp
            (self.cross if cp.cross_namespace else self.by_ns.setdefault(cp.namespace, [])).append(cp)
            for s in static_sets(cp):
                self.sets.setdefault(s.name, s)
            for d in cp.directions():
                for f in cp.families:
                    self.target_sets[cp.target_set(d, f)] = (cp.key, d)
            for ns, keys in self.pods_by_ns.items():
                labels = self.ns_labels.get(ns)
                if not keys or not cp.may_select_from(ns, labels):
                    continue
                v = ns_view(cp, ns, labels)
                for pk in keys:
                    new = frozenset(view_memberships(v, self.pods[pk]))
                    if new:
                        delta.added += self._add_members(pk, self.pod_members.get(pk, frozenset()) | new, delta,
                                                         only=new)
        self._cands.clear()
        for pk in [k for k, p in self.pods.items() if p.node_name == self.node_name]:
            self.local.pop(pk, None)
            self._set_local(self.pods[pk])
        return delta

    def update_namespace(self, name: str, ns: Namespace | None) -> PodDelta:
        """A namespace's labels changed: re-match its pods (namespace selectors); returns the combined delta."""
        total = PodDelta()
        if not self.set_namespace(ns, name):
            return total
        for pk in sorted(self.pods_by_ns.get(name, ())):
            d = self.update_pod(pk, self.pods[pk])
            total.added += d.added
            total.removed += d.removed
            total.groups_changed |= d.groups_changed
            total.local_changed |= d.local_changed
        return total

    def set_namespace(self, ns: Namespace | None, name: str) -> bool:
        """Record a namespace's labels; True when they changed (callers then rebuild)."""
        labels = ns.meta.labels if ns is not None else None
        if self.ns_labels.get(name) == labels:
            return False
        if labels is None:
            self.ns_labels.pop(name, None)
        else:
            self.ns_labels[name] = labels
        self._cands.pop(name, None)
        return True

    # ---------------------------------------------------------------------------------- internals
    def _add_members(self, key: str, members: frozenset[Membership], delta: PodDelta | None = None,
                     only: frozenset[Membership] | None = None) -> list[Membership]:
        self.pod_members[key] = members
        added = []
        for m in members if only is None else only:
            s = self.sets.get(m.set_name)
            if s is None:
                s = self.sets[m.set_name] = SetContent(m.set_name, m.family)
            refs = self.refs.setdefault(m.set_name, Counter())
            refs[m.ip] += 1
            if refs[m.ip] == 1:
                s.entries.add(m.ip)
                s.rendered = None
                added.append(m)
            if m.group is not None:
                gc = self.groups.setdefault(m.policy, Counter())
                gc[m.group] += 1
                if gc[m.group] == 1 and delta is not None:
                    delta.groups_changed.add(m.policy)
        return added

    def _remove_members(self, key: str, members: frozenset[Membership], delta: PodDelta) -> list[Membership]:
        removed = []
        for m in members:
            refs = self.refs.get(m.set_name)
            if refs is None:
                continue
            refs[m.ip] -= 1
            if refs[m.ip] <= 0:
                del refs[m.ip]
                s = self.sets.get(m.set_name)
                if s is not None:
                    s.entries.discard(m.ip)
                    s.rendered = None
                removed.append(m)
            if m.group is not None:
                gc = self.groups.get(m.policy)
                if gc is not None:
                    gc[m.group] -= 1
                    if gc[m.group] <= 0:
                        del gc[m.group]
                        delta.groups_changed.add(m.policy)
                if not refs:  # a named-port set lives while some pod resolves the port that way
                    self.sets.pop(m.set_name, None)
                    self.refs.pop(m.set_name, None)
        return removed

    def _set_local(self, pod: Pod) -> None:
        if pod.node_name != self.node_name or not pod.actionable:
            return
        ips = tuple(ip for ip in pod.pod_ips if ip_family(ip) in self.families)
        if not ips:
            return
        pols: dict[str, set[str]] = {INGRESS: set(), EGRESS: set()}
        for m in self.pod_members.get(pod.key, ()):
            t = self.target_sets.get(m.set_name)
            if t is not None:
                pols[t[1]].add(t[0])
        self.local[pod.key] = LocalPod(pod.key, pod.meta.namespace, pod.meta.name, ips,
                                       tuple(sorted(pols[INGRESS])), tuple(sorted(pols[EGRESS])))

    # ------------------------------------------------------------------------------------- queries
    def needed_policies(self) -> set[str]:
        """Policies that select at least one local pod (only these get chains on this node)."""
        return {k for lp in self.local.values() for k in (*lp.ingress, *lp.egress)}

    def groups_of(self, key: str) -> frozenset[NamedPortGroup]:
        return frozenset(g for g, n in self.groups.get(key, Counter()).items() if n > 0)

    def sets_of(self, key: str) -> set[str]:
        """Names of the sets the rules of policy ``key`` reference (static sets + existing named-port sets)."""
        cp = self.policies[key]
        names = set(_static_names(cp))
        for g in self.groups_of(key):
            names.update(cp.named_port_set(g, f) for f in cp.families)
        return {n for n in names if n in self.sets}
