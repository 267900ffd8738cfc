"""Builders for the objects the network-policy tests use (JSON as the API server sends it -> model views)."""

from __future__ import annotations

from typing import Any

from kr_core.model import Namespace, NetworkPolicy, Node, Pod

PORTS = (80, 81)
PROTOCOLS = ("TCP", "UDP", "SCTP")


def ns(name: str, labels: dict[str, str] | None = None) -> Namespace:
    lab = {"kubernetes.io/metadata.name": name, **(labels or {})}
    return Namespace.from_json({"metadata": {"name": name, "labels": lab}})


def pod(name: str, namespace: str = "default", ip: str | list[str] = "10.244.0.5", node: str = "node-1",
        labels: dict[str, str] | None = None, ports: list[tuple[int, str, str]] | None = None,
        phase: str = "Running", host_network: bool = False) -> Pod:
    """``ports``: (number, protocol, name). Default: the e2e harness' serve-80/81-tcp/udp/sctp."""
    if ports is None:
        ports = [(p, proto, f"serve-{p}-{proto.lower()}") for p in PORTS for proto in PROTOCOLS]
    ips = [ip] if isinstance(ip, str) else ip
    status: dict[str, Any] = {"phase": phase}
    if ips and ips[0]:
        status["podIP"] = ips[0]
        status["podIPs"] = [{"ip": i} for i in ips]
    return Pod.from_json({
        "metadata": {"name": name, "namespace": namespace, "labels": labels if labels is not None else {"pod": name}},
        "spec": {"nodeName": node, "hostNetwork": host_network, "containers": [
            {"name": f"cont-{n}-{proto.lower()}", "ports": [{"containerPort": n, "protocol": proto, "name": pn}]}
            for n, proto, pn in ports]},
        "status": status,
    })


def policy(name: str, namespace: str = "default", spec: dict[str, Any] | None = None) -> NetworkPolicy:
    return NetworkPolicy.from_json({"metadata": {"name": name, "namespace": namespace}, "spec": spec or {}})


def node(name: str, ip: str, cidrs: list[str]) -> Node:
    return Node.from_json({"metadata": {"name": name}, "spec": {"podCIDRs": cidrs},
                           "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
