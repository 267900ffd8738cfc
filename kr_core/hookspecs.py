"""The plugin contract: every hook kr calls, as one documented no-op each, grouped by phase.

A plugin is a class registered in the entry-point group ``kr.plugins``. It carries a ``info`` class attribute
(a :class:`kr_core.plugin.PluginInfo`: name, role, resources to watch, config schema, version) and implements
any of the hooks below as methods decorated with :data:`kr_core.hookimpl`. kr makes one instance per agent.

Threading: all hooks of one plugin are called from that plugin's own worker thread (``configure``, ``start``,
``cleanup`` and ``stop`` from the agent's main thread, never concurrently with the worker), so a plugin needs no
locks of its own. A hook that raises is logged with the object it was handling, counted in
``kr_plugin_hook_failures_total`` and retried with backoff; it never stops another plugin.

Order: ``configure`` (every enabled plugin) -> caches fill -> ``start`` (pod-routing, service-proxy,
network-policy, then other roles) -> ``sync(reason="initial")`` -> events and periodic ``sync`` -> ``stop``.
``cleanup`` is called instead of start/sync by ``kr cleanup`` and ``kr run --cleanup-config``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from kr_core.events import Event
    from kr_core.model import EndpointSlice, Namespace, NetworkPolicy, Node, Pod, Service
    from kr_core.plugin import HealthReport, PluginContext

PROJECT = "kr"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# ------------------------------------------------------------------------------------------- lifecycle


@hookspec
def configure(ctx: PluginContext) -> None:
    """Called once, first, before any watch starts, with the plugin's validated settings in ``ctx``.

    Keep references to what the plugin needs (``ctx.settings`` for the kube-router flags, ``ctx.config`` for
    the plugin's own section, ``ctx.caches`` for the read-only caches, ``ctx.metrics`` to register metrics,
    ``ctx.request_sync`` to ask for a full sync later). Must not touch the kernel. Raise
    :class:`kr_core.plugin.PluginConfigError` to refuse a configuration; the agent exits 2 with the message.
    """


@hookspec
def start(ctx: PluginContext) -> None:
    """Called once after the caches are synced, in role order (pod-routing, service-proxy, network-policy).

    One-time host setup (links, base chains, sysctls, daemons) and adoption of the state a previous run left
    in the kernel. Must not flush anything: traffic keeps flowing across an agent restart. An exception here
    does not stop the agent: the plugin is reported unhealthy (``<name>: start failed: ...``) and its start is
    retried with backoff on its own worker thread, while the other plugins run; events queue meanwhile.
    """


@hookspec
def sync(reason: str) -> None:
    """Full reconcile: compute the desired state from the caches and apply the difference.

    Called with ``reason="initial"`` after ``start``, then every ``--*-sync-period`` (``reason="periodic"``)
    and when the plugin called ``ctx.request_sync(reason)`` (debounced; requests that merge pass all their
    reasons, joined by ``"; "``). The
    core itself also asks for ``"retry after failed <reason> sync"`` and, when an event was given up after its
    retries, ``"<hook> gave up on <namespace/name>"``: then the caches hold changes the plugin never saw as
    events, so only ``"periodic"`` may take shortcuts that trust the event stream. Each successful return is a
    heartbeat for ``/healthz``. Raising leaves the previous state in place; the sync is retried with backoff.
    """


@hookspec
def health() -> HealthReport | None:
    """Called on the plugin's worker about every 5 s; ``/healthz`` reports the latest answer.

    Return a :class:`HealthReport` to report a problem the heartbeat cannot see (a daemon that died, a kernel
    feature missing), or ``None`` when healthy. Must be quick: it runs between events.
    """


@hookspec
def state() -> dict[str, Any] | None:
    """Return a JSON-able summary of what the plugin has programmed, for ``kr state``.

    By convention ``{"summary": {...counts...}, "items": [ {...one row per object...} ]}``. Called from the
    plugin's worker thread, so it sees a consistent view of the plugin's committed state.
    """


@hookspec
def cleanup() -> None:
    """Remove everything this plugin ever installed (chains, sets, links, routes, daemons) and nothing else.

    Called by ``kr cleanup`` / ``--cleanup-config`` after ``configure`` only: the caches are empty and
    ``start`` was not called. Must succeed on a host where nothing was installed.
    """


@hookspec
def stop() -> None:
    """Called once when the agent shuts down (SIGTERM/SIGINT), after the last event was handled.

    Stop threads and daemons the plugin started. Leave the dataplane in place, so traffic keeps flowing until
    the next agent adopts it.
    """


# ------------------------------------------------------------------------------------------- events
# Each receives one Event (type ADDED / MODIFIED / DELETED, ``new`` and ``old`` objects). Only resources named
# in the plugin's ``info.resources`` are delivered. Events for one object arrive in order; a burst of events
# for one object that the plugin has not consumed yet is merged into one (see kr_core.events.coalesce).
# Objects present at start-up are not replayed as ADDED: the initial ``sync`` sees them in the caches.


@hookspec
def on_service(event: Event[Service]) -> None:
    """A Service changed. Typically: recompute that Service's virtual servers / advertisements."""


@hookspec
def on_endpoints(event: Event[EndpointSlice]) -> None:
    """An EndpointSlice changed. ``event.obj.service_key`` names the Service it belongs to."""


@hookspec
def on_policy(event: Event[NetworkPolicy]) -> None:
    """A NetworkPolicy changed."""


@hookspec
def on_node(event: Event[Node]) -> None:
    """A Node changed (addresses, pod CIDRs, annotations such as ASN, peers or communities)."""


@hookspec
def on_pod(event: Event[Pod]) -> None:
    """A Pod changed (phase, IPs, labels, node binding)."""


@hookspec
def on_namespace(event: Event[Namespace]) -> None:
    """A Namespace changed (labels matter to namespace selectors)."""


LIFECYCLE_HOOKS = ("configure", "start", "sync", "health", "state", "cleanup", "stop")
EVENT_HOOKS = ("on_service", "on_endpoints", "on_policy", "on_node", "on_pod", "on_namespace")
ALL_HOOKS = LIFECYCLE_HOOKS + EVENT_HOOKS
