"""List+watch informers: fill the :class:`~kr_core.watch.cache.Caches` from a Kubernetes API server.

One :class:`Informer` per resource runs a daemon thread with client-go's reflector loop:

1. **List**, paginated (``limit``/``continue``), into :meth:`Store.replace` -- silently the first time, then
   ``store.synced`` is set; a later re-list hands the difference to the sink as ADDED/MODIFIED/DELETED.
2. **Watch** from the list's ``resourceVersion`` with ``allowWatchBookmarks=true`` and a server-side
   ``timeoutSeconds``. Every ADDED/MODIFIED/DELETED goes through :meth:`Store.apply` and, when it changed
   something, to the sink. BOOKMARKs only advance the resourceVersion.
3. A stream that ends normally (the server's timeout) is re-opened from the last resourceVersion. A 410
   (``Expired``/``Gone``, as an ERROR event or as the HTTP status) means the version left the server's
   history: go back to 1. Connection errors and transient server errors (429, 5xx) are retried with capped
   exponential backoff and jitter, from the last resourceVersion; other ERROR events and "too large
   resource version" (the server is behind us) re-list after the backoff.
4. A malformed object (its view cannot be built, or it has no ``metadata.name``) is logged with whatever
   identifies it and skipped; the stream goes on.

The bodies are read as raw JSON and turned into kr's views with :func:`kr_core.model.from_json`; the
``kubernetes`` client only provides configuration, authentication and the connection pool. List pages are
parsed with ``orjson`` when it is installed (about 2-3x faster than :mod:`json`, which is the fallback),
one page at a time: each page's dicts are dropped before the next page is read. The cyclic garbage
collector is paused while lists are read (see :func:`gc_paused`): the views hold no cycles, and without the
pause the collector's full passes over the growing cache cost more than the parsing itself.

:class:`InformerSource` is the agent-facing source (same interface as
:class:`~kr_core.watch.feed.FeedSource`): ``start(caches, sink)`` starts one informer per store,
``stop()`` ends them.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes.client import ApiClient

from kr_core.events import Event, EventType
from kr_core.model import MODEL_TYPES, KubeObject, Resource, from_json
from kr_core.watch.cache import Caches, Store
from kr_core.watch.feed import EventSink

log = logging.getLogger(__name__)

try:  # optional: a much faster parser for the (large) list bodies
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None


def _stdlib_loads(data: bytes | str) -> Any:
    return json.loads(data)


def _pick_loads() -> Callable[[bytes | str], Any]:
    """``orjson.loads`` when orjson is importable, else :func:`json.loads` (same results for JSON
    documents; both raise a ``ValueError`` subclass on malformed input)."""
    return _orjson.loads if _orjson is not None else _stdlib_loads


#: the JSON parser for list pages and watch lines (see :func:`_pick_loads`)
loads: Callable[[bytes | str], Any] = _pick_loads()

_gc_lock = threading.Lock()
_gc_holders = 0
_gc_reenable = False


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for the block (nestable, across threads: it is enabled again
    when the last holder leaves, and only if it was enabled when the first one came in).

    A cold start allocates a million long-lived objects (views, tuples, strings) in a few seconds; each of
    the collector's passes over them is wasted (they are acyclic and stay), and those passes cost more
    than the parsing. Reference counting still frees everything that is not in a cycle."""
    global _gc_holders, _gc_reenable
    with _gc_lock:
        if _gc_holders == 0:
            _gc_reenable = gc.isenabled()
            gc.disable()
        _gc_holders += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_holders -= 1
            if _gc_holders == 0 and _gc_reenable:
                gc.enable()


@dataclass(frozen=True, slots=True)
class ResourceAPI:
    """Where a resource lives in the API: its all-namespaces collection path."""

    resource: Resource
    path: str
    namespaced: bool


