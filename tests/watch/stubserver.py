"""A tiny list/watch API server for informer tests that need what a real server never sends.

The informer tests run against :class:`kr_core.embedded.ApiServer`. This stub exists for the cases the real
server (rightly) refuses: objects that are malformed on the wire. It speaks just enough of the API:
create/update/delete of raw JSON (no validation), paginated list, watch with resourceVersion, a bounded
history (410 Gone as an ERROR event, or as the HTTP status with ``gone_as_http``), bookmarks and
``timeoutSeconds``. Traffic stays on 127.0.0.1.

``KR_WATCH_TESTS_STUB=1 pytest tests/watch`` runs every informer test against the stub instead (tests
that need what only the real server does -- selectors, authentication -- are skipped then).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

# plural -> (collection prefix, namespaced)
PLURALS: dict[str, tuple[str, bool]] = {
    "services": ("/api/v1", True),
    "pods": ("/api/v1", True),
    "namespaces": ("/api/v1", False),
    "nodes": ("/api/v1", False),
    "endpointslices": ("/apis/discovery.k8s.io/v1", True),
    "networkpolicies": ("/apis/networking.k8s.io/v1", True),
}
_PATH = re.compile(r"^(/api/v1|/apis/[^/]+/v1)(?:/namespaces/([^/]+))?/([a-z]+)(?:/([^/]+))?$")


class StubState:
    """Objects, versions and history; survives a stub restart when passed to the next instance."""

    def __init__(self, history: int) -> None:
        self.lock = threading.Condition()
        self.rv = 100
        self.objs: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.history: deque[tuple[int, str, str, Any]] = deque(maxlen=history)
        self.compacted = 0  # events with rv <= compacted are gone from the history

    def record(self, plural: str, etype: str, obj: Any) -> None:
        if len(self.history) == self.history.maxlen:
            self.compacted = self.history[0][0]
        self.history.append((self.rv, plural, etype, obj))
        self.lock.notify_all()


class StubApiServer:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        history: int = 10000,
        bookmark_interval: float = 1.0,
        state: StubState | None = None,
        gone_as_http: bool = False,
    ) -> None:
        self.host, self.port = host, port
        self.state = state or StubState(history)
        self.bookmark_interval = bookmark_interval
        self.gone_as_http = gone_as_http
        self.requests: list[str] = []
        #: if set, called with the watch query; a list of raw lines is sent instead of the real stream
        self.watch_override: Callable[[dict[str, str]], list[bytes] | None] | None = None
        self._srv: ThreadingHTTPServer | None = None
        self._closing = threading.Event()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        stub = self

        class Handler(_Handler):
            server_stub = stub

        self._closing.clear()
        self._srv = ThreadingHTTPServer((self.host, self.port), Handler)
        self._srv.daemon_threads = True
        self.port = self._srv.server_address[1]
        threading.Thread(target=self._srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        self._closing.set()
        with self.state.lock:
            self.state.lock.notify_all()
        if self._srv is not None:
            self._srv.shutdown()
            self._srv.server_close()
            self._srv = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def write_kubeconfig(self, path: str) -> None:
        cfg = {
            "apiVersion": "v1", "kind": "Config", "current-context": "stub",
            "clusters": [{"name": "stub", "cluster": {"server": self.url}}],
            "users": [{"name": "stub", "user": {}}],
            "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "stub"}}],
        }
        with open(path, "w") as f:
            json.dump(cfg, f)

    # ------------------------------------------------------------------ writes (no validation at all)
    def write(self, plural: str, etype: str, obj: Any, ns: str = "", name: str = "") -> int:
        """Store ``obj`` (any JSON, even malformed) and record a watch event; return its resourceVersion."""
        st = self.state
        with st.lock:
            st.rv += 1
            if isinstance(obj, dict) and isinstance(obj.get("metadata"), dict):
                obj["metadata"]["resourceVersion"] = str(st.rv)
                ns = ns or obj["metadata"].get("namespace") or ""
                name = name or obj["metadata"].get("name") or ""
            key = (plural, ns, name or f"#{st.rv}")
            if etype == "DELETED":
                st.objs.pop(key, None)
            else:
                st.objs[key] = obj
            st.record(plural, etype, obj)
            return st.rv

    def bump(self) -> None:
        """Advance the resourceVersion with an event of an unrelated resource (history churn)."""
        with self.state.lock:
            self.state.rv += 1
            self.state.record("_other", "ADDED", {})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_stub: StubApiServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def _json(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _status(self, code: int, reason: str, msg: str) -> dict[str, Any]:
        return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason,
                "message": msg}

    def _chunk(self, obj: Any) -> None:
        data = json.dumps(obj).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_GET(self) -> None:  # noqa: N802
        stub = self.server_stub
        stub.requests.append(self.path)
        u = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        m = _PATH.match(u.path)
        if not m or m.group(3) not in PLURALS:
            self._json(404, self._status(404, "NotFound", f"no {u.path}"))
            return
        plural, ns = m.group(3), m.group(2) or ""
        if m.group(4):
            with stub.state.lock:
                obj = stub.state.objs.get((plural, ns, m.group(4)))
            if obj is None:
                self._json(404, self._status(404, "NotFound", f"{plural} {m.group(4)} not found"))
            else:
                self._json(200, obj)
            return
        if q.get("watch") in ("true", "1"):
            self._watch(plural, ns, q)
        else:
            self._list(plural, ns, q)

    def _list(self, plural: str, ns: str, q: dict[str, str]) -> None:
        st = self.server_stub.state
        with st.lock:
            items = sorted(
                ((k, o) for k, o in st.objs.items() if k[0] == plural and (not ns or k[1] == ns)), key=lambda x: x[0]
            )
            rv = st.rv
        start = int(q.get("continue") or 0)
        limit = int(q.get("limit") or 0)
        page = items[start : start + limit] if limit else items[start:]
        cont = str(start + limit) if limit and start + limit < len(items) else ""
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if cont:
            meta["continue"] = cont
        self._json(200, {"kind": "List", "apiVersion": "v1", "metadata": meta, "items": [o for _, o in page]})

    def _watch(self, plural: str, ns: str, q: dict[str, str]) -> None:
        stub = self.server_stub
        st = stub.state
        since = int(q.get("resourceVersion") or 0)
        timeout = float(q.get("timeoutSeconds") or 1800)
        bookmarks = q.get("allowWatchBookmarks") == "true"
        override = stub.watch_override(q) if stub.watch_override is not None else None
        if override is not None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for line in override:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line) + 1, line + b"\n"))
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            self.close_connection = True
            return
        with st.lock:
            too_old = since < st.compacted
        if too_old and stub.gone_as_http:
            self._json(410, self._status(410, "Gone", f"too old resource version: {since} ({st.compacted})"))
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            if too_old:
                self._chunk({"type": "ERROR", "object": self._status(410, "Expired", f"too old resource version: {since}")})
                return
            deadline = time.monotonic() + timeout
            next_bookmark = time.monotonic() + stub.bookmark_interval
            last = since
            while not stub._closing.is_set():
                with st.lock:
                    pending = [h for h in st.history if h[0] > last]
                    if not pending:
                        st.lock.wait(0.05)
                        pending = [h for h in st.history if h[0] > last]
                    cur = st.rv
                for rv, p, etype, obj in pending:
                    last = rv
                    if p == plural and (not ns or (isinstance(obj, dict) and (obj.get("metadata") or {}).get("namespace") == ns)):
                        self._chunk({"type": etype, "object": obj})
                now = time.monotonic()
                if now >= deadline:
                    break
                if bookmarks and now >= next_bookmark:
                    last = max(last, cur)
                    self._chunk({"type": "BOOKMARK", "object": {"kind": "X", "metadata": {"resourceVersion": str(last)}}})
                    next_bookmark = now + stub.bookmark_interval
        finally:
            try:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except OSError:
                pass
            self.close_connection = True

    # ------------------------------------------------------------------ HTTP writes (same paths as the real API)
    def _target(self) -> tuple[str, str, str] | None:
        m = _PATH.match(urlsplit(self.path).path)
        if not m or m.group(3) not in PLURALS:
            self._json(404, self._status(404, "NotFound", f"no {self.path}"))
            return None
        return m.group(3), m.group(2) or "", m.group(4) or ""

    def _body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n)) if n else None

    def do_POST(self) -> None:  # noqa: N802
        t = self._target()
        if t is None:
            return
        plural, ns, _ = t
        obj = self._body()
        meta = obj.setdefault("metadata", {})
        if ns:
            meta["namespace"] = ns
        st = self.server_stub.state
        with st.lock:
            if (plural, ns, meta.get("name", "")) in st.objs:
                self._json(409, self._status(409, "AlreadyExists", f"{plural} {meta.get('name')} exists"))
                return
            self.server_stub.write(plural, "ADDED", obj)
        self._json(201, obj)

    def do_PUT(self) -> None:  # noqa: N802
        t = self._target()
        if t is None:
            return
        plural, ns, name = t
        obj = self._body()
        meta = obj.setdefault("metadata", {})
        meta["name"] = name
        if ns:
            meta["namespace"] = ns
        st = self.server_stub.state
        with st.lock:
            if (plural, ns, name) not in st.objs:
                self._json(404, self._status(404, "NotFound", f"{plural} {name} not found"))
                return
            self.server_stub.write(plural, "MODIFIED", obj)
        self._json(200, obj)

    def do_DELETE(self) -> None:  # noqa: N802
        t = self._target()
        if t is None:
            return
        plural, ns, name = t
        st = self.server_stub.state
        with st.lock:
            old = st.objs.get((plural, ns, name))
            if old is None:
                self._json(404, self._status(404, "NotFound", f"{plural} {name} not found"))
                return
            gone = json.loads(json.dumps(old))
            self.server_stub.write(plural, "DELETED", gone)
        self._json(200, gone)
