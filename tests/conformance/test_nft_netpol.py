"""The shared conformance suite (upstream scenarios, generated cases; namespace cluster and lab) with nft_netpol.

The suite's fixtures are parametrised by ``KR_NETPOL_PLUGINS`` (default ``netpol_iptables``); this module
re-collects the same test functions with fixtures bound to ``nft_netpol``, so both backends run by default.
Skipped when ``KR_NETPOL_PLUGINS`` already names nft_netpol (the suite itself then runs it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.conformance.conftest import PLUGINS, need_root
from tests.conformance.netns_cluster import NetnsCluster
from tests.conformance.scenarios import NAMESPACES, NS_LABELS, PODS
from tests.conformance.test_generated_netns import test_generated_case  # noqa: F401 - collected here again
from tests.conformance.test_upstream_lab import PROTOCOLS, test_generated_case_on_lab, test_upstream_scenario_on_lab  # noqa: F401
from tests.conformance.test_upstream_netns import test_upstream_scenario  # noqa: F401

PLUGIN = "nft_netpol"
pytestmark = [pytest.mark.root, pytest.mark.skipif(PLUGIN in PLUGINS, reason="KR_NETPOL_PLUGINS runs nft_netpol")]


@pytest.fixture(scope="module")
def cluster() -> Iterator[NetnsCluster]:
    need_root()
    c = NetnsCluster(PLUGIN, [(n, p, {"pod": p}) for n in NAMESPACES for p in PODS], namespaces=NS_LABELS)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def lab():
    need_root()
    from kr_core.lab.lab import prerequisites
    from tests.conformance.lab_cluster import LabCluster
    if (why := prerequisites()) is not None:
        pytest.skip(why)
    c = LabCluster(f"nf{os.getpid() % 10000}", PLUGIN, [(n, p, {"pod": p}) for n in NAMESPACES for p in PODS],
                   NS_LABELS, protocols=PROTOCOLS)
    try:
        yield c
    finally:
        c.close()
