"""Generated cases in cyclonus' style: targets x peers x ports/protocols x directions, plus actions.

Deterministic (a fixed seed): the same list every run. Each case is one :class:`Scenario` whose policy
lives in namespace ``x``; probes cover ports 80 and 81 over TCP and UDP for every pod pair.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

from tests.conformance.builders import policy
from tests.conformance.scenarios import Scenario, Step, expr, sel

TARGETS: dict[str, dict[str, Any]] = {"all": {}, "a": sel(pod="a"), "a-or-b": expr("pod", "In", "a", "b")}
PEERS: dict[str, Any] = {
    "any": None,
    "deny": [],
    "pod-b": [{"podSelector": sel(pod="b")}],
    "ns-y": [{"namespaceSelector": sel(ns="y")}],
    "ns-y-pod-c": [{"namespaceSelector": sel(ns="y"), "podSelector": sel(pod="c")}],
    "all-ns": [{"namespaceSelector": {}}],
    "pod-b-or-ns-z": [{"podSelector": sel(pod="b")}, {"namespaceSelector": sel(ns="z")}],
    "cidr-except": "cidr",
}
PORTS: dict[str, Any] = {
    "all": None,
    "tcp-80": [{"port": 80, "protocol": "TCP"}],
    "udp-81": [{"port": 81, "protocol": "UDP"}],
    "named-81-tcp": [{"port": "serve-81-tcp", "protocol": "TCP"}],
    "tcp-any": [{"protocol": "TCP"}],
    "range-80-81-udp": [{"port": 80, "endPort": 81, "protocol": "UDP"}],
    "tcp-80-udp-80": [{"port": 80, "protocol": "TCP"}, {"port": 80, "protocol": "UDP"}],
}
DIRECTIONS = ("Ingress", "Egress", "Both")


def _rule(peer: Any, ports: Any, key: str, ips: dict[str, str]) -> list[dict[str, Any]]:
    if peer == []:
        return []
    rule: dict[str, Any] = {}
    if peer == "cidr":
        rule[key] = [{"ipBlock": {"cidr": "10.244.0.0/24", "except": [ips["y/b"] + "/32", ips["z/c"] + "/32"]}}]
    elif peer is not None:
        rule[key] = peer
    if ports is not None:
        rule["ports"] = ports
    return [rule]


def _case(target: str, peer: str, ports: str, direction: str) -> Scenario:
    name = f"{direction.lower()} target={target} peer={peer} ports={ports}"

    def build(ips: dict[str, str]):  # noqa: ANN202
        spec: dict[str, Any] = {"podSelector": TARGETS[target]}
        types = ["Ingress", "Egress"] if direction == "Both" else [direction]
        spec["policyTypes"] = types
        if "Ingress" in types:
            spec["ingress"] = _rule(PEERS[peer], PORTS[ports], "from", ips)
        if "Egress" in types:
            spec["egress"] = _rule(PEERS[peer], PORTS[ports], "to", ips)
        return policy("gen", "x", spec)

    return Scenario(name, [Step([build], ports=(80, 81), protocols=("TCP", "UDP"))])


def cases(n: int = 40, seed: int = 20260) -> list[Scenario]:
    combos = list(itertools.product(TARGETS, PEERS, PORTS, DIRECTIONS))
    picked = random.Random(seed).sample(combos, n)
    out = [_case(*c) for c in picked]
    # action cases: the same policy, then a pod relabel, a namespace relabel, an update, a delete
    out.append(Scenario("actions: relabel pod, relabel namespace, update and delete policy", [
        Step([policy("act", "x", {"podSelector": sel(pod="a"), "policyTypes": ["Ingress"],
                                  "ingress": [{"from": [{"namespaceSelector": sel(team="t"),
                                                         "podSelector": sel(role="cli")}]}]})]),
        Step(pod_labels={"y/b": {"pod": "b", "role": "cli"}}),
        Step(ns_labels={"y": {"ns": "y", "team": "t"}}),
        Step(pod_labels={"x/a": {"pod": "a2"}}),
        Step(pod_labels={"x/a": {"pod": "a"}}),
        Step([policy("act", "x", {"podSelector": sel(pod="a"), "policyTypes": ["Ingress"],
                                  "ingress": [{"from": [{"podSelector": sel(role="cli")}]}]})]),
        Step(delete=["x/act"]),
    ]))
    return out
