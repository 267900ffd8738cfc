"""Watch: resume from a resourceVersion, initial ADDED events, selectors, bookmarks, timeouts, 410."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from kr_core.embedded import ApiServer

from .conftest import api_client, pod


def raw_watch(srv: ApiServer, path: str, timeout: float = 10.0) -> Iterator[dict[str, Any]]:
    """Yield the events of a watch request (raw JSON), closing the connection when done."""
    u = urlsplit(srv.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        while True:
            line = resp.readline()
            if not line:
                return
            yield json.loads(line)
    finally:
        conn.close()


def test_watch_from_resource_version(server: ApiServer, core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("before"))
    rv = core.list_namespaced_pod("default").metadata.resource_version

    def writer() -> None:
        time.sleep(0.2)
        core.create_namespaced_pod("default", pod("p1"))
        core.patch_namespaced_pod("p1", "default", {"metadata": {"labels": {"x": "1"}}})
        core.delete_namespaced_pod("p1", "default")

    t = threading.Thread(target=writer)
    t.start()
    events = []
    w = watch.Watch()
    for ev in w.stream(core.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=5):
        events.append((ev["type"], ev["object"].metadata.name))
        if ev["type"] == "DELETED":
            w.stop()
    t.join()
    assert events == [("ADDED", "p1"), ("MODIFIED", "p1"), ("DELETED", "p1")]
    # resuming from the same version replays the history
    replay = [(e["type"], e["object"]["metadata"]["name"]) for e in
              raw_watch(server, f"/api/v1/namespaces/default/pods?watch=1&resourceVersion={rv}&timeoutSeconds=0.5")]
    assert replay == events


def test_watch_without_version_sends_initial_state(server: ApiServer, core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("a", {"app": "x"}))
    core.create_namespaced_pod("default", pod("b", {"app": "y"}))
    evs = list(raw_watch(server, "/api/v1/namespaces/default/pods?watch=true&timeoutSeconds=1&labelSelector=app%3Dx"))
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in evs] == [("ADDED", "a")]
    names = [e["object"].metadata.name for e in watch.Watch().stream(core.list_namespace, timeout_seconds=1)]
    assert names == ["default", "kube-node-lease", "kube-public", "kube-system"]


def test_watch_selector_transitions(server: ApiServer, core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("p", {"app": "web"}))
    rv = core.list_namespaced_pod("default").metadata.resource_version
    core.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"app": "db"}}})
    core.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"app": "web"}}})
    core.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"v": "2"}}})
    core.create_namespaced_pod("default", pod("other", {"app": "db"}))
    evs = list(raw_watch(server, f"/api/v1/pods?watch=1&resourceVersion={rv}&timeoutSeconds=1"
                                 "&labelSelector=app%3Dweb"))
    assert [e["type"] for e in evs] == ["DELETED", "ADDED", "MODIFIED"]
    byname = list(raw_watch(server, f"/api/v1/namespaces/default/pods?watch=1&resourceVersion={rv}"
                                    "&timeoutSeconds=1&fieldSelector=metadata.name%3Dother"))
    assert [e["type"] for e in byname] == ["ADDED"]


def test_bookmarks_and_timeout(server: ApiServer, core: client.CoreV1Api) -> None:
    rv = core.list_namespaced_pod("default").metadata.resource_version
    t0 = time.monotonic()
    evs = list(raw_watch(server, f"/api/v1/namespaces/default/pods?watch=1&resourceVersion={rv}"
                                 "&allowWatchBookmarks=true&timeoutSeconds=1"))
    elapsed = time.monotonic() - t0
    assert 0.9 <= elapsed < 3
    assert len(evs) >= 2 and {e["type"] for e in evs} == {"BOOKMARK"}
    bm = evs[0]["object"]
    assert bm["kind"] == "Pod" and bm["apiVersion"] == "v1" and bm["metadata"]["resourceVersion"] == rv
    # the Python client takes the bookmark's version as its own
    core.create_namespaced_pod("default", pod("p"))
    w = watch.Watch()
    types = []
    for ev in w.stream(core.list_namespaced_pod, "default", resource_version=rv, allow_watch_bookmarks=True,
                       timeout_seconds=1):
        types.append(ev["type"])
    assert types[0] == "ADDED" and "BOOKMARK" in types
    assert int(w.resource_version) > int(rv)
    # no bookmarks unless asked for
    assert list(raw_watch(server, f"/api/v1/namespaces/default/pods?watch=1&resourceVersion={w.resource_version}"
                                  "&timeoutSeconds=0.5")) == []


def test_watch_expired(make_server: Any, tmp_path: Path) -> None:
    srv = make_server(history=3)
    c = api_client(srv, tmp_path / "kc")
    core = client.CoreV1Api(c)
    rv = core.list_namespaced_pod("default").metadata.resource_version
    for i in range(5):
        core.create_namespaced_pod("default", pod(f"p{i}"))
    evs = list(raw_watch(srv, f"/api/v1/namespaces/default/pods?watch=1&resourceVersion={rv}"))
    assert len(evs) == 1 and evs[0]["type"] == "ERROR"
    st = evs[0]["object"]
    assert st["kind"] == "Status" and st["code"] == 410 and st["reason"] == "Expired"
    with pytest.raises(ApiException) as e:
        for _ in watch.Watch().stream(core.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=1):
            pass
    assert e.value.status == 410
    # a recent version is still fine
    recent = core.list_namespaced_pod("default").metadata.resource_version
    core.delete_namespaced_pod("p0", "default")
    evs = list(raw_watch(srv, f"/api/v1/namespaces/default/pods?watch=1&resourceVersion={recent}&timeoutSeconds=0.5"))
    assert [e["type"] for e in evs] == ["DELETED"]
    c.close()


def test_watch_ends_when_server_stops(make_server: Any) -> None:
    srv = make_server()
    got: list[Any] = []

    def consume() -> None:
        got.extend(raw_watch(srv, "/api/v1/namespaces?watch=1&resourceVersion=1"))

    t = threading.Thread(target=consume)
    t.start()
    time.sleep(0.3)
    srv.stop()
    t.join(timeout=5)
    assert not t.is_alive()


def test_watch_resumes_across_restart(make_server: Any, tmp_path: Path) -> None:
    data = str(tmp_path / "db")
    srv = make_server(data_path=data)
    c = api_client(srv, tmp_path / "kc")
    core = client.CoreV1Api(c)
    rv = core.list_namespaced_pod("default").metadata.resource_version
    core.create_namespaced_pod("default", pod("p1"))
    c.close()
    srv.stop()
    srv2 = make_server(data_path=data)
    evs = list(raw_watch(srv2, f"/api/v1/namespaces/default/pods?watch=1&resourceVersion={rv}&timeoutSeconds=0.5"))
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in evs] == [("ADDED", "p1")]


def test_concurrent_writers_one_ordered_stream(server: ApiServer, core: client.CoreV1Api) -> None:
    rv = core.list_namespaced_pod("default").metadata.resource_version
    got: list[dict[str, Any]] = []

    def watcher() -> None:
        for ev in raw_watch(server, f"/api/v1/namespaces/default/pods?watch=1&resourceVersion={rv}&timeoutSeconds=8"):
            got.append(ev)
            if len(got) == 120:
                return

    wt = threading.Thread(target=watcher)
    wt.start()

    def writer(k: int) -> None:
        for i in range(30):
            core.create_namespaced_pod("default", pod(f"w{k}-{i}"))

    ws = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in ws:
        t.start()
    for t in ws:
        t.join()
    wt.join(timeout=10)
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in got]
    assert len(got) == 120 and rvs == sorted(rvs) and len(set(rvs)) == 120
    assert {e["object"]["metadata"]["name"] for e in got} == {f"w{k}-{i}" for k in range(4) for i in range(30)}


def test_watch_from_a_future_version(server: ApiServer, core: client.CoreV1Api) -> None:
    now = int(core.list_namespaced_pod("default").metadata.resource_version)
    core_events: list[str] = []

    def writer() -> None:
        time.sleep(0.2)
        core.create_namespaced_pod("default", pod("early"))  # rv now+1: not after now+1
        core.create_namespaced_pod("default", pod("late"))

    t = threading.Thread(target=writer)
    t.start()
    for ev in raw_watch(server, f"/api/v1/namespaces/default/pods?watch=1&resourceVersion={now + 1}"
                                "&timeoutSeconds=1"):
        core_events.append(ev["object"]["metadata"]["name"])
    t.join()
    assert core_events == ["late"]


def test_send_initial_events(server: ApiServer, core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("a"))
    evs = list(raw_watch(server, "/api/v1/namespaces/default/pods?watch=1&sendInitialEvents=true"
                                 "&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=0.3"))
    assert [e["type"] for e in evs][:2] == ["ADDED", "BOOKMARK"]
    end = evs[1]["object"]["metadata"]
    assert end["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert int(end["resourceVersion"]) >= int(evs[0]["object"]["metadata"]["resourceVersion"])
