"""The broadcaster's guarantees: per-object order, coalescing, isolation, retries, debounced syncs."""

from __future__ import annotations

import threading
import time

import pytest

from kr_core import EventType, PluginInfo, Resource, hookimpl
from kr_core.broadcaster import Broadcaster, PluginWorker
from kr_core.events import Event, coalesce
from kr_core.metrics import CoreMetrics
from kr_core.plugins import PluginHost, from_classes

from ..conftest import make_service


def _ev(t: EventType, name: str, rv: str, old_rv: str | None = None) -> Event:
    new = make_service(name, rv=rv) if t is not EventType.DELETED else None
    old = make_service(name, rv=old_rv) if old_rv else None
    if t is EventType.DELETED:
        old = make_service(name, rv=rv)
    return Event(t, Resource.SERVICE, new, old)


A, M, D = EventType.ADDED, EventType.MODIFIED, EventType.DELETED


@pytest.mark.parametrize(
    "first,second,expect",
    [
        ((A, "1", None), (M, "2", "1"), (A, "2", None)),
        ((A, "1", None), (D, "1", None), None),
        ((M, "2", "1"), (M, "3", "2"), (M, "3", "1")),
        ((M, "2", "1"), (D, "2", None), (D, None, "2")),
        ((D, "2", None), (A, "3", None), (M, "3", "2")),
    ],
)
def test_coalesce_table(first, second, expect):
    e1, e2 = _ev(first[0], "s", first[1], first[2]), _ev(second[0], "s", second[1], second[2])
    got = coalesce(e1, e2)
    if expect is None:
        assert got is None
        return
    t, new_rv, old_rv = expect
    assert got.type is t
    assert (got.new.meta.resource_version if got.new else None) == new_rv
    assert (got.old.meta.resource_version if got.old else None) == old_rv


class Gate:
    """Lets a plugin's hooks block until the test opens the gate."""

    def __init__(self) -> None:
        self.open = threading.Event()


def _plugin(name: str, on_service, resources=frozenset({Resource.SERVICE}), sync=None):
    class P:
        info = PluginInfo(name=name, role=f"role-{name}", version="1", resources=resources)

        @hookimpl
        def on_service(self, event):
            on_service(event)

        @hookimpl
        def sync(self, reason):
            if sync:
                sync(reason)

    return P


def _workers(*classes, **kw):
    host = PluginHost(from_classes(classes))
    metrics = CoreMetrics()
    ws = [PluginWorker(c, metrics, **kw) for c in host]
    return Broadcaster(ws), ws, metrics


def test_order_per_object_and_coalescing_while_plugin_busy():
    gate = Gate()
    seen: list[Event] = []

    def hook(e):
        if e.new is not None and e.new.name == "block":
            gate.open.wait(5)
        seen.append(e)

    b, (w,), _ = _workers(_plugin("p", hook), min_sync_interval=0)
    w.start(initial_sync=False)
    b.publish(_ev(A, "block", "1"))
    time.sleep(0.1)  # the worker is now stuck in the hook
    b.publish(_ev(A, "x", "1"))
    for rv in range(2, 12):  # a burst for x while it is pending
        b.publish(_ev(M, "x", str(rv), str(rv - 1)))
    b.publish(_ev(A, "y", "1"))
    b.publish(_ev(A, "z", "1"))
    b.publish(_ev(D, "z", "1"))  # cancels out
    assert w.depth == 2
    gate.open.set()
    w.stop(drain=True)
    names = [(e.type, e.obj.name, e.obj.meta.resource_version) for e in seen]
    assert names == [(A, "block", "1"), (A, "x", "11"), (A, "y", "1")]


def test_many_objects_keep_order_per_object():
    seen: dict[str, list[int]] = {}
    b, (w,), _ = _workers(_plugin("p", lambda e: seen.setdefault(e.obj.name, []).append(int(e.obj.meta.resource_version))))
    w.start(initial_sync=False)
    for rv in range(1, 200):
        for n in ("a", "b", "c"):
            b.publish(_ev(M if rv > 1 else A, n, str(rv), str(rv - 1) if rv > 1 else None))
    w.stop(drain=True)
    for n in ("a", "b", "c"):
        assert seen[n] == sorted(seen[n]) and seen[n][-1] == 199


def test_slow_plugin_does_not_delay_another():
    gate = Gate()
    fast_seen = []
    slow = _plugin("slow", lambda e: gate.open.wait(10))
    fast = _plugin("fast", fast_seen.append)
    b, ws, _ = _workers(slow, fast)
    for w in ws:
        w.start(initial_sync=False)
    t0 = time.perf_counter()
    for i in range(100):
        b.publish(_ev(A, f"s{i}", "1"))
    deadline = time.time() + 5
    while len(fast_seen) < 100 and time.time() < deadline:
        time.sleep(0.005)
    assert len(fast_seen) == 100 and time.perf_counter() - t0 < 2
    gate.open.set()
    for w in ws:
        w.stop()


