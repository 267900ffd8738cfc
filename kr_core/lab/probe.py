"""Reachability probes: connect from one lab namespace to a pod, a Service or an IP, read the answer.

A probe is connected when it gets the answer it expects: the target pod's ``namespace/name`` (for a
Service: the name of any pod its selector picks; for a plain IP: the pod that has it, else any answer).
The socket is created inside the FROM namespace by the probing thread (:func:`kr_core.lab.netns.in_netns`),
so a whole matrix runs in parallel in one process. Each probe retries refused or unanswered attempts until
its timeout; traffic that is dropped is reported as blocked once the window is over.

SCTP on a kernel without SCTP (:func:`kr_core.lab.responder.sctp_supported` false) is a raw INIT/INIT-ACK
exchange (:func:`kr_core.lab.rawsctp.exchange`), not an association: connected means the INIT-ACK came
back with the pod's name in its State Cookie.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from kr_core.lab import rawsctp
from kr_core.lab.kube import ApiError, Kube
from kr_core.lab.netns import in_netns
from kr_core.lab.responder import sctp_supported
from kr_core.lab.state import LabState, pod_netns

PROTOCOLS = ("TCP", "UDP", "SCTP")


class ProbeError(RuntimeError):
    """The probe's FROM or TO does not name anything in the lab."""


@dataclass
class Target:
    label: str  # what the user named
    ip: str
    expected: list[str] | None  # None: any answer counts


@dataclass
class ProbeResult:
    src: str
    dst: str
    ip: str
    port: int
    protocol: str
    connected: bool = False
    answer: str | None = None
    expected: list[str] | None = None
    error: str | None = None
    attempts: int = 0
    ms: float = 0.0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["from"], d["to"] = d.pop("src"), d.pop("dst")
        return d


@dataclass
class Resolver:
    """Looks pods and Services up once per command."""

    st: LabState
    kube: Kube
    _pods: list[dict[str, Any]] | None = field(default=None, init=False)

    def pods(self) -> list[dict[str, Any]]:
        if self._pods is None:
            self._pods = self.kube.get("/api/v1/pods").get("items") or []
        return self._pods

    def pod(self, key: str) -> dict[str, Any]:
        ns, _, name = key.partition("/")
        for p in self.pods():
            if p["metadata"]["namespace"] == ns and p["metadata"]["name"] == name:
                return p
        raise ProbeError(f"no pod {key}")

    def netns_of(self, where: str) -> str:
        """ext, cp, node-N or ns/pod -> its netns."""
        if where in ("ext", "cp"):
            return self.st.ns(where)
        if "/" not in where:
            try:
                return self.st.node(where).netns
            except KeyError as e:
                raise ProbeError(str(e.args[0])) from None
        pod = self.pod(where)
        if (pod.get("spec") or {}).get("hostNetwork"):
            return self.st.node(pod["spec"]["nodeName"]).netns
        return pod_netns(self.st.name, f"{where}/{pod['metadata']['uid']}")

    def target(self, to: str, family: int = 4) -> Target:
        if to.startswith("svc/"):
            ns, _, name = to[4:].partition("/")
            try:
                svc = self.kube.get(f"/api/v1/namespaces/{ns}/services/{name}")
            except ApiError as e:
                raise ProbeError(f"no service {ns}/{name} ({e})") from None
            spec = svc.get("spec") or {}
            ips = [i for i in spec.get("clusterIPs") or [spec.get("clusterIP")] if i and i != "None"]
            ip = _pick(ips, family)
            if ip is None:
                raise ProbeError(f"service {ns}/{name} has no IPv{family} ClusterIP")
            sel = spec.get("selector") or {}
            expected = [f"{ns}/{p['metadata']['name']}" for p in self.pods()
                        if p["metadata"]["namespace"] == ns and sel
                        and all((p["metadata"].get("labels") or {}).get(k) == v for k, v in sel.items())]
            return Target(to, ip, expected or None)
        if "/" in to:
            pod = self.pod(to)
            ip = _pick(_pod_ips(pod), family)
            if ip is None:
                raise ProbeError(f"pod {to} has no IPv{family} address yet (phase {(pod.get('status') or {}).get('phase')})")
            return Target(to, ip, [to])
        try:
            ipaddress.ip_address(to)
        except ValueError:
            raise ProbeError(f"TO must be ns/pod, svc/ns/name or an IP, not {to!r}") from None
        owners = [f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in self.pods()
                  if to in _pod_ips(p) and not (p.get("spec") or {}).get("hostNetwork")]
        return Target(to, to, owners or None)


def _pod_ips(pod: dict[str, Any]) -> list[str]:
    s = pod.get("status") or {}
    return [x["ip"] for x in s.get("podIPs") or []] or ([s["podIP"]] if s.get("podIP") else [])


def _pick(ips: list[str], family: int) -> str | None:
    for ip in ips:
        if ipaddress.ip_address(ip).version == family:
            return ip
    return None


def _attempt(ns: str, ip: str, port: int, proto: str, timeout: float) -> str:
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    if proto == "SCTP" and not sctp_supported():
        return rawsctp.exchange(ns, ip, port, timeout)
    with in_netns(ns):
        if proto == "UDP":
            s = socket.socket(fam, socket.SOCK_DGRAM)
        elif proto == "SCTP":
            s = socket.socket(fam, socket.SOCK_STREAM, socket.IPPROTO_SCTP)
        else:
            s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect((ip, port))
        if proto == "UDP":
            s.send(b"probe\n")
            return s.recv(2048).decode(errors="replace").strip()
        data = b""
        while True:
            chunk = s.recv(2048)
            if not chunk:
                break
            data += chunk
            if b"\n" in data:
                break
        return data.decode(errors="replace").strip()
    finally:
        s.close()


