"""Watch fan-out of the embedded API server: 500 writes/s for 60 s with 20 watchers.

`kr apiserver` runs as its own process; one writer thread creates NetworkPolicies at a steady rate over a
keep-alive connection; 20 watcher threads stream `?watch=1` from the same resourceVersion. Reported: p50/p99
write-to-event latency (from sending the create to a watcher reading its ADDED event) and events missing per
watcher. Goal (issue): p99 < 50 ms, nothing dropped.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

NS = "bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _req(conn: http.client.HTTPConnection, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    raw = r.read()
    return r.status, json.loads(raw) if raw else None


def _proc_cpu(pid: int) -> float:
    """user+system CPU seconds of process ``pid`` so far."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def run(args: argparse.Namespace | None = None) -> dict[str, Any]:
    rate = getattr(args, "rate", None) or 500
    seconds = getattr(args, "seconds", None) or 60
    n_watchers = getattr(args, "watchers", None) or 20
    total = int(rate * seconds)
    port = _free_port()
    tmp = tempfile.mkdtemp(prefix="kr-bench-watch-")
    srv = subprocess.Popen([sys.executable, "-m", "kr_core.cli", "apiserver", "--listen", f"127.0.0.1:{port}",
                            "--data", os.path.join(tmp, "api.db"), "--history", str(total + 1000)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                _req(conn, "GET", "/version")
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        _req(conn, "POST", "/api/v1/namespaces", {"metadata": {"name": NS}})
        _, lst = _req(conn, "GET", f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies")
        rv0 = lst["metadata"]["resourceVersion"]

        sent: dict[str, float] = {}
        got: list[dict[str, float]] = [{} for _ in range(n_watchers)]
        ready = threading.Barrier(n_watchers + 1)
        stop = threading.Event()

        def watcher(i: int) -> None:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=seconds + 60)
            c.request("GET", f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies?watch=1"
                             f"&resourceVersion={rv0}&timeoutSeconds={int(seconds) + 60}")
            resp = c.getresponse()
            ready.wait()
            mine = got[i]
            perf = time.perf_counter
            while len(mine) < total and not stop.is_set():
                line = resp.readline()
                if not line:
                    break
                ev = json.loads(line)
                if ev.get("type") == "ADDED":
                    mine[ev["object"]["metadata"]["name"]] = perf()
            c.close()

        threads = [threading.Thread(target=watcher, args=(i,), daemon=True) for i in range(n_watchers)]
        for t in threads:
            t.start()
        ready.wait()
        n_writers = getattr(args, "writers", None) or 4
        errors = [0] * n_writers
        t0 = time.perf_counter()

        def writer(w: int) -> None:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            for k in range(w, total, n_writers):  # writer w takes every n-th slot of the global schedule
                delay = t0 + k / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                name = f"np-{k}"
                sent[name] = time.perf_counter()
                code, _ = _req(c, "POST", f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies",
                               {"metadata": {"name": name}, "spec": {"podSelector": {}}})
                if code != 201:
                    errors[w] += 1
            c.close()

        writers = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(n_writers)]
        for t in writers:
            t.start()
        for t in writers:
            t.join()
        write_s = time.perf_counter() - t0
        for t in threads:
            t.join(timeout=30)
        stop.set()
        server_cpu = _proc_cpu(srv.pid)
        client_cpu = time.process_time()
        lat = [g[n] - sent[n] for g in got for n in g if n in sent]
        missing = [total - len(g) for g in got]
        p50, p99 = _pct(lat, 0.5) * 1e3, _pct(lat, 0.99) * 1e3
        return {
            "name": "watch_fanout",
            "rows": [{"writes": total, "rate/s (achieved)": round(total / write_s), "watchers": n_watchers,
                      "p50 ms": round(p50, 2), "p99 ms": round(p99, 2), "max ms": round(max(lat) * 1e3, 1),
                      "events missing (max per watcher)": max(missing), "writers": n_writers, "write errors": sum(errors),
                      "server CPU s": round(server_cpu, 1), "bench CPU s": round(client_cpu, 1)}],
            "goals": {"p99 write-to-event < 50 ms": {"measured": round(p99, 2), "met": p99 < 50},
                      "nothing dropped": {"measured": max(missing), "met": max(missing) == 0 and sum(errors) == 0}},
        }
    finally:
        srv.terminate()
        srv.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--watchers", type=int, default=20)
    ap.add_argument("--writers", type=int, default=4)
    from tests.bench.report import print_result

    print_result(run(ap.parse_args()))


if __name__ == "__main__":
    main()
