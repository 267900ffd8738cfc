"""The lab inside the VM (kernel features this host lacks): SCTP pod ports, IPVS inside a node namespace."""

from __future__ import annotations

import json
import subprocess

import pytest

from kr_core.lab.state import LabState
from tests.lab.labkit import apply, kr_lab, leftovers, pod_manifest, wait_running

NAME = "krvm"  # inside the VM: its own kernel, no other lab there


@pytest.mark.vm
def test_lab_in_vm_sctp_and_ipvs():
    subprocess.run(["modprobe", "sctp"], check=False)
    kr_lab("down", "--name", NAME)
    try:
        kr_lab("up", "--name", NAME, "--nodes", "2", "--static-routes", "--plugins", "hostsfile", timeout=300)
        apply(NAME, pod_manifest("s", node="node-1", ports=[(80, "TCP"), (9999, "SCTP")]),
              pod_manifest("c", node="node-2"))
        wait_running(NAME, ["default/s", "default/c"], timeout=60)
        p = kr_lab("probe", "--name", NAME, "default/c", "default/s", "9999", "--protocol", "SCTP", "--json",
                   "--timeout", "10", check=False)
        r = json.loads(p.stdout)
        assert p.returncode == 0 and r["answer"] == "default/s", r
        node = LabState.load(NAME).node("node-1").netns
        subprocess.run(["modprobe", "ip_vs"], check=True)
        out = subprocess.run(["ip", "netns", "exec", node, "cat", "/proc/net/ip_vs"], capture_output=True, text=True)
        assert out.returncode == 0 and "Prot LocalAddress" in out.stdout
    finally:
        kr_lab("down", "--name", NAME)
    assert leftovers(NAME) == {}
