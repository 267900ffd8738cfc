"""SCTP policies with IPv4 and IPv6 packets, for both network-policy backends, cell by cell against the oracle.

The upstream SCTP scenarios, plus an endPort range and a TCP-only policy probed with SCTP, on a dual-stack
namespace cluster, once per address family. Where the kernel has no SCTP (the development hosts) the
probes are raw INIT/INIT-ACK exchanges (:mod:`kr_core.lab.rawsctp`), not associations: each cell is one
INIT matched by the backend's ``sctp dport`` / ``-p sctp --dport`` rules and one INIT-ACK let back by
conntrack.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conformance.conftest import need_root
from tests.conformance.netns_cluster import NetnsCluster
from tests.conformance.runner import run_scenario
from tests.conformance.scenarios import NAMESPACES, NS_LABELS, PODS, SCENARIOS, Scenario, Step, ing, port, sel

pytestmark = pytest.mark.root
BACKENDS = ("netpol_iptables", "nft_netpol")
A = sel(pod="a")
CASES = [s for s in SCENARIOS if "SCTP" in s.protocols] + [
    Scenario("SCTP endPort range from one namespace", [Step([ing("sctp-range", "x", A, [{
        "from": [{"namespaceSelector": sel(ns="z")}], "ports": [{"port": 80, "endPort": 81, "protocol": "SCTP"}]}])],
        ports=(80, 81), protocols=("SCTP", "TCP"))]),
    Scenario("a TCP-only policy isolates SCTP", [Step([ing("tcp-80", "x", A, [{"ports": [port(80, "TCP")]}])],
                                                      ports=(80,), protocols=("SCTP", "TCP"))]),
]


@pytest.fixture(scope="module", params=BACKENDS)
def cluster6(request: pytest.FixtureRequest) -> Iterator[NetnsCluster]:
    need_root()
    c = NetnsCluster(request.param, [(n, p, {"pod": p}) for n in NAMESPACES for p in PODS], namespaces=NS_LABELS,
                     ipv6=True, flags={"enable-ipv6": True})
    try:
        yield c
    finally:
        c.close()


@pytest.mark.parametrize("family", (4, 6))
@pytest.mark.parametrize("scenario", CASES, ids=[s.name for s in CASES])
def test_sctp_scenario_per_family(cluster6, scenario, family):
    cluster6.family = family
    failures, _ = run_scenario(cluster6, scenario)
    assert not failures, "\n".join(failures[:30])
