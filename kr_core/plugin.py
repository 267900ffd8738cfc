"""What a plugin declares about itself, and what kr hands it.

A plugin module looks like this::

    from kr_core import PluginInfo, Resource, Role, hookimpl

    class Config(pydantic.BaseModel):           # the plugin's config-file section (optional)
        model_config = pydantic.ConfigDict(extra="forbid")
        path: str = "/run/kr/hosts"

    class HostsFile:
        info = PluginInfo(name="hostsfile", role="service-hosts", version="1.0",
                          resources={Resource.SERVICE}, config_model=Config)

        @hookimpl
        def configure(self, ctx): self.ctx = ctx

        @hookimpl
        def on_service(self, event): ...

and is registered in ``pyproject.toml`` under ``[project.entry-points."kr.plugins"]``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kr_core.model import Resource

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from pydantic import BaseModel

    from kr_core.config import Settings
    from kr_core.watch.cache import CacheView


class Role:
    """The roles kr ships plugins for. Any other string is a valid role too (a third party's new one)."""

    POD_ROUTING = "pod-routing"
    SERVICE_PROXY = "service-proxy"
    NETWORK_POLICY = "network-policy"

    #: start order, as kube-router: routing first (it installs the FORWARD accepts the firewall relies on),
    #: then the proxy (its INPUT firewall), then network policy; other roles after, by name.
    START_ORDER = (POD_ROUTING, SERVICE_PROXY, NETWORK_POLICY)

    #: the kube-router flag whose period drives each role's periodic full sync
    SYNC_PERIOD_FLAG = {
        POD_ROUTING: "routes-sync-period",
        SERVICE_PROXY: "ipvs-sync-period",
        NETWORK_POLICY: "iptables-sync-period",
    }


def start_rank(role: str) -> tuple[int, str]:
    try:
        return (Role.START_ORDER.index(role), role)
    except ValueError:
        return (len(Role.START_ORDER), role)


@dataclass(frozen=True)
class PluginInfo:
    """A plugin's declaration.

    ``resources``: what kr must watch for it (only those events are delivered, only those caches visible).
    ``config_model``: a pydantic model for its config-file section, or ``None`` when it takes no section.
    ``default_enabled``: ``False`` for an alternative backend of a role that should only run when asked for.
    ``sync_period_flag``: the kube-router flag setting its periodic full sync (default: by role, else 5 min).
    ``implemented``: ``False`` while the plugin is a registered skeleton that does nothing yet.
    """

    name: str
    role: str
    version: str
    resources: frozenset[Resource] = frozenset()
    config_model: type[BaseModel] | None = None
    description: str = ""
    default_enabled: bool = True
    sync_period_flag: str | None = None
    implemented: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "resources", frozenset(self.resources))


class PluginConfigError(Exception):
    """Raised by ``configure`` to refuse a configuration; ``path`` is the key path inside the plugin's section."""

    def __init__(self, message: str, path: str = "") -> None:
        self.path = path
        super().__init__(message)


@dataclass(frozen=True)
class HealthReport:
    """Returned by the ``health`` hook when something is wrong."""

    healthy: bool
    message: str = ""


@dataclass
class PluginContext:
    """What kr hands a plugin in ``configure`` and ``start``."""

    name: str
    settings: Settings
    config: Any
    caches: CacheView
    metrics: CollectorRegistry
    node_name: str
    request_sync: Callable[[str], None] = lambda reason: None
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("kr"))
    state_dir: str = "/var/lib/kr"
    extra: dict[str, Any] = field(default_factory=dict)
