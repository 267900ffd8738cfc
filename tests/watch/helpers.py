"""Helpers for the informer tests: API servers on 127.0.0.1, a raw HTTP writer, object builders."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import urllib3
from kubernetes.client import ApiClient, Configuration

from kr_core.model import Resource
from kr_core.watch.informer import RESOURCE_APIS

from .stubserver import StubApiServer, StubState

PLURAL = {
    Resource.SERVICE: "services",
    Resource.ENDPOINTSLICE: "endpointslices",
    Resource.POD: "pods",
    Resource.NAMESPACE: "namespaces",
    Resource.NETWORKPOLICY: "networkpolicies",
    Resource.NODE: "nodes",
}
NS = "kr-test"


def wait_until(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class Api:
    """Writes and reads objects over plain HTTP, independent of the code under test."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=5, read=30), retries=False)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        r = self.http.request(method, self.url + path, body=data, headers=headers)
        return r.status, (json.loads(r.data) if r.data else None)

    @staticmethod
    def path(res: Resource, ns: str = "", name: str = "") -> str:
        base = RESOURCE_APIS[res].path.rsplit("/", 1)[0]
        p = f"{base}/namespaces/{ns}/{PLURAL[res]}" if ns and RESOURCE_APIS[res].namespaced else f"{base}/{PLURAL[res]}"
        return f"{p}/{name}" if name else p

    def _ok(self, status: int, body: Any, what: str) -> dict[str, Any]:
        assert 200 <= status < 300, f"{what}: HTTP {status}: {body}"
        return body

    def create(self, res: Resource, obj: dict[str, Any]) -> dict[str, Any]:
        ns = obj["metadata"].get("namespace", "")
        return self._ok(*self.request("POST", self.path(res, ns), obj), f"create {res.value}")

    def get(self, res: Resource, ns: str, name: str) -> dict[str, Any]:
        return self._ok(*self.request("GET", self.path(res, ns, name)), f"get {res.value} {ns}/{name}")

    def update(self, res: Resource, obj: dict[str, Any]) -> dict[str, Any]:
        m = obj["metadata"]
        return self._ok(*self.request("PUT", self.path(res, m.get("namespace", ""), m["name"]), obj), "update")

    def delete(self, res: Resource, ns: str, name: str) -> dict[str, Any]:
        return self._ok(*self.request("DELETE", self.path(res, ns, name)), f"delete {res.value} {ns}/{name}")

    def list(self, res: Resource) -> tuple[list[dict[str, Any]], str]:
        body = self._ok(*self.request("GET", self.path(res)), f"list {res.value}")
        return body["items"], body["metadata"]["resourceVersion"]

    def ensure_namespace(self, ns: str = NS) -> None:
        status, body = self.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                                    "metadata": {"name": ns}})
        assert status in (200, 201, 409), body


def service(name: str, ns: str = NS, port: int = 80, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A selector-less ClusterIP Service (so no controller makes EndpointSlices for it)."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {"app": name}},
        "spec": {"type": "ClusterIP", "ports": [{"name": "http", "port": port, "protocol": "TCP"}]},
    }


def endpointslice(name: str, svc: str, n: int, ns: str = NS, base: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": [f"10.{100 + (base + i) // 65536 % 100}.{(base + i) // 256 % 256}.{(base + i) % 256}"],
             "conditions": {"ready": True}, "nodeName": "node-1"}
            for i in range(n)
        ],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


def pod(name: str, ns: str = NS, node: str = "node-1") -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "bench"}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "registry.invalid/x:1",
                                                   "ports": [{"containerPort": 8080, "protocol": "TCP"}]}]},
    }


USE_STUB = os.environ.get("KR_WATCH_TESTS_STUB") == "1"
_stub_states: dict[str, StubState] = {}


def new_server(
    data_path: str | None = None, port: int = 0, history: int = 10000, bookmark_interval: float = 1.0,
    stub: bool = False, token: str | None = None,
) -> Any:
    """An API server on 127.0.0.1, started: the embedded ApiServer, or the test stub when ``stub``."""
    if stub or USE_STUB:
        assert token is None, "the stub has no authentication"
        state = _stub_states.setdefault(data_path, StubState(history)) if data_path else None
        srv: Any = StubApiServer(port=port, history=history, bookmark_interval=bookmark_interval, state=state)
    else:
        from kr_core.embedded import ApiServer

        srv = ApiServer(data_path=data_path, host="127.0.0.1", port=port, history=history,
                        bookmark_interval=bookmark_interval, token=token)
    srv.start()
    return srv


def client_for(srv: Any) -> ApiClient:
    return ApiClient(Configuration(host=srv.url))
