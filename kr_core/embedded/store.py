"""Object storage: SQLite (file or memory) plus an in-memory mirror and a bounded event history.

One global, monotonically increasing integer resourceVersion is shared by all kinds and survives
restarts (it is persisted in the ``meta`` table). Every write is one SQLite transaction that stores the
object, appends the event to the ``events`` table, and bumps the counter. Watchers register a queue and
get every later event; the history ring lets a watch resume from an older resourceVersion.
"""

from __future__ import annotations

import bisect
import json
import queue
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

Key = tuple[str, str, str]  # (kind, namespace, name); namespace "" when cluster-scoped


@dataclass(frozen=True)
class Event:
    """One change: ``type`` is ADDED, MODIFIED or DELETED; ``obj`` is the object after the change
    (for DELETED, the last state with the deletion's resourceVersion)."""

    rv: int
    type: str
    kind: str
    namespace: str
    name: str
    obj: dict[str, Any]
    old: dict[str, Any] | None = None


def jcopy(obj: Any) -> Any:
    """A deep copy of a JSON-like value (much faster than ``copy.deepcopy`` for these trees)."""
    return json.loads(json.dumps(obj))


class Expired(Exception):
    """The requested resourceVersion is older than the history window."""


class Watcher:
    """A registered consumer of events for one kind; ``close`` unregisters."""

    def __init__(self, store: Store, kind: str) -> None:
        self.store = store
        self.kind = kind
        self.queue: queue.Queue[Event | None] = queue.Queue()

    def get(self, timeout: float) -> Event | None:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self.store._unregister(self)


