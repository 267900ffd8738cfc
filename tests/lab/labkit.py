"""Helpers for the lab tests: run ``kr lab``, wait for pods, and list what a lab left behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kr_core.lab.kube import Kube
from kr_core.lab.state import LabState, lab_netns_re, state_dir

REPO = Path(__file__).resolve().parents[2]


def unique(suffix: str) -> str:
    """A lab name of this test run (``t<pid><suffix>``), so concurrent test runs on one machine never share a
    lab; labs of test runs that died are removed first."""
    reap_stale()
    name = f"t{os.getpid()}{suffix}"
    assert len(name) <= 10 and suffix.isalpha()
    return name


def reap_stale() -> None:
    from kr_core.lab import lab
    from kr_core.lab.state import existing_labs

    for other in existing_labs():
        m = re.match(r"^t(\d+)[a-z]+$", other)
        if m and int(m.group(1)) != os.getpid() and not os.path.exists(f"/proc/{m.group(1)}"):
            lab.down(other)


def kr_lab(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``kr lab ARGS`` (through ``python -m``, so it works before ``kr lab`` is routed in kr_core/cli.py)."""
    p = subprocess.run([sys.executable, "-m", "kr_core.lab.cli", *args], capture_output=True, text=True,
                       timeout=timeout, cwd=REPO)
    if check and p.returncode != 0:
        raise AssertionError(f"kr lab {' '.join(args)}: exit {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def kubectl(name: str, *args: str, stdin: str | None = None) -> str:
    p = subprocess.run([sys.executable, "-m", "kr_core.lab.cli", "kubectl", "--name", name, "--", *args],
                       capture_output=True, text=True, input=stdin, timeout=60, cwd=REPO)
    assert p.returncode == 0, f"kubectl {' '.join(args)}: {p.stderr}"
    return p.stdout


def pod_manifest(name: str, *, ns: str = "default", node: str | None = None, ports: list[tuple[int, str]] | None = None,
                 labels: dict[str, str] | None = None, host_network: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "lab", "ports": [
        {"containerPort": p, "protocol": proto} for p, proto in (ports or [(80, "TCP")])]}]}
    if node:
        spec["nodeName"] = node
    if host_network:
        spec["hostNetwork"] = True
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels or {"app": name}}, "spec": spec}


def client(name: str) -> Kube:
    st = LabState.load(name)
    assert st is not None, f"no lab {name}"
    return Kube.from_kubeconfig(str(st.kubeconfig))


def apply(name: str, *objs: dict[str, Any]) -> None:
    """Create the objects: with kubectl when it is installed (what users do), else through the API directly."""
    if shutil.which("kubectl"):
        # YAML documents written as JSON: quoted strings (a label "y" must not become a YAML 1.1 bool for kubectl)
        kubectl(name, "apply", "-f", "-", stdin="".join(f"---\n{json.dumps(o)}\n" for o in objs))
        return
    kube = client(name)
    for o in objs:
        kube.create(f"/api/v1/namespaces/{o['metadata'].get('namespace', 'default')}/pods", o)


def delete_pods(name: str, *keys: str) -> None:
    kube = client(name)
    for key in keys:
        ns, _, pod = key.partition("/")
        kube.delete(f"/api/v1/namespaces/{ns}/pods/{pod}")


def wait_running(name: str, keys: list[str], timeout: float = 30) -> dict[str, dict[str, Any]]:
    """Wait until every ``ns/name`` pod is Running with an IP; returns them by key."""
    kube = client(name)
    deadline = time.monotonic() + timeout
    got: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        got = {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p
               for p in kube.get("/api/v1/pods").get("items") or []}
        if all(k in got and (got[k].get("status") or {}).get("phase") == "Running"
               and (got[k].get("status") or {}).get("podIP") for k in keys):
            return got
        time.sleep(0.2)
    raise AssertionError(f"pods not running after {timeout}s: {[(k, (got.get(k) or {}).get('status')) for k in keys]}")


def leftovers(name: str) -> dict[str, list[str]]:
    """Everything of lab ``name`` still on the machine: namespaces, netns mounts, processes, files."""
    pat = lab_netns_re(name)
    netns = [n for n in (os.listdir("/run/netns") if os.path.isdir("/run/netns") else []) if pat.match(n)]
    with open("/proc/mounts") as f:
        mounts = [ln.split()[1] for ln in f if re.search(rf"/run/netns/{re.escape(name)}-", ln.split()[1])]
    d = str(state_dir(name))
    procs = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        ours = "kr_core." in cmd or "gobgpd" in cmd  # agents, kubelets, the API server, their gobgpd
        if ours and (d + "/" in cmd or cmd.rstrip().endswith(d)) and int(pid) != os.getpid():
            procs.append(f"{pid} {cmd.strip()}")
    files = [d] if os.path.exists(d) else []
    return {k: v for k, v in {"netns": netns, "mounts": mounts, "processes": procs, "files": files}.items() if v}
