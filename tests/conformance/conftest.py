"""Fixtures of the network-policy conformance suite: which plugins it runs against, a namespace cluster per plugin.

``KR_NETPOL_PLUGINS`` (comma list, default ``netpol_iptables``) names the network-policy plugins to test;
every test is parametrised by plugin name, so a new backend (nft_netpol) runs the same suite.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.conformance.netns_cluster import NetnsCluster
from tests.conformance.scenarios import NAMESPACES, NS_LABELS, PODS

PLUGINS = [p for p in os.environ.get("KR_NETPOL_PLUGINS", "netpol_iptables").split(",") if p]


def need_root() -> None:
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 (network namespaces)")


@pytest.fixture(scope="module", params=PLUGINS)
def cluster(request: pytest.FixtureRequest) -> Iterator[NetnsCluster]:
    """The 9-pod harness (x, y, z x a, b, c) on one node, enforced by the plugin under test."""
    need_root()
    c = NetnsCluster(request.param, [(n, p, {"pod": p}) for n in NAMESPACES for p in PODS], namespaces=NS_LABELS)
    try:
        yield c
    finally:
        c.close()
