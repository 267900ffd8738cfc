"""Fixtures: an embedded API server per test (in memory or on a SQLite file in tmp_path), a kubeconfig
for it, and Python-client API objects. Servers are always stopped, even when a test fails."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from kr_core.embedded import ApiServer


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., ApiServer]]:
    started: list[ApiServer] = []

    def make(**kw: Any) -> ApiServer:
        kw.setdefault("bookmark_interval", 0.2)
        srv = ApiServer(**kw)
        started.append(srv)
        return srv.start()

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture
def server(make_server: Callable[..., ApiServer]) -> ApiServer:
    return make_server()


def api_client(srv: ApiServer, path: Path) -> client.ApiClient:
    srv.write_kubeconfig(str(path))
    return config.new_client_from_config(str(path))


@pytest.fixture
def kubeconfig(server: ApiServer, tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    server.write_kubeconfig(str(path))
    return path


@pytest.fixture
def api(server: ApiServer, tmp_path: Path) -> Iterator[client.ApiClient]:
    c = api_client(server, tmp_path / "kubeconfig-py")
    yield c
    c.close()


@pytest.fixture
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture
def net(api: client.ApiClient) -> client.NetworkingV1Api:
    return client.NetworkingV1Api(api)


@pytest.fixture
def disc(api: client.ApiClient) -> client.DiscoveryV1Api:
    return client.DiscoveryV1Api(api)


def pod(name: str, labels: dict[str, str] | None = None, ns: str = "default", node: str | None = None,
        ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "busybox", "ports": ports or []}]}
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": name, "namespace": ns, "labels": labels or {}}, "spec": spec}


def service(name: str, selector: dict[str, str] | None = None, ports: list[dict[str, Any]] | None = None,
            **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"ports": ports if ports is not None else [{"port": 80}], **spec}
    if selector is not None:
        body["selector"] = selector
    return {"metadata": {"name": name}, "spec": body}
