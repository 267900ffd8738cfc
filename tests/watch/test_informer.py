"""Informers against the embedded API server: list, watch, bookmarks, 410 relist, restart, stop."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from kr_core.events import Event, EventType
from kr_core.model import Resource
from kr_core.watch.cache import Caches, Store
from kr_core.watch.informer import Informer, InformerSource, WatchMetrics

from .helpers import NS, USE_STUB, Api, client_for, endpointslice, pod, service, wait_until


def _informer(srv: Any, cleanup: Any, resource: Resource = Resource.SERVICE, cls: type[Informer] = Informer,
              **kw: Any) -> tuple[Informer, list[Event]]:
    events: list[Event] = []
    client = cleanup(client_for(srv))
    kw.setdefault("timeout_seconds", 30)
    inf = cls(client, resource, Store(resource), events.append, **kw)
    cleanup(inf)
    inf.start()
    return inf, events


def _ours(events: list[Event]) -> list[tuple[str, str]]:
    """(type, key) of the events about objects in the test namespace."""
    return [(e.type.value, e.key[1]) for e in events if e.obj.namespace == NS]


def _server_state(api: Api, res: Resource) -> dict[str, str]:
    items, _ = api.list(res)
    return {
        (f"{i['metadata']['namespace']}/" if i["metadata"].get("namespace") else "") + i["metadata"]["name"]:
        i["metadata"]["resourceVersion"]
        for i in items
    }


def _cache_state(store: Store) -> dict[str, str]:
    return {o.key: o.meta.resource_version for o in store.list()}


def test_initial_list_paginated(make_server: Any, cleanup: Any) -> None:
    srv = make_server()
    api = Api(srv.url)
    api.ensure_namespace()
    for i in range(23):
        api.create(Resource.SERVICE, service(f"svc-{i:02d}"))
    inf, events = _informer(srv, cleanup, page_size=5)
    assert inf.store.synced.wait(10), "initial list did not complete"
    keys = {o.key for o in inf.store.list() if o.namespace == NS}
    assert keys == {f"{NS}/svc-{i:02d}" for i in range(23)}
    assert inf.stats["pages"] >= 5, inf.stats  # 23 objects (+ whatever the server has) at 5 a page
    assert _cache_state(inf.store) == _server_state(api, Resource.SERVICE)
    assert events == [], "the first list fills the cache silently"
    assert inf.resource_version and int(inf.resource_version) > 0


def test_live_events_in_order_with_old_and_new(make_server: Any, cleanup: Any) -> None:
    srv = make_server()
    api = Api(srv.url)
    api.ensure_namespace()
    api.create(Resource.SERVICE, service("keep"))
    inf, events = _informer(srv, cleanup)
    assert inf.store.synced.wait(10)

    api.create(Resource.SERVICE, service("a", port=80))
    obj = api.get(Resource.SERVICE, NS, "a")
    obj["spec"]["ports"][0]["port"] = 81
    api.update(Resource.SERVICE, obj)
    api.create(Resource.SERVICE, service("b"))
    api.delete(Resource.SERVICE, NS, "a")

    want = [("ADDED", f"{NS}/a"), ("MODIFIED", f"{NS}/a"), ("ADDED", f"{NS}/b"), ("DELETED", f"{NS}/a")]
    wait_until(lambda: len(_ours(events)) >= 4, what="four events")
    ours = [e for e in events if e.obj.namespace == NS]
    assert _ours(events) == want
    added, modified, _, deleted = ours
    assert added.old is None and added.new.ports[0].port == 80
    assert modified.old == added.new and modified.new.ports[0].port == 81
    assert deleted.new is None and deleted.old.ports[0].port == 81
    assert deleted.old.key == f"{NS}/a"
    assert inf.store.get(f"{NS}/a") is None and inf.store.get(f"{NS}/b") is not None
    wait_until(lambda: _cache_state(inf.store) == _server_state(api, Resource.SERVICE), what="cache == server")


def test_bookmarks_advance_resource_version(make_server: Any, cleanup: Any) -> None:
    srv = make_server(bookmark_interval=0.2)
    api = Api(srv.url)
    api.ensure_namespace()
    inf, events = _informer(srv, cleanup)  # watches Services
    assert inf.store.synced.wait(10)
    start_rv = int(inf.resource_version)
    # changes to another resource move the server's resourceVersion; only bookmarks tell the Service watch
    api.create(Resource.NODE, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "bookmark-node"}})
    rv = int(api.get(Resource.NODE, "", "bookmark-node")["metadata"]["resourceVersion"])
    assert rv > start_rv
    wait_until(lambda: int(inf.resource_version) >= rv, timeout=10, what=f"resourceVersion >= {rv} from a bookmark")
    assert inf.stats["bookmarks"] >= 1
    assert _ours(events) == []


class GatedInformer(Informer):
    """Holds the next watch back while ``gate`` is clear (``waiting`` tells the test it is held)."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = threading.Event()

    def before_watch(self) -> None:
        if not self.gate.is_set():
            self.waiting.set()
            while not self.gate.wait(0.05) and not self.stopped:
                pass
            self.waiting.clear()


