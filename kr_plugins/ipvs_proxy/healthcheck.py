"""NodePort health-check servers (``spec.healthCheckNodePort``), as kube-router's nodeport_healthcheck.go.

One HTTP server per distinct port, answering ``/healthz`` (any path, as kube-proxy) with 200 and
``N Service Endpoints found`` when this node has at least one local ready endpoint for the Service, else
503 ``No Service Endpoints Found``. Servers are started and stopped as Services come and go; the counts
are updated in place (a dict read by the server threads; replacing an int is atomic under the GIL).
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("kr.ipvs_proxy.healthcheck")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class HealthServers:
    def __init__(self, addr: str = "") -> None:
        self.addr = addr
        self.counts: dict[int, tuple[str, int]] = {}
        self.servers: dict[int, _Server] = {}
        self.failed: dict[int, str] = {}

    def _handler(self, port: int) -> type[BaseHTTPRequestHandler]:
        counts = self.counts

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                svc, n = counts.get(port, ("", 0))
                if n > 0:
                    code, body = 200, f"{n} Service Endpoints found\n"
                else:
                    code, body = 503, "No Service Endpoints Found\n"
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("X-Content-Type-Options", "nosniff")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def sync(self, wanted: dict[int, tuple[str, int]]) -> None:
        """Run exactly one server per port in ``wanted`` (port -> (service, local endpoints))."""
        for port in list(self.servers):
            if port not in wanted:
                srv = self.servers.pop(port)
                srv.shutdown()
                srv.server_close()
                log.info("health-check server on port %d stopped", port)
        self.counts.clear()
        self.counts.update(wanted)
        for port, (svc, _n) in wanted.items():
            if port in self.servers:
                continue
            try:
                srv = _Server((self.addr, port), self._handler(port))
            except OSError as exc:
                if self.failed.get(port) != str(exc):
                    log.error("Service %s: health-check server on port %d: %s", svc, port, exc)
                self.failed[port] = str(exc)
                continue
            self.failed.pop(port, None)
            threading.Thread(target=srv.serve_forever, name=f"ipvs-hc-{port}", daemon=True).start()
            self.servers[port] = srv
            log.info("Service %s: health-check server listening on port %d", svc, port)

    def stop(self) -> None:
        self.sync({})
