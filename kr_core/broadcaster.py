"""Per-plugin ordered queues with coalescing, debounced syncs and isolation of failures.

Every enabled plugin gets a :class:`PluginWorker`: one thread, one queue. The :class:`Broadcaster` hands
each event to the workers of the plugins that watch its resource. Guarantees:

* **Order per object.** A queue holds at most one pending event per object (kind + namespace/name); a new
  event for an object that is still pending is merged into it (:func:`kr_core.events.coalesce`), so a burst
  of 50 updates to one Service is delivered as one MODIFIED from the first ``old`` to the last ``new``.
* **Isolation.** A slow plugin only grows its own queue; a hook that raises is logged with the object,
  counted (``kr_plugin_hook_failures_total``) and retried with exponential backoff, while the plugin's other
  objects keep flowing. Later events for a failing object merge into the retry. After ``max_attempts`` the
  event is dropped and a full sync is requested instead (events are hints; the sync is the truth).
* **One thread per plugin.** Events, syncs, ``state`` and ``health`` calls of one plugin all run on its worker
  thread, so plugin code needs no locks.
* **Syncs.** ``request_sync`` is debounced (at most one sync per ``min_sync_interval``; requests in between
  merge), periodic syncs run every ``sync_period``, a failed sync is retried with backoff, and every
  successful sync is a heartbeat.

This replaces kube-router's unordered "one goroutine per listener per event".
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from kr_core.events import Event, coalesce
from kr_core.metrics import CoreMetrics
from kr_core.model import Resource
from kr_core.plugins import EVENT_HOOK, PluginCaller

log = logging.getLogger("kr.broadcaster")


@dataclass(slots=True)
class _Pending:
    event: Event
    enqueued: float  # perf_counter() of the first event merged into this one
    attempts: int = 0
    due: float = 0.0  # for retries: perf_counter() when the next attempt may run


class PluginWorker:
    """One plugin's queue and thread."""

    def __init__(
        self,
        caller: PluginCaller,
        metrics: CoreMetrics,
        *,
        sync_period: float = 300.0,
        min_sync_interval: float = 1.0,
        retry_base: float = 0.2,
        retry_max: float = 30.0,
        max_attempts: int = 8,
        health_interval: float = 5.0,
        on_sync_ok: Callable[[str], None] | None = None,
    ) -> None:
        self.caller = caller
        self.name = caller.name
        self.sync_period = sync_period
        self.min_sync_interval = min_sync_interval
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.max_attempts = max_attempts
        self.health_interval = health_interval
        self._on_sync_ok = on_sync_ok
        self._cond = threading.Condition(threading.Lock())
        self._pending: dict[tuple[Resource, str], _Pending] = {}
        self._retry: dict[tuple[Resource, str], _Pending] = {}
        self._inflight = 0  # events of the batch being delivered, not yet handed to the plugin
        self._calls: list[tuple[Callable[[], Any], Future]] = []
        self._sync_reason: str | None = None
        self._sync_due = 0.0
        self._sync_failures = 0
        self._last_sync_start = -1e9
        self._next_periodic = float("inf")
        self._stopping = False
        self._drain = True
        self._thread: threading.Thread | None = None
        self.last_health: Any = None
        self.start_error: str | None = None  # why the plugin's start hook is failing (retried on the worker)
        self.first_sync_done = threading.Event()  # set after the first sync attempt (ok or not)
        self.started = False
        self.syncs_ok = 0
        self.events_delivered = 0
        m = metrics
        self._lat = m.event_latency.labels(plugin=self.name)
        self._sync_hist = m.sync_duration.labels(plugin=self.name)
        self._events_total = m.events_total.labels(plugin=self.name)
        self._failures = {h: m.hook_failures.labels(plugin=self.name, hook=h) for h in (*EVENT_HOOK.values(), "sync", "start")}
        self._dropped = m.events_dropped.labels(plugin=self.name)
        m.queue_depth.labels(plugin=self.name).set_function(lambda: self.depth)

    # ------------------------------------------------------------------ producer side (any thread)
    def submit(self, event: Event, enqueued: float | None = None, key: tuple[Resource, str] | None = None) -> None:
        """Queue an event (merging it into a pending one for the same object)."""
        t = time.perf_counter() if enqueued is None else enqueued
        if key is None:
            key = event.key
        with self._cond:
            r = self._retry.get(key)
            if r is not None:  # the object is failing: merge into its retry, keep its place and backoff
                merged = coalesce(r.event, event)
                if merged is None:
                    del self._retry[key]
                else:
                    r.event = merged
                return
            p = self._pending.get(key)
            if p is None:
                self._pending[key] = _Pending(event, t)
                if len(self._pending) == 1:
                    self._cond.notify()
            else:
                merged = coalesce(p.event, event)
                if merged is None:
                    del self._pending[key]
                else:
                    p.event = merged

    def request_sync(self, reason: str) -> None:
        """Ask for a full sync; requests within ``min_sync_interval`` of the last sync merge into one."""
        with self._cond:
            now = time.perf_counter()
            due = max(now, self._last_sync_start + self.min_sync_interval)
            if self._sync_reason is None:
                self._sync_reason, self._sync_due = reason, due
            else:
                # merged requests: the plugin sees every reason ("a; b"), so a cheap partial job asked for
                # by one reason cannot hide a request for a full reconcile behind it
                if reason not in self._sync_reason.split("; "):
                    self._sync_reason = f"{self._sync_reason}; {reason}" if len(self._sync_reason) < 500 else \
                        self._sync_reason
                self._sync_due = min(self._sync_due, due)
            self._cond.notify()

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn`` on the worker thread (between events); the future carries its result."""
        fut: Future = Future()
        with self._cond:
            self._calls.append((fn, fut))
            self._cond.notify()
        return fut

    @property
    def depth(self) -> int:
        return len(self._pending) + len(self._retry) + self._inflight

    # ------------------------------------------------------------------ lifecycle
    def start(self, initial_sync: bool = True, retry_start: Callable[[], None] | None = None) -> None:
        """Start the worker thread. With ``retry_start`` (the plugin's start hook, which failed once), the
        thread first retries it with backoff until it succeeds; events queue (and coalesce) meanwhile."""
        if initial_sync:
            with self._cond:
                self._sync_reason, self._sync_due = "initial", 0.0
        self._next_periodic = time.perf_counter() + self.sync_period
        self.started = retry_start is None
        if retry_start is not None or not initial_sync:
            self.first_sync_done.set()  # nobody waits for a plugin that could not start
        self._thread = threading.Thread(target=self._run, args=(retry_start,), name=f"kr-plugin-{self.name}",
                                        daemon=True)
        self._thread.start()

    def _retry_start(self, start: Callable[[], None]) -> bool:
        """Retry the start hook with backoff until it succeeds (True) or the worker is stopped (False)."""
        attempt = 1
        while True:
            delay = min(self.retry_max, self.retry_base * 2 ** attempt)
            with self._cond:
                if self._cond.wait_for(lambda: self._stopping, delay):
                    return False
            attempt += 1
            try:
                start()
            except Exception as e:
                self._failures["start"].inc()
                self.start_error = f"{type(e).__name__}: {e}"
                log.warning("plugin %s: start failed again (attempt %d): %s", self.name, attempt, self.start_error)
                continue
            log.info("plugin %s: started after %d attempts", self.name, attempt)
            self.start_error = None
            self.started = True
            return True

    def stop(self, drain: bool = True, timeout: float | None = 30.0) -> None:
        """Stop the thread; with ``drain`` it first delivers what is pending (retries are dropped)."""
        with self._cond:
            self._stopping, self._drain = True, drain
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------ worker thread
    def _next_wakeup(self, now: float) -> float:
        t = self._next_periodic
        if self._sync_reason is not None:
            t = min(t, self._sync_due)
        for r in self._retry.values():
            if r.due < t:
                t = r.due
        return min(t - now, self.health_interval)

    def _run(self, retry_start: Callable[[], None] | None = None) -> None:
        if retry_start is not None and not self._retry_start(retry_start):
            return
        next_health = time.perf_counter()
        while True:
            with self._cond:
                while True:
                    now = time.perf_counter()
                    if now >= self._next_periodic:
                        self._next_periodic = now + self.sync_period
                        if self._sync_reason is None:  # never shortens a failed sync's backoff
                            self._sync_reason, self._sync_due = "periodic", now
                    if self._pending or self._calls or self._stopping:
                        break
                    if self._sync_reason is not None and self._sync_due <= now:
                        break
                    if now >= next_health or any(r.due <= now for r in self._retry.values()):
                        break
                    self._cond.wait(max(0.0, min(self._next_wakeup(now), next_health - now)))
                if self._stopping and (not self._drain or not self._pending):
                    calls, self._calls = self._calls, []
                    break
                batch = self._pending
                self._pending = {}
                if self._retry:
                    for key, r in list(self._retry.items()):
                        if r.due <= now:
                            del self._retry[key]
                            batch[key] = r  # keys in retry are never in pending (submit diverts them)
                calls, self._calls = self._calls, []
                do_sync = None
                if self._sync_reason is not None and self._sync_due <= now:
                    do_sync, self._sync_reason = self._sync_reason, None
            for fn, fut in calls:
                self._run_call(fn, fut)
            # the initial sync comes before the events queued while the caches filled (the hook order's
            # promise): those events are already in the caches the sync reads, so after it they are cheap
            # repeats, while before it each one would program the kernel alone, against a dataplane the
            # plugin has not set up yet (sets and jumps that its first sync creates)
            first = do_sync if do_sync is not None and "initial" in do_sync.split("; ") else None
            if first is not None:
                self._sync(first)
            if batch:
                self._deliver(batch)
            if do_sync is not None and first is None:
                self._sync(do_sync)
            now = time.perf_counter()
            if now >= next_health:
                next_health = now + self.health_interval
                self._check_health()
        for fn, fut in calls:
            self._run_call(fn, fut)

    @staticmethod
    def _run_call(fn: Callable[[], Any], fut: Future) -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(fn())
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            fut.set_exception(e)

    def _deliver(self, batch: dict[tuple[Resource, str], _Pending]) -> None:
        fns = {r: self.caller.event_function(r) for r in Resource}
        observe = self._lat.observe
        perf = time.perf_counter
        n = 0
        self._inflight = len(batch)
        for key, p in batch.items():
            self._inflight -= 1
            ev = p.event
            fn = fns[ev.resource]
            try:
                if fn is not None:
                    fn(event=ev)
            except Exception:
                self._failed(key, p)
                continue
            observe(perf() - p.enqueued)
            n += 1
        self.events_delivered += n
        self._events_total.inc(n)

    def _failed(self, key: tuple[Resource, str], p: _Pending) -> None:
        hook = EVENT_HOOK[p.event.resource]
        self._failures[hook].inc()
        p.attempts += 1
        if p.attempts >= self.max_attempts:
            log.exception(
                "plugin %s: %s failed for %s %d times; dropping it and requesting a full sync",
                self.name, hook, p.event, p.attempts,
            )
            self._dropped.inc()
            self.request_sync(f"{hook} gave up on {p.event.obj.key}")
            return
        delay = min(self.retry_max, self.retry_base * 2 ** (p.attempts - 1))
        log.exception("plugin %s: %s failed for %s (attempt %d); retrying in %.1fs",
                      self.name, hook, p.event, p.attempts, delay)
        p.due = time.perf_counter() + delay
        with self._cond:
            newer = self._pending.pop(key, None)
            if newer is not None:
                merged = coalesce(p.event, newer.event)
                if merged is None:
                    return
                p.event = merged
            self._retry[key] = p

    def _sync(self, reason: str) -> None:
        try:
            self._sync_once(reason)
        finally:
            self.first_sync_done.set()

    def _sync_once(self, reason: str) -> None:
        t0 = time.perf_counter()
        self._last_sync_start = t0
        try:
            self.caller.sync(reason)
        except Exception:
            self._failures["sync"].inc()
            self._sync_failures += 1
            delay = min(self.retry_max, self.retry_base * 2 ** (self._sync_failures - 1))
            log.exception("plugin %s: sync (%s) failed (%d in a row); retrying in %.1fs",
                          self.name, reason, self._sync_failures, delay)
            with self._cond:
                if self._sync_reason is None:
                    self._sync_reason = f"retry after failed {reason} sync"
                    self._sync_due = time.perf_counter() + delay
            return
        finally:
            self._sync_hist.observe(time.perf_counter() - t0)
        self._sync_failures = 0
        self.syncs_ok += 1
        if reason == "initial":
            # the plugin's committed state, built by its first sync, lives as long as the agent: keep it out of
            # the cyclic GC's scans too (as the caches are after they sync)
            gc.collect()
            gc.freeze()
        self._next_periodic = time.perf_counter() + self.sync_period
        log.debug("plugin %s: sync (%s) done in %.3fs", self.name, reason, time.perf_counter() - t0)
        if self._on_sync_ok is not None:
            self._on_sync_ok(self.name)

    def _check_health(self) -> None:
        if not self.caller.implements("health"):
            return
        try:
            self.last_health = self.caller.health()
        except Exception as e:
            log.exception("plugin %s: health hook failed", self.name)
            from kr_core.plugin import HealthReport

            self.last_health = HealthReport(False, f"health hook failed: {e}")


class Broadcaster:
    """Routes each event to the workers of the plugins that watch its resource."""

    def __init__(self, workers: list[PluginWorker] | None = None) -> None:
        self.workers: list[PluginWorker] = []
        self._routes: dict[Resource, list[PluginWorker]] = {r: [] for r in Resource}
        for w in workers or ():
            self.add(w)

    def add(self, worker: PluginWorker) -> None:
        self.workers.append(worker)
        for r in worker.caller.info.resources:
            self._routes[r].append(worker)

    def publish(self, event: Event) -> None:
        """Queue ``event`` for every interested plugin. Never blocks on a plugin."""
        t = time.perf_counter()
        key = event.key
        for w in self._routes[event.resource]:
            w.submit(event, t, key)

    def stop(self, drain: bool = True, timeout: float = 30.0) -> None:
        for w in self.workers:
            w.stop(drain=drain, timeout=timeout)