def test_410_relist_emits_difference(make_server: Any, cleanup: Any) -> None:
    srv = make_server(history=5, bookmark_interval=0.3)
    api = Api(srv.url)
    api.ensure_namespace()
    for n in ("same", "changed", "removed"):
        api.create(Resource.SERVICE, service(n))
    reg = CollectorRegistry()
    inf, events = _informer(srv, cleanup, cls=GatedInformer, timeout_seconds=1, metrics=WatchMetrics(reg))
    assert isinstance(inf, GatedInformer)
    assert inf.store.synced.wait(10)
    before = {o.key: o for o in inf.store.list()}

    inf.gate.clear()  # the running watch ends at its 1 s timeout; the next one waits
    assert inf.waiting.wait(10), "the informer did not come back for a new watch"
    held_rv = inf.resource_version
    obj = api.get(Resource.SERVICE, NS, "changed")
    obj["spec"]["ports"][0]["port"] = 8443
    api.update(Resource.SERVICE, obj)
    api.delete(Resource.SERVICE, NS, "removed")
    for i in range(8):  # well past the 5-event history
        api.create(Resource.SERVICE, service(f"new-{i}"))
    api.delete(Resource.SERVICE, NS, "new-7")  # created and deleted while away: no event at all
    inf.gate.set()

    wait_until(lambda: inf.stats["relists"] >= 1, what="a 410 relist")
    wait_until(lambda: _cache_state(inf.store) == _server_state(api, Resource.SERVICE), what="cache == server")
    got = sorted(_ours(events))
    want = sorted([("MODIFIED", f"{NS}/changed"), ("DELETED", f"{NS}/removed")]
                  + [("ADDED", f"{NS}/new-{i}") for i in range(7)])
    assert got == want, f"held at {held_rv}: {got}"
    by_key = {e.key[1]: e for e in events}
    ch = by_key[f"{NS}/changed"]
    assert ch.old == before[f"{NS}/changed"] and ch.new.ports[0].port == 8443
    assert by_key[f"{NS}/removed"].old == before[f"{NS}/removed"]
    assert all(e.old is None for e in events if e.type is EventType.ADDED)
    assert reg.get_sample_value("kr_watch_relists_total", {"resource": "Service"}) >= 1


def test_restart_same_data_file_loses_nothing(make_server: Any, cleanup: Any, tmp_path: Any) -> None:
    db = str(tmp_path / "state.sqlite")
    srv = make_server(data_path=db, bookmark_interval=0.3)
    port = int(srv.url.rsplit(":", 1)[1])
    api = Api(srv.url)
    api.ensure_namespace()
    for i in range(5):
        api.create(Resource.SERVICE, service(f"old-{i}"))
    inf, events = _informer(srv, cleanup, timeout_seconds=30, backoff_initial=0.05, backoff_max=0.5)
    assert inf.store.synced.wait(10)
    api.create(Resource.SERVICE, service("before-stop"))
    wait_until(lambda: inf.store.get(f"{NS}/before-stop"), what="event before the stop")

    srv.stop()
    wait_until(lambda: inf.stats["errors"] >= 1, what="the informer to notice the server is gone")
    srv2 = make_server(data_path=db, port=port, bookmark_interval=0.3)
    api2 = Api(srv2.url)
    api2.create(Resource.SERVICE, service("after-restart"))
    obj = api2.get(Resource.SERVICE, NS, "old-0")
    obj["spec"]["ports"][0]["port"] = 9090
    api2.update(Resource.SERVICE, obj)
    api2.delete(Resource.SERVICE, NS, "old-1")

    wait_until(lambda: _cache_state(inf.store) == _server_state(api2, Resource.SERVICE), timeout=15,
               what="cache == server after the restart")
    got = _ours(events)
    assert sorted(got) == sorted([
        ("ADDED", f"{NS}/before-stop"), ("ADDED", f"{NS}/after-restart"),
        ("MODIFIED", f"{NS}/old-0"), ("DELETED", f"{NS}/old-1"),
    ]), got
    assert got[0] == ("ADDED", f"{NS}/before-stop")
    assert inf.store.get(f"{NS}/old-0").ports[0].port == 9090


