"""Indexed object caches, and the read-only views plugins get of them.

One :class:`Store` per resource holds the latest view of every object, keyed ``namespace/name``, plus
secondary indexes (EndpointSlices by Service, Pods by namespace and by node, policies by namespace). A source
(the informers of :mod:`kr_core.watch.informer`, or :class:`kr_core.watch.feed.FeedSource` in tests) writes
with :meth:`Store.apply` / :meth:`Store.replace`, which return the events to broadcast; plugins read through
:class:`CacheView`, which has no write methods.

Writes take a lock; reads do not (they copy under the GIL), so a slow plugin never blocks the informer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from kr_core.events import Event, EventType
from kr_core.model import EndpointSlice, KubeObject, Namespace, NetworkPolicy, Node, Pod, Resource, Service

T = TypeVar("T", bound=KubeObject)
Indexer = Callable[[KubeObject], Iterable[str]]


def _by_namespace(o: KubeObject) -> Iterable[str]:
    return (o.meta.namespace,)


def _by_service(o: KubeObject) -> Iterable[str]:
    k = o.service_key  # type: ignore[attr-defined]
    return (k,) if k else ()


def _by_node(o: KubeObject) -> Iterable[str]:
    n = o.node_name  # type: ignore[attr-defined]
    return (n,) if n else ()


INDEXERS: dict[Resource, dict[str, Indexer]] = {
    Resource.SERVICE: {"namespace": _by_namespace},
    Resource.ENDPOINTSLICE: {"namespace": _by_namespace, "service": _by_service},
    Resource.POD: {"namespace": _by_namespace, "node": _by_node},
    Resource.NETWORKPOLICY: {"namespace": _by_namespace},
    Resource.NAMESPACE: {},
    Resource.NODE: {},
}


class Store(Generic[T]):
    """The latest state of every object of one resource, with secondary indexes."""

    def __init__(self, resource: Resource, indexers: dict[str, Indexer] | None = None) -> None:
        self.resource = resource
        self._objs: dict[str, T] = {}
        self._indexers = dict(INDEXERS[resource] if indexers is None else indexers)
        self._index: dict[str, dict[str, set[str]]] = {n: {} for n in self._indexers}
        self._lock = threading.Lock()
        self.synced = threading.Event()  # set by the source once the initial list is in

    # ------------------------------------------------------------------ reads
    def get(self, key: str) -> T | None:
        return self._objs.get(key)

    def list(self) -> list[T]:
        return list(self._objs.values())

    def keys(self) -> list[str]:
        return list(self._objs)

    def by_index(self, index: str, value: str) -> list[T]:
        keys = tuple(self._index[index].get(value, ()))
        objs = self._objs
        return [o for o in (objs.get(k) for k in keys) if o is not None]

    def index_values(self, index: str) -> list[str]:
        return list(self._index[index])

    def __len__(self) -> int:
        return len(self._objs)

    def __iter__(self) -> Iterator[T]:
        return iter(self.list())

    # ------------------------------------------------------------------ writes
    def _unindex(self, key: str, obj: T) -> None:
        for name, fn in self._indexers.items():
            idx = self._index[name]
            for v in fn(obj):
                s = idx.get(v)
                if s is not None:
                    s.discard(key)
                    if not s:
                        del idx[v]

    def _reindex(self, key: str, obj: T) -> None:
        for name, fn in self._indexers.items():
            idx = self._index[name]
            for v in fn(obj):
                s = idx.get(v)
                if s is None:
                    idx[v] = {key}
                else:
                    s.add(key)

    def apply(self, etype: EventType, obj: T) -> Event[T] | None:
        """Apply one watch event; return the event to broadcast (with ``old`` filled from the cache), or
        ``None`` when nothing changed (a MODIFIED with an identical object, a DELETED of an unknown one)."""
        key = obj.meta.key
        with self._lock:
            old = self._objs.get(key)
            if etype is EventType.DELETED:
                if old is None:
                    return None
                del self._objs[key]
                self._unindex(key, old)
                return Event(EventType.DELETED, self.resource, None, old)
            if old is not None:
                if old == obj:
                    return None
                self._unindex(key, old)
            self._objs[key] = obj
            self._reindex(key, obj)
            return Event(EventType.ADDED if old is None else EventType.MODIFIED, self.resource, obj, old)

    def _index_all(self, objs: dict[str, T]) -> None:
        """Add every (key, object) of ``objs`` to the indexes (one pass per index)."""
        for name, fn in self._indexers.items():
            idx = self._index[name]
            for key, obj in objs.items():
                for v in fn(obj):
                    s = idx.get(v)
                    if s is None:
                        idx[v] = {key}
                    else:
                        s.add(key)

    def replace(self, objs: Iterable[T], *, want_events: bool = True) -> list[Event[T]]:
        """Replace the whole content (a re-list); return the difference as events (none when
        ``want_events`` is false: an initial list nobody is told about)."""
        new = {o.meta.key: o for o in objs}
        events: list[Event[T]] = []
        with self._lock:
            if not self._objs:
                # the cold start: adopt the new dict as is (readers see the empty or the full one)
                self._index_all(new)
                self._objs = new
                if want_events:
                    added, r = EventType.ADDED, self.resource
                    events = [Event(added, r, obj, None) for obj in new.values()]
                return events
            for key, old in list(self._objs.items()):
                if key not in new:
                    del self._objs[key]
                    self._unindex(key, old)
                    events.append(Event(EventType.DELETED, self.resource, None, old))
            for key, obj in new.items():
                old = self._objs.get(key)
                if old == obj:
                    continue
                if old is not None:
                    self._unindex(key, old)
                self._objs[key] = obj
                self._reindex(key, obj)
                events.append(Event(EventType.ADDED if old is None else EventType.MODIFIED, self.resource, obj, old))
        return events if want_events else []


class StoreView(Generic[T]):
    """Read-only access to one :class:`Store`."""

    __slots__ = ("_s",)

    def __init__(self, store: Store[T]) -> None:
        self._s = store

    @property
    def resource(self) -> Resource:
        return self._s.resource

    def get(self, key: str) -> T | None:
        """The object ``namespace/name`` (or ``name`` for cluster-scoped objects), or ``None``."""
        return self._s.get(key)

    def list(self) -> list[T]:
        return self._s.list()

    def keys(self) -> list[str]:
        return self._s.keys()

    def by_index(self, index: str, value: str) -> list[T]:
        return self._s.by_index(index, value)

    def index_values(self, index: str) -> list[str]:
        return self._s.index_values(index)

    def __len__(self) -> int:
        return len(self._s)

    def __iter__(self) -> Iterator[T]:
        return iter(self._s)

    @property
    def synced(self) -> bool:
        return self._s.synced.is_set()


class Caches:
    """All stores of one agent (one per resource)."""

    def __init__(self, resources: Iterable[Resource] = tuple(Resource)) -> None:
        self.stores: dict[Resource, Store] = {r: Store(r) for r in resources}

    def __getitem__(self, r: Resource) -> Store:
        return self.stores[r]

    def view(self, resources: Iterable[Resource]) -> CacheView:
        return CacheView({r: StoreView(self.stores[r]) for r in resources if r in self.stores})

    def wait_synced(self, timeout: float | None) -> list[Resource]:
        """Wait until every store is synced; return the resources still unsynced at the timeout."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        for _r, s in self.stores.items():
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            s.synced.wait(left)
        return [r for r, s in self.stores.items() if not s.synced.is_set()]


