"""The 48 upstream NetworkPolicy e2e scenarios with real packets on a namespace cluster, against the oracle.

TCP and UDP run on this host; SCTP scenarios run where the kernel has SCTP (skipped otherwise, with the
reason). One cluster per plugin serves every scenario (policies and labels are reset in between).
"""

from __future__ import annotations

import pytest

from kr_core.lab.responder import sctp_supported
from tests.conformance.runner import run_scenario
from tests.conformance.scenarios import SCENARIOS

pytestmark = pytest.mark.root


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_upstream_scenario(cluster, scenario):
    if "SCTP" in scenario.protocols and not sctp_supported():
        pytest.skip("this kernel has no SCTP (run in the VM)")
    failures, stats = run_scenario(cluster, scenario)
    assert not failures, "\n".join(failures[:30])
