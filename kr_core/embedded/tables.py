"""Server-side printing: ``Table`` responses for kubectl (``Accept: ...;as=Table;...``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kr_core.embedded.resources import Resource

Column = tuple[str, str, int]  # (name, type, priority); priority 1 = only with -o wide


def wants_table(accept: str) -> bool:
    return "as=Table" in accept


def age(ts: str | None) -> str:
    if not ts:
        return "<unknown>"
    try:
        t = datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return "<unknown>"
    s = max(0, int((datetime.now(UTC) - t).total_seconds()))
    if s < 120:
        return f"{s}s"
    if s < 3600 * 3:
        return f"{s // 60}m"
    if s < 86400 * 2:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def _selector(sel: dict[str, Any] | None) -> str:
    if not sel:
        return "<none>"
    parts = [f"{k}={v}" for k, v in (sel.get("matchLabels") or {}).items()]
    for e in sel.get("matchExpressions") or []:
        parts.append(f"{e.get('key')} {e.get('operator', '').lower()} ({','.join(e.get('values') or [])})")
    return ",".join(parts) or "<none>"


def _pod(o: dict[str, Any]) -> list[Any]:
    spec, st = o.get("spec") or {}, o.get("status") or {}
    statuses = st.get("containerStatuses") or []
    total = len(spec.get("containers") or [])
    ready = sum(1 for c in statuses if c.get("ready"))
    restarts = sum(int(c.get("restartCount") or 0) for c in statuses)
    phase = st.get("reason") or st.get("phase") or "Pending"
    if (o.get("metadata") or {}).get("deletionTimestamp"):
        phase = "Terminating"
    return [f"{ready}/{total}", phase, restarts, age(o["metadata"].get("creationTimestamp")),
            st.get("podIP") or "<none>", spec.get("nodeName") or "<none>", st.get("nominatedNodeName") or "<none>",
            "<none>"]


def _svc(o: dict[str, Any]) -> list[Any]:
    spec = o.get("spec") or {}
    ports = []
    for p in spec.get("ports") or []:
        s = f"{p.get('port')}"
        if p.get("nodePort"):
            s += f":{p['nodePort']}"
        ports.append(f"{s}/{p.get('protocol', 'TCP')}")
    ingress = ((o.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    ext = [i.get("ip") or i.get("hostname") for i in ingress] + list(spec.get("externalIPs") or [])
    if spec.get("type") == "ExternalName":
        ext = [spec.get("externalName")]
    external = ",".join(e for e in ext if e) or ("<pending>" if spec.get("type") == "LoadBalancer" else "<none>")
    sel = spec.get("selector")
    return [spec.get("type", "ClusterIP"), spec.get("clusterIP") or "<none>", external,
            ",".join(ports) or "<none>", age(o["metadata"].get("creationTimestamp")),
            ",".join(f"{k}={v}" for k, v in sel.items()) if sel else "<none>"]


def _node(o: dict[str, Any]) -> list[Any]:
    st = o.get("status") or {}
    ready = next((c for c in st.get("conditions") or [] if c.get("type") == "Ready"), None)
    status = "Ready" if ready and ready.get("status") == "True" else "NotReady" if ready else "Unknown"
    if (o.get("spec") or {}).get("unschedulable"):
        status += ",SchedulingDisabled"
    labels = (o.get("metadata") or {}).get("labels") or {}
    roles = ",".join(sorted(k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/"))) or "<none>"
    info = st.get("nodeInfo") or {}
    addrs = {a.get("type"): a.get("address") for a in st.get("addresses") or []}
    return [status, roles, age(o["metadata"].get("creationTimestamp")), info.get("kubeletVersion") or "",
            addrs.get("InternalIP") or "<none>", addrs.get("ExternalIP") or "<none>", info.get("osImage") or "<unknown>",
            info.get("kernelVersion") or "<unknown>", info.get("containerRuntimeVersion") or "<unknown>"]


def _eps(o: dict[str, Any]) -> list[Any]:
    ports = ",".join(str(p.get("port")) for p in o.get("ports") or []) or "<unset>"
    addrs = [a for e in o.get("endpoints") or [] for a in e.get("addresses") or []]
    shown = ",".join(addrs[:3]) + (f" + {len(addrs) - 3} more..." if len(addrs) > 3 else "")
    return [o.get("addressType", ""), ports, shown or "<unset>", age(o["metadata"].get("creationTimestamp"))]


def _ns(o: dict[str, Any]) -> list[Any]:
    return [(o.get("status") or {}).get("phase", "Active"), age(o["metadata"].get("creationTimestamp"))]


def _netpol(o: dict[str, Any]) -> list[Any]:
    return [_selector((o.get("spec") or {}).get("podSelector")), age(o["metadata"].get("creationTimestamp"))]


COLUMNS: dict[str, tuple[list[Column], Any]] = {
    "Pod": ([("Ready", "string", 0), ("Status", "string", 0), ("Restarts", "string", 0), ("Age", "string", 0),
             ("IP", "string", 1), ("Node", "string", 1), ("Nominated Node", "string", 1),
             ("Readiness Gates", "string", 1)], _pod),
    "Service": ([("Type", "string", 0), ("Cluster-IP", "string", 0), ("External-IP", "string", 0),
                 ("Port(s)", "string", 0), ("Age", "string", 0), ("Selector", "string", 1)], _svc),
    "Node": ([("Status", "string", 0), ("Roles", "string", 0), ("Age", "string", 0), ("Version", "string", 0),
              ("Internal-IP", "string", 1), ("External-IP", "string", 1), ("OS-Image", "string", 1),
              ("Kernel-Version", "string", 1), ("Container-Runtime", "string", 1)], _node),
    "EndpointSlice": ([("AddressType", "string", 0), ("Ports", "string", 0), ("Endpoints", "string", 0),
                       ("Age", "string", 0)], _eps),
    "Namespace": ([("Status", "string", 0), ("Age", "string", 0)], _ns),
    "NetworkPolicy": ([("Pod-Selector", "string", 0), ("Age", "string", 0)], _netpol),
}


def to_table(res: Resource, body: dict[str, Any], headers: bool = True) -> dict[str, Any]:
    """Render an object or a list as a meta.k8s.io/v1 Table (rows carry PartialObjectMetadata)."""
    if body.get("kind") == "Status":
        return body
    cols, cells = COLUMNS[res.kind]
    items = body.get("items") if body.get("kind", "").endswith("List") else [body]
    rows = []
    for o in items or []:
        rows.append({
            "cells": [o["metadata"]["name"], *cells(o)[: len(cols)]],
            "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]},
        })
    table: dict[str, Any] = {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {k: v for k, v in (body.get("metadata") or {}).items()
                     if k in ("resourceVersion", "continue", "remainingItemCount")},
        "rows": rows,
    }
    if headers:
        table["columnDefinitions"] = [
            {"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a "
             "namespace.", "priority": 0},
            *({"name": n, "type": t, "format": "", "description": n, "priority": p} for n, t, p in cols),
        ]
    else:
        table["columnDefinitions"] = []
    return table
