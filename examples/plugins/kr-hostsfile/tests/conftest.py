"""Fixtures for the hostsfile plugin's tests (the helpers live in hostsfile_testkit, a uniquely named module)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hostsfile_testkit import Harness


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path)
