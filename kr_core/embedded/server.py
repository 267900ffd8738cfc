"""The HTTP layer: routes Kubernetes REST paths to the registry, streams watches, and the ``ApiServer``
facade (start/stop/url/write_kubeconfig) used by the CLI and by tests."""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import logging
import select
import socket
import threading
from collections import OrderedDict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from kr_core.embedded import errors, protobuf, resources
from kr_core.embedded.alloc import Allocator, parse_ranges
from kr_core.embedded.discovery import openapi_v2, openapi_v3_group, openapi_v3_root
from kr_core.embedded.endpointslices import EndpointSliceController
from kr_core.embedded.registry import Registry
from kr_core.embedded.resources import Resource
from kr_core.embedded.store import Store
from kr_core.embedded.tables import to_table, wants_table
from kr_core.embedded.watch import FLUSH, stream

log = logging.getLogger(__name__)
OPEN_PATHS = {"/healthz", "/livez", "/readyz"}


class Route:
    """A parsed resource path."""

    def __init__(self, res: Resource, namespace: str | None, name: str | None, subresource: str | None,
                 watch: bool) -> None:
        self.res, self.namespace, self.name, self.subresource, self.watch = res, namespace, name, subresource, watch


def parse_route(path: str) -> Route | None:
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    watch = False
    if rest and rest[0] == "watch":
        watch, rest = True, rest[1:]
    if not rest:
        return None
    namespace: str | None = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        inner = resources.BY_PATH.get((group, version, rest[2]))
        if inner is not None and inner.namespaced:
            namespace, rest = rest[1], rest[2:]
    res = resources.BY_PATH.get((group, version, rest[0]))
    if res is None or len(rest) > 3:
        return None
    if namespace is None and res.namespaced and len(rest) > 1:
        return None
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if sub is not None and sub not in res.subresources:
        return None
    return Route(res, namespace, name, sub, watch)


