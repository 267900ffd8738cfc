"""Bring a lab up, take it down (also after a crash), and report its status.

``up`` records every namespace and process in the state file *before* creating it, so ``down`` can always
finish the job: it stops the recorded processes (checking their start times, so a reused pid is never
hit), kills whatever still runs in the lab's namespaces, deletes every namespace that matches the lab's
naming pattern, and removes the state directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import ipaddress
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from kr_core.lab import netns, topology
from kr_core.lab.kube import Kube
from kr_core.lab.state import (
    APISERVER_PORT,
    HEALTH_PORT,
    LabState,
    NodeInfo,
    Proc,
    check_name,
    free_index,
    lab_netns_re,
    lab_root,
    plan,
    proc_start_time,
    state_dir,
)

log = logging.getLogger("kr.lab")

Say = Callable[[str], None]


class LabError(RuntimeError):
    """The lab cannot be brought up or used; the message says why in one line."""


def _quiet(_: str) -> None:
    pass


@contextlib.contextmanager
def _root_lock() -> Iterator[None]:
    root = lab_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prerequisites() -> str | None:
    """Why a lab cannot run here (one line), or None."""
    if os.geteuid() != 0:
        return "the lab needs root (it creates network namespaces): run it with sudo or as root"
    for tool in ("ip", "sysctl"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (apt-get install iproute2 procps)"
    return None


def python_argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def spawn(st: LabState, role: str, argv: list[str], *, ns: str | None = None, node: str | None = None,
          log_name: str, pass_fds: tuple[int, ...] = ()) -> Proc:
    """Start a lab process (own session, output to its log in the state directory) and record it."""
    logf = st.dir / log_name
    logf.parent.mkdir(parents=True, exist_ok=True)
    full = netns.exec_argv(ns, argv) if ns else argv
    env = dict(os.environ, PYTHONUNBUFFERED="1", KR_LAB=st.name)
    with open(logf, "ab") as out:
        p = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True, pass_fds=pass_fds, env=env, close_fds=True)
    proc = Proc(role=role, pid=p.pid, start=proc_start_time(p.pid), netns=ns, node=node, log=str(logf), argv=full)
    st.processes.append(proc)
    st.save()
    log.info("lab %s: started %s%s pid %d", st.name, role, f" ({node})" if node else "", p.pid)
    return proc


def http_get_in(ns: str | None, host: str, port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    """GET ``path`` from ``host:port`` as seen from inside netns ``ns``."""
    with netns.in_netns(ns):
        sock = socket.create_connection((host, port), timeout=timeout)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    conn.sock = sock
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        conn.close()


def agent_health(st: LabState, node: NodeInfo) -> tuple[bool, str]:
    try:
        code, body = http_get_in(node.netns, "127.0.0.1", HEALTH_PORT, "/healthz")
    except OSError as e:
        return False, f"no answer ({e.strerror or e})"
    return code == 200, body.strip().splitlines()[0] if body.strip() else str(code)


def _tail(path: str | None, n: int = 5) -> str:
    if not path:
        return ""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + ln for ln in lines[-n:])


# ----------------------------------------------------------------------------------------------- up


def agent_config(st: LabState, node: NodeInfo, user_cfg: dict[str, Any], installed: set[str]) -> Path:
    """The node agent's config: the user's file, the lab's service range, the plugin choice, and
    per-node paths for plugins that write files."""
    cfg = dict(user_cfg)
    cfg["service-cluster-ip-range"] = st.service_cidr.split(",")
    if st.ipv6:
        cfg["enable-ipv6"] = True
    if st.plugins is not None:
        cfg["plugins"] = {"enabled": list(st.plugins)}
    if "hostsfile" in installed:
        section = dict(cfg.get("hostsfile") or {})
        section.setdefault("path", str(st.dir / node.name / "services.hosts"))
        cfg["hostsfile"] = section
    if "bgp_routing" in installed:  # the CNI config goes to the node's directory, never the host's /etc/cni
        section = dict(cfg.get("bgp_routing") or {})
        section.setdefault("cni_conf_file", str(st.dir / node.name / "10-kuberouter.conf"))
        cfg["bgp_routing"] = section
    path = st.dir / node.name / "agent.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _kubeconfig(server: str, token: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "kr-lab", "cluster": {"server": server}}],
        "users": [{"name": "kr-lab", "user": {"token": token}}],
        "contexts": [{"name": "kr-lab", "context": {"cluster": "kr-lab", "user": "kr-lab", "namespace": "default"}}],
        "current-context": "kr-lab",
        "preferences": {},
    }


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _installed_plugins() -> dict[str, Any]:
    from kr_core.plugins import discover

    return {d.name: d for d in discover()}


def node_info(st: LabState, node: NodeInfo) -> dict[str, str]:
    """Every NodeSystemInfo field (the official Python client requires them all)."""
    import platform
    import uuid

    ident = str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{st.name}.{node.name}.kr-lab"))
    return {"architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine()),
            "bootID": ident, "containerRuntimeVersion": "kr-lab://0", "kernelVersion": platform.release(),
            "kubeProxyVersion": "", "kubeletVersion": "v1.32.0-kr-lab", "machineID": ident.replace("-", ""),
            "operatingSystem": "linux", "osImage": "kr lab (network namespace)", "systemUUID": ident}


def node_object(st: LabState, node: NodeInfo) -> dict[str, Any]:
    addrs = [{"type": "InternalIP", "address": node.ip4}]
    if node.ip6:
        addrs.append({"type": "InternalIP", "address": node.ip6})
    addrs.append({"type": "Hostname", "address": node.name})
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node.name, "labels": {
            "kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux", "kr.dev/lab": st.name}},
        "spec": {},
        "status": {"addresses": addrs, "conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "lab kubelet is posting ready status"}],
            "nodeInfo": node_info(st, node)},
    }


def up(name: str, nodes: int = 2, *, ipv6: bool = False, config: str | None = None,
       plugins: list[str] | None = None, static_routes: bool = False, say: Say = _quiet,
       timeout: float = 60.0) -> LabState:
    """Create lab ``name``; returns its state. Raises :class:`LabError` with a one-line reason."""
    why = prerequisites()
    if why:
        raise LabError(why)
    check_name(name)
    t0 = time.monotonic()
    user_cfg: dict[str, Any] = {}
    if config:
        try:
            user_cfg = yaml.safe_load(Path(config).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise LabError(f"--config {config}: {e}") from None
        if not isinstance(user_cfg, dict):
            raise LabError(f"--config {config}: must be a mapping")
    installed = _installed_plugins()
    if plugins is not None:
        unknown = [p for p in plugins if p not in installed]
        if unknown:
            raise LabError(f"--plugins: not installed: {', '.join(unknown)} (installed: {', '.join(installed)})")
    with _root_lock():
        old = LabState.load(name)
        if old is not None or state_dir(name).exists() or any(lab_netns_re(name).match(n) for n in netns.list_netns()):
            if old is not None and old.phase == "up" and all(p.alive() for p in old.procs("apiserver")):
                raise LabError(f"lab {name} is already up (`kr lab down --name {name}` first)")
            say(f"lab {name}: cleaning up what a previous run left behind")
            down(name)
        st = plan(name, free_index(name), nodes, ipv6)
        st.static_routes, st.plugins, st.config = static_routes, plugins, config
        st.netns = [st.ns("sw"), st.ns("cp"), st.ns("ext")] + [n.netns for n in st.nodes]
        st.dir.mkdir(parents=True, exist_ok=True)
        st.save()
    try:
        _up(st, user_cfg, set(installed), say, timeout)
    except (LabError, netns.CommandError, OSError, TimeoutError, RuntimeError, KeyboardInterrupt) as e:
        msg = str(e) if isinstance(e, LabError) else f"lab {name}: {e or type(e).__name__}"
        if os.environ.get("KR_LAB_KEEP"):
            raise LabError(f"{msg}\n(kept for inspection, KR_LAB_KEEP is set: see {st.dir}; "
                           f"`kr lab down --name {name}` cleans up)") from None
        down(name)
        raise LabError(f"{msg}\n(the half-built lab was removed; set KR_LAB_KEEP=1 to keep it)") from None
    st.phase = "up"
    st.save()
    say(f"lab {name}: up in {time.monotonic() - t0:.1f}s: {len(st.nodes)} node(s), "
        f"{'dual stack' if ipv6 else 'IPv4'}, kubeconfig {st.kubeconfig}")
    return st


def _up(st: LabState, user_cfg: dict[str, Any], installed: set[str], say: Say, timeout: float) -> None:
    token = secrets.token_hex(16)
    _write_private(st.dir / "token", token + "\n")
    topology.create_switch(st)
    topology.attach(st, "cp", st.cp_ip4, st.cp_ip6)
    topology.attach(st, "ext", st.ext_ip4, st.ext_ip6)
    topology.setup_ext(st)
    for node in st.nodes:
        topology.attach(st, node.name, node.ip4, node.ip6)
    say(f"lab {st.name}: network {st.net4}{' ' + st.net6 if st.net6 else ''}: cp {st.cp_ip4}, ext {st.ext_ip4}, "
        + ", ".join(f"{n.name} {n.ip4}" for n in st.nodes))

    # control plane: the API server in the cp netns, a loopback forwarder for the host side
    _write_private(st.node_kubeconfig, yaml.safe_dump(_kubeconfig(f"http://{st.cp_ip4}:{APISERVER_PORT}", token)))
    spawn(st, "apiserver", python_argv(
        "kr_core.embedded", "--listen", f"0.0.0.0:{APISERVER_PORT}", "--data", str(st.dir / "apiserver.db"),
        "--token-file", str(st.dir / "token"), "--cluster-cidr", st.cluster_cidr,
        "--service-cluster-ip-range", st.service_cidr), ns=st.ns("cp"), log_name="apiserver.log")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    st.host_port = listener.getsockname()[1]
    try:
        spawn(st, "proxy", python_argv("kr_core.lab.proxy", "--fd", str(listener.fileno()), "--netns", st.ns("cp"),
                                       "--target", f"127.0.0.1:{APISERVER_PORT}", "--state-dir", str(st.dir),
                                       "--token-file", str(st.dir / "token")),
              log_name="proxy.log", pass_fds=(listener.fileno(),))
    finally:
        listener.close()
    _write_private(st.kubeconfig, yaml.safe_dump(_kubeconfig(f"http://127.0.0.1:{st.host_port}", token)))
    kube = Kube.from_kubeconfig(str(st.kubeconfig))
    try:
        kube.wait_ready(timeout=min(timeout, 30.0))
    except TimeoutError as e:
        raise LabError(f"{e}\n{_tail(st.procs('apiserver')[0].log)}") from None
    say(f"lab {st.name}: API server up on {st.cp_ip4}:{APISERVER_PORT} (host side 127.0.0.1:{st.host_port})")

    # nodes: Node objects (the API server allocates pod CIDRs), kube-bridge, sysctls, routes
    for node in st.nodes:
        obj = kube.create("/api/v1/nodes", node_object(st, node))
        spec = obj.get("spec") or {}
        node.pod_cidrs = list(spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []))
        if not node.pod_cidrs:
            raise LabError(f"the API server gave node {node.name} no pod CIDR")
        topology.setup_node(st, node)
    st.save()
    if st.static_routes:
        topology.static_routes(st)
    say(f"lab {st.name}: " + ", ".join(f"{n.name} pods {','.join(n.pod_cidrs)}" for n in st.nodes)
        + (" (static routes between nodes)" if st.static_routes else ""))

    # processes: scheduler, and per node a kubelet and the kr agent
    lab_kc = str(st.node_kubeconfig)
    spawn(st, "scheduler", python_argv("kr_core.lab.scheduler", "--kubeconfig", lab_kc), ns=st.ns("cp"),
          log_name="scheduler.log")
    for node in st.nodes:
        ready = st.dir / node.name / "kubelet.ready"
        ready.parent.mkdir(parents=True, exist_ok=True)
        ready.unlink(missing_ok=True)
        spawn(st, "kubelet", python_argv("kr_core.lab.kubelet", "--lab", st.name, "--node", node.name,
                                         "--node-netns", node.netns, "--kubeconfig", lab_kc,
                                         "--ready-file", str(ready)),
              node=node.name, log_name=f"{node.name}/kubelet.log")
        if st.plugins == []:
            continue  # --plugins none: no node agent at all
        cfg = agent_config(st, node, user_cfg, installed)
        spawn(st, "agent", python_argv("kr_core.cli", "run", "--kubeconfig", lab_kc, "--hostname-override", node.name,
                                       "--health-port", str(HEALTH_PORT), "--config", str(cfg),
                                       "--state-dir", str(st.dir / node.name / "agent-state")),
              ns=node.netns, node=node.name, log_name=f"{node.name}/agent.log")
    if st.plugins == []:
        say(f"lab {st.name}: no node agents (--plugins none)")
    else:
        chosen = (", ".join(st.plugins) if st.plugins is not None else
                  f"the plugins {st.config} selects" if st.config else "the default selection (see `kr plugins`)")
        say(f"lab {st.name}: node agents: kr run with {chosen}; logs in {st.dir}/node-N/agent.log")
    wait_ready(st, timeout=timeout, say=say)


def wait_ready(st: LabState, timeout: float = 60.0, say: Say = _quiet) -> None:
    """Wait until every kubelet has synced and every agent answers /healthz with 200."""
    deadline = time.monotonic() + timeout
    pending = {n.name for n in st.nodes}
    agents = {n.name for n in st.nodes} if st.plugins != [] else set()
    while time.monotonic() < deadline:
        for p in st.procs():
            if p.role in ("apiserver", "proxy", "scheduler", "kubelet", "agent") and not p.alive():
                raise LabError(f"lab {st.name}: {p.role}{' on ' + p.node if p.node else ''} exited during start-up "
                               f"(log {p.log}):\n{_tail(p.log)}")
        for n in list(pending):
            if (st.dir / n / "kubelet.ready").exists():
                pending.discard(n)
        for n in list(agents):
            ok, _ = agent_health(st, st.node(n))
            if ok:
                agents.discard(n)
        if not pending and not agents:
            say(f"lab {st.name}: {len(st.nodes)} kubelet(s) and agent(s) ready")
            return
        time.sleep(0.1)
    raise LabError(f"lab {st.name}: not ready after {timeout:.0f}s: kubelets {sorted(pending) or 'ok'}, agents "
                   f"{sorted(agents) or 'ok'} (logs in {st.dir})")


@contextlib.contextmanager
def running(name: str, nodes: int = 2, **kw: Any) -> Iterator[LabState]:
    """A lab for the duration of a ``with`` block (tests): ``with running("t1", static_routes=True) as st:``.
    It is removed on exit, whatever happened."""
    down(name)
    try:
        yield up(name, nodes, **kw)
    finally:
        down(name)


# ----------------------------------------------------------------------------------------------- down


def _lab_cmdline_pids(st_dir: Path) -> list[int]:
    """Lab processes found by their command line naming the state directory (after a crash before the
    state file recorded them)."""
    marker = str(st_dir).encode()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if b"kr_core." in cmd and (marker + b"/" in cmd or marker + b"\0" in cmd):
            out.append(int(d))
    return out


def down(name: str, say: Say = _quiet, grace: float = 3.0) -> bool:
    """Remove lab ``name`` entirely. Idempotent; True if there was anything to remove."""
    check_name(name)
    st = LabState.load(name)
    d = state_dir(name)
    found = st is not None or d.exists()
    procs = st.processes if st is not None else []
    if st is not None:
        st.phase = "stopping"
        with contextlib.suppress(OSError):
            st.save()
    # 1. the recorded processes: SIGTERM (agents run their stop hooks), then SIGKILL
    alive = [p for p in procs if p.kill(signal.SIGTERM)]
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if p.alive()]
    for p in alive:
        log.info("lab %s: %s pid %d did not stop: SIGKILL", name, p.role, p.pid)
        p.kill(signal.SIGKILL)
    # 2. anything else started for this lab (its command line names the state directory)
    for pid in _lab_cmdline_pids(d):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    # 3. namespaces: the recorded ones and every one matching the lab's names; processes inside die first
    pattern = lab_netns_re(name)
    names = set(st.netns if st is not None else []) | {n for n in netns.list_netns() if pattern.match(n)}
    names = {n for n in names if pattern.match(n)}
    for ns in sorted(names, key=lambda n: (0 if "-p-" in n else 1, n)):
        if not netns.exists(ns):
            continue
        found = True
        for pid in netns.pids(ns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        netns.delete(ns)
    # 4. the state directory
    if d.exists():
        shutil.rmtree(d, ignore_errors=True)
    if found:
        say(f"lab {name}: down")
    return found


# ----------------------------------------------------------------------------------------------- status


def require(name: str) -> LabState:
    st = LabState.load(name)
    if st is None:
        raise LabError(f"no lab named {name} (start one with `kr lab up --name {name}`)")
    return st


def status(name: str) -> dict[str, Any]:
    """Nodes, processes (alive? healthy?) and pods of lab ``name``."""
    st = require(name)
    out: dict[str, Any] = {"name": st.name, "phase": st.phase, "kubeconfig": str(st.kubeconfig),
                           "network": [x for x in (st.net4, st.net6) if x], "cluster_cidr": st.cluster_cidr,
                           "service_cidr": st.service_cidr, "static_routes": st.static_routes,
                           "control_plane": {}, "nodes": [], "pods": []}
    for role in ("apiserver", "proxy", "scheduler"):
        ps = st.procs(role)
        out["control_plane"][role] = {"pid": ps[-1].pid if ps else None, "running": bool(ps) and ps[-1].alive()}
    for n in st.nodes:
        agent = (st.procs("agent", n.name) or [None])[-1]
        kubelet = (st.procs("kubelet", n.name) or [None])[-1]
        if agent is not None and agent.alive():
            healthy, detail = agent_health(st, n)
        else:
            healthy, detail = False, "no agent (--plugins none)" if st.plugins == [] else "not running"
        out["nodes"].append({
            "name": n.name, "netns": n.netns, "ip": [x for x in (n.ip4, n.ip6) if x], "pod_cidrs": n.pod_cidrs,
            "agent": {"pid": agent.pid if agent else None, "running": bool(agent and agent.alive()),
                      "healthy": healthy, "health": detail},
            "kubelet": {"pid": kubelet.pid if kubelet else None, "running": bool(kubelet and kubelet.alive())},
        })
    try:
        pods = Kube.from_kubeconfig(str(st.kubeconfig), timeout=5).get("/api/v1/pods").get("items") or []
    except OSError as e:
        out["api_error"] = str(e)
        pods = []
    for p in pods:
        m, s = p["metadata"], p.get("status") or {}
        out["pods"].append({"pod": f"{m['namespace']}/{m['name']}", "node": (p.get("spec") or {}).get("nodeName"),
                            "ips": [x["ip"] for x in s.get("podIPs") or []] or ([s["podIP"]] if s.get("podIP") else []),
                            "phase": s.get("phase", "Pending")})
    return out


def format_status(s: dict[str, Any]) -> str:
    lines = [f"lab {s['name']} ({s['phase']}): network {' '.join(s['network'])}, cluster CIDR {s['cluster_cidr']}, "
             f"services {s['service_cidr']}{', static routes' if s['static_routes'] else ''}",
             f"kubeconfig {s['kubeconfig']}"]
    cp = s["control_plane"]
    lines.append("control plane: " + ", ".join(
        f"{r} {'running' if v['running'] else 'NOT RUNNING'}" for r, v in cp.items()))
    lines.append("")
    wi = max([len("IP")] + [len(",".join(n["ip"])) for n in s["nodes"]])
    wc = max([len("POD CIDRS")] + [len(",".join(n["pod_cidrs"])) for n in s["nodes"]])
    lines.append(f"{'NODE':8} {'IP':{wi}} {'POD CIDRS':{wc}} {'AGENT':26} KUBELET")
    for n in s["nodes"]:
        a = n["agent"]
        agent = "healthy" if a["healthy"] else ("running, unhealthy" if a["running"] else
                                                ("none" if a["pid"] is None else "NOT RUNNING"))
        lines.append(f"{n['name']:8} {','.join(n['ip']):{wi}} {','.join(n['pod_cidrs']):{wc}} "
                     f"{agent + ' (pid ' + str(a['pid']) + ')':26} {'running' if n['kubelet']['running'] else 'NOT RUNNING'}")
    lines.append("")
    if s.get("api_error"):
        lines.append(f"pods: API server unreachable: {s['api_error']}")
    elif not s["pods"]:
        lines.append("no pods")
    else:
        lines.append(f"{'POD':36} {'NODE':8} {'PHASE':9} IPS")
        for p in s["pods"]:
            lines.append(f"{p['pod']:36} {p['node'] or '-':8} {p['phase']:9} {','.join(p['ips'])}")
    return "\n".join(lines)


def target_netns(st: LabState, target: str) -> str:
    """The netns of ``node-N``, ``ext``, ``cp`` or a pod ``ns/name``."""
    from kr_core.lab.probe import Resolver

    return Resolver(st, Kube.from_kubeconfig(str(st.kubeconfig))).netns_of(target)


def is_ip(s: str) -> bool:
    try:
        ipaddress.ip_address(s)
        return True
    except ValueError:
        return False
