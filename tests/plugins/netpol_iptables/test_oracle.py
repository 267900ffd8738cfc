"""The reachability oracle against hand-checked verdicts (the API reference's examples)."""

from __future__ import annotations

from kr_core.net.netpol.oracle import World, allowed, matrix
from tests.conformance.builders import pod, policy

NS = {"x": {"kubernetes.io/metadata.name": "x", "ns": "x"}, "y": {"kubernetes.io/metadata.name": "y", "ns": "y"}}
XA, XB, YA = pod("a", "x", "10.0.0.1"), pod("b", "x", "10.0.0.2"), pod("a", "y", "10.0.0.3")


def w(*pols):
    return World.of(pols, NS)


def test_no_policy_allows_everything():
    assert all(matrix([XA, XB, YA], w(), [80], ["TCP", "UDP"]).values())


def test_default_deny_ingress_and_egress_are_per_direction():
    deny_in = policy("deny", "x", {"podSelector": {}, "policyTypes": ["Ingress"]})
    assert not allowed(YA, XA, 80, "TCP", w(deny_in))
    assert allowed(XA, YA, 80, "TCP", w(deny_in))
    deny_out = policy("deny", "x", {"podSelector": {}, "policyTypes": ["Egress"]})
    assert allowed(YA, XA, 80, "TCP", w(deny_out)) and not allowed(XA, YA, 80, "TCP", w(deny_out))


def test_peers_ports_named_ports_and_ipblocks():
    p = policy("p", "x", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
        {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": "serve-81-udp",
                                                                                    "protocol": "UDP"}]},
        {"from": [{"ipBlock": {"cidr": "10.0.0.0/24", "except": ["10.0.0.2/32"]}}], "ports": [{"port": 80, "endPort": 81}]}]})
    world = w(p)
    assert allowed(YA, XA, 81, "UDP", world) and not allowed(YA, XA, 80, "UDP", world)
    assert allowed(YA, XA, 81, "TCP", world)  # by the ipBlock rule
    assert not allowed(XB, XA, 80, "TCP", world)  # excepted
    assert allowed("10.0.0.9", XA, 80, "TCP", world) and not allowed("10.9.0.9", XA, 80, "TCP", world)
    assert allowed(XA, XB, 80, "TCP", world)  # x/b is not a target


def test_policies_are_ored_and_bad_values_match_nothing():
    a = policy("a", "x", {"podSelector": {}, "ingress": [{"ports": [{"port": 80, "protocol": "ICMP"}]}]})
    assert not allowed(YA, XA, 80, "TCP", w(a))
    b = policy("b", "x", {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]})
    assert allowed(XB, XA, 80, "TCP", w(a, b)) and not allowed(YA, XA, 80, "TCP", w(a, b))