class Store:
    """Thread-safe object store. ``path`` None (or ":memory:") keeps everything in memory."""

    def __init__(self, path: str | None = None, history: int = 10000) -> None:
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path or ":memory:", check_same_thread=False, isolation_level=None)
        if path and path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS objects (
                kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
                json TEXT NOT NULL, resourceVersion INTEGER NOT NULL,
                PRIMARY KEY (kind, namespace, name));
            CREATE TABLE IF NOT EXISTS events (
                resourceVersion INTEGER PRIMARY KEY, type TEXT NOT NULL, kind TEXT NOT NULL,
                namespace TEXT NOT NULL, name TEXT NOT NULL, json TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            """
        )
        self.history_size = max(1, history)
        self._objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
        # The JSON encoding of each stored object, with the object it encodes: lists send these bytes as
        # they are instead of encoding every item again (the text exists anyway: SQLite stores it).
        self._encoded: dict[str, dict[tuple[str, str], tuple[dict[str, Any], bytes]]] = {}
        for kind, ns, name, js in self._db.execute("SELECT kind, namespace, name, json FROM objects"):
            obj = json.loads(js)
            self._objects.setdefault(kind, {})[(ns, name)] = obj
            self._encoded.setdefault(kind, {})[(ns, name)] = (obj, js.encode())
        row = self._db.execute("SELECT value FROM meta WHERE key='rv'").fetchone()
        self._rv = int(row[0]) if row else 0
        self._ring: deque[Event] = deque()
        rows = self._db.execute(
            "SELECT resourceVersion, type, kind, namespace, name, json FROM events "
            "ORDER BY resourceVersion DESC LIMIT ?", (self.history_size,)
        ).fetchall()
        for rv, typ, kind, ns, name, js in reversed(rows):
            self._ring.append(Event(rv, typ, kind, ns, name, json.loads(js)))
        # Events after _floor are all in the ring; a watch from an older version is expired.
        self._floor = (self._ring[0].rv - 1) if self._ring else self._rv
        self._sorted: dict[str, list[tuple[str, str]] | None] = {}  # sorted keys per kind, rebuilt lazily
        self._watchers: dict[str, set[Watcher]] = {}
        self._listeners: list[Callable[[Event], None]] = []
        self._writes = 0

    # -- reads -------------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            obj = self._objects.get(kind, {}).get((namespace, name))
            return jcopy(obj) if obj is not None else None

    def peek(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """Like ``get`` without the copy: the caller must not modify the result."""
        with self._lock:
            return self._objects.get(kind, {}).get((namespace, name))

    def _range(self, kind: str, namespace: str | None, after: tuple[str, str] | None
               ) -> tuple[dict[tuple[str, str], dict[str, Any]], list[tuple[str, str]], int, int]:
        """(objects, sorted keys, lo, hi): the keys[lo:hi] of ``kind`` in ``namespace`` after ``after``.
        Call with the lock held."""
        objs = self._objects.get(kind, {})
        keys = self._sorted.get(kind)
        if keys is None:
            keys = self._sorted[kind] = sorted(objs)
        lo, hi = 0, len(keys)
        if namespace is not None:
            lo = bisect.bisect_left(keys, (namespace, ""))
            hi = bisect.bisect_left(keys, (namespace + "\x00", ""))
        if after is not None:
            lo = max(lo, bisect.bisect_right(keys, after))
        return objs, keys, lo, hi

    def list(self, kind: str, namespace: str | None = None, copy_items: bool = True,
             after: tuple[str, str] | None = None) -> tuple[list[dict[str, Any]], int]:
        """Objects of ``kind`` (in ``namespace`` if given; only those whose (namespace, name) key sorts
        after ``after`` if given), sorted by (namespace, name), and the current resourceVersion. With
        ``copy_items`` False the items are the stored dicts themselves (never mutated by the store, which
        replaces them on write): the caller must not modify them."""
        with self._lock:
            objs, keys, lo, hi = self._range(kind, namespace, after)
            sel = keys[lo:hi]
            if not copy_items:
                return [objs[k] for k in sel], self._rv
            return [jcopy(objs[k]) for k in sel], self._rv

    def list_page(self, kind: str, namespace: str | None, after: tuple[str, str] | None,
                  max_items: int) -> tuple[list[dict[str, Any]], int, int]:
        """The first ``max_items`` objects of what :meth:`list` (``copy_items`` False) would return, how many
        that list would have in all, and the current resourceVersion: a page without touching the rest."""
        with self._lock:
            objs, keys, lo, hi = self._range(kind, namespace, after)
            sel = keys[lo:min(hi, lo + max(0, max_items))]
            return [objs[k] for k in sel], max(0, hi - lo), self._rv

    def encoded(self, kind: str, objs: list[dict[str, Any]]) -> list[bytes]:
        """The compact JSON encoding (``separators=(",", ":")``) of each of ``objs``, stored dicts of
        ``kind`` as returned by :meth:`list` with ``copy_items`` False: the bytes kept from the object's write
        when they still encode this very dict, else encoded now. Needs no lock."""
        enc = self._encoded.get(kind, {})
        out: list[bytes] = []
        append = out.append
        for obj in objs:
            m = obj.get("metadata") or {}
            ent = enc.get((m.get("namespace", "") or "", m.get("name")))
            if ent is not None and ent[0] is obj:
                append(ent[1])
            else:
                append(json.dumps(obj, separators=(",", ":")).encode())
        return out

    def iter_raw(self, kind: str) -> Iterator[dict[str, Any]]:
        """Objects of ``kind`` without copying (caller must not modify; hold no expectations of
        consistency across writes)."""
        with self._lock:
            items = list(self._objects.get(kind, {}).values())
        return iter(items)

    # -- writes ------------------------------------------------------------------------------

    def lock(self) -> threading.RLock:
        """The store lock; hold it around read-modify-write sequences."""
        return self._lock

    def put(self, kind: str, obj: dict[str, Any], event_type: str) -> dict[str, Any]:
        """Store ``obj`` (ADDED or MODIFIED), stamping a new resourceVersion. Returns a copy."""
        with self._lock:
            meta = obj.setdefault("metadata", {})
            ns, name = meta.get("namespace", "") or "", meta["name"]
            rv = self._next_rv()
            meta["resourceVersion"] = str(rv)
            js = json.dumps(obj, separators=(",", ":"))
            old = self._objects.get(kind, {}).get((ns, name))
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT OR REPLACE INTO objects (kind, namespace, name, json, resourceVersion) VALUES (?,?,?,?,?)",
                (kind, ns, name, js, rv),
            )
            self._record(rv, event_type, kind, ns, name, js)
            self._db.execute("COMMIT")
            stored = json.loads(js)
            if old is None:
                self._sorted[kind] = None
            self._objects.setdefault(kind, {})[(ns, name)] = stored
            self._encoded.setdefault(kind, {})[(ns, name)] = (stored, js.encode())
            self._publish(Event(rv, event_type, kind, ns, name, stored, old))
            return json.loads(js)

    def delete(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """Remove an object; returns its last state (with the deletion's resourceVersion) or None."""
        with self._lock:
            obj = self._objects.get(kind, {}).pop((namespace, name), None)
            if obj is None:
                return None
            self._encoded.get(kind, {}).pop((namespace, name), None)
            self._sorted[kind] = None
            obj = jcopy(obj)
            rv = self._next_rv()
            obj["metadata"]["resourceVersion"] = str(rv)
            js = json.dumps(obj, separators=(",", ":"))
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM objects WHERE kind=? AND namespace=? AND name=?", (kind, namespace, name))
            self._record(rv, "DELETED", kind, namespace, name, js)
            self._db.execute("COMMIT")
            self._publish(Event(rv, "DELETED", kind, namespace, name, obj, obj))
            return json.loads(js)

    def meta_get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
            return row[0] if row else None

    def meta_set(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _record(self, rv: int, typ: str, kind: str, ns: str, name: str, js: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('rv', ?)", (str(rv),))
        self._db.execute(
            "INSERT INTO events (resourceVersion, type, kind, namespace, name, json) VALUES (?,?,?,?,?,?)",
            (rv, typ, kind, ns, name, js),
        )
        self._writes += 1
        if self._writes % 1000 == 0:
            self._db.execute("DELETE FROM events WHERE resourceVersion <= ?", (rv - self.history_size,))

    def _publish(self, ev: Event) -> None:
        self._ring.append(ev)
        while len(self._ring) > self.history_size:
            self._floor = self._ring.popleft().rv
        for w in self._watchers.get(ev.kind, ()):
            w.queue.put(ev)
        for fn in self._listeners:
            fn(ev)

    # -- watch -------------------------------------------------------------------------------

    def watch(self, kind: str, since: int | None) -> tuple[Watcher, list[Event]]:
        """Register a watcher for ``kind``. With ``since`` set, also return the past events after it
        (raises Expired if they are no longer all in the history)."""
        with self._lock:
            backlog: list[Event] = []
            if since is not None:
                if since < self._floor:
                    raise Expired(f"too old resource version: {since} ({self._floor + 1})")
                if since < self._rv:
                    backlog = [e for e in self._ring if e.rv > since and e.kind == kind]
            w = Watcher(self, kind)
            self._watchers.setdefault(kind, set()).add(w)
            return w, backlog

    def _unregister(self, w: Watcher) -> None:
        with self._lock:
            self._watchers.get(w.kind, set()).discard(w)

    def add_listener(self, fn: Callable[[Event], None]) -> None:
        """Call ``fn(event)`` synchronously (under the store lock) after every write; keep it cheap."""
        with self._lock:
            self._listeners.append(fn)

    def close(self) -> None:
        with self._lock:
            for ws in self._watchers.values():
                for w in ws:
                    w.queue.put(None)
            self._watchers.clear()
            self._db.close()
