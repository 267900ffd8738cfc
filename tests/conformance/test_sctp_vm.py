"""The SCTP scenarios (upstream 43-48's SCTP half, and 38/39 with SCTP servers up) with real SCTP associations,
in the VM. Same harness, oracle and runner as the other conformance tests; the VM's kernel has only legacy
iptables, which the plugins detect, and no nftables inet family (so only netpol_iptables can run here).

On a kernel without SCTP (the development hosts) test_upstream_netns.py and test_nft_netpol.py run the same
scenarios for both backends as raw INIT/INIT-ACK exchanges (:mod:`kr_core.lab.rawsctp`), not associations."""

from __future__ import annotations

import subprocess

import pytest

from tests.conformance.conftest import PLUGINS, need_root
from tests.conformance.netns_cluster import NetnsCluster
from tests.conformance.runner import run_scenario
from tests.conformance.scenarios import NAMESPACES, NS_LABELS, PODS, SCENARIOS

pytestmark = [pytest.mark.vm, pytest.mark.root]
SCTP = [s for s in SCENARIOS if "SCTP" in s.name]
PORTS = tuple((proto, p) for proto in ("TCP", "UDP", "SCTP") for p in (80, 81))


@pytest.fixture(scope="module", params=PLUGINS)
def sctp_cluster(request):
    need_root()
    for mod in ("sctp", "br_netfilter"):  # modules in the VM kernel
        subprocess.run(["modprobe", mod], check=False, capture_output=True)
    from kr_core.lab.responder import sctp_supported
    if not sctp_supported():
        pytest.skip("no SCTP in this kernel either")
    c = NetnsCluster(request.param, [(n, p, {"pod": p}) for n in NAMESPACES for p in PODS], namespaces=NS_LABELS,
                     ports=PORTS)
    try:
        yield c
    finally:
        c.close()


@pytest.mark.parametrize("scenario", SCTP, ids=[s.name for s in SCTP])
def test_sctp_scenario(sctp_cluster, scenario):
    failures, _ = run_scenario(sctp_cluster, scenario)
    assert not failures, "\n".join(failures[:30])
