"""kubectl 1.32 against the embedded server (kubeconfig from ``write_kubeconfig``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from kr_core.embedded import ApiServer

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed")

MANIFEST = """
apiVersion: v1
kind: Service
metadata:
  name: web
  labels: {app: web}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: metrics, port: 9100}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web-in
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
    ports:
    - port: 80
"""

POD = """
apiVersion: v1
kind: Pod
metadata: {name: p1, labels: {app: web}}
spec:
  containers: [{name: c, image: busybox, ports: [{name: http, containerPort: 8080}]}]
"""


@pytest.fixture
def kubectl(kubeconfig: Path, tmp_path: Path) -> Any:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path)}
    env.pop("KUBERNETES_SERVICE_HOST", None)

    def run(*args: str, ok: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([KUBECTL, "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True,
                           env=env, timeout=30, input=stdin)
        if ok:
            assert p.returncode == 0, f"kubectl {' '.join(args)}: {p.stderr}"
        return p

    run.env = env  # type: ignore[attr-defined]
    return run


def test_apply_create_then_update(kubectl: Any, tmp_path: Path, server: ApiServer) -> None:
    f = tmp_path / "m.yaml"
    f.write_text(MANIFEST)
    out = kubectl("apply", "-f", str(f))
    assert "service/web created" in out.stdout and "networkpolicy.networking.k8s.io/web-in created" in out.stdout
    assert out.stderr == ""
    f.write_text(MANIFEST.replace("port: 9100", "port: 9200").replace("cidr: 10.0.0.0/8", "cidr: 10.0.0.0/9"))
    out = kubectl("apply", "-f", str(f))
    assert "service/web configured" in out.stdout and "web-in configured" in out.stdout, out
    svc = json.loads(kubectl("get", "svc", "web", "-o", "json").stdout)
    assert [p["port"] for p in svc["spec"]["ports"]] == [80, 9200]
    assert svc["spec"]["clusterIP"].startswith("10.")
    assert "kubectl.kubernetes.io/last-applied-configuration" in svc["metadata"]["annotations"]
    np = yaml.safe_load(kubectl("get", "netpol", "web-in", "-o", "yaml").stdout)
    assert np["spec"]["ingress"][0]["from"][0]["ipBlock"]["cidr"] == "10.0.0.0/9"
    assert np["spec"]["policyTypes"] == ["Ingress"]
    assert "unchanged" in kubectl("apply", "-f", str(f)).stdout
    # removing a port from the file removes it from the object (the strategic merge $patch: delete)
    f.write_text(MANIFEST.replace("  - {name: metrics, port: 9100}\n", "").replace("name: http, ", ""))
    kubectl("apply", "-f", str(f))
    svc = json.loads(kubectl("get", "svc", "web", "-o", "json").stdout)
    assert [p["port"] for p in svc["spec"]["ports"]] == [80]
    out = kubectl("delete", "-f", str(f))
    assert 'service "web" deleted' in out.stdout
    assert kubectl("get", "svc,netpol", "-o", "name").stdout.strip() == ""


def test_invalid_manifest_is_rejected(kubectl: Any, tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(MANIFEST.replace("cidr: 10.0.0.0/8", "cidr: 10.0.0.0/40"))
    out = kubectl("apply", "-f", str(f), ok=False)
    assert out.returncode != 0
    assert "spec.ingress[0].from[0].ipBlock.cidr" in out.stderr and "must be a valid CIDR" in out.stderr


def test_create_get_label_annotate_patch(kubectl: Any, tmp_path: Path) -> None:
    f = tmp_path / "pod.yaml"
    f.write_text(POD)
    assert "pod/p1 created" in kubectl("create", "-f", str(f)).stdout
    assert "AlreadyExists" in kubectl("create", "-f", str(f), ok=False).stderr
    kubectl("create", "namespace", "team")
    kubectl("label", "pod", "p1", "tier=fe")
    kubectl("annotate", "pod", "p1", "note=hello")
    kubectl("patch", "pod", "p1", "-p", '{"metadata":{"labels":{"x":"1"}}}')
    kubectl("patch", "pod", "p1", "--type=merge", "-p", '{"metadata":{"labels":{"y":"2"}}}')
    kubectl("patch", "pod", "p1", "--type=json", "-p", '[{"op":"remove","path":"/metadata/labels/x"}]')
    kubectl("label", "pod", "p1", "y-")
    obj = yaml.safe_load(kubectl("get", "pod", "p1", "-o", "yaml").stdout)
    assert obj["metadata"]["labels"] == {"app": "web", "tier": "fe"}
    assert obj["metadata"]["annotations"] == {"note": "hello"}
    wide = kubectl("get", "pods", "-o", "wide").stdout.splitlines()
    assert wide[0].split()[:6] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP"]
    assert wide[1].split()[:3] == ["p1", "0/1", "Pending"]
    listed = json.loads(kubectl("get", "pods", "-l", "tier=fe", "-o", "json").stdout)
    assert listed["kind"] == "List" and [i["metadata"]["name"] for i in listed["items"]] == ["p1"]
    assert "team" in kubectl("get", "ns").stdout
    # typed generators send protobuf bodies
    kubectl("create", "service", "nodeport", "np", "--tcp=80:8080", "--node-port=30080", "-n", "team")
    svc = json.loads(kubectl("get", "svc", "np", "-n", "team", "-o", "json").stdout)
    assert svc["spec"]["ports"][0]["nodePort"] == 30080 and svc["spec"]["ports"][0]["targetPort"] == 8080
    assert svc["spec"]["selector"] == {"app": "np"} and svc["spec"]["clusterIP"].startswith("10.")
    assert kubectl("get", "pods", "-l", "tier=be").stderr.startswith("No resources found")
    kubectl("get", "all", "-A")
    assert kubectl("get", "pod", "nope", ok=False).stderr.strip() == 'Error from server (NotFound): pods "nope" not found'
    kubectl("delete", "pod", "p1")


def test_get_watch(kubectl: Any, tmp_path: Path) -> None:
    f = tmp_path / "pod.yaml"
    f.write_text(POD)
    kubectl("create", "-f", str(f))
    proc = subprocess.Popen([KUBECTL, "get", "pods", "-w", "--no-headers"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=kubectl.env)
    guard = threading.Timer(20, proc.kill)  # never hang the suite on a missing line
    guard.start()
    try:
        first = proc.stdout.readline()  # type: ignore[union-attr]
        assert first.split()[:3] == ["p1", "0/1", "Pending"]
        time.sleep(0.3)
        kubectl("label", "pod", "p1", "w=1")
        second = proc.stdout.readline()  # type: ignore[union-attr]
        assert second.split()[0] == "p1"
    finally:
        guard.cancel()
        proc.kill()
        proc.wait(timeout=5)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
