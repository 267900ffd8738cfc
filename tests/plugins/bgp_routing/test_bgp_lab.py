"""End to end on the lab (`kr lab`): 3 nodes running `kr run` with bgp_routing, pods, BIRD in ``ext``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.lab.labkit import apply, client, kr_lab, pod_manifest, unique, wait_running

from .netlab import wait_for

pytestmark = pytest.mark.root


def _state(name: str, node: str) -> dict:  # type: ignore[type-arg]
    p = kr_lab("exec", "--name", name, node, "--", str(Path(sys.executable).parent / "kr"), "state", "--json",
               check=False)
    if p.returncode != 0:
        return {}
    return json.loads(p.stdout)["plugins"]["bgp_routing"]["state"]


def _probe(name: str, src: str, dst: str) -> bool:
    return kr_lab("probe", "--name", name, src, dst, "80", "--timeout", "1", check=False).returncode == 0


def test_lab_pod_routing_bird_restart_delete(netlab_factory) -> None:  # type: ignore[no-untyped-def]
    """(``netlab_factory`` only for its tool checks: it skips without root, gobgpd or BIRD.)"""
    from kr_core.lab.state import LabState

    name = unique("bgp")
    cfg = Path(tempfile.mkdtemp(prefix="krbgp-lab-")) / "kr.yaml"
    cfg.write_text('bgp_routing:\n  cni_conf_file: "{state_dir}/10-kuberouter.conf"\n')
    bird = None
    try:
        kr_lab("up", "--name", name, "--nodes", "3", "--plugins", "bgp_routing", "--config", str(cfg))
        st = LabState.load(name)
        assert st is not None
        apply(name, *(pod_manifest(p, node=f"node-{i}") for i, p in enumerate("abc", 1)))
        wait_running(name, ["default/a", "default/b", "default/c"])
        wait_for(lambda: all(_probe(name, "default/a", f"default/{p}") for p in "bc"), 30, "a reaches b and c")
        # node-3 and node-2 learn each other's CIDR independently of node-1: wait, do not probe once
        wait_for(lambda: _probe(name, "default/c", "default/b"), 30, "c reaches b")

        # BIRD in ext; the nodes get it as an external peer through an annotation, applied live
        ext_ip = st.ext_ip4
        tmp = Path(tempfile.mkdtemp(prefix="krbgp-bird-"))
        peers = "".join(f"protocol bgp n{i} from k8s {{ neighbor {n.ip4} as 64512; }}\n" for i, n in enumerate(st.nodes))
        (tmp / "bird.conf").write_text(
            f"router id {ext_ip};\nprotocol device {{ }}\ntemplate bgp k8s {{ local {ext_ip} as 64600; "
            f"ipv4 {{ import all; export none; }}; hold time 9; connect retry time 1; }}\n{peers}")
        sock = str(tmp / "bird.ctl")
        bird = subprocess.Popen(["ip", "netns", "exec", st.ns("ext"), "bird", "-f", "-c", str(tmp / "bird.conf"),
                                 "-s", sock], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        kube = client(name)
        for n in st.nodes:
            kube.patch(f"/api/v1/nodes/{n.name}", {"metadata": {"annotations": {
                "kube-router.io/peers": f"- remoteip: {ext_ip}\n  remoteasn: 64600\n",
                "kube-router.io/node.bgp.communities": "64600:1"}}})

        def bird_cidrs() -> set[str]:
            out = subprocess.run(["birdc", "-s", sock, "show", "route"], capture_output=True, text=True).stdout
            return {line.split()[0] for line in out.splitlines() if line[:1].isdigit()}

        want = {c for n in st.nodes for c in n.pod_cidrs}
        wait_for(lambda: want <= bird_cidrs(), 30, "BIRD has every node's pod CIDR")

        # route-reflector topology, applied live: node-1 reflects, node-2 and node-3 peer only with it
        kube.patch("/api/v1/nodes/node-1", {"metadata": {"annotations": {"kube-router.io/rr.server": "1"}}})
        for n in ("node-2", "node-3"):
            kube.patch(f"/api/v1/nodes/{n}", {"metadata": {"annotations": {"kube-router.io/rr.client": "1"}}})

        def peers(node: str) -> dict[str, str]:
            items = _state(name, node).get("items") or []
            return {i["address"]: i["state"] for i in items if i.get("kind") == "peer"}

        n1_ip = st.nodes[0].ip4
        wait_for(lambda: set(peers("node-2")) == {n1_ip, ext_ip}, 15, "node-2 peers only with the reflector and ext")
        wait_for(lambda: peers("node-2").get(n1_ip) == "ESTABLISHED", 30, "node-2 -> reflector established")
        wait_for(lambda: _probe(name, "default/b", "default/c"), 30, "b reaches c through reflected routes")

        # kill -9 gobgpd on node-1: restarted, routes back, pods reach each other again
        pid = _state(name, "node-1")["summary"]["gobgpd_pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: (_state(name, "node-1").get("summary") or {}).get("gobgpd_restarts") == 1, 15, "restart")
        wait_for(lambda: (_state(name, "node-1").get("summary") or {}).get("established") == 3, 30, "sessions back")
        wait_for(lambda: _probe(name, "default/b", "default/c"), 30, "b reaches c again (reflector back)")
        wait_for(lambda: _probe(name, "default/a", "default/b"), 15, "a reaches b again")

        # node-3 deleted: its pod CIDR leaves node-1's kernel and BIRD
        c3 = st.nodes[2].pod_cidrs[0]
        kube.delete("/api/v1/nodes/node-3")
        wait_for(lambda: c3.split("/")[0] not in kr_lab("exec", "--name", name, "node-1", "--", "ip", "route").stdout,
                 15, "node-3's route withdrawn on node-1")
        assert _probe(name, "default/a", "default/b")
    finally:
        if bird is not None:
            os.kill(bird.pid, signal.SIGKILL)
            bird.wait(5)
        kr_lab("down", "--name", name, check=False)


def test_lab_dual_stack(netlab_factory) -> None:  # type: ignore[no-untyped-def]
    """IPv6 pod CIDRs ride the IPv4 sessions (kube-router: one session per peer carrying both AFIs)."""
    name = unique("six")
    cfg = Path(tempfile.mkdtemp(prefix="krbgp-lab-")) / "kr.yaml"
    cfg.write_text('bgp_routing:\n  cni_conf_file: "{state_dir}/10-kuberouter.conf"\n')
    try:
        kr_lab("up", "--name", name, "--nodes", "2", "--ipv6", "--plugins", "bgp_routing", "--config", str(cfg))
        apply(name, pod_manifest("a", node="node-1"), pod_manifest("b", node="node-2"))
        wait_running(name, ["default/a", "default/b"])
        for fam in ("4", "6"):
            wait_for(lambda f=fam: kr_lab("probe", "--name", name, "default/a", "default/b", "80", "--family", f,
                                          "--timeout", "1", check=False).returncode == 0, 30, f"IPv{fam} a -> b")
    finally:
        kr_lab("down", "--name", name, check=False)
