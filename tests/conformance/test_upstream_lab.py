"""The 48 upstream scenarios (and the generated cases) on the lab: API server, agents on two nodes, real packets.

Slow-ish (the lab takes a few seconds to come up); marked ``slow`` and ``root``. The lab runs only the
network-policy plugin under test, with static routes between the nodes' pod CIDRs. Pods serve TCP, UDP and
SCTP on ports 80 and 81; on a kernel without SCTP the lab's SCTP is raw INIT/INIT-ACK exchanges
(:mod:`kr_core.lab.rawsctp`), not associations.
"""

from __future__ import annotations

import os

import pytest

from tests.conformance.conftest import PLUGINS, need_root
from tests.conformance.generated import cases
from tests.conformance.lab_cluster import LabCluster
from tests.conformance.runner import run_scenario
from tests.conformance.scenarios import NAMESPACES, NS_LABELS, PODS, SCENARIOS

pytestmark = [pytest.mark.root, pytest.mark.slow]
GENERATED = cases(12)
PROTOCOLS = ("TCP", "UDP", "SCTP")  # the pods' servers


@pytest.fixture(scope="module", params=PLUGINS)
def lab(request):
    need_root()
    from kr_core.lab.lab import prerequisites
    if (why := prerequisites()) is not None:
        pytest.skip(why)
    c = LabCluster(f"np{os.getpid() % 10000}", request.param,
                   [(n, p, {"pod": p}) for n in NAMESPACES for p in PODS], NS_LABELS, protocols=PROTOCOLS)
    try:
        yield c
    finally:
        c.close()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_upstream_scenario_on_lab(lab, scenario):
    failures, _ = run_scenario(lab, scenario, converge=10.0)
    assert not failures, "\n".join(failures[:30])


@pytest.mark.parametrize("case", GENERATED, ids=[c.name for c in GENERATED])
def test_generated_case_on_lab(lab, case):
    failures, _ = run_scenario(lab, case, converge=10.0)
    assert not failures, "\n".join(failures[:30])