def test_failing_plugin_is_retried_and_isolated(caplog):
    attempts: dict[str, int] = {}
    ok_seen = []

    def flaky(e):
        attempts[e.obj.name] = attempts.get(e.obj.name, 0) + 1
        if e.obj.name == "bad" and attempts["bad"] < 3:
            raise RuntimeError("kernel said no")
        ok_seen.append(e)

    other = []
    b, ws, metrics = _workers(_plugin("flaky", flaky), _plugin("other", other.append), retry_base=0.05)
    for w in ws:
        w.start(initial_sync=False)
    b.publish(_ev(A, "bad", "1"))
    b.publish(_ev(A, "good", "1"))
    time.sleep(0.01)
    b.publish(_ev(M, "bad", "2", "1"))  # merges into the pending retry
    deadline = time.time() + 5
    while len(ok_seen) < 2 and time.time() < deadline:
        time.sleep(0.01)
    for w in ws:
        w.stop()
    assert [(e.obj.name, e.type) for e in ok_seen] == [("good", A), ("bad", A)]
    assert ok_seen[1].new.meta.resource_version == "2"  # the retry carried the newer object
    assert attempts["bad"] == 3 and len(other) == 3
    assert metrics.registry.get_sample_value(
        "kr_plugin_hook_failures_total", {"plugin": "flaky", "hook": "on_service"}) == 2
    assert "kernel said no" in caplog.text and "default/bad" in caplog.text


def test_poison_event_is_dropped_and_a_sync_requested():
    syncs = []

    def boom(e):
        raise ValueError("garbage annotation")

    b, (w,), metrics = _workers(_plugin("p", boom, sync=syncs.append), retry_base=0.01, max_attempts=3,
                                min_sync_interval=0)
    w.start(initial_sync=False)
    b.publish(_ev(A, "poison", "1"))
    deadline = time.time() + 5
    while not syncs and time.time() < deadline:
        time.sleep(0.01)
    w.stop()
    assert syncs and "gave up on default/poison" in syncs[0]
    assert metrics.registry.get_sample_value("kr_plugin_events_dropped_total", {"plugin": "p"}) == 1


def test_sync_requests_are_debounced_and_failed_syncs_retried():
    reasons = []
    fail = {"n": 1}

    def sync(reason):
        reasons.append(reason)
        if fail["n"]:
            fail["n"] -= 1
            raise RuntimeError("restore failed")

    b, (w,), _ = _workers(_plugin("p", lambda e: None, sync=sync), min_sync_interval=0.3, retry_base=0.05)
    w.start(initial_sync=True)
    deadline = time.time() + 5
    while len(reasons) < 2 and time.time() < deadline:
        time.sleep(0.01)
    assert reasons[0] == "initial" and reasons[1].startswith("retry after failed initial")
    for i in range(20):
        w.request_sync(f"r{i % 3}")
    time.sleep(0.6)
    w.stop()
    assert reasons[2:] == ["r0; r1; r2"]  # twenty requests within the debounce window: one sync, every reason


def test_queue_depth_metric():
    gate = Gate()
    b, (w,), metrics = _workers(_plugin("p", lambda e: gate.open.wait(5)))
    w.start(initial_sync=False)
    for i in range(10):
        b.publish(_ev(A, f"s{i}", "1"))
    time.sleep(0.1)
    assert metrics.registry.get_sample_value("kr_plugin_queue_depth", {"plugin": "p"}) == 9
    gate.open.set()
    w.stop()
    assert metrics.registry.get_sample_value("kr_plugin_events_total", {"plugin": "p"}) == 10
    assert metrics.registry.get_sample_value("kr_event_to_dataplane_seconds_count", {"plugin": "p"}) == 10


def test_initial_sync_comes_before_the_events_queued_at_start():
    """The hook order: ``sync("initial")`` and then the events the caches' first fill queued."""
    calls: list[str] = []
    b, (w,), _ = _workers(_plugin("p", lambda e: calls.append(f"event {e.obj.name}"),
                                  sync=lambda reason: calls.append(f"sync {reason}")))
    for i in range(3):
        w.submit(_ev(A, f"s{i}", "1"))
    w.start(initial_sync=True)
    deadline = time.time() + 5
    while len(calls) < 4 and time.time() < deadline:
        time.sleep(0.01)
    w.stop()
    assert calls[:4] == ["sync initial", "event s0", "event s1", "event s2"]