def test_source_syncs_all_resources_and_counts_metrics(make_server: Any, cleanup: Any) -> None:
    srv = make_server()
    api = Api(srv.url)
    api.ensure_namespace()
    api.create(Resource.SERVICE, service("s"))
    api.create(Resource.ENDPOINTSLICE, endpointslice("s-abc", "s", 3))
    api.create(Resource.NODE, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}})
    api.create(Resource.POD, pod("p"))
    api.create(Resource.NETWORKPOLICY, {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "deny", "namespace": NS},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    })
    reg = CollectorRegistry()
    caches = Caches()
    events: list[Event] = []
    src = InformerSource(cleanup(client_for(srv)), timeout_seconds=30, page_size=100, metrics=reg)
    cleanup(src)
    src.start(caches, events.append)
    assert src.wait_synced(10) == []
    assert set(src.informers) == set(Resource)
    assert caches[Resource.SERVICE].get(f"{NS}/s") is not None
    assert [s.key for s in caches[Resource.ENDPOINTSLICE].by_index("service", f"{NS}/s")] == [f"{NS}/s-abc"]
    assert caches[Resource.POD].get(f"{NS}/p") is not None
    assert caches[Resource.NETWORKPOLICY].get(f"{NS}/deny") is not None
    assert caches[Resource.NAMESPACE].get(NS) is not None
    assert caches[Resource.NODE].get("node-1") is not None
    for r in Resource:
        assert reg.get_sample_value("kr_watch_initial_sync_seconds", {"resource": r.value}) is not None

    api.create(Resource.SERVICE, service("s2"))
    wait_until(lambda: (Resource.SERVICE, f"{NS}/s2") in [e.key for e in events], what="ADDED s2 via the source")
    assert reg.get_sample_value("kr_watch_events_total", {"resource": "Service", "type": "ADDED"}) >= 1


def test_source_only_watches_present_stores(make_server: Any, cleanup: Any) -> None:
    srv = make_server()
    caches = Caches([Resource.SERVICE, Resource.NODE])
    src = cleanup(InformerSource(cleanup(client_for(srv)), timeout_seconds=30))
    src.start(caches, lambda e: None)
    assert caches.wait_synced(10) == []
    assert set(src.informers) == {Resource.SERVICE, Resource.NODE}


def test_stop_is_prompt_during_a_long_watch(make_server: Any, cleanup: Any) -> None:
    srv = make_server(bookmark_interval=60)
    caches = Caches()
    src = cleanup(InformerSource(cleanup(client_for(srv)), timeout_seconds=300))
    src.start(caches, lambda e: None)
    assert caches.wait_synced(10) == []
    time.sleep(0.3)  # every informer is now blocked reading its watch stream
    t0 = time.monotonic()
    src.stop()
    assert time.monotonic() - t0 < 2.0
    assert not any(i.alive for i in src.informers.values())


def test_unreachable_server_backs_off_and_stops(cleanup: Any) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now

    class Dead:
        url = f"http://127.0.0.1:{port}"

    inf, _ = _informer(Dead(), cleanup, backoff_initial=0.05, backoff_max=0.2)
    wait_until(lambda: inf.stats["errors"] >= 3, what="retries with backoff")
    assert not inf.store.synced.is_set()
    t0 = time.monotonic()
    inf.stop()
    assert time.monotonic() - t0 < 1.0 and not inf.alive


