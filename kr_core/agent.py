"""The node agent: config -> plugins -> caches and source -> broadcaster -> plugin workers.

Start-up, as kube-router's ``Run``: health server (and metrics when ``--metrics-port`` is set) -> the source
fills the caches, which must sync within ``--cache-sync-timeout`` -> each plugin's ``start`` in role order
(pod-routing, service-proxy, network-policy, others), each followed by its worker and its initial sync ->
events flow. SIGTERM/SIGINT stop the source, drain the queues and call every ``stop`` hook in reverse order.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import signal
import socket
import threading
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from kr_core.broadcaster import Broadcaster, PluginWorker
from kr_core.config import ConfigError, Settings
from kr_core.health import AgentHTTPServer, HealthChecker
from kr_core.metrics import CoreMetrics, serve_metrics
from kr_core.plugin import PluginConfigError, PluginContext, Role
from kr_core.plugins import Discovered, PluginCaller, PluginHost, validate_plugin_config
from kr_core.watch.cache import Caches
from kr_core.watch.feed import EventSink

log = logging.getLogger("kr.agent")

DEFAULT_SYNC_PERIOD = 300.0


class AgentError(Exception):
    """The agent cannot start (caches not synced in time, a plugin's start failed, a port in use)."""


class Source(Protocol):
    """Fills the caches and reports changes: the informers, or :class:`kr_core.watch.FeedSource` in tests."""

    def start(self, caches: Caches, sink: EventSink) -> None: ...

    def stop(self) -> None: ...


def node_name(settings: Settings) -> str:
    """kube-router's node identity: --hostname-override, else $NODE_NAME, else the hostname."""
    return settings.hostname_override or os.environ.get("NODE_NAME") or socket.gethostname()


def sync_period_for(settings: Settings, caller: PluginCaller) -> float:
    flag = caller.info.sync_period_flag or Role.SYNC_PERIOD_FLAG.get(caller.info.role)
    return float(settings[flag]) if flag else DEFAULT_SYNC_PERIOD


class Agent:
    """One node agent. ``configure()`` validates and wires; ``start()`` runs; ``stop()`` shuts down."""

    def __init__(
        self,
        settings: Settings,
        plugins: list[Discovered],
        sections: dict[str, Any] | None = None,
        source: Source | None = None,
        *,
        node: str | None = None,
        registry: CollectorRegistry | None = None,
        state_dir: str = "/var/lib/kr",
        min_sync_interval: float = 1.0,
        serve_http: bool = True,
        start_barrier_timeout: float = 60.0,
        separate_registries: bool = False,
    ) -> None:
        self.settings = settings
        self.plugins = plugins
        self.sections = sections or {}
        self.source = source
        self.node_name = node or node_name(settings)
        self.metrics = CoreMetrics(registry)
        self.state_dir = state_dir
        self.min_sync_interval = min_sync_interval
        self.serve_http = serve_http
        self.start_barrier_timeout = start_barrier_timeout
        # one registry per plugin: for `kr cleanup --all-installed`, where two backends of one role (which
        # register the same kube_router_* names) are configured side by side
        self.separate_registries = separate_registries
        self.health = HealthChecker()
        self.host: PluginHost | None = None
        self.caches: Caches | None = None
        self.broadcaster = Broadcaster()
        self.workers: dict[str, PluginWorker] = {}
        self.contexts: dict[str, PluginContext] = {}
        self._started: list[PluginCaller] = []
        self._http: AgentHTTPServer | None = None
        self._metrics_server: Any = None
        self._stop = threading.Event()
        self._configured = False

    # ------------------------------------------------------------------ wiring
    def configure(self) -> None:
        """Validate every plugin's section, instantiate the plugins and call their ``configure`` hooks.

        Raises :class:`ConfigError` (exit 2) naming the key path of the first bad value.
        """
        configs = {d.name: validate_plugin_config(d.info, self.sections.get(d.name)) for d in self.plugins
                   if d.info is not None}
        self.host = PluginHost(self.plugins)
        self.caches = Caches(self.host.resources)
        for caller in self.host:
            worker = PluginWorker(
                caller,
                self.metrics,
                sync_period=sync_period_for(self.settings, caller),
                min_sync_interval=self.min_sync_interval,
                on_sync_ok=self._beat,
            )
            self.workers[caller.name] = worker
            self.health.register(caller.name, worker.sync_period)
            self.metrics.heartbeat_age.labels(plugin=caller.name).set_function(
                lambda n=caller.name: self.health.age(n) if self.health.age(n) is not None else math.nan
            )
            ctx = PluginContext(
                name=caller.name,
                settings=self.settings,
                config=configs.get(caller.name),
                caches=self.caches.view(caller.info.resources),
                metrics=CollectorRegistry() if self.separate_registries else self.metrics.registry,
                node_name=self.node_name,
                request_sync=worker.request_sync,
                log=logging.getLogger(f"kr.{caller.name}"),
                state_dir=os.path.join(self.state_dir, caller.name),
            )
            self.contexts[caller.name] = ctx
            try:
                caller.configure(ctx)
            except PluginConfigError as e:
                raise ConfigError(f"{caller.name}.{e.path}" if e.path else caller.name, str(e)) from None
            self.broadcaster.add(worker)
        self._configured = True

    def _beat(self, name: str) -> None:
        self.health.beat(name)

    # ------------------------------------------------------------------ running
    def start(self) -> None:
        if not self._configured:
            self.configure()
        assert self.host is not None and self.caches is not None
        s = self.settings
        if self.serve_http and s.health_port:
            try:
                self._http = AgentHTTPServer(s.health_addr, s.health_port, self.health_problems, self.state,
                                             stacks=s.enable_pprof)
            except OSError as e:
                raise AgentError(f"cannot listen for health checks on {s.health_addr or '*'}:{s.health_port}: "
                                 f"{e.strerror}") from None
            self._http.start()
        if self.serve_http and 0 < s.metrics_port < 65535:
            self._metrics_server = serve_metrics(self.metrics.registry, s.metrics_addr, s.metrics_port,
                                                 s.metrics_path)
        if self.source is None:
            raise AgentError("no source of Kubernetes objects configured")
        self.source.start(self.caches, self.broadcaster.publish)
        missing = self.caches.wait_synced(s.cache_sync_timeout)
        if missing:
            raise AgentError(
                f"caches did not sync within {s.cache_sync_timeout:g}s (--cache-sync-timeout): "
                + ", ".join(r.value for r in missing)
            )
        # The cached objects live as long as the agent: move them out of the cyclic GC's generations, so its
        # full collections (tens of ms at 100k objects) stop pausing event delivery.
        gc.collect()
        gc.freeze()
        log.info("caches synced: %s", ", ".join(f"{len(st)} {r.value}" for r, st in self.caches.stores.items()))
        for caller in self.host:
            log.info("starting plugin %s (role %s)", caller.name, caller.info.role)
            worker = self.workers[caller.name]
            ctx = self.contexts[caller.name]
            self._started.append(caller)
            try:
                caller.start(ctx)
            except Exception as e:
                # Isolation: one plugin that cannot start (a kernel feature missing, a daemon not installed)
                # does not stop the others. It is unhealthy and its start is retried on its own worker.
                worker.start_error = f"{type(e).__name__}: {e}"
                worker._failures["start"].inc()
                log.error("plugin %s failed to start: %s; retrying in the background, other plugins go on",
                          caller.name, worker.start_error)
                worker.start(initial_sync=True, retry_start=lambda c=caller, x=ctx: c.start(x))
                continue
            worker.start(initial_sync=True)
            if caller.info.role in Role.START_ORDER and caller is not self.host.callers[-1]:
                # kube-router's start barriers: routing's host setup (FORWARD accepts, kube-bridge) exists
                # before the proxy starts, the proxy's INPUT firewall before network policy places its jumps
                # above them. Wait for this plugin's first sync (bounded; a failed sync does not hold others).
                if not worker.first_sync_done.wait(self.start_barrier_timeout):
                    log.warning("plugin %s: initial sync still running after %.0fs; starting the next plugin",
                                caller.name, self.start_barrier_timeout)

    def run(self) -> int:
        """Start, then block until SIGTERM/SIGINT (or :meth:`request_stop`), then stop. Returns an exit code."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self._stop.set())
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        log.info("kr agent running on node %s with plugins: %s", self.node_name,
                 ", ".join(c.name for c in self._started) or "none")
        self._stop.wait()
        log.info("shutting down")
        self.stop()
        return 0

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self) -> None:
        """Stop the source, drain the queues, call ``stop`` hooks in reverse start order, close the servers."""
        if self.source is not None:
            try:
                self.source.stop()
            except Exception:
                log.exception("stopping the source failed")
        self.broadcaster.stop(drain=True)
        for caller in reversed(self._started):
            if not self.workers[caller.name].started:
                continue  # its start never succeeded: nothing to stop
            try:
                caller.stop()
            except Exception:
                log.exception("plugin %s: stop hook failed", caller.name)
        self._started.clear()
        if self._http is not None:
            self._http.stop()
            self._http = None
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server = None

    def cleanup(self) -> list[str]:
        """``--cleanup-config``: call every plugin's ``cleanup`` hook; return the failures (empty = success)."""
        if not self._configured:
            self.configure()
        assert self.host is not None
        failed = []
        for caller in self.host:
            try:
                caller.cleanup()
                log.info("plugin %s: cleaned up", caller.name)
            except Exception as e:
                log.exception("plugin %s: cleanup failed", caller.name)
                failed.append(f"{caller.name}: {e}")
        return failed

    # ------------------------------------------------------------------ introspection
    def health_problems(self) -> list[str]:
        probs = self.health.problems()
        for name, w in self.workers.items():
            if w in self.broadcaster.workers and w._thread is not None and not w.alive and not self._stop.is_set():
                probs.append(f"{name}: worker thread is not running")
            if w.start_error is not None:
                probs.append(f"{name}: start failed: {w.start_error}")
            rep = w.last_health
            if rep is not None and not rep.healthy:
                probs.append(f"{name}: {rep.message}")
        return probs

    def state(self, timeout: float = 5.0) -> dict[str, Any]:
        """Every plugin's ``state`` (collected on its own worker thread) plus the core's view of it."""
        out: dict[str, Any] = {"node": self.node_name, "plugins": {}}
        assert self.host is not None
        futures = {}
        for caller in self.host:
            w = self.workers[caller.name]
            if caller.implements("state") and w.alive:
                futures[caller.name] = w.call(caller.state)
        for caller in self.host:
            w = self.workers[caller.name]
            entry: dict[str, Any] = {
                "role": caller.info.role,
                "version": caller.info.version,
                "implemented": caller.info.implemented,
                "queue_depth": w.depth,
                "syncs": w.syncs_ok,
                "events": w.events_delivered,
                "last_sync_age": self.health.age(caller.name),
                "state": None,
            }
            fut = futures.get(caller.name)
            if fut is not None:
                try:
                    entry["state"] = fut.result(timeout)
                except Exception as e:  # noqa: BLE001 - reported to the user
                    entry["error"] = f"{type(e).__name__}: {e}"
            out["plugins"][caller.name] = entry
        return out
