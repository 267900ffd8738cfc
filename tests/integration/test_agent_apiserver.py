"""`kr run --kubeconfig` against `kr apiserver`: every kubectl change reaches the plugins, the agent survives an
API server restart, `kr state` reports, SIGTERM stops cleanly, `kr cleanup` removes what a plugin installed.

Uses the example third-party plugin (hostsfile), whose output (a hosts file) shows what the agent saw.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kr_core.embedded import ApiServer
from kr_core.net import netns

from ..conftest import free_port

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="kr run needs root")

KR = [sys.executable, "-m", "kr_core.cli"]



def _wait(pred, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    r = subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), *args], input=stdin, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, f"kubectl {' '.join(args)}: {r.stderr}"
    return r.stdout


SERVICE = """
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:
  selector: {{app: {name}}}
  ports: [{{port: 80, targetPort: 8080}}]
"""


@pytest.fixture
def cluster(tmp_path: Path):
    port = free_port()
    data = tmp_path / "api.db"
    srv = ApiServer(data_path=str(data), host="127.0.0.1", port=port, bookmark_interval=1.0)
    srv.start()
    kubeconfig = tmp_path / "kubeconfig"
    srv.write_kubeconfig(str(kubeconfig))
    state = {"srv": srv}

    def restart() -> None:
        state["srv"].stop()
        time.sleep(0.5)
        state["srv"] = ApiServer(data_path=str(data), host="127.0.0.1", port=port, bookmark_interval=1.0)
        state["srv"].start()

    yield kubeconfig, restart
    state["srv"].stop()


def test_kr_run_sees_kubectl_changes_and_survives_apiserver_restart(cluster, tmp_path):
    kubeconfig, restart = cluster
    hosts = tmp_path / "services.hosts"
    hp = free_port()
    cfg = tmp_path / "kr.yaml"
    cfg.write_text(f"plugins:\n  enabled: [hostsfile]\nhealth-addr: 127.0.0.1\nhealth-port: {hp}\n"
                   f"hostsfile:\n  path: {hosts}\n")
    log = open(tmp_path / "agent.log", "w")
    agent = subprocess.Popen(KR + ["run", "--kubeconfig", str(kubeconfig), "--config", str(cfg),
                                   "--hostname-override", "node-1", "--state-dir", str(tmp_path / "state")],
                             stdout=log, stderr=subprocess.STDOUT)
    try:
        _kubectl(kubeconfig, "create", "namespace", "shop")
        _kubectl(kubeconfig, "apply", "-f", "-", stdin=SERVICE.format(name="web", ns="shop"))
        _wait(lambda: hosts.exists() and "web.shop.svc.cluster.local" in hosts.read_text(), what="web in hosts")
        ip = _kubectl(kubeconfig, "get", "svc", "-n", "shop", "web", "-o", "jsonpath={.spec.clusterIP}")
        assert f"{ip}\tweb.shop.svc.cluster.local" in hosts.read_text()

        _kubectl(kubeconfig, "apply", "-f", "-", stdin=SERVICE.format(name="api", ns="default"))
        _wait(lambda: "api.default.svc" in hosts.read_text(), what="api in hosts")
        _kubectl(kubeconfig, "label", "svc", "-n", "shop", "web", "tier=front")
        _kubectl(kubeconfig, "delete", "svc", "-n", "default", "api")
        _wait(lambda: "api.default.svc" not in hosts.read_text(), what="api gone from hosts")

        out = subprocess.run(KR + ["state", "--addr", f"127.0.0.1:{hp}"], capture_output=True, text=True,
                             timeout=30).stdout
        assert "== hostsfile (service-hosts)" in out and "services: 1" in out

        # the API server goes away and comes back (same data): the agent resumes watching
        restart()
        _kubectl(kubeconfig, "apply", "-f", "-", stdin=SERVICE.format(name="late", ns="shop"))
        _wait(lambda: "late.shop.svc" in hosts.read_text(), timeout=40, what="late in hosts after the restart")
        assert "web.shop.svc" in hosts.read_text()

        assert agent.poll() is None
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=20) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        log.close()
    text = (tmp_path / "agent.log").read_text()
    assert "shutting down" in text
    r = subprocess.run(KR + ["cleanup", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert not hosts.exists()
    assert "plugin hostsfile: cleaned up" in r.stderr and "nft_netpol" not in r.stderr
    # --all-installed also cleans plugins the selection leaves out (the other network-policy backend, ...);
    # every dataplane's cleanup runs, so do it in a throwaway network namespace
    with netns.temporary("krclean") as ns:
        r = subprocess.run(["ip", "netns", "exec", ns, *KR, "cleanup", "--config", str(cfg), "--all-installed"],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "plugin nft_netpol: cleaned up" in r.stderr and "plugin netpol_iptables: cleaned up" in r.stderr


def test_kr_run_unreachable_apiserver_fails_with_cache_sync_timeout(tmp_path):
    port = free_port()  # nothing listens there
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
users: [{{name: u, user: {{}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
""")
    cfg = tmp_path / "kr.yaml"
    cfg.write_text(f"plugins:\n  enabled: [hostsfile]\nhealth-port: 0\nhostsfile:\n  path: {tmp_path / 'h'}\n")
    r = subprocess.run(KR + ["run", "--kubeconfig", str(kubeconfig), "--config", str(cfg), "--cache-sync-timeout=2s"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "caches did not sync within 2s" in r.stderr


def test_kr_run_missing_kubeconfig(tmp_path):
    cfg = tmp_path / "kr.yaml"
    cfg.write_text(f"plugins:\n  enabled: [hostsfile]\nhealth-port: 0\nhostsfile:\n  path: {tmp_path / 'h'}\n")
    r = subprocess.run(KR + ["run", "--kubeconfig", str(tmp_path / "nope"), "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert f"kubeconfig '{tmp_path / 'nope'}' does not exist" in r.stderr
