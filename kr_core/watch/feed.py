"""An in-process event source: objects fed by code instead of watched from an API server.

Used by tests and benchmarks (and by embedders who already hold the objects). It speaks the same interface as
the informers: it fills the :class:`~kr_core.watch.cache.Caches`, marks them synced, and hands every change to
the agent's sink as an :class:`~kr_core.events.Event`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from kr_core.events import Event, EventType
from kr_core.model import JSON, KubeObject, Resource, from_json
from kr_core.watch.cache import Caches

EventSink = Callable[[Event], None]


class FeedSource:
    """Feed objects (model views or raw JSON) into the caches and out to the sink."""

    def __init__(self, initial: Iterable[KubeObject] = ()) -> None:
        self._initial = list(initial)
        self._caches: Caches | None = None
        self._sink: EventSink | None = None

    def start(self, caches: Caches, sink: EventSink) -> None:
        """Called by the agent: load the initial objects silently, mark every store synced, then go live."""
        self._caches, self._sink = caches, sink
        by_res: dict[Resource, list[KubeObject]] = {}
        for o in self._initial:
            by_res.setdefault(o.kind, []).append(o)
        for r, store in caches.stores.items():
            store.replace(by_res.get(r, ()))
            store.synced.set()

    def stop(self) -> None:
        pass

    def _emit(self, etype: EventType, obj: KubeObject) -> Event | None:
        assert self._caches is not None and self._sink is not None, "source not started"
        store = self._caches.stores.get(obj.kind)
        if store is None:  # nobody watches this resource
            return None
        ev = store.apply(etype, obj)
        if ev is not None:
            self._sink(ev)
        return ev

    def add(self, obj: KubeObject) -> Event | None:
        return self._emit(EventType.ADDED, obj)

    def update(self, obj: KubeObject) -> Event | None:
        return self._emit(EventType.MODIFIED, obj)

    def delete(self, obj: KubeObject) -> Event | None:
        return self._emit(EventType.DELETED, obj)

    def feed_json(self, etype: str, resource: Resource, obj: JSON) -> Event | None:
        """Feed a raw API object, as a watch stream would deliver it."""
        return self._emit(EventType(etype), from_json(resource, obj))
