"""Broadcaster benchmark: 100,000 events to 4 no-op plugins.

Reports, per plugin: events/s when the whole burst is published at once; enqueue-to-hook latency p50/p99 for
paced publishing (a steady rate below saturation) and for the burst (dominated by queueing); and the cost of
one delivery relative to a direct Python function call of the same no-op hook.
Goal (issue): >= 50,000 events/s per plugin, p99 < 5 ms.
"""

from __future__ import annotations

import argparse
import gc
import threading
import time
import timeit
from typing import Any

from kr_core import PluginInfo, Resource, hookimpl
from kr_core.broadcaster import Broadcaster, PluginWorker
from kr_core.events import Event, EventType
from kr_core.metrics import CoreMetrics
from kr_core.model import ObjectMeta, Service
from kr_core.plugins import PluginHost, from_classes

N_PLUGINS = 4


def _plugin(i: int, n: int, arrivals: list[float], done: threading.Event) -> type:
    perf = time.perf_counter
    count = [0]

    class NoOp:
        info = PluginInfo(name=f"noop{i}", role=f"bench-{i}", version="1", resources=frozenset({Resource.SERVICE}))

        @hookimpl
        def on_service(self, event: Event) -> None:
            arrivals[int(event.new.meta.uid)] = perf()  # type: ignore[union-attr]
            count[0] += 1
            if count[0] == n:
                done.set()

    return NoOp


def _events(n: int) -> list[Event]:
    out = []
    for i in range(n):
        meta = ObjectMeta(name=f"svc-{i}", namespace="bench", uid=str(i), resource_version="1")
        svc = Service(meta=meta, cluster_ips=(f"10.{96 + i // 65536}.{i // 256 % 256}.{i % 256}",))
        out.append(Event(EventType.ADDED, Resource.SERVICE, svc, None))
    return out


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _run_once(events: list[Event], rate: float | None) -> dict[str, Any]:
    n = len(events)
    arrivals = [[0.0] * n for _ in range(N_PLUGINS)]
    dones = [threading.Event() for _ in range(N_PLUGINS)]
    classes = [_plugin(i, n, arrivals[i], dones[i]) for i in range(N_PLUGINS)]
    host = PluginHost(from_classes(classes))
    metrics = CoreMetrics()
    workers = [PluginWorker(c, metrics, sync_period=1e9) for c in host]
    b = Broadcaster(workers)
    for w in workers:
        w.start(initial_sync=False)
    gc.collect()
    gc.freeze()  # as the agent does once its caches are synced: long-lived objects leave the GC's scans
    sent = [0.0] * n
    perf = time.perf_counter
    t0 = perf()
    if rate is None:
        for i, ev in enumerate(events):
            sent[i] = perf()
            b.publish(ev)
    else:
        # paced: a tick every millisecond publishes rate/1000 events, then sleeps (as an informer thread
        # blocks on its socket between watch chunks); busy-waiting would hold the GIL and measure that instead
        per_tick = max(1, int(rate / 1000))
        nxt = t0
        for start in range(0, n, per_tick):
            for i in range(start, min(n, start + per_tick)):
                sent[i] = perf()
                b.publish(events[i])
            nxt += per_tick / rate
            delay = nxt - perf()
            if delay > 0:
                time.sleep(delay)
    t_pub = perf() - t0
    for d in dones:
        d.wait(120)
    per_plugin = []
    for i in range(N_PLUGINS):
        lat = [a - s for a, s in zip(arrivals[i], sent, strict=True)]
        end = max(arrivals[i])
        per_plugin.append({
            "plugin": f"noop{i}",
            "events_per_s": n / (end - t0),
            "p50_ms": _pct(lat, 0.50) * 1e3,
            "p99_ms": _pct(lat, 0.99) * 1e3,
            "max_ms": max(lat) * 1e3,
        })
    b.stop()
    gc.unfreeze()
    return {"publish_s": t_pub, "plugins": per_plugin, "wall_s": max(max(a) for a in arrivals) - t0}


def run(args: argparse.Namespace | None = None) -> dict[str, Any]:
    n = getattr(args, "n", None) or 100_000
    events = _events(n)  # distinct objects: nothing coalesces, every event is delivered
    burst = _run_once(events, None)
    paced_rate = getattr(args, "rate", None) or 20_000
    paced = _run_once(events[: min(n, 40_000)], paced_rate)

    # direct call of the same no-op hook, for the ratio
    sink = [0.0] * 1

    def direct(event: Event) -> None:
        sink[0] = time.perf_counter()

    ev0 = events[0]
    per_call = min(timeit.repeat(lambda: direct(ev0), number=100_000, repeat=5)) / 100_000
    per_delivery = burst["wall_s"] / (n * N_PLUGINS)
    rows = []
    for p, q in zip(burst["plugins"], paced["plugins"], strict=True):
        rows.append({
            "plugin": p["plugin"],
            "events/s (burst)": round(p["events_per_s"]),
            f"p50 ms (paced {paced_rate}/s)": round(q["p50_ms"], 3),
            f"p99 ms (paced {paced_rate}/s)": round(q["p99_ms"], 3),
            "p50 ms (burst)": round(p["p50_ms"], 1),
            "p99 ms (burst)": round(p["p99_ms"], 1),
        })
    worst = min(p["events_per_s"] for p in burst["plugins"])
    worst_p99 = max(q["p99_ms"] for q in paced["plugins"])
    return {
        "name": "broadcaster",
        "events": n,
        "plugins": N_PLUGINS,
        "rows": rows,
        "direct_call_us": per_call * 1e6,
        "per_delivery_us": per_delivery * 1e6,
        "ratio_vs_direct_call": per_delivery / per_call,
        "goals": {
            ">= 50,000 events/s per plugin": {"measured": round(worst), "met": worst >= 50_000},
            "p99 < 5 ms (paced)": {"measured": round(worst_p99, 3), "met": worst_p99 < 5.0},
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--rate", type=int, default=20_000)
    res = run(ap.parse_args())
    from tests.bench.report import print_result

    print_result(res)


if __name__ == "__main__":
    main()
