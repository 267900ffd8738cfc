"""``kr apiserver`` (``python -m kr_core.embedded``): flags, kubeconfig, token, clean shutdown."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from kubernetes import client, config

from kr_core.embedded.cli import main, split_listen


def test_split_listen() -> None:
    assert split_listen("127.0.0.1:6443") == ("127.0.0.1", 6443)
    assert split_listen("[::1]:0") == ("::1", 0)


def test_non_loopback_needs_token(capsys: object) -> None:
    assert main(["--listen", "0.0.0.0:0"]) == 2


def test_run_write_kubeconfig_token_and_persist(tmp_path: Path) -> None:
    kc, data, tok = tmp_path / "kc", tmp_path / "db.sqlite", tmp_path / "token"
    tok.write_text("t0ken\n")

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", "kr_core.embedded", "--listen", "127.0.0.1:0",
                                 "--data", str(data), "--token-file", str(tok), "--write-kubeconfig", str(kc),
                                 "--bookmark-interval", "1", "--history", "100",
                                 "--service-cluster-ip-range", "10.100.0.0/16", "--cluster-cidr", "10.50.0.0/16"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while not kc.exists() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()  # type: ignore[union-attr]
            time.sleep(0.05)
        return proc

    def stop(proc: subprocess.Popen[bytes]) -> int:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=10)
        finally:
            proc.stdout.close()  # type: ignore[union-attr]

    proc = start()
    try:
        cfg = yaml.safe_load(kc.read_text())
        assert cfg["users"][0]["user"]["token"] == "t0ken"
        assert (kc.stat().st_mode & 0o777) == 0o600
        api = config.new_client_from_config(str(kc))
        core = client.CoreV1Api(api)
        svc = core.create_namespaced_service("default", {"metadata": {"name": "s"}, "spec": {"ports": [{"port": 1}]}})
        assert svc.spec.cluster_ip.startswith("10.100.")
        assert core.create_node({"metadata": {"name": "n"}}).spec.pod_cidr == "10.50.0.0/24"
        api.close()
    finally:
        assert stop(proc) == 0
    kc.unlink()
    proc = start()
    try:
        api = config.new_client_from_config(str(kc))
        assert client.CoreV1Api(api).read_namespaced_service("s", "default").spec.cluster_ip == svc.spec.cluster_ip
        api.close()
    finally:
        assert stop(proc) == 0