class CacheView:
    """What a plugin sees: read-only stores for the resources it declared, plus common lookups."""

    def __init__(self, views: dict[Resource, StoreView]) -> None:
        self._views = views

    def _get(self, r: Resource) -> StoreView:
        try:
            return self._views[r]
        except KeyError:
            raise LookupError(
                f"{r.value} is not watched for this plugin: add Resource.{r.name} to its info.resources"
            ) from None

    @property
    def services(self) -> StoreView[Service]:
        return self._get(Resource.SERVICE)

    @property
    def endpointslices(self) -> StoreView[EndpointSlice]:
        return self._get(Resource.ENDPOINTSLICE)

    @property
    def pods(self) -> StoreView[Pod]:
        return self._get(Resource.POD)

    @property
    def namespaces(self) -> StoreView[Namespace]:
        return self._get(Resource.NAMESPACE)

    @property
    def policies(self) -> StoreView[NetworkPolicy]:
        return self._get(Resource.NETWORKPOLICY)

    @property
    def nodes(self) -> StoreView[Node]:
        return self._get(Resource.NODE)

    def endpoints_for(self, service_key: str) -> list[EndpointSlice]:
        """The EndpointSlices of Service ``namespace/name``."""
        return self.endpointslices.by_index("service", service_key)

    def pods_in(self, namespace: str) -> list[Pod]:
        return self.pods.by_index("namespace", namespace)

    def pods_on(self, node_name: str) -> list[Pod]:
        return self.pods.by_index("node", node_name)

    def policies_in(self, namespace: str) -> list[NetworkPolicy]:
        return self.policies.by_index("namespace", namespace)

    @property
    def resources(self) -> frozenset[Resource]:
        return frozenset(self._views)
