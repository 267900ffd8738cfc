"""Churn: pod and namespace labels changing and policies added/deleted while traffic flows, and an agent
restart in the middle. Invariant cells (whose verdict no change touches) are probed all the time and must
never flip; after every burst of changes the whole matrix must converge to the oracle."""

from __future__ import annotations

import random
import threading

import pytest

from tests.conformance.builders import policy
from tests.conformance.runner import expected, reset, wait
from tests.conformance.scenarios import Step, sel

pytestmark = pytest.mark.root

INVARIANT = policy("guard-c", "x", {"podSelector": sel(pod="c"), "policyTypes": ["Ingress"],
                                     "ingress": [{"from": [{"podSelector": sel(pod="b")}]}]})
# (src, dst): verdict that must hold through all the churn below
STABLE = {("y/c", "x/c"): False, ("z/a", "x/c"): False, ("z/a", "z/b"): True, ("z/c", "z/a"): True}

CHURN_POLICIES = [
    policy("p1", "x", {"podSelector": sel(role="web"), "ingress": [{"from": [{"podSelector": sel(role="cli")}]}]}),
    policy("p2", "y", {"podSelector": {"matchExpressions": [{"key": "role", "operator": "Exists"}]},
                       "policyTypes": ["Egress"], "egress": [{"to": [{"namespaceSelector": sel(team="blue")}]}]}),
    policy("p3", "x", {"podSelector": sel(pod="a"), "ingress": [{"ports": [{"port": 81}]}]}),
    policy("p4", "y", {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": sel(team="blue"),
                                                                 "podSelector": sel(role="cli")}]}]}),
]
CHURN_PODS = ["x/a", "x/b", "y/a", "y/b"]
ROLES = [None, "web", "cli"]


def test_churn_with_restart(cluster):
    reset(cluster)
    cluster.apply_policy(INVARIANT)
    flips: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            got = cluster.matrix([80], ["TCP"], list(STABLE))
            flips.extend(f"{s}->{d}: {v}" for (s, d, _, _), v in got.items() if v != STABLE[(s, d)])

    rng = random.Random(7)
    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        for burst in range(4):
            for _ in range(12):
                what = rng.random()
                if what < 0.45:
                    key = rng.choice(CHURN_PODS)
                    role = rng.choice(ROLES)
                    cluster.relabel_pod(key, {"pod": key.split("/")[1], **({"role": role} if role else {})})
                elif what < 0.6:
                    n = rng.choice(["y", "z"])
                    cluster.relabel_namespace(n, {"ns": n, **({"team": "blue"} if rng.random() < 0.5 else {})})
                else:
                    p = rng.choice(CHURN_POLICIES)
                    if any(x.key == p.key for x in cluster.policies()):
                        cluster.delete(p)
                    else:
                        cluster.apply_policy(p)
            if burst == 1:
                cluster.restart_plugin()
            step = Step(ports=(80, 81), protocols=("TCP",))
            bad = wait(cluster, expected(cluster, step), 5.0)
            assert not bad, f"burst {burst}: " + "\n".join(bad[:20])
    finally:
        stop.set()
        t.join()
    assert not flips, flips[:20]
