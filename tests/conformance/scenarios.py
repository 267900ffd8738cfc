"""The upstream NetworkPolicy e2e scenarios (kubernetes test/e2e/network/netpol, 48 test names) as data.

The harness model is upstream's: namespaces x, y, z (labels ``kubernetes.io/metadata.name`` and ``ns``),
pods a, b, c in each (label ``pod``), servers on ports 80 and 81 for TCP, UDP and SCTP with named ports
``serve-<port>-<proto>``. Each scenario is a list of steps; a step changes objects (policies applied or
deleted, pod or namespace labels) and names the ports and protocols probed afterwards. The expectation is
never written here: the oracle (:mod:`kr_core.net.netpol.oracle`) derives it from the objects, and the
runner compares it cell by cell with real packets. The policy bodies are reconstructions of upstream's
from the test names and the harness description, not copies.

Policies that depend on pod addresses (ipBlock) are callables of ``ips`` (pod key -> IP).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kr_core.model import NetworkPolicy
from tests.conformance.builders import policy

NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")
NS_LABELS = {n: {"ns": n} for n in NAMESPACES}

PolicyLike = NetworkPolicy | Callable[[dict[str, str]], NetworkPolicy]


@dataclass
class Step:
    apply: list[PolicyLike] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)  # policy keys
    pod_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    ns_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    ports: tuple[int, ...] = (80,)
    protocols: tuple[str, ...] = ("TCP",)


@dataclass
class Scenario:
    name: str
    steps: list[Step]

    @property
    def protocols(self) -> set[str]:
        return {p for s in self.steps for p in s.protocols}


def sel(**labels: str) -> dict[str, Any]:
    return {"matchLabels": labels}


def expr(key: str, op: str, *values: str) -> dict[str, Any]:
    return {"matchExpressions": [{"key": key, "operator": op, **({"values": list(values)} if values else {})}]}


def ing(name: str, ns: str, target: dict[str, Any], rules: list[dict[str, Any]] | None) -> NetworkPolicy:
    spec: dict[str, Any] = {"podSelector": target, "policyTypes": ["Ingress"]}
    if rules is not None:
        spec["ingress"] = rules
    return policy(name, ns, spec)


def egr(name: str, ns: str, target: dict[str, Any], rules: list[dict[str, Any]] | None) -> NetworkPolicy:
    spec: dict[str, Any] = {"podSelector": target, "policyTypes": ["Egress"]}
    if rules is not None:
        spec["egress"] = rules
    return policy(name, ns, spec)


def port(p: int | str, proto: str = "TCP") -> dict[str, Any]:
    return {"port": p, "protocol": proto}


A = sel(pod="a")
ALL: dict[str, Any] = {}
P80_81 = (80, 81)
TCP_UDP = ("TCP", "UDP")


def _proto_variants() -> list[Scenario]:
    out = []
    for proto in ("UDP", "SCTP"):
        low = proto.lower()
        out += [
            Scenario(f"should support a 'default-deny-ingress' policy [{proto}]",
                     [Step([ing("deny-ingress", "x", ALL, None)], protocols=(proto,))]),
            Scenario(f"should enforce policy based on Ports [{proto}]",
                     [Step([ing("allow-81", "x", A, [{"from": [{"namespaceSelector": sel(ns="y")}],
                                                       "ports": [port(81, proto)]}])], ports=P80_81,
                           protocols=(proto,))]),
            Scenario(f"should enforce policy to allow traffic only from a pod in a different namespace based on "
                     f"PodSelector and NamespaceSelector [{proto}]",
                     [Step([ing(f"allow-ns-y-pod-a-{low}", "x", A, [{"from": [
                         {"namespaceSelector": sel(ns="y"), "podSelector": sel(pod="a")}],
                         "ports": [port(80, proto)]}])], protocols=(proto,))]),
        ]
    return out


def _cidr(ips: dict[str, str], key: str) -> str:
    return ips[key] + "/32"


SCENARIOS: list[Scenario] = [
    Scenario("should support a 'default-deny-ingress' policy", [Step([ing("deny-ingress", "x", ALL, None)])]),
    Scenario("should support a 'default-deny-all' policy",
             [Step([policy("deny-all", "x", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})], ports=P80_81)]),
    Scenario("should enforce policy to allow traffic from pods within server namespace based on PodSelector",
             [Step([ing("x-a-allows-x-b", "x", A, [{"from": [{"podSelector": sel(pod="b")}]}])])]),
    Scenario("should enforce policy to allow ingress traffic for a target",
             [Step([ing("deny-ingress", "x", ALL, None),
                    ing("allow-ingress-to-a", "x", A, [{"ports": [port(80)]}])], ports=P80_81)]),
    Scenario("should enforce policy to allow ingress traffic from pods in all namespaces",
             [Step([ing("allow-from-all-ns", "x", A, [{"from": [{"namespaceSelector": {}}]}])])]),
    Scenario("should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector",
             [Step([ing("allow-ns-y", "x", A, [{"from": [{"namespaceSelector": sel(ns="y")}]}])])]),
    Scenario("should enforce policy based on PodSelector with MatchExpressions",
             [Step([ing("allow-b-expr", "x", A, [{"from": [{"podSelector": expr("pod", "In", "b")}]}])])]),
    Scenario("should enforce policy based on NamespaceSelector with MatchExpressions",
             [Step([ing("allow-y-expr", "x", A, [{"from": [{"namespaceSelector": expr("ns", "In", "y")}]}])])]),
    Scenario("should enforce policy based on PodSelector or NamespaceSelector",
             [Step([ing("pod-or-ns", "x", A, [{"from": [{"namespaceSelector": expr("ns", "NotIn", "x")},
                                                         {"podSelector": sel(pod="b")}]}])])]),
    Scenario("should enforce policy based on PodSelector and NamespaceSelector",
             [Step([ing("pod-and-ns", "x", A, [{"from": [{"namespaceSelector": expr("ns", "NotIn", "x"),
                                                          "podSelector": sel(pod="b")}]}])])]),
    Scenario("should enforce policy based on Multiple PodSelectors and NamespaceSelectors",
             [Step([ing("multi", "x", A, [{"from": [{"namespaceSelector": expr("ns", "NotIn", "x"),
                                                     "podSelector": expr("pod", "In", "b", "c")}]}])])]),
    Scenario("should enforce policy based on any PodSelectors",
             [Step([ing("any-pods", "x", A, [{"from": [{"podSelector": sel(pod="b")},
                                                       {"podSelector": sel(pod="c")}]}])])]),
    Scenario("should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector "
             "and NamespaceSelector",
             [Step([ing("ns-y-pod-a", "x", A, [{"from": [{"namespaceSelector": sel(ns="y"),
                                                          "podSelector": sel(pod="a")}]}])])]),
    Scenario("should enforce policy based on Ports",
             [Step([ing("allow-81", "x", A, [{"from": [{"namespaceSelector": sel(ns="y")}],
                                              "ports": [port(81)]}])], ports=P80_81)]),
    Scenario("should enforce multiple, stacked policies with overlapping podSelectors",
             [Step([ing("allow-81", "x", A, [{"from": [{"namespaceSelector": sel(ns="y")}], "ports": [port(81)]}])],
                   ports=P80_81),
              Step([ing("allow-80", "x", A, [{"from": [{"namespaceSelector": sel(ns="y")}], "ports": [port(80)]}])],
                   ports=P80_81)]),
    Scenario("should support allow-all policy", [Step([ing("allow-all", "x", ALL, [{}])], ports=P80_81)]),
    Scenario("should allow ingress access on one named port",
             [Step([ing("allow-named-81", "x", ALL, [{"ports": [port("serve-81-tcp")]}])], ports=P80_81)]),
    Scenario("should allow ingress access from namespace on one named port",
             [Step([ing("allow-ns-named-80", "x", ALL, [{"from": [{"namespaceSelector": sel(ns="y")}],
                                                         "ports": [port("serve-80-tcp")]}])], ports=P80_81)]),
    Scenario("should allow egress access on one named port",
             [Step([egr("allow-egress-named-80", "x", ALL, [{"ports": [port("serve-80-tcp"), port(53, "UDP")]}])],
                   ports=P80_81)]),
    Scenario("should enforce updated policy",
             [Step([ing("updated", "x", ALL, [{"from": [{"namespaceSelector": {}}], "ports": [port("serve-81-tcp")]}])],
                   ports=P80_81),
              Step([ing("updated", "x", ALL, [{"from": [{"namespaceSelector": {}}], "ports": [port("serve-80-tcp")]}])],
                   ports=P80_81)]),
    Scenario("should allow ingress access from updated namespace",
             [Step([ing("from-updated-ns", "x", A, [{"from": [{"namespaceSelector": sel(ns2="updated")}]}])]),
              Step(ns_labels={"y": {"ns": "y", "ns2": "updated"}})]),
    Scenario("should allow ingress access from updated pod",
             [Step([ing("from-updated-pod", "x", A, [{"from": [{"namespaceSelector": {},
                                                                "podSelector": sel(pod2="updated")}]}])]),
              Step(pod_labels={"x/b": {"pod": "b", "pod2": "updated"}})]),
    Scenario("should deny ingress from pods on other namespaces",
             [Step([ing("same-ns-only", "x", ALL, [{"from": [{"podSelector": {}}]}])])]),
    Scenario("should deny ingress access to updated pod",
             [Step([ing("deny-isolated", "x", sel(target="isolated"), None)]),
              Step(pod_labels={"x/a": {"pod": "a", "target": "isolated"}})]),
    Scenario("should deny egress from pods based on PodSelector",
             [Step([egr("deny-egress-a", "x", A, None)])]),
    Scenario("should deny egress from all pods in a namespace", [Step([egr("deny-egress", "x", ALL, None)])]),
    Scenario("should work with Ingress, Egress specified together",
             [Step([policy("both", "x", {"podSelector": A, "policyTypes": ["Ingress", "Egress"],
                                         "ingress": [{"from": [{"podSelector": sel(pod="b")}]}],
                                         "egress": [{"to": [{"namespaceSelector": sel(ns="y")}]}]})], ports=P80_81)]),
    Scenario("should support denying of egress traffic on the client side (even if the server explicitly allows "
             "this traffic)",
             [Step([egr("deny-egress-a", "x", A, None),
                    ing("allow-from-x-a", "y", ALL, [{"from": [{"namespaceSelector": sel(ns="x"),
                                                               "podSelector": sel(pod="a")}]}])])]),
    Scenario("should enforce egress policy allowing traffic to a server in a different namespace based on "
             "PodSelector and NamespaceSelector",
             [Step([egr("to-y-a", "x", A, [{"to": [{"namespaceSelector": sel(ns="y"), "podSelector": sel(pod="a")}]}])])]),
    Scenario("should enforce ingress policy allowing any port traffic to a server on a specific protocol",
             [Step([ing("tcp-any-port", "x", A, [{"ports": [{"protocol": "TCP"}]}])], ports=P80_81,
                   protocols=TCP_UDP)]),
    Scenario("should enforce multiple ingress policies with ingress allow-all policy taking precedence",
             [Step([ing("only-80", "x", A, [{"ports": [port(80)]}])], ports=P80_81),
              Step([ing("allow-all", "x", A, [{}])], ports=P80_81)]),
    Scenario("should enforce multiple egress policies with egress allow-all policy taking precedence",
             [Step([egr("only-80", "x", A, [{"ports": [port(80)]}])], ports=P80_81),
              Step([egr("allow-all", "x", A, [{}])], ports=P80_81)]),
    Scenario("should stop enforcing policies after they are deleted",
             [Step([policy("deny-all", "x", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})]),
              Step(delete=["x/deny-all"])]),
    Scenario("should allow egress access to server in CIDR block",
             [Step([lambda ips: egr("to-cidr", "x", A, [{"to": [{"ipBlock": {"cidr": _cidr(ips, "y/b")}}]}])])]),
    Scenario("should enforce except clause while egress access to server in CIDR block",
             [Step([lambda ips: egr("to-cidr-except", "x", A, [{"to": [{"ipBlock": {
                 "cidr": "10.244.0.0/24", "except": [_cidr(ips, "y/b")]}}]}])])]),
    Scenario("should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed",
             [Step([lambda ips: egr("to-cidr-except", "x", A, [{"to": [{"ipBlock": {
                 "cidr": "10.244.0.0/24", "except": [_cidr(ips, "y/b")]}}]}])]),
              Step([lambda ips: egr("to-b", "x", A, [{"to": [{"ipBlock": {"cidr": _cidr(ips, "y/b")}}]}])])]),
    Scenario("should enforce policies to check ingress and egress policies can be controlled independently based "
             "on PodSelector",
             [Step([ing("a-isolated", "x", A, None),
                    egr("b-to-a", "x", sel(pod="b"), [{"to": [{"podSelector": sel(pod="a")}]}])])]),
    Scenario("should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP",
             [Step([ing("sctp-only", "x", A, [{"ports": [port(80, "SCTP")]}])])]),
    Scenario("should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin doesn't "
             "support SCTP",
             [Step([ing("sctp-only", "x", A, [{"ports": [port(80, "SCTP")]}])], protocols=TCP_UDP)]),
    Scenario("should not allow access by TCP when a policy specifies only UDP",
             [Step([ing("udp-81", "x", A, [{"ports": [port(81, "UDP")]}])], ports=(81,), protocols=TCP_UDP)]),
    Scenario("should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using default ns label",
             [Step([ing("default-label", "x", A, [{"from": [
                 {"namespaceSelector": sel(**{"kubernetes.io/metadata.name": "y"})}]}])])]),
    Scenario("should enforce policy based on NamespaceSelector with MatchExpressions using default ns label",
             [Step([ing("default-label-expr", "x", A, [{"from": [
                 {"namespaceSelector": expr("kubernetes.io/metadata.name", "NotIn", "y")}]}])])]),
    *_proto_variants(),
]

assert len(SCENARIOS) == 48, len(SCENARIOS)
assert len({s.name for s in SCENARIOS}) == 48
