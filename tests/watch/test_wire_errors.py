"""What a real API server never sends, so these run against the test stub (tests/watch/stubserver.py):
malformed objects in lists and watch streams, and 410 Gone as the HTTP status of the watch request."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import pytest

from kr_core.events import Event
from kr_core.model import Resource
from kr_core.watch.cache import Store
from kr_core.watch.informer import Informer

from .helpers import NS, client_for, new_server, service, wait_until


@pytest.fixture
def stub(cleanup: Any) -> Any:
    return cleanup(new_server(stub=True, bookmark_interval=0.2))


def _start(srv: Any, cleanup: Any, cls: type[Informer] = Informer, **kw: Any) -> tuple[Informer, list[Event]]:
    events: list[Event] = []
    inf = cleanup(cls(cleanup(client_for(srv)), Resource.SERVICE, Store(Resource.SERVICE), events.append,
                      timeout_seconds=kw.pop("timeout_seconds", 30), **kw))
    inf.start()
    return inf, events


def test_malformed_objects_are_logged_and_skipped(stub: Any, cleanup: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="kr_core.watch.informer")
    stub.write("services", "ADDED", service("good-1"))
    stub.write("services", "ADDED", {"metadata": {"namespace": NS, "labels": {}}, "spec": {}})  # no name
    stub.write("services", "ADDED", {"metadata": {"name": "bad-labels", "namespace": NS, "labels": 7}})
    stub.write("services", "ADDED", service("good-2"))
    inf, events = _start(stub, cleanup)
    assert inf.store.synced.wait(10)
    assert sorted(inf.store.keys()) == [f"{NS}/good-1", f"{NS}/good-2"]

    stub.write("services", "ADDED", {"metadata": {"name": "bad-spec", "namespace": NS}, "spec": "not a spec"})
    stub.write("services", "ADDED", ["not", "an", "object"], ns=NS, name="x")
    stub.write("services", "MODIFIED", {"metadata": {"name": "no-namespace"}, "spec": {}})
    stub.write("services", "ADDED", service("good-3"))
    wait_until(lambda: inf.store.get(f"{NS}/good-3"), what="the valid object after the malformed ones")
    assert [e.key[1] for e in events] == [f"{NS}/good-3"]
    assert inf.stats["malformed"] == 5
    text = caplog.text
    for ident in (f"{NS}/(no name)", f"{NS}/bad-labels", f"{NS}/bad-spec", "(not an object)", "no-namespace"):
        assert ident in text, f"{ident!r} not logged:\n{text}"
    assert "Service" in text and "malformed" in text
    assert inf.alive


class _Gate(Informer):
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


@pytest.mark.parametrize("as_http", [False, True], ids=["error-event", "http-410"])
def test_410_both_forms(cleanup: Any, as_http: bool) -> None:
    srv = cleanup(new_server(stub=True, history=3, bookmark_interval=0.2))
    srv.gone_as_http = as_http
    srv.write("services", "ADDED", service("a"))
    inf, events = _start(srv, cleanup, cls=_Gate, timeout_seconds=1)
    assert isinstance(inf, _Gate)
    assert inf.store.synced.wait(10)
    inf.gate.clear()
    assert inf.waiting.wait(10)
    srv.write("services", "DELETED", service("a"))
    for _ in range(5):
        srv.bump()
    srv.write("services", "ADDED", service("b"))
    inf.gate.set()
    wait_until(lambda: inf.stats["relists"] == 1 and inf.store.get(f"{NS}/b"), what="relist after 410")
    assert sorted((e.type.value, e.key[1]) for e in events) == [("ADDED", f"{NS}/b"), ("DELETED", f"{NS}/a")]


def test_garbage_lines_and_unknown_types_are_skipped(stub: Any, cleanup: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="kr_core.watch.informer")
    good = service("after-garbage")
    good["metadata"]["resourceVersion"] = "100"
    sent: list[int] = []

    def script(q: dict[str, str]) -> list[bytes] | None:
        if sent:
            return None  # later watches: the real stream
        sent.append(1)
        return [b"{not json", b'{"type": "WHATEVER", "object": {"metadata": {"name": "odd", "namespace": "x"}}}',
                json.dumps({"type": "ADDED", "object": good}).encode()]

    stub.watch_override = script
    inf, events = _start(stub, cleanup)
    wait_until(lambda: inf.store.get(f"{NS}/after-garbage"), what="the valid event after the garbage")
    assert [e.key[1] for e in events] == [f"{NS}/after-garbage"]
    assert "undecodable watch line" in caplog.text and "unknown type 'WHATEVER' (x/odd)" in caplog.text
    assert inf.alive


def test_too_large_resource_version_relists(stub: Any, cleanup: Any) -> None:
    stub.write("services", "ADDED", service("a"))
    answered: list[int] = []

    def script(q: dict[str, str]) -> list[bytes] | None:
        if answered:
            return None
        answered.append(1)
        status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 504, "reason": "Timeout",
                  "message": "Too large resource version: 999, current: 101",
                  "details": {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large"}]}}
        return [json.dumps({"type": "ERROR", "object": status}).encode()]

    stub.watch_override = script
    inf, _ = _start(stub, cleanup, backoff_initial=0.01)
    wait_until(lambda: inf.stats["lists"] >= 2, what="a re-list after 'too large resource version'")
    assert inf.stats["relists"] == 0  # that counter is for 410s


def test_watch_that_closes_at_once_is_not_a_busy_loop(stub: Any, cleanup: Any) -> None:
    stub.watch_override = lambda q: []  # every watch: 200, no events, closed
    inf, _ = _start(stub, cleanup, backoff_initial=0.1, backoff_max=0.4)
    assert inf.store.synced.wait(10)
    time.sleep(1.5)
    assert 2 <= inf.stats["watches"] <= 12, inf.stats
