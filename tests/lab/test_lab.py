"""End-to-end tests of the lab: real namespaces, a real API server, kubelets, agents, probes.

One lab (2 nodes, ``--static-routes``) serves most tests of this module; the tests that crash or add
labs bring up their own, small ones. Every lab is torn down in a finalizer, and the teardown is checked
to leave nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from kr_core.lab.state import LabState
from tests.lab.labkit import (
    REPO,
    apply,
    client,
    delete_pods,
    kr_lab,
    kubectl,
    leftovers,
    pod_manifest,
    unique,
    wait_running,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (network namespaces)"),
]

LAB = unique("a")


@pytest.fixture(scope="module")
def lab():
    kr_lab("down", "--name", LAB)
    try:
        # the lab itself is under test here, not the dataplane plugins: only the example plugin runs
        kr_lab("up", "--name", LAB, "--nodes", "2", "--static-routes", "--plugins", "hostsfile")
        apply(LAB,
              pod_manifest("a", node="node-1", ports=[(80, "TCP"), (53, "UDP")]),
              pod_manifest("b", node="node-1"),
              pod_manifest("c", node="node-2"),
              pod_manifest("free"))  # no node: the lab scheduler binds it
        pods = wait_running(LAB, ["default/a", "default/b", "default/c", "default/free"])
        yield pods
    finally:
        kr_lab("down", "--name", LAB, check=False)
        assert leftovers(LAB) == {}


def probe(*args: str) -> tuple[int, dict]:
    p = kr_lab("probe", "--name", LAB, *args, "--json", check=False)
    assert p.returncode in (0, 1), p.stderr
    return p.returncode, json.loads(p.stdout)


def test_status_kubeconfig_and_scheduler(lab):
    assert lab["default/free"]["spec"]["nodeName"] in ("node-1", "node-2")
    st = json.loads(kr_lab("status", "--name", LAB, "--json").stdout)
    assert [n["name"] for n in st["nodes"]] == ["node-1", "node-2"]
    assert all(n["agent"]["running"] and n["agent"]["healthy"] and n["kubelet"]["running"] for n in st["nodes"])
    assert {p["pod"] for p in st["pods"]} >= {"default/a", "default/b", "default/c", "default/free"}
    assert kr_lab("kubeconfig", "--name", LAB).stdout.strip() == str(LabState.load(LAB).kubeconfig)
    text = kr_lab("status", "--name", LAB).stdout
    assert "healthy" in text and "default/a" in text
    nodes = client(LAB).get("/api/v1/nodes")["items"]
    assert all(n["spec"]["podCIDR"] and n["status"]["addresses"][0]["type"] == "InternalIP" for n in nodes)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl(lab):
    out = kubectl(LAB, "get", "pods", "-o", "wide")
    assert "Running" in out and "node-1" in out
    nodes = json.loads(kubectl(LAB, "get", "nodes", "-o", "json"))["items"]
    assert [n["metadata"]["name"] for n in nodes] == ["node-1", "node-2"]
    kubectl(LAB, "run", "kc", "--image=lab", "--port=8081", "--overrides",
            json.dumps({"spec": {"nodeName": "node-1"}}))
    wait_running(LAB, ["default/kc"])
    rc, r = probe("default/a", "default/kc", "8081")
    assert rc == 0 and r["answer"] == "default/kc"
    kubectl(LAB, "delete", "pod", "kc")


def test_official_python_client_through_host_kubeconfig(lab):
    from kubernetes import client, config, watch

    api = client.CoreV1Api(config.new_client_from_config(str(LabState.load(LAB).kubeconfig)))
    assert [n.metadata.name for n in api.list_node().items] == ["node-1", "node-2"]
    pods = {p.metadata.name: p for p in api.list_namespaced_pod("default").items}
    assert pods["a"].status.phase == "Running" and pods["a"].status.pod_ip
    events = [ev["object"].metadata.name for ev in watch.Watch().stream(api.list_namespaced_pod, "default",
                                                                          timeout_seconds=1)]
    assert "a" in events


def test_pod_status_and_netns(lab):
    a, c = lab["default/a"], lab["default/c"]
    node1 = LabState.load(LAB).node("node-1")
    assert a["status"]["hostIP"] == node1.ip4
    assert a["status"]["conditions"][-1] == {**a["status"]["conditions"][-1], "type": "Ready", "status": "True"}
    out = kr_lab("exec", "--name", LAB, "default/a", "--", "ip", "-4", "-o", "addr", "show", "eth0").stdout
    assert a["status"]["podIP"] + "/" in out
    assert c["status"]["podIP"] != a["status"]["podIP"]
    assert "kube-bridge" in kr_lab("exec", "--name", LAB, "node-1", "--", "ip", "link").stdout


def test_probe_same_node_tcp_udp(lab):
    rc, r = probe("default/b", "default/a", "80")
    assert rc == 0 and r["connected"] and r["answer"] == "default/a"
    rc, r = probe("default/a", "default/b", "80")
    assert rc == 0 and r["answer"] == "default/b"
    rc, r = probe("default/b", "default/a", "53", "--protocol", "UDP")
    assert rc == 0 and r["answer"] == "default/a"
    rc, r = probe("default/b", lab["default/a"]["status"]["podIP"], "80")
    assert rc == 0 and r["answer"] == "default/a"
    # a port nobody listens on is blocked (refused), quickly reported as such
    rc, r = probe("default/b", "default/a", "81", "--timeout", "0.5")
    assert rc == 1 and not r["connected"]


def test_probe_cross_node_with_static_routes(lab):
    rc, r = probe("default/a", "default/c", "80")
    assert rc == 0 and r["answer"] == "default/c"
    rc, r = probe("ext", "default/c", "80")
    assert rc == 0 and r["answer"] == "default/c"


def test_matrix_json_and_text(lab):
    m = json.loads(kr_lab("matrix", "--name", LAB, "--json").stdout)
    assert m["port"] == 80 and m["protocol"] == "TCP" and m["to"] == "pod"
    keys = ["default/a", "default/b", "default/c", "default/free"]
    assert sorted(m["reachable"]) == keys
    assert all(m["reachable"][x][y] for x in keys for y in keys), m
    text = kr_lab("matrix", "--name", LAB).stdout
    assert "default/a" in text and "X" not in text.split("\n", 1)[1]


def test_matrix_to_services_and_probe_service(lab):
    """Columns are the Services with the port; whether they answer depends on the service-proxy plugin."""
    client(LAB).create("/api/v1/namespaces/default/services", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "ab"},
        "spec": {"selector": {"app": "a"}, "ports": [{"port": 80}]}})
    m = json.loads(kr_lab("matrix", "--name", LAB, "--to", "service", "--timeout", "0.3", "--json").stdout)
    assert m["to"] == "service" and set(m["reachable"]["default/a"]) == {"default/ab"}
    rc, r = probe("default/b", "svc/default/ab", "80", "--timeout", "0.3")
    assert r["expected"] == ["default/a"] and r["to"] == "svc/default/ab" and rc == (0 if r["connected"] else 1)


def test_drop_is_reported_blocked(lab):
    """A plain iptables DROP in node-1's FORWARD chain blocks bridged (br_netfilter) and routed traffic."""
    node_ns = LabState.load(LAB).node("node-1").netns
    subprocess.run(["ip", "netns", "exec", node_ns, "iptables", "-I", "FORWARD", "-j", "DROP"], check=True)
    try:
        rc, r = probe("default/b", "default/a", "80", "--timeout", "1")
        assert rc == 1 and not r["connected"] and r["error"] == "timed out"
        m = json.loads(kr_lab("matrix", "--name", LAB, "--namespaces", "default", "--timeout", "1", "--json").stdout)
        reach = m["reachable"]
        assert reach["default/a"]["default/b"] is False and reach["default/b"]["default/a"] is False
        assert reach["default/a"]["default/c"] is False and reach["default/c"]["default/a"] is False
        assert reach["default/a"]["default/a"] is True  # to itself: never forwarded
    finally:
        subprocess.run(["ip", "netns", "exec", node_ns, "iptables", "-D", "FORWARD", "-j", "DROP"], check=True)
    rc, _ = probe("default/b", "default/a", "80")
    assert rc == 0