def probe_one(src_ns: str, src: str, target: Target, port: int, proto: str = "TCP", timeout: float = 2.0,
              attempt_timeout: float = 0.5, retry: bool = True) -> ProbeResult:
    """Probe until the expected answer arrives or ``timeout`` seconds are over. ``retry=False``: one attempt
    (of at most ``timeout`` seconds), for callers that probe again themselves; a refused or unreachable
    attempt then costs no more than its round trip."""
    proto = proto.upper()
    res = ProbeResult(src, target.label, target.ip, port, proto, expected=target.expected)
    t0 = time.monotonic()
    deadline = t0 + timeout
    while True:
        res.attempts += 1
        left = deadline - time.monotonic()
        try:
            answer = _attempt(src_ns, target.ip, port, proto, max(0.05, min(attempt_timeout, left)))
            res.answer = answer
            if answer and (target.expected is None or answer in target.expected):
                res.connected, res.error = True, None
                break
            res.error = "wrong answer" if answer else "connected, but no answer"
        except TimeoutError:
            res.error = "timed out"
        except OSError as e:
            res.error = e.strerror or str(e)
            if proto == "SCTP" and e.errno in (93, 94):  # EPROTONOSUPPORT, ESOCKTNOSUPPORT
                res.error = "SCTP is not supported by this kernel"
                break
        if not retry or time.monotonic() + 0.05 >= deadline:
            break
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
    res.ms = round((time.monotonic() - t0) * 1000, 1)
    return res


def probe(st: LabState, kube: Kube, src: str, dst: str, port: int, proto: str = "TCP", timeout: float = 2.0,
          family: int = 4) -> ProbeResult:
    r = Resolver(st, kube)
    return probe_one(r.netns_of(src), src, r.target(dst, family), port, proto, timeout)


# ----------------------------------------------------------------------------------------------- matrix


def matrix(st: LabState, kube: Kube, namespaces: list[str] | None = None, port: int = 80, proto: str = "TCP",
           to: str = "pod", timeout: float = 1.5, family: int = 4, workers: int = 64) -> dict[str, Any]:
    """Probe every (pod, pod) or (pod, service) pair of ``namespaces`` (default: every namespace with pods)."""
    r = Resolver(st, kube)
    pods = [p for p in r.pods() if (namespaces is None or p["metadata"]["namespace"] in namespaces)
            and (p.get("status") or {}).get("phase") == "Running" and _pick(_pod_ips(p), family)]
    pods.sort(key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"]))
    rows = [f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in pods]
    if to == "pod":
        cols = list(rows)
        targets = {c: r.target(c, family) for c in cols}
    elif to == "service":
        svcs = kube.get("/api/v1/services").get("items") or []
        cols, targets = [], {}
        for s in sorted(svcs, key=lambda s: (s["metadata"]["namespace"], s["metadata"]["name"])):
            ns, name = s["metadata"]["namespace"], s["metadata"]["name"]
            if namespaces is not None and ns not in namespaces:
                continue
            if not any(p.get("port") == port for p in (s.get("spec") or {}).get("ports") or []):
                continue
            try:
                targets[f"{ns}/{name}"] = r.target(f"svc/{ns}/{name}", family)
            except ProbeError:
                continue
            cols.append(f"{ns}/{name}")
    else:
        raise ProbeError(f"--to must be pod or service, not {to!r}")
    src_ns = {row: r.netns_of(row) for row in rows}
    reach: dict[str, dict[str, bool]] = {row: {} for row in rows}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(workers, len(rows) * len(cols)))) as ex:
        futs = {ex.submit(probe_one, src_ns[a], a, targets[b], port, proto, timeout): (a, b)
                for a in rows for b in cols}
        for f in concurrent.futures.as_completed(futs):
            a, b = futs[f]
            reach[a][b] = f.result().connected
    return {"port": port, "protocol": proto.upper(), "to": to,
            "reachable": {a: {b: reach[a][b] for b in cols} for a in rows}}


def format_matrix(m: dict[str, Any]) -> str:
    """A truth table: rows are sources, columns targets; ``.`` reachable, ``X`` blocked."""
    rows = list(m["reachable"])
    cols = list(next(iter(m["reachable"].values()), {}))
    head = f"port {m['port']}/{m['protocol']} to {m['to']}s: '.' reachable, 'X' blocked"
    if not rows or not cols:
        return head + "\n(no pods)" if not rows else head + "\n(no targets)"
    idx = {c: str(i + 1) for i, c in enumerate(cols)}
    w = max(len(r) for r in rows)
    cw = max(len(i) for i in idx.values()) + 1
    lines = [head, ""]
    lines += [f"  {idx[c]:>{cw - 1}} = {c}" for c in cols]
    lines.append("")
    lines.append(" " * (w + 2) + "".join(f"{idx[c]:>{cw}}" for c in cols))
    for a in rows:
        lines.append(f"{a:<{w}}  " + "".join(f"{'.' if m['reachable'][a][c] else 'X':>{cw}}" for c in cols))
    return "\n".join(lines)
