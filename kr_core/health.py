"""/healthz with kube-router's heartbeat semantics, and the agent's small HTTP endpoint.

kube-router: each component heartbeats after a successful sync; its first heartbeat records a TTL (the time
since start-up, i.e. how long its first sync took); afterwards it is unhealthy once
``now - last_beat > sync_period + ttl + 1.5 s``. A component that never beat is healthy (it is still
starting). kr adds: a plugin whose ``health`` hook reported a problem, or whose worker thread died, is
unhealthy.

The same server answers ``GET /state`` (JSON of every plugin's ``state`` hook, for ``kr state``) and, with
``--enable-pprof``, ``GET /debug/stacks`` (a dump of every thread's stack).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("kr.health")

GRACE = 1.5  # seconds, as kube-router


@dataclass
class _Component:
    period: float
    ttl: float | None = None
    last_beat: float | None = None


class HealthChecker:
    """Heartbeats of the components (one per plugin)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._started = clock()
        self._components: dict[str, _Component] = {}
        self._lock = threading.Lock()

    def register(self, name: str, period: float) -> None:
        with self._lock:
            self._components[name] = _Component(period)

    def beat(self, name: str) -> None:
        now = self._clock()
        with self._lock:
            c = self._components[name]
            if c.ttl is None:
                c.ttl = now - self._started
            c.last_beat = now

    def age(self, name: str) -> float | None:
        c = self._components.get(name)
        return None if c is None or c.last_beat is None else self._clock() - c.last_beat

    def problems(self) -> list[str]:
        """Components that missed their heartbeat, with a reason each."""
        now = self._clock()
        out = []
        with self._lock:
            for name, c in self._components.items():
                if c.last_beat is None or c.ttl is None:
                    continue
                late = now - c.last_beat
                limit = c.period + c.ttl + GRACE
                if late > limit:
                    out.append(f"{name}: no successful sync for {late:.1f}s (limit {limit:.1f}s)")
        return out


class AgentHTTPServer:
    """Serves /healthz, /state and /debug/stacks on ``--health-addr:--health-port``."""

    def __init__(
        self,
        addr: str,
        port: int,
        health: Callable[[], list[str]],
        state: Callable[[], dict[str, Any]],
        stacks: bool = False,
    ) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    probs = outer._health()
                    if probs:
                        log.warning("health check failed: %s", "; ".join(probs))
                        self._send(500, b"Unhealthy")
                    else:
                        self._send(200, b"OK\n")
                elif path == "/state":
                    self._send(200, json.dumps(outer._state(), default=str).encode(), "application/json")
                elif path == "/debug/stacks" and outer._stacks:
                    frames = sys._current_frames()
                    out = []
                    for t in threading.enumerate():
                        f = frames.get(t.ident or -1)
                        out.append(f"--- {t.name}\n" + ("".join(traceback.format_stack(f)) if f else ""))
                    self._send(200, "\n".join(out).encode())
                else:
                    self._send(404, b"not found\n")

        self._health = health
        self._state = state
        self._stacks = stacks
        self.server = ThreadingHTTPServer((addr or "0.0.0.0", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="kr-health", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
