"""A small Kubernetes API client for the lab's own processes (kubelet, scheduler, probe, demo).

Plain ``http.client`` with a bearer token read from a kubeconfig: a lab process needs get, list, create,
merge-patch and a line-by-line watch over raw JSON, and starts in milliseconds without the generated
client. It is not meant for anything but the lab's plain-HTTP control plane.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import yaml


class ApiError(RuntimeError):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class Kube:
    """One API server: ``Kube.from_kubeconfig(path)``."""

    def __init__(self, server: str, token: str | None = None, timeout: float = 10.0) -> None:
        u = urllib.parse.urlsplit(server)
        if u.scheme != "http":
            raise ValueError(f"the lab client speaks plain http only, not {server}")
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 80
        self.token = token
        self.timeout = timeout
        self.server = server

    @classmethod
    def from_kubeconfig(cls, path: str, timeout: float = 10.0) -> Kube:
        with open(path) as f:
            cfg = yaml.safe_load(f)
        ctx_name = cfg.get("current-context")
        ctx = next((c["context"] for c in cfg.get("contexts", []) if c["name"] == ctx_name), None)
        if ctx is None:
            ctx = cfg["contexts"][0]["context"]
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
        user = next((u.get("user") or {} for u in cfg.get("users", []) if u["name"] == ctx.get("user")), {})
        return cls(cluster["server"], user.get("token"), timeout)

    def _conn(self, timeout: float | None) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def _headers(self, ctype: str | None = None) -> dict[str, str]:
        h = {"Accept": "application/json"}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        if ctype:
            h["Content-Type"] = ctype
        return h

    def request(self, method: str, path: str, body: Any = None, *, params: dict[str, str] | None = None,
                ctype: str = "application/json") -> dict[str, Any]:
        if params:
            path += "?" + urllib.parse.urlencode(params)
        data = json.dumps(body).encode() if body is not None else None
        conn = self._conn(self.timeout)
        try:
            conn.request(method, path, body=data, headers=self._headers(ctype if data is not None else None))
            r = conn.getresponse()
            raw = r.read()
        finally:
            conn.close()
        if r.status >= 400:
            try:
                msg = json.loads(raw).get("message", raw.decode(errors="replace"))
            except ValueError:
                msg = raw.decode(errors="replace")
            raise ApiError(r.status, msg)
        return json.loads(raw) if raw else {}

    def get(self, path: str, **params: str) -> dict[str, Any]:
        return self.request("GET", path, params=params or None)

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", path, body)

    def patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", path, body, ctype="application/merge-patch+json")

    def delete(self, path: str) -> dict[str, Any]:
        return self.request("DELETE", path)

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until the server answers ``/healthz``."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                conn = self._conn(2.0)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
                conn.close()
            except OSError as e:
                last = e
            time.sleep(0.05)
        raise TimeoutError(f"the API server at {self.server} did not answer within {timeout:.0f}s ({last})")

    def watch(self, path: str, resource_version: str, params: dict[str, str] | None = None,
              timeout_seconds: int = 300) -> Iterator[dict[str, Any]]:
        """Yield watch events (``{"type": ..., "object": ...}``) from ``resource_version`` until the server
        ends the stream; raises :class:`ApiError` on a non-200 answer (410 when the version is too old)."""
        q = dict(params or {})
        q.update({"watch": "1", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(timeout_seconds)})
        conn = self._conn(timeout_seconds + 30)
        try:
            conn.request("GET", path + "?" + urllib.parse.urlencode(q), headers=self._headers())
            r = conn.getresponse()
            if r.status != 200:
                raise ApiError(r.status, r.read().decode(errors="replace"))
            while True:
                try:
                    line = r.readline()
                except (TimeoutError, OSError, http.client.HTTPException):
                    return
                if not line:
                    return
                line = line.strip()
                if not line:
                    continue
                ev = json.loads(line)
                if ev.get("type") == "ERROR":
                    st = ev.get("object") or {}
                    raise ApiError(int(st.get("code") or 500), st.get("message", "watch error"))
                yield ev
        finally:
            conn.close()


def pod_path(ns: str, name: str | None = None) -> str:
    return f"/api/v1/namespaces/{ns}/pods" + (f"/{name}" if name else "")


def pod_key(pod: dict[str, Any]) -> str:
    m = pod["metadata"]
    return f"{m['namespace']}/{m['name']}"
