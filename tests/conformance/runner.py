"""Run a :class:`~tests.conformance.scenarios.Scenario` on a cluster and compare every cell with the oracle.

A cluster is anything with the small interface :class:`tests.conformance.netns_cluster.NetnsCluster` has
(``pods``, ``namespaces``, ``apply_policy``, ``delete``, ``relabel_pod``, ``relabel_namespace``,
``policies``, ``matrix``), so the same scenarios run on the in-process namespace cluster and on the lab.
"""

from __future__ import annotations

import time
from typing import Any

from kr_core.net.netpol.oracle import World, matrix
from tests.conformance.netns_cluster import diff
from tests.conformance.scenarios import NAMESPACES, NS_LABELS, Scenario, Step

CONVERGE_S = 5.0  # upstream gives about 10 s per change; kr is expected to be much faster


def expected(cluster: Any, step: Step) -> dict[tuple[str, str, int, str], bool]:
    """The oracle's matrix; for a cluster with ``probe_services`` true, also every cell with the destination
    ``svc/<pod key>`` (the pod's ClusterIP), with the same verdict as at the pod IP: upstream's harness
    expects a Service to be exactly as reachable as the pod behind it."""
    world = World.of(cluster.policies(), {n: o.meta.labels for n, o in cluster.namespaces.items()})
    want = matrix(cluster.pods.values(), world, step.ports, step.protocols)
    if getattr(cluster, "probe_services", False):
        want |= {(s, f"svc/{d}", p, proto): v for (s, d, p, proto), v in want.items()}
    return want


def reset(cluster: Any) -> None:
    """No policies, harness labels on every pod and namespace."""
    for pol in cluster.policies():
        cluster.delete(pol)
    for key, p in list(cluster.pods.items()):
        want = {"pod": p.meta.name}
        if dict(p.meta.labels) != want:
            cluster.relabel_pod(key, want)
    for n in NAMESPACES:
        if n in cluster.namespaces and {k: v for k, v in cluster.namespaces[n].meta.labels.items()
                                        if k != "kubernetes.io/metadata.name"} != NS_LABELS[n]:
            cluster.relabel_namespace(n, NS_LABELS[n])


def apply_step(cluster: Any, step: Step) -> None:
    ips = {k: p.pod_ip for k, p in cluster.pods.items()}
    for p in step.apply:
        cluster.apply_policy(p(ips) if callable(p) else p)
    for key in step.delete:
        pol = next(p for p in cluster.policies() if p.key == key)
        cluster.delete(pol)
    for key, labels in step.pod_labels.items():
        cluster.relabel_pod(key, labels)
    for n, labels in step.ns_labels.items():
        cluster.relabel_namespace(n, labels)


def run_scenario(cluster: Any, sc: Scenario, converge: float = CONVERGE_S) -> tuple[list[str], dict[str, Any]]:
    """Run every step; returns (differences, stats). Each step is probed until it matches or ``converge`` passes."""
    reset(cluster)
    failures: list[str] = []
    stats: dict[str, Any] = {"cells": 0, "steps": len(sc.steps), "converge_s": []}
    for i, step in enumerate(sc.steps):
        apply_step(cluster, step)
        want = expected(cluster, step)
        t0 = time.monotonic()
        bad = wait(cluster, want, converge)
        stats["converge_s"].append(round(time.monotonic() - t0, 3))
        stats["cells"] += len(want)
        failures += [f"step {i}: {b}" for b in bad]
    return failures, stats


def wait(cluster: Any, want: dict, timeout: float) -> list[str]:
    ports = sorted({k[2] for k in want})
    protos = sorted({k[3] for k in want})
    pairs = sorted({(k[0], k[1]) for k in want})
    deadline = time.monotonic() + timeout
    while True:
        got = cluster.matrix(ports, protos, pairs)
        bad = diff(want, {k: v for k, v in got.items() if k in want})
        if not bad or time.monotonic() > deadline:
            return bad
        time.sleep(0.2)
