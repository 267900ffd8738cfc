"""``kr demo``: runs to completion on what exists; and its plugin steps pass against a dataplane that does what
the plugins will do (faked here with static routes and plain iptables), so each plugin issue only has to make
its own step pass."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from kr_core.lab import demo, lab
from kr_core.lab.kube import ApiError, Kube
from tests.lab.labkit import REPO, leftovers, unique

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (network namespaces)"),
]


def test_demo_runs_to_completion():
    name = unique("d")
    p = subprocess.run([sys.executable, "-m", "kr_core.lab.demo", "--name", name, "--vm", "never"],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    out = p.stdout
    assert p.returncode == 0, out + p.stderr
    for text in ("== plugins", "== lab: 2 nodes", "the lab kubelets started all four pods",
                 "pod-to-pod reachability", "== tear down", "kr demo: done"):
        assert text in out
    for role, plugin in (("pod routing", "bgp_routing"), ("service proxy", "ipvs_proxy")):
        impl = next(x for x in demo.load_plugins() if x.name == plugin).implemented
        assert (f"SKIP  {role}: {plugin} is a skeleton" in out) is (not impl)
    assert leftovers(name) == {}


def _fake_policy(kube: Kube, node_ns: str, src_ip: str, dst_ip: str, stop: threading.Event) -> None:
    """What a network-policy plugin would do for demo/web-from-client, as one plain iptables rule."""
    while not stop.is_set():
        try:
            kube.get(f"/apis/networking.k8s.io/v1/namespaces/{demo.DEMO_NS}/networkpolicies/web-from-client")
        except (ApiError, OSError):
            time.sleep(0.1)
            continue
        subprocess.run(["ip", "netns", "exec", node_ns, "iptables", "-I", "FORWARD", "-s", src_ip, "-d", dst_ip,
                        "-p", "tcp", "--dport", "80", "-j", "DROP"], check=True)
        return


def test_demo_steps_pass_against_a_faked_dataplane():
    name = unique("f")
    lab.down(name)
    lines: list[str] = []
    d = demo.Demo(name, lines.append, [
        demo.PluginView("fake_routing", "pod-routing", True, True),
        demo.PluginView("fake_proxy", "service-proxy", True, True),
        demo.PluginView("fake_policy", "network-policy", True, True),
    ])
    stop = threading.Event()
    try:
        d.st = lab.up(name, 2, plugins=[], static_routes=True)  # "routing": static routes
        kube = Kube.from_kubeconfig(str(d.st.kubeconfig))
        demo.deploy(d, kube)
        pods = {p["metadata"]["name"]: p["status"]["podIP"]
                for p in kube.get(f"/api/v1/namespaces/{demo.DEMO_NS}/pods")["items"]}
        cip = kube.get(f"/api/v1/namespaces/{demo.DEMO_NS}/services/web")["spec"]["clusterIP"]
        node1 = d.st.node("node-1").netns
        # "service proxy": round-robin DNAT of the ClusterIP on node-1 (where client runs)
        for i, web in enumerate(("web-1", "web-2")):
            stat = ["-m", "statistic", "--mode", "nth", "--every", "2", "--packet", "0"] if i == 0 else []
            subprocess.run(["ip", "netns", "exec", node1, "iptables", "-t", "nat", "-A", "PREROUTING", "-d", cip,
                            "-p", "tcp", "--dport", "80", *stat, "-j", "DNAT", "--to-destination", f"{pods[web]}:80"],
                           check=True)
        t = threading.Thread(target=_fake_policy, args=(kube, node1, pods["other"], pods["web-1"], stop), daemon=True)
        t.start()
        demo.routing(d, kube)
        demo.service(d, kube)
        demo.policy(d, kube)
    finally:
        stop.set()
        lab.down(name)
    text = "\n".join(lines)
    assert d.failures == [], text
    assert "SKIP" not in text
    assert "both backends answered through the ClusterIP, taking turns" in text
    assert "other (node-1) reached web-1 before the policy and is blocked now" in text
    assert leftovers(name) == {}
