"""The 48 upstream NetworkPolicy e2e scenarios with real packets on a namespace cluster, against the oracle.

TCP, UDP and SCTP on every kernel: where the kernel has no SCTP (this development host) the SCTP probes
are raw INIT/INIT-ACK exchanges (:mod:`kr_core.lab.rawsctp`), not associations; the VM runs them with real
associations (test_sctp_vm.py). One cluster per plugin serves every scenario (policies and labels are
reset in between).
"""

from __future__ import annotations

import pytest

from tests.conformance.runner import run_scenario
from tests.conformance.scenarios import SCENARIOS

pytestmark = pytest.mark.root


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_upstream_scenario(cluster, scenario):
    failures, stats = run_scenario(cluster, scenario)
    assert not failures, "\n".join(failures[:30])
