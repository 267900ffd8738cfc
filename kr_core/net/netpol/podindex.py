"""Actionable pods indexed so that a label selector is evaluated by set algebra, not pod by pod.

A policy's set holds the pods its selectors match. Matching every pod against every selector costs
pods x selectors Python calls; with the index a ``matchLabels`` term is one dict lookup and an
intersection of key sets (done in C), ``In``/``Exists`` are unions, ``NotIn``/``DoesNotExist``
differences. Named ports are indexed too: (port name, protocol) -> number -> pods resolving it so.

The index holds only actionable pods with an address of one of the node's families, and their addresses
per family. Results returned by :meth:`PodIndex.select` may be the index's own sets: callers must not
mutate them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from typing import Any

from kr_core.model import FINISHED_PHASES, LabelSelector, Pod

EMPTY: frozenset[str] = frozenset()


def family_of(ip: str) -> int:
    return 6 if ":" in ip else 4


class PodIndex:
    """Pods by key, by namespace, by label and by named port, with their addresses per family."""

    def __init__(self, families: Iterable[int], node: str | None = None) -> None:
        self.families = tuple(families)
        self.node = node
        self.pods: dict[str, Pod] = {}
        self.local: set[str] = set()  # pods on ``node``
        self._ids: dict[int, str] = {}  # id(pod object) -> key, for the pods held (so ids are stable)
        self.ips: dict[int, dict[str, tuple[str, ...]]] = {f: {} for f in self.families}
        self.by_ns: dict[str, set[str]] = {}
        self.by_label: dict[str, dict[tuple[str, str], set[str]]] = {}  # ns -> (key, value) -> pods
        self.by_label_key: dict[str, dict[str, set[str]]] = {}  # ns -> label key -> pods
        self.by_port: dict[tuple[str, str], dict[int, set[str]]] = {}  # (name, protocol) -> number -> pods
        self.ip_owner: dict[str, str] = {}  # address -> the pod that has it
        self.ip_shared: dict[str, set[str]] = {}  # address -> every pod, for an address several pods claim

    def accepts(self, pod: Pod) -> bool:
        """Actionable, with at least one address of the node's families."""
        if not pod.actionable:
            return False
        ips = pod.pod_ips
        if len(ips) == 1 and len(self.families) == 1:
            return (":" in ips[0]) == (self.families[0] == 6)
        return any(family_of(ip) in self.families for ip in ips)

    # ------------------------------------------------------------------------------------ changes
    def add(self, key: str, pod: Pod) -> None:
        """Index ``pod`` (the caller checked :meth:`accepts`; a pod already present is replaced)."""
        if key in self.pods:
            self.remove(key)
        self.pods[key] = pod
        self._ids[id(pod)] = key
        if pod.node_name == self.node:
            self.local.add(key)
        ns = pod.meta.namespace
        by_ns = self.by_ns.get(ns)
        if by_ns is None:
            by_ns = self.by_ns[ns] = set()
            self.by_label[ns] = {}
            self.by_label_key[ns] = {}
        by_ns.add(key)
        bl, bk = self.by_label[ns], self.by_label_key[ns]
        for kv in pod.meta.labels.items():
            s = bl.get(kv)
            if s is None:
                bl[kv] = {key}
            else:
                s.add(key)
            s = bk.get(kv[0])
            if s is None:
                bk[kv[0]] = {key}
            else:
                s.add(key)
        if pod.ports:
            seen: set[tuple[str, str]] = set()
            for cp in pod.ports:
                if not cp.name:
                    continue
                np = (cp.name, (cp.protocol or "TCP").upper())
                if np in seen:  # the first container port of that name and protocol wins
                    continue
                seen.add(np)
                self.by_port.setdefault(np, {}).setdefault(cp.container_port, set()).add(key)
        fams = self.families
        if len(fams) == 1 and len(pod.pod_ips) == 1:
            ip = pod.pod_ips[0]
            self.ips[fams[0]][key] = (ip,) if family_of(ip) == fams[0] else ()
        else:
            for f in fams:
                self.ips[f][key] = tuple(ip for ip in pod.pod_ips if family_of(ip) == f)
        self._claim(key, pod.pod_ips)

    def load(self, pods: Iterable[Pod]) -> None:
        """Index ``pods`` into this empty index in one pass (the full build).

        Pods sharing one label map (label maps are shared instances, see ``kr_core.model``) and one ports
        tuple are grouped first, so the label and named-port work is done once per distinct map. The
        per-pod loop is the cold full sync's largest Python cost: :meth:`accepts` and the key are inlined."""
        assert not self.pods, "load() fills an empty index"
        fams = self.families
        single = fams[0] if len(fams) == 1 else None
        single_v6 = single == 6
        ips_single = self.ips[single] if single is not None else None
        pods_d, owner, ids, node, local = self.pods, self.ip_owner, self._ids, self.node, self.local
        by_labels: dict[tuple[str, int], tuple[Any, list[str]]] = {}
        by_ports: dict[int, tuple[Any, list[str]]] = {}
        for pod in pods:
            pips = pod.pod_ips
            if not pips or pod.host_network or pod.phase in FINISHED_PHASES:  # Pod.actionable, inlined
                continue
            one = len(pips) == 1
            if one and ips_single is not None:
                if (":" in pips[0]) != single_v6:
                    continue
            elif not any(family_of(ip) in fams for ip in pips):
                continue
            meta = pod.meta
            ns = meta.namespace
            key = f"{ns}/{meta.name}"
            if key in pods_d:  # (a duplicate in the input: the later one wins, the slow way)
                self.add(key, pod)
                continue
            pods_d[key] = pod
            ids[id(pod)] = key
            if pod.node_name == node:
                local.add(key)
            labels = meta.labels
            g = by_labels.get((ns, id(labels)))
            if g is None:
                by_labels[(ns, id(labels))] = (labels, [key])
            else:
                g[1].append(key)
            ports = pod.ports
            if ports:
                g = by_ports.get(id(ports))
                if g is None:
                    by_ports[id(ports)] = (ports, [key])
                else:
                    g[1].append(key)
            if one and ips_single is not None:
                ips_single[key] = pips
                if pips[0] in owner:
                    self._claim(key, pips)
                else:
                    owner[pips[0]] = key
            else:
                for f in fams:
                    self.ips[f][key] = tuple(ip for ip in pips if family_of(ip) == f)
                self._claim(key, pips)
        for (ns, _), (labels, members) in by_labels.items():
            by_ns = self.by_ns.get(ns)
            if by_ns is None:
                by_ns = self.by_ns[ns] = set()
                self.by_label[ns] = {}
                self.by_label_key[ns] = {}
            by_ns.update(members)
            bl, bk = self.by_label[ns], self.by_label_key[ns]
            for kv in labels.items():
                bl.setdefault(kv, set()).update(members)
                bk.setdefault(kv[0], set()).update(members)
        for ports, members in by_ports.values():
            seen: set[tuple[str, str]] = set()
            for cp in ports:
                np = (cp.name, (cp.protocol or "TCP").upper())
                if cp.name and np not in seen:
                    seen.add(np)
                    self.by_port.setdefault(np, {}).setdefault(cp.container_port, set()).update(members)

    def resync(self, pods: Iterable[Pod]) -> None:
        """Make the index hold exactly the acceptable ``pods`` (a full sync's pass over the cache).

        Pod objects are immutable and a changed pod is a new object, so a pod already held as this very
        object is kept as indexed (one dict lookup); the others are (re)indexed, and pods gone removed."""
        if not self.pods:
            self.load(pods)
            return
        if not isinstance(pods, (list, tuple)):
            pods = list(pods)
        ids, held = self._ids, self.pods
        # an id in ``ids`` is that of a pod object the index holds (so alive: no other object has its id);
        # a cache lists each object once
        kept = 0
        fresh: list[Pod] = []
        for pod in pods:
            if id(pod) in ids:
                kept += 1
            else:
                fresh.append(pod)
        if kept < len(held):  # some held pods are gone or replaced
            still = {ids[i] for i in map(id, pods) if i in ids}
            for k in held.keys() - still:
                self.remove(k)
        for pod in fresh:
            if self.accepts(pod):
                self.add(pod.meta.key, pod)

    def _claim(self, key: str, ips: Iterable[str]) -> None:
        for ip in ips:
            other = self.ip_owner.setdefault(ip, key)
            if other != key:
                self.ip_shared.setdefault(ip, {other}).add(key)

    def holders(self, ip: str) -> AbstractSet[str]:
        """The pods that have address ``ip``."""
        shared = self.ip_shared.get(ip)
        if shared is not None:
            return shared
        owner = self.ip_owner.get(ip)
        return {owner} if owner is not None else EMPTY

    def remove(self, key: str) -> Pod | None:
        pod = self.pods.pop(key, None)
        if pod is None:
            return None
        self._ids.pop(id(pod), None)
        self.local.discard(key)
        ns = pod.meta.namespace
        self.by_ns[ns].discard(key)
        bl, bk = self.by_label[ns], self.by_label_key[ns]
        for kv in pod.meta.labels.items():
            _discard(bl, kv, key)
            _discard(bk, kv[0], key)
        for cp in pod.ports:
            if cp.name:
                nums = self.by_port.get((cp.name, (cp.protocol or "TCP").upper()))
                if nums is not None:
                    _discard(nums, cp.container_port, key)
        for f in self.families:
            self.ips[f].pop(key, None)
        for ip in pod.pod_ips:
            shared = self.ip_shared.get(ip)
            if shared is not None:
                shared.discard(key)
                self.ip_owner[ip] = next(iter(shared))
                if len(shared) == 1:
                    del self.ip_shared[ip]
            elif self.ip_owner.get(ip) == key:
                del self.ip_owner[ip]
        return pod

    # ------------------------------------------------------------------------------------ queries
    def select(self, ns: str, sel: LabelSelector | None) -> AbstractSet[str]:
        """Keys of the pods of ``ns`` that ``sel`` selects (``None`` or empty: all of them)."""
        everyone = self.by_ns.get(ns)
        if not everyone:
            return EMPTY
        if sel is None or (not sel.match_labels and not sel.match_expressions):
            return everyone
        bl = self.by_label[ns]
        out: AbstractSet[str] | None = None
        for kv in sel.match_labels.items():
            s = bl.get(kv)
            if not s:
                return EMPTY
            out = s if out is None else out & s
            if not out:
                return EMPTY
        for req in sel.match_expressions:
            op = req.operator
            if op == "In":
                s = _union(bl.get((req.key, v)) for v in req.values)
            elif op == "NotIn":
                s = everyone - _union(bl.get((req.key, v)) for v in req.values)
            elif op == "Exists":
                s = self.by_label_key[ns].get(req.key) or EMPTY
            elif op == "DoesNotExist":
                s = everyone - (self.by_label_key[ns].get(req.key) or EMPTY)
            else:  # the API server rejects other operators; match nothing rather than everything
                return EMPTY
            out = s if out is None else out & s
            if not out:
                return EMPTY
        return everyone if out is None else out

    def named(self, name: str, protocol: str) -> Mapping[int, set[str]]:
        """Port number -> pods whose first container port called ``name`` with ``protocol`` has that number."""
        return self.by_port.get((name, protocol), {})

    def addresses(self, keys: Iterable[str], family: int) -> set[str]:
        ips = self.ips[family]
        return {ip for k in keys for ip in ips[k]}


def _discard(d: dict, k: object, key: str) -> None:
    s = d.get(k)
    if s is not None:
        s.discard(key)
        if not s:
            del d[k]


def _union(sets: Iterable[set[str] | None]) -> AbstractSet[str]:
    out: set[str] = set()
    for s in sets:
        if s:
            out |= s
    return out
