"""Object factories for the proxy tests (the JSON the API server sends)."""

from __future__ import annotations

from typing import Any

from kr_core.model import EndpointSlice, Node, Service
from kr_plugins.ipvs_proxy.model import NodeInfo, Options

NODE = NodeInfo(name="node-1", ips={4: "10.0.0.1"}, local_ips=("10.0.0.1",), pod_cidrs=("10.244.1.0/24",))
NODE_DS = NodeInfo(name="node-1", ips={4: "10.0.0.1", 6: "2001:db8::1"}, local_ips=("10.0.0.1", "2001:db8::1"))
OPTS = Options()
OPTS_DS = Options(families=(4, 6))


def svc(name: str = "svc-1", ns: str = "default", *, cluster_ip: str | list[str] = "10.0.0.1",
        ports: list[dict[str, Any]] | None = None, annotations: dict[str, str] | None = None,
        labels: dict[str, str] | None = None, status: dict[str, Any] | None = None, **spec: Any) -> Service:
    ips = cluster_ip if isinstance(cluster_ip, list) else [cluster_ip]
    return Service.from_json({
        "metadata": {"name": name, "namespace": ns, "annotations": annotations or {}, "labels": labels or {}},
        "spec": {"clusterIP": ips[0], "clusterIPs": ips,
                 "ports": ports if ports is not None else [{"name": "port-1", "port": 8080, "protocol": "TCP"}],
                 **spec},
        "status": status or {},
    })


def ep(addr: str, node: str = "node-1", *, ready: bool = True, serving: bool | None = None,
       terminating: bool = False, zone: str = "", hints: list[str] | None = None) -> dict[str, Any]:
    cond: dict[str, Any] = {"ready": ready, "terminating": terminating}
    if serving is not None:
        cond["serving"] = serving
    e: dict[str, Any] = {"addresses": [addr], "conditions": cond, "nodeName": node}
    if zone:
        e["zone"] = zone
    if hints is not None:
        e["hints"] = {"forZones": [{"name": z} for z in hints]}
    return e


def eps(service: str, endpoints: list[dict[str, Any]], *, ns: str = "default", name: str = "",
        ports: list[dict[str, Any]] | None = None, address_type: str = "IPv4") -> EndpointSlice:
    return EndpointSlice.from_json({
        "metadata": {"name": name or f"{service}-{address_type.lower()}", "namespace": ns,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": address_type, "endpoints": endpoints,
        "ports": ports if ports is not None else [{"name": "port-1", "port": 80, "protocol": "TCP"}],
    })


def node(name: str = "node-1", ip: str = "10.0.0.1", pod_cidr: str = "10.244.1.0/24", ip6: str = "",
         zone: str = "") -> Node:
    addrs = [{"type": "InternalIP", "address": ip}] + ([{"type": "InternalIP", "address": ip6}] if ip6 else [])
    return Node.from_json({"metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone} if zone else {}},
                           "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
                           "status": {"addresses": addrs}})
