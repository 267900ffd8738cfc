"""Shared fixtures: recording plugins and model-object factories."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

from kr_core import PluginInfo, Resource, hookimpl
from kr_core.model import EndpointSlice, Namespace, NetworkPolicy, Node, Pod, Service

# tests marked @pytest.mark.vm run inside the User-Mode Linux VM (one boot for all of them)
pytest_plugins = ["kr_core.lab.vmtest"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_service(name: str, ns: str = "default", ip: str = "10.96.0.10", rv: str = "1", **spec: Any) -> Service:
    return Service.from_json({
        "metadata": {"name": name, "namespace": ns, "resourceVersion": rv},
        "spec": {"clusterIP": ip, "ports": [{"port": 80, "protocol": "TCP"}], **spec},
    })


def make_pod(name: str, ns: str = "default", ip: str = "10.244.0.5", node: str = "node-1", rv: str = "1",
             labels: dict[str, str] | None = None) -> Pod:
    return Pod.from_json({
        "metadata": {"name": name, "namespace": ns, "resourceVersion": rv, "labels": labels or {}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [{"containerPort": 80}]}]},
        "status": {"phase": "Running", "podIP": ip},
    })


OBJECT_FACTORIES = {
    Resource.SERVICE: lambda n, rv: make_service(n, rv=rv),
    Resource.POD: lambda n, rv: make_pod(n, rv=rv),
    Resource.NAMESPACE: lambda n, rv: Namespace.from_json({"metadata": {"name": n, "resourceVersion": rv}}),
    Resource.NODE: lambda n, rv: Node.from_json({"metadata": {"name": n, "resourceVersion": rv}}),
    Resource.NETWORKPOLICY: lambda n, rv: NetworkPolicy.from_json(
        {"metadata": {"name": n, "namespace": "default", "resourceVersion": rv}, "spec": {"podSelector": {}}}),
    Resource.ENDPOINTSLICE: lambda n, rv: EndpointSlice.from_json({
        "metadata": {"name": n, "namespace": "default", "resourceVersion": rv,
                     "labels": {"kubernetes.io/service-name": "svc"}},
        "addressType": "IPv4", "endpoints": [{"addresses": ["10.244.0.5"]}]}),
}


def make_object(resource: Resource, name: str = "obj", rv: str = "1") -> Any:
    return OBJECT_FACTORIES[resource](name, rv)


class Recorder:
    """Collects hook calls of recording plugins: (plugin, hook, argument)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.cond = threading.Condition()

    def add(self, plugin: str, hook: str, arg: Any) -> None:
        with self.cond:
            self.calls.append((plugin, hook, arg))
            self.cond.notify_all()

    def of(self, plugin: str | None = None, hook: str | None = None) -> list[Any]:
        with self.cond:
            return [a for p, h, a in self.calls if (plugin is None or p == plugin) and (hook is None or h == hook)]

    def wait(self, pred: Any, timeout: float = 5.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: pred(self), timeout)


def recording_plugin(name: str, role: str, recorder: Recorder, resources: frozenset[Resource] | None = None,
                     **info_kw: Any) -> type:
    """A plugin class implementing every hook, recording each call into ``recorder``."""
    res = frozenset(Resource) if resources is None else resources

    class Rec:
        info = PluginInfo(name=name, role=role, version="1.0", resources=res, **info_kw)

        @hookimpl
        def configure(self, ctx: Any) -> None:
            self.ctx = ctx
            recorder.add(name, "configure", ctx)

        @hookimpl
        def start(self, ctx: Any) -> None:
            recorder.add(name, "start", ctx)

        @hookimpl
        def sync(self, reason: str) -> None:
            recorder.add(name, "sync", reason)

        @hookimpl
        def health(self) -> Any:
            recorder.add(name, "health", None)
            return None

        @hookimpl
        def state(self) -> dict[str, Any]:
            recorder.add(name, "state", None)
            return {"summary": {"objects": len(recorder.of(name, "on_service"))}, "items": []}

        @hookimpl
        def cleanup(self) -> None:
            recorder.add(name, "cleanup", None)

        @hookimpl
        def stop(self) -> None:
            recorder.add(name, "stop", None)

        @hookimpl
        def on_service(self, event: Any) -> None:
            recorder.add(name, "on_service", event)

        @hookimpl
        def on_endpoints(self, event: Any) -> None:
            recorder.add(name, "on_endpoints", event)

        @hookimpl
        def on_policy(self, event: Any) -> None:
            recorder.add(name, "on_policy", event)

        @hookimpl
        def on_node(self, event: Any) -> None:
            recorder.add(name, "on_node", event)

        @hookimpl
        def on_pod(self, event: Any) -> None:
            recorder.add(name, "on_pod", event)

        @hookimpl
        def on_namespace(self, event: Any) -> None:
            recorder.add(name, "on_namespace", event)

    Rec.__name__ = f"Rec_{name}"
    return Rec


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()
