"""Cyclonus-style generated cases (targets x peers x ports x directions, and actions), real packets vs oracle."""

from __future__ import annotations

import pytest

from tests.conformance.generated import cases
from tests.conformance.runner import run_scenario

pytestmark = pytest.mark.root
CASES = cases()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_generated_case(cluster, case):
    failures, _ = run_scenario(cluster, case)
    assert not failures, "\n".join(failures[:30])
