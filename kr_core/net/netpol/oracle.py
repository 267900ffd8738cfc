"""Reachability oracle: Kubernetes objects in, expected verdicts out, from the NetworkPolicy API semantics.

Written from the API reference (networking.k8s.io/v1), not from the rule model: it never looks at sets or
chains, so it can judge any backend. A connection ``src -> dst:port/protocol`` is allowed when

* ``src``'s egress allows it: no policy in ``src``'s namespace selects ``src`` with policyType Egress, or
  one egress rule of such a policy matches ``dst`` (peers) and ``port/protocol`` (ports); and
* ``dst``'s ingress allows it, the same way with ingress rules matching ``src``.

A rule with no peers matches every peer and one with no ports every port. A peer matches a pod when the
pod is in the policy's namespace (no namespaceSelector) or in a namespace whose labels the
namespaceSelector matches, and its labels match the podSelector (absent: any pod). An ipBlock matches an
address inside ``cidr`` and outside every ``except``. A port matches the protocol (default TCP) and the
number, a range ``port..endPort``, or a name the destination pod gives a container port of that protocol.
Host-network pods are never isolated (kube-router does not enforce policy for them), and a policy's bad
values (an unparseable CIDR, an unknown protocol) make that peer or port match nothing.

Endpoints are pods or bare IP addresses (traffic from or to outside the cluster).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from kr_core.model import NetworkPolicy, Pod, PolicyPeer, PolicyPort, PolicyRule

Endpoint = Pod | str


@dataclass(frozen=True)
class World:
    """The objects a verdict depends on: policies, and namespace labels by name."""

    policies: tuple[NetworkPolicy, ...]
    namespaces: Mapping[str, Mapping[str, str]]

    @classmethod
    def of(cls, policies: Iterable[NetworkPolicy], namespaces: Mapping[str, Mapping[str, str]]) -> World:
        return cls(tuple(policies), dict(namespaces))


def _ip(ep: Endpoint, family: int | None = None) -> str:
    """The address a connection to/from ``ep`` uses: its address of ``family`` (default: the first)."""
    if isinstance(ep, str):
        return ep
    for ip in ep.pod_ips:
        if family is None or (":" in ip) == (family == 6):
            return ip
    return ""


def _in_block(ip: str, cidr: str, excepts: Sequence[str]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
        if addr not in ipaddress.ip_network(cidr, strict=False):
            return False
    except ValueError:
        return False
    for e in excepts:
        try:
            if addr in ipaddress.ip_network(e, strict=False):
                return False
        except ValueError:
            continue  # an unparseable except excepts nothing
    return True


def _peer_matches(peer: PolicyPeer, policy_ns: str, other: Endpoint, ip: str, w: World) -> bool:
    if peer.ip_block is not None:
        return _in_block(ip, peer.ip_block.cidr, peer.ip_block.except_)
    if peer.pod_selector is None and peer.namespace_selector is None:
        return False
    if isinstance(other, str) or other.host_network:
        return False
    ns = other.meta.namespace
    if peer.namespace_selector is None:
        if ns != policy_ns:
            return False
    else:
        labels = w.namespaces.get(ns)
        if labels is None or not peer.namespace_selector.matches(labels):
            return False
    return peer.pod_selector is None or peer.pod_selector.matches(other.meta.labels)


def _port_matches(p: PolicyPort, dst: Endpoint, port: int, protocol: str) -> bool:
    if (p.protocol or "TCP").upper() != protocol.upper():
        return False
    if p.port is None:
        return True
    if isinstance(p.port, int):
        if p.end_port is not None and p.end_port >= p.port:
            return p.port <= port <= p.end_port
        return port == p.port
    if p.port.isdigit():
        return port == int(p.port)
    if isinstance(dst, str):
        return False
    return any(cp.name == p.port and (cp.protocol or "TCP").upper() == protocol.upper() and cp.container_port == port
               for cp in dst.ports)


def _rule_matches(rule: PolicyRule, policy_ns: str, other: Endpoint, dst: Endpoint, port: int, protocol: str,
                  w: World, family: int | None = None) -> bool:
    ip = _ip(other, family)
    if rule.peers and not any(_peer_matches(p, policy_ns, other, ip, w) for p in rule.peers):
        return False
    return not rule.ports or any(_port_matches(p, dst, port, protocol) for p in rule.ports)


def _selecting(pod: Endpoint, w: World, ptype: str) -> list[NetworkPolicy]:
    if isinstance(pod, str) or pod.host_network:
        return []
    return [p for p in w.policies if p.meta.namespace == pod.meta.namespace and ptype in p.policy_types
            and p.pod_selector.matches(pod.meta.labels)]


def egress_allowed(src: Endpoint, dst: Endpoint, port: int, protocol: str, w: World, family: int | None = None) -> bool:
    pols = _selecting(src, w, "Egress")
    return not pols or any(_rule_matches(r, p.meta.namespace, dst, dst, port, protocol, w, family)
                           for p in pols for r in p.egress)


def ingress_allowed(src: Endpoint, dst: Endpoint, port: int, protocol: str, w: World,
                    family: int | None = None) -> bool:
    pols = _selecting(dst, w, "Ingress")
    return not pols or any(_rule_matches(r, p.meta.namespace, src, dst, port, protocol, w, family)
                           for p in pols for r in p.ingress)


def allowed(src: Endpoint, dst: Endpoint, port: int, protocol: str, w: World, family: int | None = None) -> bool:
    """Is ``src -> dst:port/protocol`` allowed by the policies of ``w``? ``family`` picks the pods' addresses
    that ipBlocks are matched against (default: each pod's first address)."""
    return (egress_allowed(src, dst, port, protocol, w, family)
            and ingress_allowed(src, dst, port, protocol, w, family))


def pod_listens(pod: Pod, port: int, protocol: str) -> bool:
    return any(cp.container_port == port and (cp.protocol or "TCP").upper() == protocol.upper() for cp in pod.ports)


def matrix(pods: Iterable[Pod], w: World, ports: Iterable[int], protocols: Iterable[str], *,
           include_self: bool = False, family: int | None = None) -> dict[tuple[str, str, int, str], bool]:
    """``{(src key, dst key, port, protocol): allowed}`` for every ordered pod pair (not a pod to itself)."""
    pods = list(pods)
    out = {}
    for port in ports:
        for proto in protocols:
            for s in pods:
                for d in pods:
                    if s.key == d.key and not include_self:
                        continue
                    out[(s.key, d.key, port, proto)] = allowed(s, d, port, proto, w, family)
    return out