def test_sink_failure_does_not_stop_the_informer(make_server: Any, cleanup: Any) -> None:
    srv = make_server()
    api = Api(srv.url)
    api.ensure_namespace()
    seen: list[Event] = []

    def sink(e: Event) -> None:
        seen.append(e)
        if e.obj.name == "boom":
            raise RuntimeError("plugin bug")

    client = cleanup(client_for(srv))
    inf = cleanup(Informer(client, Resource.SERVICE, Store(Resource.SERVICE), sink, timeout_seconds=30))
    inf.start()
    assert inf.store.synced.wait(10)
    api.create(Resource.SERVICE, service("boom"))
    api.create(Resource.SERVICE, service("after"))
    wait_until(lambda: any(e.obj.name == "after" for e in seen), what="the event after the failing one")
    assert inf.alive


def test_backoff_is_capped_with_jitter() -> None:
    from kr_core.watch.informer import Backoff

    b = Backoff(0.2, 30.0)
    delays = [b.next() for _ in range(20)]
    assert 0.15 <= delays[0] <= 0.25
    assert all(d <= 30.0 for d in delays) and delays[-1] >= 22.5
    b.reset()
    assert b.next() <= 0.25


def test_source_restart_emits_what_changed_while_stopped(make_server: Any, cleanup: Any) -> None:
    srv = make_server()
    api = Api(srv.url)
    api.ensure_namespace()
    api.create(Resource.SERVICE, service("stays"))
    api.create(Resource.SERVICE, service("goes"))
    caches = Caches([Resource.SERVICE])
    events: list[Event] = []
    src = cleanup(InformerSource(cleanup(client_for(srv)), timeout_seconds=30))
    src.start(caches, events.append)
    assert caches.wait_synced(10) == []
    src.stop()
    api.delete(Resource.SERVICE, NS, "goes")
    api.create(Resource.SERVICE, service("new"))
    src.start(caches, events.append)
    wait_until(lambda: len(_ours(events)) >= 2, what="the difference after the restart")
    assert sorted(_ours(events)) == [("ADDED", f"{NS}/new"), ("DELETED", f"{NS}/goes")]


def test_large_objects_and_bursts_arrive_intact(make_server: Any, cleanup: Any) -> None:
    srv = make_server()
    api = Api(srv.url)
    api.ensure_namespace()
    inf, events = _informer(srv, cleanup, Resource.ENDPOINTSLICE)
    assert inf.store.synced.wait(10)
    api.create(Resource.ENDPOINTSLICE, endpointslice("big", "svc", 1000))  # one watch line of > 100 KB
    for i in range(150):
        api.create(Resource.ENDPOINTSLICE, endpointslice(f"small-{i:03d}", "svc", 2, base=2000 + 2 * i))
    wait_until(lambda: len(_ours(events)) >= 151, what="151 ADDED events")
    assert [k for _, k in _ours(events)] == [f"{NS}/big"] + [f"{NS}/small-{i:03d}" for i in range(150)]
    big = inf.store.get(f"{NS}/big")
    assert len(big.endpoints) == 1000 and big.service_key == f"{NS}/svc"
    assert len(inf.store.by_index("service", f"{NS}/svc")) == 151


@pytest.mark.skipif(USE_STUB, reason="the stub does not filter")
def test_label_and_field_selectors(make_server: Any, cleanup: Any) -> None:
    srv = make_server()
    api = Api(srv.url)
    api.ensure_namespace()
    api.create(Resource.SERVICE, service("front", labels={"tier": "web", "app": "a"}))
    api.create(Resource.SERVICE, service("back", labels={"tier": "db", "app": "b"}))
    api.create(Resource.POD, pod("here", node="node-1"))
    api.create(Resource.POD, pod("there", node="node-2"))
    svc, _ = _informer(srv, cleanup, label_selector="tier in (web, cache),app")
    pods, pod_events = _informer(srv, cleanup, Resource.POD, field_selector="spec.nodeName=node-1")
    assert svc.store.synced.wait(10) and pods.store.synced.wait(10)
    assert svc.store.keys() == [f"{NS}/front"]
    assert pods.store.keys() == [f"{NS}/here"]
    api.create(Resource.POD, pod("later", node="node-1"))
    api.create(Resource.POD, pod("elsewhere", node="node-3"))
    wait_until(lambda: pods.store.get(f"{NS}/later"), what="the matching pod")
    assert pods.store.get(f"{NS}/elsewhere") is None
    assert [k for _, k in _ours(pod_events)] == [f"{NS}/later"]