def _qbool(q: dict[str, str], key: str) -> bool | None:
    v = q.get(key)
    if v is None:
        return None
    return v.lower() in ("1", "true", "yes", "t")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    api: ApiServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s - %s", self.address_string(), format % args)

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.api = self.server.api
        self.api._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.api._track(self.connection, False)

    # -- plumbing --------------------------------------------------------------------------

    def _send_json(self, code: int, body: Any, extra: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_error(self, e: errors.ApiError) -> None:
        self._send_json(e.code, e.status())

    def _read_body(self) -> Any:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            raw = b"".join(chunks)
        else:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not raw.strip():
            return None
        ctype = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip()
        if ctype == "application/vnd.kubernetes.protobuf":
            return protobuf.decode_body(raw)
        try:
            if ctype in ("application/yaml", "application/apply-patch+yaml"):
                return yaml.safe_load(raw)
            return json.loads(raw)
        except (ValueError, yaml.YAMLError) as e:
            raise errors.bad_request(f"the request body is not valid JSON: {e}") from e

    def _query(self) -> tuple[str, dict[str, str]]:
        url = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        return url.path.rstrip("/") or "/", q

    def _authorized(self, path: str) -> bool:
        token = self.api.token
        if token is None or path in OPEN_PATHS:
            return True
        scheme, _, given = self.headers.get("Authorization", "").strip().partition(" ")
        # auth schemes are case-insensitive (the client's in-cluster loader sends "bearer <token>")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())

    def _dispatch(self) -> None:
        try:
            path, q = self._query()
            if not self._authorized(path):
                raise errors.unauthorized()
            self._route(path, q)
        except errors.ApiError as e:
            self._send_error(e)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # a bug: answer 500 rather than drop the connection
            log.exception("internal error serving %s %s", self.command, self.path)
            self._send_error(errors.ApiError(500, "InternalError", f"Internal error occurred: {e}"))

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _dispatch  # noqa: N815

    # -- routing ---------------------------------------------------------------------------

    def _route(self, path: str, q: dict[str, str]) -> None:
        method = self.command
        if method in ("GET", "HEAD"):
            static = self._static(path)
            if static is not None:
                self._send_json(200, static)
                return
        route = parse_route(path)
        if route is None:
            if path in OPEN_PATHS and method in ("GET", "HEAD"):
                body = b"ok"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if method == "GET":
                    self.wfile.write(body)
                return
            self._send_json(404, errors.ApiError(404, "NotFound", "the server could not find the requested "
                                                 "resource").status())
            return
        reg = self.api.registry
        res, ns, name = route.res, route.namespace, route.name
        dry_run = q.get("dryRun") == "All"
        if route.watch or (method == "GET" and name is None and _qbool(q, "watch")):
            if method != "GET":
                raise errors.method_not_allowed()
            if route.watch and name is not None:
                q["fieldSelector"] = ",".join(filter(None, [q.get("fieldSelector"), f"metadata.name={name}"]))
            self._watch(route, q)
            return
        if route.subresource == "binding" and method != "POST":
            raise errors.method_not_allowed()
        if method in ("GET", "HEAD"):
            if name is None:
                args = (res, ns, q.get("labelSelector"), q.get("fieldSelector"),
                        int(q["limit"]) if q.get("limit", "").isdigit() else None, q.get("continue") or None)
                if not wants_table(self.headers.get("Accept", "")):
                    # the list as bytes, from the items' kept encodings (the cold-start path of every client)
                    self._send_json(200, reg.list_json(*args))
                    return
                body = reg.list(*args)
            else:
                body = reg.get(res, ns, name)
            self._send_json(200, self._maybe_table(res, body))
        elif method == "POST":
            if name is not None and route.subresource == "binding":
                self._send_json(201, reg.bind(ns, name, self._read_body()))
                return
            if name is not None:
                raise errors.method_not_allowed()
            obj = reg.create(res, ns, self._read_body(), dry_run)
            self._send_json(201, self._maybe_table(res, obj))
        elif method == "PUT":
            if name is None:
                raise errors.method_not_allowed()
            obj, created = reg.update(res, ns, name, self._read_body(), route.subresource, dry_run)
            self._send_json(201 if created else 200, obj)
        elif method == "PATCH":
            if name is None:
                raise errors.method_not_allowed()
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            if ctype == "application/apply-patch+yaml":
                raise errors.unsupported_media(ctype + " (server-side apply is not supported; use client-side apply)")
            obj = reg.patch(res, ns, name, ctype, self._read_body(), route.subresource, dry_run)
            self._send_json(200, obj)
        elif method == "DELETE":
            opts = self._read_body() or {}
            for k in ("gracePeriodSeconds", "propagationPolicy"):
                if k in q:
                    opts.setdefault(k, q[k])
            if name is None:
                body = reg.delete_collection(res, ns, q.get("labelSelector"), q.get("fieldSelector"), opts, dry_run)
            else:
                body = reg.delete(res, ns, name, opts, dry_run)
            self._send_json(200, body)
        else:
            raise errors.method_not_allowed()

    def _maybe_table(self, res: Resource, body: dict[str, Any]) -> dict[str, Any]:
        if wants_table(self.headers.get("Accept", "")):
            return to_table(res, body)
        return body

    def _static(self, path: str) -> Any:
        if path == "/version":
            return resources.SERVER_VERSION
        if path == "/api":
            return resources.api_versions()
        if path == "/apis":
            return resources.api_group_list()
        if path == "/openapi/v2":
            return openapi_v2()
        if path == "/openapi/v3":
            return openapi_v3_root()
        if path.startswith("/openapi/v3/"):
            return openapi_v3_group(path[len("/openapi/v3/"):])
        parts = [p for p in path.split("/") if p]
        if len(parts) == 2 and parts[0] == "api":
            return resources.resource_list("", parts[1])
        if len(parts) == 2 and parts[0] == "apis":
            return resources.api_group(parts[1])
        if len(parts) == 3 and parts[0] == "apis":
            return resources.resource_list(parts[1], parts[2])
        return None

    # -- watch -----------------------------------------------------------------------------

    def _client_alive(self) -> bool:
        try:
            r, _, _ = select.select([self.connection], [], [], 0)
            if r:
                return self.connection.recv(1, socket.MSG_PEEK) != b""
        except OSError:
            return False
        return True

    def _watch(self, route: Route, q: dict[str, str]) -> None:
        reg = self.api.registry
        pred = reg.matcher(route.res, route.namespace, q.get("labelSelector"), q.get("fieldSelector"))
        timeout = None
        if q.get("timeoutSeconds"):
            try:
                timeout = float(q["timeoutSeconds"])
            except ValueError:
                raise errors.bad_request("invalid timeoutSeconds") from None
        events: Iterator[dict[str, Any]] = stream(
            self.api.store, route.res, pred, q.get("resourceVersion"), timeout=timeout,
            bookmarks=bool(_qbool(q, "allowWatchBookmarks")), bookmark_interval=self.api.bookmark_interval,
            send_initial_events=_qbool(q, "sendInitialEvents"), alive=self._client_alive,
            stopping=self.api._stopping.is_set)
        table = wants_table(self.headers.get("Accept", ""))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        first = True
        buf: list[bytes] = []

        def flush() -> None:
            if buf:
                data = b"".join(buf)
                buf.clear()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

        try:
            for ev in events:
                if ev is FLUSH:
                    flush()
                    continue
                if table and ev["type"] in ("ADDED", "MODIFIED", "DELETED"):
                    ev = {"type": ev["type"], "object": to_table(route.res, ev["object"], headers=first)}
                    first = False
                    buf.append(json.dumps(ev, separators=(",", ":")).encode() + b"\n")
                else:
                    buf.append(self.api.encoder.encode(route.res.kind, ev))
                if len(buf) >= 256:
                    flush()
            flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()


class EventEncoder:
    """Watch events as JSON lines. Every watcher of a kind sends the same bytes for one change, so
    ADDED/MODIFIED/DELETED lines are cached by (kind, type, resourceVersion): in one server a
    resourceVersion names one write, hence one object state."""

    def __init__(self, size: int = 4096) -> None:
        self._cache: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size

    def encode(self, kind: str, ev: dict[str, Any]) -> bytes:
        rv = ((ev.get("object") or {}).get("metadata") or {}).get("resourceVersion")
        if ev["type"] not in ("ADDED", "MODIFIED", "DELETED") or not rv:
            return json.dumps(ev, separators=(",", ":")).encode() + b"\n"
        key = (kind, ev["type"], rv)
        with self._lock:
            data = self._cache.get(key)
        if data is None:
            data = json.dumps(ev, separators=(",", ":")).encode() + b"\n"
            with self._lock:
                self._cache[key] = data
                while len(self._cache) > self._size:
                    self._cache.popitem(last=False)
        return data


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    api: ApiServer

    def __init__(self, addr: tuple[str, int], api: ApiServer, family: int) -> None:
        self.address_family = family
        self.api = api
        super().__init__(addr, Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Connections dropped by clients (or by ``stop``) are routine: log them quietly."""
        log.debug("connection from %s ended with an error", client_address, exc_info=True)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ApiServer:
    """The embedded Kubernetes API server.

    ``data_path`` None keeps everything in memory; ``port`` 0 picks a free port. Listening on a
    non-loopback ``host`` requires a ``token`` (clients then send ``Authorization: Bearer <token>``).
    """

    def __init__(self, data_path: str | None = None, host: str = "127.0.0.1", port: int = 0,
                 history: int = 10000, bookmark_interval: float = 1.0, token: str | None = None,
                 service_cluster_ip_range: str = "10.96.0.0/12", cluster_cidr: str = "10.244.0.0/16",
                 node_cidr_mask_size: int = 24, node_cidr_mask_size_v6: int = 64) -> None:
        if not _is_loopback(host) and not token:
            raise ValueError(f"listening on {host} (not loopback) requires a token")
        self.host, self.port, self.token = host, port, token
        self.bookmark_interval = bookmark_interval
        self.store = Store(str(data_path) if data_path else None, history=history)
        self.allocator = Allocator(parse_ranges(service_cluster_ip_range), parse_ranges(cluster_cidr),
                                   node_cidr_mask_size, node_cidr_mask_size_v6)
        self.registry = Registry(self.store, self.allocator)
        self.controller = EndpointSliceController(self.store, self.registry)
        self.encoder = EventEncoder()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._conns_lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def start(self) -> ApiServer:
        """Listen and serve in background threads; returns once the socket is listening."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._httpd = _HTTPServer((self.host, self.port), self, family)
        self.port = self._httpd.server_address[1]
        self.controller.start()
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="kr-apiserver", daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def kubeconfig(self) -> dict[str, Any]:
        user: dict[str, Any] = {"token": self.token} if self.token else {}
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kr", "cluster": {"server": self.url}}],
            "users": [{"name": "kr", "user": user}],
            "contexts": [{"name": "kr", "context": {"cluster": "kr", "user": "kr", "namespace": "default"}}],
            "current-context": "kr",
            "preferences": {},
        }

    def write_kubeconfig(self, path: str) -> None:
        """Write a kubeconfig (mode 0600) that kubectl and the Python client can use."""
        import os

        fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(self.kubeconfig(), f, sort_keys=False)

    def stop(self) -> None:
        """Stop serving, end watches, close connections and the store. Idempotent."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self.controller.stop()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        with self._conns_lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.store.close()

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
