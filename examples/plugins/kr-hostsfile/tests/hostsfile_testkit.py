"""Helpers for the hostsfile plugin's tests: Service builders and a small in-process kr.

The harness is what the agent does for one plugin, reduced to its public pieces: a
:class:`kr_core.plugins.PluginHost` built from the plugin class, a :class:`kr_core.plugin.PluginContext`, the
caches, and a :class:`kr_core.watch.FeedSource` whose events are delivered straight to the plugin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kr_hostsfile import HostsFile
from prometheus_client import CollectorRegistry

from kr_core import Event, PluginContext
from kr_core.config import Settings
from kr_core.model import Service
from kr_core.plugins import PluginCaller, PluginHost, from_classes, validate_plugin_config
from kr_core.watch import Caches, FeedSource

GOLDEN = Path(__file__).parent / "golden"


def make_service(
    name: str,
    namespace: str = "default",
    cluster_ips: tuple[str, ...] | list[str] = ("10.96.0.10",),
    external_ips: tuple[str, ...] | list[str] = (),
    type: str = "ClusterIP",
    external_name: str = "",
    resource_version: str = "1",
) -> Service:
    """A Service view built from API JSON, the way the watch layer builds it."""
    spec: dict[str, Any] = {"type": type, "ports": [{"port": 80, "protocol": "TCP"}]}
    if cluster_ips:
        spec["clusterIP"] = cluster_ips[0]
        spec["clusterIPs"] = list(cluster_ips)
    if external_ips:
        spec["externalIPs"] = list(external_ips)
    if external_name:
        spec["externalName"] = external_name
    return Service.from_json(
        {
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": f"uid-{namespace}-{name}",
                "resourceVersion": resource_version,
            },
            "spec": spec,
        }
    )


class Harness:
    """One hostsfile plugin driven through kr's public plugin API, writing under ``tmp_path``."""

    def __init__(self, tmp_path: Path, section: dict[str, Any] | None = None, initial: list[Service] | None = None):
        self.path = tmp_path / "run" / "kr" / "services.hosts"
        info = HostsFile.info
        self.config = validate_plugin_config(info, {"path": str(self.path), **(section or {})})
        self.host = PluginHost(from_classes([HostsFile]))
        self.plugin: PluginCaller = self.host.get("hostsfile")
        self.caches = Caches(self.host.resources)
        self.metrics = CollectorRegistry()
        self.ctx = PluginContext(
            name="hostsfile",
            settings=Settings(),
            config=self.config,
            caches=self.caches.view(info.resources),
            metrics=self.metrics,
            node_name="node-a",
        )
        self.feed = FeedSource(initial or [])
        self.events: list[Event] = []

    @property
    def instance(self) -> HostsFile:
        return self.plugin.instance  # type: ignore[return-value]

    def configure(self) -> Harness:
        self.plugin.configure(self.ctx)
        return self

    def start(self) -> Harness:
        """configure -> caches fill -> start -> sync("initial"), the agent's order."""
        self.configure()
        self.feed.start(self.caches, self._deliver)
        self.plugin.start(self.ctx)
        self.plugin.sync("initial")
        return self

    def _deliver(self, event: Event) -> None:
        self.events.append(event)
        self.plugin.deliver(event)

    def text(self) -> str:
        return self.path.read_text()

    def lines(self) -> list[str]:
        """The file's entries, without the header comment."""
        return [ln for ln in self.text().splitlines() if not ln.startswith("#")]

    def metric(self, name: str) -> float | None:
        return self.metrics.get_sample_value(name)