def test_host_network_pod_and_teardown(lab):
    apply(LAB, pod_manifest("hn", node="node-2", ports=[(8080, "TCP")], host_network=True),
          pod_manifest("gone", node="node-2"))
    pods = wait_running(LAB, ["default/hn", "default/gone"])
    node2 = LabState.load(LAB).node("node-2")
    assert pods["default/hn"]["status"]["podIP"] == node2.ip4
    rc, r = probe("default/a", "default/hn", "8080")
    assert rc == 0 and r["answer"] == "default/hn"
    before = set(os.listdir("/run/netns"))
    delete_pods(LAB, "default/gone", "default/hn")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and set(os.listdir("/run/netns")) == before:
        time.sleep(0.1)
    gone = before - set(os.listdir("/run/netns"))
    assert len(gone) == 1 and next(iter(gone)).startswith(f"{LAB}-p-")
    rc, r = probe("default/a", node2.ip4, "8080", "--timeout", "0.5")
    assert rc == 1


def test_two_labs_coexist_and_no_fake_routing(lab):
    """A second lab next to the module's: its own addresses and namespaces; without --static-routes (and with no
    routing plugin implemented) cross-node pod traffic does not flow."""
    other = unique("b")
    kr_lab("down", "--name", other)
    try:
        kr_lab("up", "--name", other, "--nodes", "2", "--plugins", "hostsfile")
        a, b = LabState.load(LAB), LabState.load(other)
        assert a.net4 != b.net4 and a.cluster_cidr != b.cluster_cidr and a.service_cidr != b.service_cidr
        apply(other, pod_manifest("x", node="node-1"), pod_manifest("y", node="node-1"), pod_manifest("z", node="node-2"))
        wait_running(other, ["default/x", "default/y", "default/z"])
        m = json.loads(kr_lab("matrix", "--name", other, "--timeout", "1", "--json").stdout)["reachable"]
        assert m["default/x"]["default/y"] and m["default/y"]["default/x"]
        assert not m["default/x"]["default/z"] and not m["default/z"]["default/x"]
        # the first lab still works
        rc, _ = probe("default/a", "default/c", "80")
        assert rc == 0
    finally:
        kr_lab("down", "--name", other)
    assert leftovers(other) == {}
    assert LabState.load(LAB) is not None


