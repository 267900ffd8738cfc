"""Watch streams: initial events, history replay, live events, bookmarks, timeouts and 410 Expired."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from kr_core.embedded import errors
from kr_core.embedded.resources import Resource
from kr_core.embedded.store import Event, Expired, Store, Watcher

Predicate = Callable[[Mapping[str, Any]], bool]
# Yielded (by identity) when the stream is about to wait: the writer should send what it has buffered.
FLUSH: dict[str, Any] = {"type": "FLUSH"}


def _translate(ev: Event, pred: Predicate) -> str | None:
    """The event type a filtered watch sees for ``ev`` (an object moving out of the selector is
    DELETED, one moving in is ADDED), or None if it sees nothing."""
    now_in = pred(ev.obj)
    if ev.type == "DELETED":
        return "DELETED" if now_in else None
    was_in = ev.old is not None and ev.type == "MODIFIED" and pred(ev.old)
    if ev.type == "MODIFIED" and ev.old is None:
        was_in = now_in
    if now_in:
        return "MODIFIED" if was_in else "ADDED"
    return "DELETED" if was_in else None


def stream(store: Store, res: Resource, pred: Predicate, resource_version: str | None, *,
           timeout: float | None, bookmarks: bool, bookmark_interval: float,
           send_initial_events: bool | None = None, alive: Callable[[], bool] = lambda: True,
           stopping: Callable[[], bool] = lambda: False) -> Iterator[dict[str, Any]]:
    """Yield watch events (``{"type": ..., "object": ...}``) until the timeout, the client goes away
    (``alive`` returns False) or the server stops."""
    since: int | None
    initial = False
    if resource_version in (None, "", "0"):
        since = None
        initial = send_initial_events is not False
    else:
        try:
            since = int(resource_version)  # type: ignore[arg-type]
        except ValueError:
            raise errors.bad_request(f"invalid resource version {resource_version!r}") from None
        initial = bool(send_initial_events)
    with store.lock():
        try:
            watcher, backlog = store.watch(res.kind, since)
        except Expired as e:
            expired: str | None = str(e)
        else:
            expired = None
        snapshot: list[dict[str, Any]] = []
        last_rv = store.resource_version
        if initial and expired is None:
            snapshot, last_rv = store.list(res.kind, copy_items=False)
            backlog = []
    if expired is not None:
        return iter([{"type": "ERROR", "object": errors.expired(expired).status()}])
    return _run(store, res, pred, watcher, snapshot, backlog, max(last_rv, since or 0), timeout=timeout, bookmarks=bookmarks,
                bookmark_interval=bookmark_interval, send_initial_events=send_initial_events, alive=alive,
                stopping=stopping)


def _run(store: Store, res: Resource, pred: Predicate, watcher: Watcher, snapshot: list[dict[str, Any]],
         backlog: list[Event], last_rv: int, *, timeout: float | None, bookmarks: bool, bookmark_interval: float,
         send_initial_events: bool | None, alive: Callable[[], bool],
         stopping: Callable[[], bool]) -> Iterator[dict[str, Any]]:
    try:
        for obj in snapshot:
            if pred(obj):
                yield {"type": "ADDED", "object": obj}
        if send_initial_events:
            yield _bookmark(res, last_rv, initial_end=True)
        for ev in backlog:
            typ = _translate(ev, pred)
            last_rv = ev.rv
            if typ:
                yield {"type": typ, "object": ev.obj}
        start = time.monotonic()
        deadline = start + timeout if timeout else None
        next_bookmark = start + bookmark_interval
        while not stopping():
            if watcher.queue.empty():
                yield FLUSH
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return
            wait = 1.0
            if deadline is not None:
                wait = min(wait, deadline - now)
            if bookmarks:
                wait = min(wait, max(0.0, next_bookmark - now))
            ev = watcher.get(timeout=max(wait, 0.0))
            if ev is None:
                if stopping() or not alive():
                    return
                if bookmarks and time.monotonic() >= next_bookmark:
                    next_bookmark = time.monotonic() + bookmark_interval
                    with store.lock():
                        idle = watcher.queue.empty()
                        if idle:
                            last_rv = store.resource_version
                    if idle:
                        yield _bookmark(res, last_rv)
                continue
            if ev.rv <= last_rv:
                continue  # already sent, or at/before a future resourceVersion the client asked for
            last_rv = ev.rv
            typ = _translate(ev, pred)
            if typ:
                yield {"type": typ, "object": ev.obj}
    finally:
        watcher.close()


def _bookmark(res: Resource, rv: int, initial_end: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"resourceVersion": str(rv)}
    if initial_end:
        meta["annotations"] = {"k8s.io/initial-events-end": "true"}
    return {"type": "BOOKMARK", "object": {"kind": res.kind, "apiVersion": res.api_version, "metadata": meta}}