RESOURCE_APIS: dict[Resource, ResourceAPI] = {
    Resource.SERVICE: ResourceAPI(Resource.SERVICE, "/api/v1/services", True),
    Resource.ENDPOINTSLICE: ResourceAPI(Resource.ENDPOINTSLICE, "/apis/discovery.k8s.io/v1/endpointslices", True),
    Resource.POD: ResourceAPI(Resource.POD, "/api/v1/pods", True),
    Resource.NAMESPACE: ResourceAPI(Resource.NAMESPACE, "/api/v1/namespaces", False),
    Resource.NETWORKPOLICY: ResourceAPI(
        Resource.NETWORKPOLICY, "/apis/networking.k8s.io/v1/networkpolicies", True
    ),
    Resource.NODE: ResourceAPI(Resource.NODE, "/api/v1/nodes", False),
}

_MUTATIONS = {"ADDED": EventType.ADDED, "MODIFIED": EventType.MODIFIED, "DELETED": EventType.DELETED}
#: ERROR codes after which re-watching from the same version makes sense (server busy / transient).
_TRANSIENT_CODES = frozenset({429, 500, 502, 503, 504})


# ----------------------------------------------------------------------------------------------- metrics


class WatchMetrics:
    """The informers' Prometheus metrics, registered once in ``registry`` (share one per registry).

    - ``kr_watch_restarts_total{resource,reason}``: watch re-opened; reason ``closed`` (the stream ended
      normally, e.g. the server's timeout) or ``error`` (connection or server error);
    - ``kr_watch_relists_total{resource}``: re-lists after a 410 Gone;
    - ``kr_watch_events_total{resource,type}``: watch events received (ADDED, MODIFIED, DELETED, BOOKMARK,
      ERROR);
    - ``kr_watch_malformed_objects_total{resource}``: objects skipped because they could not be read;
    - ``kr_watch_initial_sync_seconds{resource}``: time from start to the first complete list.
    """

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge

        self.restarts = Counter(
            "kr_watch_restarts", "Watch streams re-opened", ["resource", "reason"], registry=registry
        )
        self.relists = Counter("kr_watch_relists", "Re-lists after 410 Gone", ["resource"], registry=registry)
        self.events = Counter("kr_watch_events", "Watch events received", ["resource", "type"], registry=registry)
        self.malformed = Counter(
            "kr_watch_malformed_objects", "Objects skipped because they could not be read", ["resource"],
            registry=registry,
        )
        self.initial_sync = Gauge(
            "kr_watch_initial_sync_seconds", "Seconds from informer start to the first complete list", ["resource"],
            registry=registry,
        )


# ----------------------------------------------------------------------------------------------- errors


class _Expired(Exception):
    """410 Gone: the resourceVersion is no longer in the server's history; re-list."""


class _WatchError(Exception):
    """An ERROR event or HTTP status the informer recovers from by retrying after a backoff."""

    def __init__(self, msg: str, relist: bool = False) -> None:
        super().__init__(msg)
        self.relist = relist


class _Stopped(Exception):
    """stop() was called while a request was in flight."""


class Backoff:
    """Capped exponential backoff with jitter: ``initial`` doubling up to ``maximum``, each delay drawn
    uniformly from [0.75, 1.25] of the nominal value (never above ``maximum``)."""

    def __init__(self, initial: float = 0.2, maximum: float = 30.0) -> None:
        self.initial, self.maximum = initial, maximum
        self._n = 0

    def next(self) -> float:
        nominal = min(self.maximum, self.initial * (2**self._n))
        self._n = min(self._n + 1, 64)
        return min(self.maximum, nominal * random.uniform(0.75, 1.25))

    def reset(self) -> None:
        self._n = 0


def _status_message(body: Any) -> str:
    if isinstance(body, dict):
        return str(body.get("message") or body.get("reason") or body)
    return str(body)[:300]


# ----------------------------------------------------------------------------------------------- informer