def test_kill9_agent_then_down_leaves_nothing():
    name = unique("k")
    kr_lab("down", "--name", name)
    try:
        kr_lab("up", "--name", name, "--nodes", "1")
        st = LabState.load(name)
        agent = st.procs("agent")[0]
        os.kill(agent.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while agent.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        s = json.loads(kr_lab("status", "--name", name, "--json").stdout)
        assert s["nodes"][0]["agent"]["running"] is False
        assert "NOT RUNNING" in kr_lab("status", "--name", name).stdout
    finally:
        kr_lab("down", "--name", name)
    assert leftovers(name) == {}
    assert "nothing to remove" in kr_lab("down", "--name", name).stdout  # idempotent


def test_kill9_of_up_then_down_leaves_nothing():
    name = unique("u")
    kr_lab("down", "--name", name)
    p = subprocess.Popen([sys.executable, "-m", "kr_core.lab.cli", "up", "--name", name, "--nodes", "2"],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # kill it once the control plane runs (mid-way through the node set-up)
        assert p.stdout is not None
        for line in p.stdout:
            if "API server up" in line:
                break
        p.kill()
        p.wait()
        assert leftovers(name)  # it did leave things behind...
    finally:
        p.kill()
        kr_lab("down", "--name", name)
    assert leftovers(name) == {}  # ...and down removed them all
