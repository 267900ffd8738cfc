"""The cold-start fast paths: the JSON parser choice (orjson or the stdlib fallback), the GC pause around
lists, Store.replace's cold-start path, and the embedded server's list encoding."""

from __future__ import annotations

import gc
import json
import threading
from typing import Any

import pytest

from kr_core.events import EventType
from kr_core.model import Resource, from_json
from kr_core.watch import informer
from kr_core.watch.cache import Store
from kr_core.watch.informer import Informer

from .helpers import NS, Api, client_for, endpointslice, pod, service


def test_parser_falls_back_to_json_without_orjson(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(informer, "_orjson", None)
    assert informer._pick_loads() is informer._stdlib_loads
    doc = b'{"a": [1, 2.5, "\\u00e9", null, true], "b": {"c": "d"}}'
    assert informer._stdlib_loads(doc) == json.loads(doc)
    with pytest.raises(ValueError):
        informer._stdlib_loads(b"{not json")


def test_parser_uses_orjson_when_installed() -> None:
    orjson = pytest.importorskip("orjson")
    assert informer._pick_loads() is orjson.loads
    doc = b'{"a": [1, 2.5, "\\u00e9", null, true], "b": {"c": "d"}}'
    assert orjson.loads(doc) == json.loads(doc)
    with pytest.raises(ValueError):  # orjson.JSONDecodeError is a ValueError, as the watch loop expects
        orjson.loads(b"{not json")


@pytest.mark.parametrize("parser", ["stdlib", "default"])
def test_informer_lists_and_watches_with_either_parser(parser: str, make_server: Any, cleanup: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    if parser == "stdlib":
        monkeypatch.setattr(informer, "loads", informer._stdlib_loads)
    srv = make_server()
    api = Api(srv.url)
    api.ensure_namespace()
    for i in range(7):
        api.create(Resource.ENDPOINTSLICE, endpointslice(f"es-{i}", f"svc-{i}", 3, base=10 * i))
    events: list[Any] = []
    client = cleanup(client_for(srv))
    inf = cleanup(Informer(client, Resource.ENDPOINTSLICE, Store(Resource.ENDPOINTSLICE), events.append,
                           timeout_seconds=30, page_size=3))
    inf.start()
    assert inf.store.synced.wait(10)
    ours = {o.key: o for o in inf.store.list() if o.namespace == NS}
    items, _ = api.list(Resource.ENDPOINTSLICE)
    want = {f"{NS}/{i['metadata']['name']}": from_json(Resource.ENDPOINTSLICE, i) for i in items
            if i["metadata"]["namespace"] == NS}
    assert ours == want and len(ours) == 7
    assert inf.store.by_index("service", f"{NS}/svc-3") == [want[f"{NS}/es-3"]]
    assert gc.isenabled(), "the GC pause ended with the list"
    api.create(Resource.ENDPOINTSLICE, endpointslice("es-new", "svc-new", 2))
    deadline = threading.Event()
    for _ in range(200):
        if any(e.type is EventType.ADDED and e.new.name == "es-new" for e in events):
            break
        deadline.wait(0.05)
    assert any(e.type is EventType.ADDED and e.new.name == "es-new" for e in events)


def test_gc_paused_nests_across_threads_and_restores() -> None:
    assert gc.isenabled()
    inside = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with informer.gc_paused():
            inside.set()
            release.wait(5)

    t = threading.Thread(target=hold)
    with informer.gc_paused():
        assert not gc.isenabled()
        t.start()
        assert inside.wait(5)
    assert not gc.isenabled(), "still held by the other thread"
    release.set()
    t.join(5)
    assert gc.isenabled()


def test_gc_paused_leaves_a_disabled_gc_disabled() -> None:
    gc.disable()
    try:
        with informer.gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_gc_paused_restores_on_error() -> None:
    with pytest.raises(RuntimeError), informer.gc_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


def _slices(n: int, svc_of: Any = lambda i: f"s{i % 3}") -> list[Any]:
    return [from_json(Resource.ENDPOINTSLICE, endpointslice(f"e{i}", svc_of(i), 2, base=i * 2)) for i in range(n)]


def test_replace_cold_start_matches_general_path() -> None:
    objs = _slices(10)
    cold = Store(Resource.ENDPOINTSLICE)
    ev_cold = cold.replace(objs)
    # the general path: a non-empty store replaced by a superset
    warm = Store(Resource.ENDPOINTSLICE)
    warm.replace(objs[:1])
    ev_warm = warm.replace(objs)
    assert {o.key: o for o in cold.list()} == {o.key: o for o in warm.list()}
    for svc in ("s0", "s1", "s2"):
        assert sorted(o.key for o in cold.by_index("service", f"{NS}/{svc}")) == \
            sorted(o.key for o in warm.by_index("service", f"{NS}/{svc}"))
    assert sorted(cold.index_values("namespace")) == [NS]
    assert [(e.type, e.new.key) for e in ev_cold] == [(EventType.ADDED, o.key) for o in objs]
    assert len(ev_warm) == 9
    # a later re-list still diffs
    ev = cold.replace(objs[2:])
    assert sorted((e.type.value, e.old.key) for e in ev) == [("DELETED", f"{NS}/e0"), ("DELETED", f"{NS}/e1")]
    assert cold.by_index("service", f"{NS}/s0") and len(cold) == 8


def test_replace_without_events() -> None:
    s = Store(Resource.POD)
    objs = [from_json(Resource.POD, pod(f"p{i}", node=f"n{i % 2}")) for i in range(4)]
    assert s.replace(objs, want_events=False) == []
    assert len(s) == 4 and len(s.by_index("node", "n0")) == 2
    assert s.replace(objs[:1], want_events=False) == [] and len(s) == 1


def test_server_list_json_is_the_list_encoded(make_server: Any) -> None:
    from kr_core.embedded.resources import BY_KIND

    srv = make_server()
    reg = getattr(srv, "registry", None)
    if reg is None or not hasattr(reg, "list_json"):
        pytest.skip("not the embedded server")
    api = Api(srv.url)
    api.ensure_namespace()
    for i in range(5):
        api.create(Resource.SERVICE, service(f"svc-{i}", labels={"app": "a" if i % 2 else "b"}))
    res = BY_KIND["Service"]

    def same(*args: Any) -> None:
        assert reg.list_json(res, *args) == json.dumps(reg.list(res, *args), separators=(",", ":")).encode()

    same(NS)
    same(None, None, None, 2, None)
    same(NS, "app=a")
    same(NS, None, "metadata.name=svc-3")
    cont = json.loads(reg.list_json(res, NS, None, None, 2, None))["metadata"]["continue"]
    same(NS, None, None, 2, cont)
    # writes replace the kept encoding: the list shows the new state
    obj = api.get(Resource.SERVICE, NS, "svc-1")
    obj["metadata"]["labels"] = {"app": "changed"}
    api.update(Resource.SERVICE, obj)
    api.delete(Resource.SERVICE, NS, "svc-2")
    body = json.loads(reg.list_json(res, NS))
    names = {i["metadata"]["name"]: i["metadata"]["labels"] for i in body["items"]}
    assert names["svc-1"] == {"app": "changed"} and "svc-2" not in names
    same(NS)
    # and over HTTP, the client sees the same
    items, _ = api.list(Resource.SERVICE)
    assert {i["metadata"]["name"] for i in items if i["metadata"]["namespace"] == NS} == \
        {"svc-0", "svc-1", "svc-3", "svc-4"}


def test_server_pages_read_only_the_page(make_server: Any) -> None:
    from kr_core.embedded.resources import BY_KIND

    srv = make_server()
    reg = getattr(srv, "registry", None)
    if reg is None or not hasattr(reg.store, "list_page"):
        pytest.skip("not the embedded server")
    api = Api(srv.url)
    api.ensure_namespace()
    for i in range(7):
        api.create(Resource.SERVICE, service(f"svc-{i}"))
    res = BY_KIND["Service"]
    full = reg.list(res, NS)["items"]
    for limit in (1, 2, 3, 6, 7, 8):
        got: list[Any] = []
        cont = None
        remaining: list[int] = []
        while True:
            body = reg.list(res, NS, None, None, limit, cont)
            got += body["items"]
            cont = body["metadata"].get("continue")
            if not cont:
                assert "remainingItemCount" not in body["metadata"]
                break
            remaining.append(body["metadata"]["remainingItemCount"])
            assert len(body["items"]) == limit
        assert got == full, limit
        assert remaining == [len(full) - limit * (k + 1) for k in range(len(remaining))]
    # across namespaces too (the all-namespaces collection the informers list)
    everything = reg.list(res, None)["items"]
    first = reg.list(res, None, None, None, 3)
    assert first["items"] == everything[:3] and first["metadata"]["remainingItemCount"] == len(everything) - 3
