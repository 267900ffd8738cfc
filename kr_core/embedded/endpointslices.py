"""The EndpointSlice controller that runs inside the server: Service selector -> pods -> slices.

Like kube-controller-manager's, it puts every pod that matches the selector, has an IP and is not in
a terminal phase into slices (one set per address family and per resolved port mapping, at most
``MAX_ENDPOINTS`` endpoints each), with conditions ready (Ready=True and not terminating; always true
with ``publishNotReadyAddresses``), serving (Ready=True) and terminating (deletionTimestamp set).
Slices are named ``<service>-<hash>`` deterministically, so a reconcile is a diff by name.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import queue
import threading
import time
from typing import Any

from kr_core.embedded import errors
from kr_core.embedded.registry import Registry
from kr_core.embedded.resources import BY_KIND
from kr_core.embedded.selectors import labels_match, selector_from_map
from kr_core.embedded.store import Event, Store

log = logging.getLogger(__name__)

MAX_ENDPOINTS = 100
COALESCE = 0.02  # seconds
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
CONTROLLER_NAME = "endpointslice-controller.k8s.io"
ZONE_LABEL = "topology.kubernetes.io/zone"
SLICE = BY_KIND["EndpointSlice"]


def pod_ready(pod: dict[str, Any]) -> bool:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def pod_ips(pod: dict[str, Any]) -> list[str]:
    st = pod.get("status") or {}
    ips = [p.get("ip") for p in st.get("podIPs") or [] if p.get("ip")]
    if not ips and st.get("podIP"):
        ips = [st["podIP"]]
    return ips


def resolve_port(pod: dict[str, Any], target: Any, protocol: str) -> int | None:
    """A service targetPort for one pod: a number, or a named containerPort of that protocol."""
    if isinstance(target, int):
        return target
    if isinstance(target, str):
        if target.isdigit():
            return int(target)
        for c in (pod.get("spec") or {}).get("containers") or []:
            for p in c.get("ports") or []:
                if p.get("name") == target and p.get("protocol", "TCP") == protocol:
                    return p.get("containerPort")
    return None


def _family(ip: str) -> str:
    return "IPv4" if ipaddress.ip_address(ip).version == 4 else "IPv6"


class _View:
    """Managed slices by (namespace, service), pods by namespace and node zones: one scan of the store."""

    __slots__ = ("pods_by_ns", "slices", "zones")

    def __init__(self, slices: dict[tuple[str, str], dict[str, dict[str, Any]]],
                 pods_by_ns: dict[str, list[dict[str, Any]]], zones: dict[str, str | None]) -> None:
        self.slices, self.pods_by_ns, self.zones = slices, pods_by_ns, zones

    @classmethod
    def build(cls, store: Store) -> _View:
        slices: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        for s in store.iter_raw("EndpointSlice"):
            m = s["metadata"]
            labels = m.get("labels") or {}
            if labels.get(MANAGED_BY_LABEL) == CONTROLLER_NAME and labels.get(SERVICE_NAME_LABEL):
                slices.setdefault((m.get("namespace", ""), labels[SERVICE_NAME_LABEL]), {})[m["name"]] = s
        pods: dict[str, list[dict[str, Any]]] = {}
        for p in store.iter_raw("Pod"):
            pods.setdefault(p["metadata"].get("namespace", ""), []).append(p)
        zones = {n["metadata"]["name"]: ((n["metadata"].get("labels") or {}).get(ZONE_LABEL))
                 for n in store.iter_raw("Node")}
        return cls(slices, pods, zones)


class EndpointSliceController:
    def __init__(self, store: Store, registry: Registry) -> None:
        self.store = store
        self.registry = registry
        self._queue: queue.Queue[Event | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._idle = threading.Condition()
        self._pending = 0
        store.add_listener(self._on_event)

    # -- wiring ----------------------------------------------------------------------------

    def _on_event(self, ev: Event) -> None:
        if ev.kind in ("Service", "Pod", "Node") or (
            ev.kind == "EndpointSlice"
            and ((ev.obj.get("metadata") or {}).get("labels") or {}).get(MANAGED_BY_LABEL) == CONTROLLER_NAME
        ):
            with self._idle:
                self._pending += 1
            self._queue.put(ev)

    def start(self) -> None:
        for svc in self.store.iter_raw("Service"):
            self._queue.put(Event(0, "SYNC", "Service", svc["metadata"]["namespace"], svc["metadata"]["name"], svc))
            with self._idle:
                self._pending += 1
        self._thread = threading.Thread(target=self._run, name="kr-endpointslices", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Block until every event seen so far has been reconciled (for tests)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def _run(self) -> None:
        while True:
            ev = self._queue.get()
            if ev is None:
                return
            time.sleep(COALESCE)  # let a burst of changes pile up, then reconcile each service once
            batch = [ev]
            try:
                while len(batch) < 10000:
                    nxt = self._queue.get_nowait()
                    if nxt is None:
                        self._queue.put(None)
                        break
                    batch.append(nxt)
            except queue.Empty:
                pass
            try:
                dirty = self._dirty(batch)
                view = _View.build(self.store) if dirty else None  # one scan per batch, not per Service
                for key in dirty:
                    try:
                        self.reconcile(*key, view=view)
                    except Exception:
                        log.exception("endpointslice reconcile of %s/%s failed", *key)
            finally:
                with self._idle:
                    self._pending -= len(batch)
                    self._idle.notify_all()

    def _dirty(self, batch: list[Event]) -> set[tuple[str, str]]:
        keys: set[tuple[str, str]] = set()
        pod_events: list[Event] = []
        all_services = False
        for ev in batch:
            if ev.kind == "Service":
                keys.add((ev.namespace, ev.name))
            elif ev.kind == "EndpointSlice":
                svc = ((ev.obj.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL)
                if svc:
                    keys.add((ev.namespace, svc))
            elif ev.kind == "Pod":
                pod_events.append(ev)
            elif ev.kind == "Node":
                old = ((ev.old or {}).get("metadata") or {}).get("labels") or {}
                new = (ev.obj.get("metadata") or {}).get("labels") or {}
                if ev.type != "MODIFIED" or old.get(ZONE_LABEL) != new.get(ZONE_LABEL):
                    all_services = True
        if pod_events or all_services:
            services = list(self.store.iter_raw("Service"))
            for svc in services:
                m = svc["metadata"]
                if all_services:
                    keys.add((m["namespace"], m["name"]))
                    continue
                sel = (svc.get("spec") or {}).get("selector")
                if not sel:
                    continue
                reqs = selector_from_map(sel)
                for ev in pod_events:
                    if ev.namespace != m["namespace"]:
                        continue
                    labels = [(ev.obj.get("metadata") or {}).get("labels")]
                    if ev.old is not None:
                        labels.append((ev.old.get("metadata") or {}).get("labels"))
                    if any(labels_match(reqs, lb) for lb in labels):
                        keys.add((m["namespace"], m["name"]))
                        break
        return keys

    # -- reconcile -------------------------------------------------------------------------

    def desired(self, svc: dict[str, Any], view: _View | None = None) -> dict[str, dict[str, Any]]:
        """The slices ``svc`` should have, by name."""
        view = view or _View.build(self.store)
        spec = svc.get("spec") or {}
        meta = svc["metadata"]
        ns, name = meta["namespace"], meta["name"]
        families = list(spec.get("ipFamilies") or ["IPv4"])
        publish = bool(spec.get("publishNotReadyAddresses"))
        reqs = selector_from_map(spec["selector"])
        zones = view.zones
        groups: dict[tuple[str, str], tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
        pods = [p for p in view.pods_by_ns.get(ns, ()) if labels_match(reqs, p["metadata"].get("labels"))]
        pods.sort(key=lambda p: p["metadata"]["name"])
        for pod in pods:
            phase = (pod.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                continue
            ips = pod_ips(pod)
            if not ips:
                continue
            ports = []
            for sp in spec.get("ports") or []:
                proto = sp.get("protocol", "TCP")
                num = resolve_port(pod, sp.get("targetPort", sp.get("port")), proto)
                if num is None:
                    continue
                port: dict[str, Any] = {"name": sp.get("name", ""), "port": num, "protocol": proto}
                if sp.get("appProtocol"):
                    port["appProtocol"] = sp["appProtocol"]
                ports.append(port)
            ports_key = json.dumps(ports, sort_keys=True)
            terminating = bool(pod["metadata"].get("deletionTimestamp"))
            ready = pod_ready(pod)
            node = (pod.get("spec") or {}).get("nodeName")
            for fam in families:
                addrs = [ip for ip in ips if _family(ip) == fam]
                if not addrs:
                    continue
                ep: dict[str, Any] = {
                    "addresses": addrs[:1],
                    "conditions": {"ready": publish or (ready and not terminating),
                                   "serving": publish or ready, "terminating": terminating},
                    "targetRef": {"kind": "Pod", "namespace": ns, "name": pod["metadata"]["name"],
                                  "uid": pod["metadata"].get("uid", "")},
                }
                if node:
                    ep["nodeName"] = node
                    if zones.get(node):
                        ep["zone"] = zones[node]
                groups.setdefault((fam, ports_key), ([], ports))[0].append(ep)
        for fam in families:
            if not any(k[0] == fam for k in groups):
                groups[(fam, "[]")] = ([], [])
        out: dict[str, dict[str, Any]] = {}
        labels = {k: v for k, v in (meta.get("labels") or {}).items()
                  if k not in (SERVICE_NAME_LABEL, MANAGED_BY_LABEL)}
        labels[SERVICE_NAME_LABEL] = name
        labels[MANAGED_BY_LABEL] = CONTROLLER_NAME
        if spec.get("clusterIP") == "None":
            labels["service.kubernetes.io/headless"] = ""
        for (fam, ports_key), (eps, ports) in sorted(groups.items(), key=lambda kv: kv[0]):
            chunks = [eps[i:i + MAX_ENDPOINTS] for i in range(0, len(eps), MAX_ENDPOINTS)] or [[]]
            for idx, chunk in enumerate(chunks):
                h = hashlib.sha256(f"{fam}|{ports_key}|{idx}".encode()).hexdigest()[:5]
                slice_name = f"{name[:57]}-{h}"
                out[slice_name] = {
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {
                        "name": slice_name,
                        "namespace": ns,
                        "labels": dict(labels),
                        "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name,
                                             "uid": meta.get("uid", ""), "controller": True,
                                             "blockOwnerDeletion": True}],
                    },
                    "addressType": fam,
                    "endpoints": chunk,
                    "ports": ports,
                }
        return out

    def reconcile(self, ns: str, name: str, view: _View | None = None) -> None:
        """Bring the slices of Service ``ns/name`` to the desired state (under the store lock).

        ``view`` is a snapshot of slices, pods and node zones taken once for a whole batch; each Service's
        slices are written only by its own reconcile, so the snapshot is exact for them."""
        with self.store.lock():
            view = view or _View.build(self.store)
            svc = self.store.get("Service", ns, name)
            existing = view.slices.get((ns, name), {})
            spec = (svc or {}).get("spec") or {}
            want: dict[str, dict[str, Any]] = {}
            if svc is not None and spec.get("selector") and spec.get("type") != "ExternalName":
                want = self.desired(svc, view)
            for sname, obj in want.items():
                cur = existing.get(sname)
                try:
                    if cur is None:
                        self.registry.create(SLICE, ns, obj)
                    elif any(cur.get(k) != obj.get(k) for k in ("addressType", "endpoints", "ports")) or any(
                            cur["metadata"].get(k) != obj["metadata"].get(k) for k in ("labels", "ownerReferences")):
                        new = dict(cur)
                        new.update({k: obj[k] for k in ("addressType", "endpoints", "ports")})
                        new["metadata"] = {**cur["metadata"], "labels": obj["metadata"]["labels"],
                                           "ownerReferences": obj["metadata"]["ownerReferences"]}
                        self.registry.update(SLICE, ns, sname, new)
                except errors.ApiError as e:
                    log.warning("endpointslice %s/%s: %s", ns, sname, e.message)
            for sname in existing:
                if sname not in want:
                    try:
                        self.registry.delete(SLICE, ns, sname, force=True)
                    except errors.ApiError:
                        pass