class Informer:
    """List and watch one resource into one :class:`Store`, on a daemon thread.

    ``sink`` receives every change after the first list (watch events and re-list differences); it runs on
    the informer's thread, so it should only enqueue. ``timeout_seconds`` is the server-side watch timeout
    (each watch asks for a random value between it and 1.25 times it), ``page_size`` the list ``limit`` (0:
    one unpaginated list). ``label_selector`` / ``field_selector`` narrow what is watched.
    """

    def __init__(
        self,
        api_client: ApiClient,
        resource: Resource,
        store: Store,
        sink: EventSink,
        *,
        timeout_seconds: int = 300,
        page_size: int = 500,
        label_selector: str = "",
        field_selector: str = "",
        metrics: WatchMetrics | None = None,
        backoff_initial: float = 0.2,
        backoff_max: float = 30.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self.api_client = api_client
        self.resource = resource
        self.api = RESOURCE_APIS[resource]
        self.store = store
        self.sink = sink
        self.timeout_seconds = max(1, int(timeout_seconds))
        self.page_size = max(0, int(page_size))
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.metrics = metrics
        self.backoff = Backoff(backoff_initial, backoff_max)
        self.connect_timeout = connect_timeout
        #: the last resourceVersion seen (list, event or bookmark); "" before the first list
        self.resource_version = ""
        #: counters for tests and ``kr state`` (the Prometheus metrics hold the same numbers)
        self.stats: dict[str, int] = dict.fromkeys(
            ("lists", "pages", "relists", "watches", "restarts", "errors", "events", "bookmarks", "malformed"), 0
        )
        self._stop = threading.Event()
        self._resp_lock = threading.Lock()
        self._resp: Any = None  # the urllib3 response being read, closed by stop()
        self._thread: threading.Thread | None = None
        self._started_at = 0.0
        self._just_listed = False  # no watch event since the last list

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"informer for {self.resource.value} already started")
        self._started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"kr-informer-{self.resource.value}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the thread: interrupt the request in flight and wait up to ``timeout`` seconds."""
        self._stop.set()
        self._interrupt()
        self.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
            if t.is_alive():
                log.warning("informer %s: thread did not stop within %ss", self.resource.value, timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _interrupt(self) -> None:
        # Under the lock, so the informer thread cannot release the connection to the pool meanwhile.
        with self._resp_lock:
            resp = self._resp
            if resp is None:
                return
            try:
                resp.shutdown()  # unblocks a read in progress on the informer thread
            except Exception:  # noqa: BLE001 - already closed: nothing to unblock
                pass

    def before_watch(self) -> None:
        """Called on the informer thread before each watch request. No-op; a subclass may delay it (tests
        use it to hold a watch back until the server's history has moved on)."""

    # ------------------------------------------------------------------ main loop
    def _run(self) -> None:
        name = self.resource.value
        need_list = True
        relist = False
        log.info("informer %s: starting (%s%s)", name, self.api_client.configuration.host, self.api.path)
        while not self._stop.is_set():
            delay = 0.0
            phase = ""
            try:
                if need_list:
                    phase = "re-list" if relist else "list"
                    self._list_into_store(relist)
                    need_list = relist = False
                    self._just_listed = True
                self.before_watch()
                if self._stop.is_set():
                    break
                phase = "watch"
                got_any, secs = self._watch()
                # the stream ended normally (the server's timeout): re-watch at once, unless the server ends
                # streams as soon as they open, which must not become a busy loop
                self._count_restart("closed")
                if got_any or secs >= 1.0:
                    self.backoff.reset()
                else:
                    delay = self.backoff.next()
                    log.info("informer %s: watch closed at once, without events; waiting %.2fs", name, delay)
            except _Stopped:
                break
            except _Expired as e:
                if self._stop.is_set():
                    break
                log.info("informer %s: resourceVersion %s expired (%s); re-listing", name, self.resource_version, e)
                self.stats["relists"] += 1
                if self.metrics is not None:
                    self.metrics.relists.labels(name).inc()
                if self._just_listed:  # expired right after a list: the server is confused, do not hammer it
                    delay = self.backoff.next()
                need_list = relist = True
            except Exception as e:  # noqa: BLE001 - connection errors, server errors, surprises: retry
                if self._stop.is_set():
                    break
                self.stats["errors"] += 1
                if isinstance(e, _WatchError):
                    if e.relist and self.store.synced.is_set():
                        need_list = relist = True
                    msg = str(e)
                else:
                    msg = f"{type(e).__name__}: {e}"
                delay = self.backoff.next()
                then = "re-listing" if relist else "retrying"
                what = f"watch at resourceVersion {self.resource_version}" if phase == "watch" else phase
                log.warning("informer %s: %s failed (%s); %s in %.2fs", name, what, msg, then, delay)
                if phase == "watch":
                    self._count_restart("error")
            if delay and self._stop.wait(delay):
                break
        log.info("informer %s: stopped at resourceVersion %s", name, self.resource_version)

    def _count_restart(self, reason: str) -> None:
        self.stats["restarts"] += 1
        if self.metrics is not None:
            self.metrics.restarts.labels(self.resource.value, reason).inc()

    # ------------------------------------------------------------------ HTTP
    def _query(self, extra: Iterable[tuple[str, Any]]) -> list[tuple[str, str]]:
        q = [(k, str(v)) for k, v in extra]
        if self.label_selector:
            q.append(("labelSelector", self.label_selector))
        if self.field_selector:
            q.append(("fieldSelector", self.field_selector))
        return q

    def _open(self, query: list[tuple[str, str]], read_timeout: float) -> Any:
        """GET the collection; return the urllib3 response (unread), registered for stop() to close."""
        if self._stop.is_set():
            raise _Stopped()
        c = self.api_client
        method, url, headers, _body, _post = c.param_serialize(
            "GET", self.api.path, query_params=query, header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        # Straight on the client's pool manager (its TLS and proxy settings), without urllib3's own retries:
        # the informer has its backoff and must see every failure.
        raw = c.rest_client.pool_manager.request(
            method, url, headers=headers, timeout=urllib3.Timeout(connect=self.connect_timeout, read=read_timeout),
            retries=False, preload_content=False,
        )
        with self._resp_lock:
            self._resp = raw
        if self._stop.is_set():
            self._release(raw, clean=False)
            raise _Stopped()
        return raw

    def _release(self, raw: Any, clean: bool) -> None:
        """Forget the response; give its connection back to the pool only if the body was read to its end
        (``clean``), close it otherwise."""
        with self._resp_lock:
            if self._resp is raw:
                self._resp = None
        try:
            if not clean:
                raw.close()
            raw.release_conn()
        except Exception:  # noqa: BLE001
            pass

    def _read_error(self, raw: Any) -> tuple[int, Any]:
        """The status code and the decoded Status body (or its text) of a failed response."""
        try:
            data = raw.read()
            body: Any = json.loads(data) if data else {}
        except Exception:  # noqa: BLE001
            body = {}
        code = body.get("code") if isinstance(body, dict) and isinstance(body.get("code"), int) else raw.status
        return code, body

    # ------------------------------------------------------------------ list
    def _list_pages(self) -> tuple[list[KubeObject], str]:
        """All objects (across pages) and the list's resourceVersion, with the garbage collector paused."""
        with gc_paused():
            return self._list_pages_unpaused()

    def _list_pages_unpaused(self) -> tuple[list[KubeObject], str]:
        objs: list[KubeObject] = []
        cont = ""
        rv = ""
        attempts = 0
        while True:
            q: list[tuple[str, Any]] = []
            if self.page_size:
                q.append(("limit", self.page_size))
            if cont:
                q.append(("continue", cont))
            raw = self._open(self._query(q), read_timeout=max(60.0, float(self.timeout_seconds)))
            clean = False
            try:
                if raw.status != 200:
                    code, body = self._read_error(raw)
                    clean = True
                    if code == 410 and cont and attempts < 2:
                        # the continue token expired mid-list: start over, consistently
                        log.info("informer %s: list continue token expired; listing again", self.resource.value)
                        objs, cont, attempts = [], "", attempts + 1
                        continue
                    raise _WatchError(f"list: HTTP {code}: {_status_message(body)}")
                data = self._read_all(raw)
                clean = True
            finally:
                self._release(raw, clean)
            body = loads(data)
            del data
            self.stats["pages"] += 1
            meta = body.get("metadata") or {}
            rv = str(meta.get("resourceVersion") or "")
            items = body.get("items") or ()
            del body  # only the items are needed now
            self._decode_into(items, objs)
            del items  # drop this page's dicts before the next page is read
            cont = meta.get("continue") or ""
            if not cont:
                return objs, rv

    def _list_into_store(self, relist: bool) -> None:
        name = self.resource.value
        t0 = time.monotonic()
        objs, rv = self._list_pages()
        self.stats["lists"] += 1
        first = not self.store.synced.is_set()
        with gc_paused():
            events = self.store.replace(objs, want_events=not first)
        self.resource_version = rv
        if first:
            self.store.synced.set()
            took = time.monotonic() - self._started_at
            if self.metrics is not None:
                self.metrics.initial_sync.labels(name).set(took)
            log.info("informer %s: synced %d objects at resourceVersion %s in %.2fs", name, len(objs), rv, took)
            return
        log.info(
            "informer %s: re-listed %d objects at resourceVersion %s in %.2fs: %d changes",
            name, len(objs), rv, time.monotonic() - t0, len(events),
        )
        for ev in events:
            self._emit(ev)

    # ------------------------------------------------------------------ watch
    def _watch(self) -> tuple[bool, float]:
        """One watch stream, to its end; return (whether any event arrived, seconds it lasted)."""
        q = self._query(
            [
                ("watch", "true"),
                ("resourceVersion", self.resource_version),
                ("allowWatchBookmarks", "true"),
                # client-go's spread: a random timeout in [T, 1.25 T], so agents do not reconnect in step
                ("timeoutSeconds", int(self.timeout_seconds * random.uniform(1.0, 1.25))),
            ]
        )
        self.stats["watches"] += 1
        t0 = time.monotonic()
        # the read timeout only catches a dead connection: the server closes the stream after timeoutSeconds
        raw = self._open(q, read_timeout=self.timeout_seconds * 1.25 + 30.0)
        clean = False
        got_any = False
        try:
            if raw.status != 200:
                code, body = self._read_error(raw)
                clean = True
                if code == 410:
                    raise _Expired(f"HTTP 410: {_status_message(body)}")
                raise _WatchError(f"watch: HTTP {code}: {_status_message(body)}", relist=_too_large(body))
            for line in self._lines(raw):
                got_any = True
                self._handle_line(line)
                if self._stop.is_set():
                    raise _Stopped()
            clean = True
        finally:
            self._release(raw, clean)
        return got_any, time.monotonic() - t0

    def _read_all(self, raw: Any) -> bytes:
        try:
            return raw.read()
        except Exception:
            if self._stop.is_set():
                raise _Stopped() from None
            raise

    def _lines(self, raw: Any) -> Iterator[bytes]:
        """The non-empty lines of a streamed body, as they arrive."""
        buf = b""
        while True:
            try:
                chunk = raw.read1(65536)
            except Exception:
                if self._stop.is_set():
                    raise _Stopped() from None
                raise
            if not chunk:
                break
            buf += chunk
            if b"\n" not in chunk:
                continue
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.strip():
                    yield line
        if self._stop.is_set():
            raise _Stopped()
        if buf.strip():
            yield buf

    def _handle_line(self, line: bytes) -> None:
        name = self.resource.value
        try:
            ev = loads(line)
            etype = ev["type"]
            obj = ev["object"]
        except (ValueError, KeyError, TypeError) as e:
            self._count_malformed()
            log.warning("informer %s: skipping undecodable watch line (%s): %.200r", name, e, line)
            return
        if self.metrics is not None:
            self.metrics.events.labels(name, str(etype)).inc()
        if etype == "BOOKMARK":
            self._just_listed = False
            rv = _rv_of(obj)
            if rv:
                self.resource_version = rv
            self.stats["bookmarks"] += 1
            return
        if etype == "ERROR":
            code = obj.get("code") if isinstance(obj, dict) else None
            msg = _status_message(obj)
            if code == 410 or (isinstance(obj, dict) and obj.get("reason") in ("Expired", "Gone")):
                raise _Expired(f"ERROR event: {msg}")
            if code in _TRANSIENT_CODES and not _too_large(obj):
                raise _WatchError(f"watch ERROR event {code}: {msg}")
            raise _WatchError(f"watch ERROR event {code}: {msg}", relist=True)
        mtype = _MUTATIONS.get(etype)
        if mtype is None:
            log.warning("informer %s: skipping watch event of unknown type %r (%s)", name, etype, _ident(obj))
            return
        self.stats["events"] += 1
        self._just_listed = False
        o = self._decode(obj, etype)
        rv = _rv_of(obj)
        if o is not None:
            e = self.store.apply(mtype, o)
            if e is not None:
                self._emit(e)
        if rv:
            self.resource_version = rv

    # ------------------------------------------------------------------ objects and events
    def _decode_into(self, items: Iterable[Any], out: list[KubeObject]) -> None:
        """The views of a list page's items, appended to ``out``; the malformed ones are logged and
        skipped (as :meth:`_decode`). Same checks, with the well-formed case inlined."""
        make = MODEL_TYPES[self.resource].from_json  # type: ignore[attr-defined]
        namespaced = self.api.namespaced
        append = out.append
        for item in items:
            meta = item.get("metadata") if item.__class__ is dict else None
            if meta.__class__ is dict:
                name = meta.get("name")
                if name and name.__class__ is str and (meta.get("namespace") or not namespaced):
                    try:
                        append(make(item))
                        continue
                    except Exception:  # noqa: BLE001, S112 - _decode below logs and counts it
                        pass
            o = self._decode(item, "list item")
            if o is not None:
                append(o)

    def _decode(self, raw: Any, what: str) -> KubeObject | None:
        """The view of one API object, or None (logged, counted) when it is malformed."""
        err = ""
        if not isinstance(raw, dict):
            err = f"not an object ({type(raw).__name__})"
        else:
            meta = raw.get("metadata")
            if not isinstance(meta, dict):
                err = "no metadata"
            elif not meta.get("name") or not isinstance(meta.get("name"), str):
                err = "no metadata.name"
            elif self.api.namespaced and not meta.get("namespace"):
                err = "no metadata.namespace"
        if not err:
            try:
                return from_json(self.resource, raw)
            except Exception as e:  # noqa: BLE001 - any shape the view cannot take
                err = f"{type(e).__name__}: {e}"
        self._count_malformed()
        log.warning("informer %s: skipping malformed %s %s: %s", self.resource.value, what, _ident(raw), err)
        return None

    def _count_malformed(self) -> None:
        self.stats["malformed"] += 1
        if self.metrics is not None:
            self.metrics.malformed.labels(self.resource.value).inc()

    def _emit(self, ev: Event) -> None:
        try:
            self.sink(ev)
        except Exception:  # noqa: BLE001 - a broken sink must not stop the watch
            log.exception("informer %s: event sink failed on %s", self.resource.value, ev)


def _too_large(status: Any) -> bool:
    """A "Too large resource version" Status: the server is behind the version we hold (it restarted with
    older data, or we talk to a lagging replica); only a fresh list resynchronises."""
    if not isinstance(status, dict):
        return False
    causes = (status.get("details") or {}).get("causes") or ()
    if any(isinstance(c, dict) and c.get("reason") == "ResourceVersionTooLarge" for c in causes):
        return True
    return "too large resource version" in str(status.get("message", "")).lower()


def _rv_of(obj: Any) -> str:
    if isinstance(obj, dict):
        meta = obj.get("metadata")
        if isinstance(meta, dict):
            rv = meta.get("resourceVersion")
            if isinstance(rv, str | int) and not isinstance(rv, bool):
                return str(rv)
    return ""


def _ident(obj: Any) -> str:
    """``namespace/name`` (or what is known of it) for log lines about a possibly broken object."""
    if not isinstance(obj, dict):
        return "(not an object)"
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return "(no metadata)"
    name = meta.get("name")
    ns = meta.get("namespace")
    name_s = str(name) if name else "(no name)"
    return f"{ns}/{name_s}" if isinstance(ns, str) and ns else name_s


# ----------------------------------------------------------------------------------------------- source


class InformerSource:
    """The agent's event source: one :class:`Informer` per store in the caches.

    ``resources`` (default: all) limits which stores get an informer; a store outside it stays unsynced.
    ``metrics`` is a prometheus ``CollectorRegistry`` (or a ready :class:`WatchMetrics`), or None.
    ``label_selectors`` / ``field_selectors`` map a resource to its selector (e.g. Pods by node).
    """

    def __init__(
        self,
        api_client: ApiClient,
        resources: Iterable[Resource] | None = None,
        timeout_seconds: int = 300,
        page_size: int = 500,
        metrics: Any = None,
        *,
        label_selectors: Mapping[Resource, str] | None = None,
        field_selectors: Mapping[Resource, str] | None = None,
        backoff_initial: float = 0.2,
        backoff_max: float = 30.0,
    ) -> None:
        self.api_client = api_client
        self.resources = None if resources is None else frozenset(resources)
        self.timeout_seconds = timeout_seconds
        self.page_size = page_size
        if metrics is None or isinstance(metrics, WatchMetrics):
            self.metrics = metrics
        else:
            self.metrics = WatchMetrics(metrics)
        self.label_selectors = dict(label_selectors or {})
        self.field_selectors = dict(field_selectors or {})
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.informers: dict[Resource, Informer] = {}
        self._caches: Caches | None = None

    def start(self, caches: Caches, sink: EventSink) -> None:
        """Start an informer for each store of ``caches`` (in ``resources``); returns at once. Wait for the
        initial lists with ``caches.wait_synced(timeout)``."""
        if any(i.alive for i in self.informers.values()):
            raise RuntimeError("informer source already started")
        # Started again after stop(): the stores are synced already, so the first lists emit the difference.
        self.informers = {}
        self._caches = caches
        for r, store in caches.stores.items():
            if self.resources is not None and r not in self.resources:
                log.warning("no informer for %s: not in this source's resources; its cache stays unsynced", r.value)
                continue
            inf = Informer(
                self.api_client, r, store, sink,
                timeout_seconds=self.timeout_seconds, page_size=self.page_size,
                label_selector=self.label_selectors.get(r, ""), field_selector=self.field_selectors.get(r, ""),
                metrics=self.metrics, backoff_initial=self.backoff_initial, backoff_max=self.backoff_max,
            )
            self.informers[r] = inf
            inf.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every informer (all interrupted first, then joined)."""
        infs = list(self.informers.values())
        for inf in infs:
            inf._stop.set()
            inf._interrupt()
        deadline = time.monotonic() + timeout
        for inf in infs:
            inf.join(max(0.0, deadline - time.monotonic()))

    def wait_synced(self, timeout: float | None) -> list[Resource]:
        """Wait for the initial lists; return the resources still unsynced at the timeout."""
        if self._caches is None:
            raise RuntimeError("informer source not started")
        return self._caches.wait_synced(timeout)
