"""kr: kube-router as a plugin framework. The public names plugins import live here."""

from kr_core.events import Event, EventType
from kr_core.hookspecs import hookimpl
from kr_core.model import Resource
from kr_core.plugin import HealthReport, PluginConfigError, PluginContext, PluginInfo, Role

__version__ = "0.1.0"

__all__ = [
    "Event",
    "EventType",
    "HealthReport",
    "PluginConfigError",
    "PluginContext",
    "PluginInfo",
    "Resource",
    "Role",
    "__version__",
    "hookimpl",
]
