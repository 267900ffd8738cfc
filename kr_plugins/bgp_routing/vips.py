"""Which Service VIPs this node advertises (kube-router's ``ecmp_vip.go``, AC-R1).

Every node advertises the VIPs itself (ECMP upstream) as /32 or /128 with next hop = its own IP of the VIP's
family. Pure: a Service, its EndpointSlices, this node and the flags in, the VIPs to advertise and to withdraw
out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from kr_core.model import EndpointSlice, Service
from kr_core.net.svcip import Validator

ANN_ADV_CLUSTER = "kube-router.io/service.advertise.clusterip"
ANN_ADV_EXTERNAL = "kube-router.io/service.advertise.externalip"
ANN_ADV_LB = "kube-router.io/service.advertise.loadbalancerip"
ANN_LOCAL = "kube-router.io/service.local"
ANN_SKIP_LB = "kube-router.io/service.skiplbips"
LEADER_ANNOTATION = "control-plane.alpha.kubernetes.io/leader"


@dataclass(frozen=True)
class AdvertiseFlags:
    cluster_ip: bool = False
    external_ip: bool = False
    loadbalancer_ip: bool = False


@dataclass(frozen=True)
class VipDecision:
    """VIPs of one Service: ``advertise`` and ``withdraw`` (addresses, no prefix length)."""

    advertise: frozenset[str] = frozenset()
    withdraw: frozenset[str] = frozenset()
    refused: tuple[tuple[str, str], ...] = ()  # (ip, reason) dropped by strict validation


def _parse_bool(value: str) -> bool:
    """Go's strconv.ParseBool; anything else is false (as kube-router)."""
    return value.strip() in ("1", "t", "T", "TRUE", "true", "True")


def _opt(svc: Service, key: str, default: bool) -> bool:
    v = svc.meta.annotations.get(key)
    return default if v is None else _parse_bool(v)


def has_local_endpoint(slices: Iterable[EndpointSlice], node_name: str, node_ips: Iterable[str]) -> bool:
    """An endpoint (ready or serving) on this node: ``nodeName`` matches, or without one, its address is a node IP."""
    ips = set(node_ips)
    for sl in slices:
        if LEADER_ANNOTATION in sl.meta.annotations:
            continue
        for ep in sl.endpoints:
            if not (ep.ready or ep.serving):
                continue
            if ep.node_name:
                if ep.node_name == node_name:
                    return True
            elif any(a in ips for a in ep.addresses):
                return True
    return False


def _valid(ips: Iterable[str]) -> list[str]:
    out = []
    for ip in ips:
        try:
            out.append(str(ipaddress.ip_address(ip)))
        except ValueError:
            continue
    return out


def service_vips(svc: Service, slices: Iterable[EndpointSlice], node_name: str, node_ips: Iterable[str],
                 flags: AdvertiseFlags, validator: Validator | None = None,
                 families: Iterable[int] = (4,)) -> VipDecision:
    """The matrix of AC-R1 for one Service."""
    fam = set(families)
    # kube-router reads VIPs only from ClusterIP/NodePort/LoadBalancer Services with a cluster IP, and LB
    # ingress IPs only from type LoadBalancer (a status left on a Service changed to NodePort is ignored)
    if svc.type not in ("ClusterIP", "NodePort", "LoadBalancer") or svc.headless:
        return VipDecision()
    local = has_local_endpoint(slices, node_name, node_ips)
    adv: set[str] = set()
    wd: set[str] = set()
    refused: list[tuple[str, str]] = []

    def put(ips: Iterable[str], wanted: bool, keep: bool) -> None:
        for ip in ips:
            if ipaddress.ip_address(ip).version not in fam:
                continue
            if wanted and keep:
                adv.add(ip)
            else:
                wd.add(ip)

    itp_local = svc.internal_traffic_policy == "Local"
    put(_valid(svc.cluster_ips), _opt(svc, ANN_ADV_CLUSTER, flags.cluster_ip), local or not itp_local)
    etp_local = svc.external_traffic_policy == "Local" or svc.meta.annotations.get(ANN_LOCAL) == "true"
    ext = _valid(svc.external_ips)
    if validator is not None:
        ext, bad = validator.filter_external_ips(ext)
        refused += bad
    put(ext, _opt(svc, ANN_ADV_EXTERNAL, flags.external_ip), local or not etp_local)
    lb = _valid(i.ip for i in svc.load_balancer_ingress if i.ip and i.ip_mode != "Proxy") \
        if svc.type == "LoadBalancer" else []
    if validator is not None:
        lb, bad = validator.filter_loadbalancer_ips(lb)
        refused += bad
    want_lb = _opt(svc, ANN_ADV_LB, flags.loadbalancer_ip) and ANN_SKIP_LB not in svc.meta.annotations
    put(lb, want_lb, local or not etp_local)
    return VipDecision(frozenset(adv), frozenset(wd - adv), tuple(refused))


def vip_prefix(ip: str) -> str:
    return f"{ip}/{32 if ':' not in ip else 128}"
