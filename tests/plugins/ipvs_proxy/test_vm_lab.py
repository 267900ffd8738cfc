"""End to end in the lab (inside the VM): two nodes running ``kr run`` with only ipvs_proxy, pods as
backends, Services created through the API; connections really reach the pods through IPVS."""

from __future__ import annotations

import collections
import json
import time

import pytest

from kr_core.lab.state import LabState
from tests.lab.labkit import apply, client, kr_lab, leftovers, pod_manifest, unique, wait_running

pytestmark = pytest.mark.vm


def probe(name: str, src: str, dst: str, port: int, proto: str = "TCP") -> str:
    p = kr_lab("probe", "--name", name, src, dst, str(port), "--protocol", proto, "--json", "--timeout", "4",
               check=False)
    try:
        return json.loads(p.stdout).get("answer") or ""
    except ValueError:
        return ""


def test_lab_clusterip_and_nodeport_through_ipvs():
    name = unique("ipvs")
    kr_lab("down", "--name", name)
    try:
        kr_lab("up", "--name", name, "--nodes", "2", "--static-routes", "--plugins", "ipvs_proxy", timeout=300)
        apply(name, pod_manifest("web-1", node="node-1", ports=[(8080, "TCP")], labels={"app": "web"}),
              pod_manifest("web-2", node="node-2", ports=[(8080, "TCP")], labels={"app": "web"}),
              pod_manifest("client", node="node-1", ports=[(80, "TCP")], labels={"app": "client"}))
        wait_running(name, ["default/web-1", "default/web-2", "default/client"], timeout=90)
        kube = client(name)
        svc = kube.create("/api/v1/namespaces/default/services", {
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "NodePort", "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}})
        node_port = svc["spec"]["ports"][0]["nodePort"]
        answers: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(set(answers)) < 2:  # the agents converge on the Service
            answers.append(probe(name, "default/client", "svc/default/web", 80))
        got = collections.Counter(answers[-6:] + [probe(name, "default/client", "svc/default/web", 80) for _ in range(4)])
        assert {"default/web-1", "default/web-2"} <= set(got), got
        st = LabState.load(name)
        node1_ip = st.node("node-1").ip4
        ext = collections.Counter(probe(name, "ext", node1_ip, node_port) for _ in range(4))
        assert {"default/web-1", "default/web-2"} <= set(ext), ext
    finally:
        kr_lab("down", "--name", name)
    assert leftovers(name) == {}
