"""The upstream scenarios with a service proxy running, in the VM (this host's kernel has no IPVS).

Upstream's harness gives every server pod a Service ``s-<ns>-<pod>`` (selector ``pod=<pod>``, ports 80 and 81)
and probes its ClusterIP, so a policy is judged after the proxy's DNAT (ipBlocks written with pod IPs must
still match); loopback (a pod to itself) is not judged. kr probes each server pod at its pod IP as well and
expects the same verdict for both. Here the lab's two nodes run ``netpol_iptables`` and ``ipvs_proxy`` together (real API
server, agents, IPVS in each node's namespace), each of the 9 pods has that Service (TCP and UDP, and SCTP
when the VM kernel's IPVS handles SCTP), and every cell of every scenario is probed at both addresses and
compared with the oracle (:func:`tests.conformance.runner.expected` duplicates each pod cell for
``svc/<pod>``).

Where kube-router's semantics could differ from upstream's expectation, kr follows upstream: traffic to a
ClusterIP is let through INPUT (the cluster-IP whitelist) and judged after IPVS has chosen the endpoint, in
OUTPUT, against the real source and destination pods; pod-to-Service traffic is not masqueraded (only a
hairpin, a pod reaching itself through its Service, is, and the matrix never probes a pod from itself), so
the ingress policy sees the client pod, not the node (whose traffic kube-router always lets in).

All 48 scenarios run (the SCTP ones where the VM kernel has SCTP): 144 to 576 cells each, about 4 minutes
in the UML VM (lab up with 9 pods and Services ~45 s, then 2-8 s per scenario, mostly the agents' own
latency on one slow vCPU).
"""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.conformance.conftest import need_root
from tests.conformance.lab_cluster import LabCluster
from tests.conformance.runner import run_scenario, wait
from tests.conformance.scenarios import NAMESPACES, NS_LABELS, PODS, SCENARIOS

pytestmark = [pytest.mark.vm, pytest.mark.root, pytest.mark.slow]
NAME = "krsvc"  # inside the VM: its own kernel, no other lab there
PLUGINS = "netpol_iptables,ipvs_proxy"
# one vCPU, Python ~5x slower than on the host: 0.3 s drops answered probes. One attempt per probe (the runner
# probes again until the matrix matches): retrying refused probes starved the agents and doubled the run time
PROBE_TIMEOUT = 1.0
WORKERS = 256  # a round of probes lasts about one timeout: every blocked probe waits it out at once
CONVERGE_S = 30.0  # upstream allows ~10 s per change; the VM shares its CPU with the agents and the probes


def ipvs_sctp() -> bool:
    """Can this kernel's IPVS hold an SCTP virtual server? (tried in a throwaway namespace)."""
    ns = "krsvc-sctp-check"
    subprocess.run(["ip", "netns", "add", ns], check=False, capture_output=True)
    try:
        p = subprocess.run(["ip", "netns", "exec", ns, "ipvsadm", "-A", "--sctp-service", "10.0.0.1:80"],
                           capture_output=True, text=True)
        return p.returncode == 0
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


@pytest.fixture(scope="module")
def svc_lab():
    need_root()
    for mod in ("sctp", "br_netfilter", "ip_vs", "ip_vs_rr"):
        subprocess.run(["modprobe", mod], check=False, capture_output=True)
    from kr_core.lab.lab import prerequisites
    from kr_core.lab.responder import sctp_supported
    if (why := prerequisites()) is not None:
        pytest.skip(why)
    protocols = ("TCP", "UDP", "SCTP") if sctp_supported() and ipvs_sctp() else ("TCP", "UDP")
    t0 = time.monotonic()
    c = LabCluster(NAME, PLUGINS, [(n, p, {"pod": p}) for n in NAMESPACES for p in PODS], NS_LABELS,
                   services=True, protocols=protocols, probe_timeout=PROBE_TIMEOUT, workers=WORKERS,
                   probe_retry=False, up_timeout=300)
    try:
        # no policies yet: every pod and every Service answers on every port once the proxies have synced
        keys = list(c.pods)
        want = {(s, d, port, proto): True for port in (80, 81) for proto in protocols
                for s in keys for d in (*keys, *(f"svc/{k}" for k in keys)) if s != d and d != f"svc/{s}"}
        bad = wait(c, want, 120)
        assert not bad, "\n".join(bad[:30])
        print(f"lab with {PLUGINS} and {len(keys)} Services ({'/'.join(protocols)}) ready in "
              f"{time.monotonic() - t0:.1f} s")
        yield c
    finally:
        c.close()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario_via_pod_ip_and_cluster_ip(svc_lab, scenario):
    if not set(scenario.protocols) <= set(svc_lab.protocols):
        pytest.skip(f"the VM kernel cannot serve {'/'.join(sorted(scenario.protocols))} through IPVS")
    t0 = time.monotonic()
    failures, stats = run_scenario(svc_lab, scenario, converge=CONVERGE_S)
    print(f"{scenario.name}: {stats['cells']} cells, steps converged in {stats['converge_s']} s, "
          f"{time.monotonic() - t0:.1f} s")
    assert not failures, "\n".join(failures[:30])
