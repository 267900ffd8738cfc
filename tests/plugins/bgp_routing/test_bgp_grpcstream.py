"""The HTTP/2 stream reader against a real gobgpd (in a network namespace the test creates): paths added
over the API arrive on the watch in order, many per read; a table read sees them; a failed call and a
refused connection raise StreamError; closing the speaker ends a blocked read."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kr_core.net import netns
from kr_plugins.bgp_routing.desired import GlobalSpec
from kr_plugins.bgp_routing.gobgpd import Gobgpd
from kr_plugins.bgp_routing.grpcstream import GrpcStream, StreamError
from kr_plugins.bgp_routing.speaker import Speaker
from kr_plugins.bgp_routing.stubs import load

from .conftest import need_bgp_tools


@pytest.fixture
def speaker(tmp_path: Path) -> Iterator[Speaker]:
    need_bgp_tools()
    ns = f"krgs-{uuid.uuid4().hex[:6]}"
    netns.create(ns)
    daemon = Gobgpd(str(tmp_path / "gobgpd.sock"), netns=ns)
    sp: Speaker | None = None
    try:
        daemon.start()
        sp = Speaker(load(), daemon.target)
        sp.wait_ready()
        yield sp
    finally:
        if sp is not None:
            sp.close()
        daemon.stop()
        netns.delete(ns)


def test_watch_and_table_read(speaker: Speaker) -> None:
    speaker.start_bgp(GlobalSpec(asn=64512, router_id="10.0.0.1", port=-1))
    events = speaker.watch_changes()
    assert next(events) == ("registered", [])
    prefixes = [f"10.{i // 256}.{i % 256}.0/24" for i in range(1500)]
    uuids = [speaker.add_path(p, "192.168.1.7") for p in prefixes]
    speaker.delete_path(uuids[3], prefixes[3])
    got, reads = [], 0
    while len(got) < len(prefixes) + 1:
        kind, batch = next(events)
        assert kind == "paths"
        got += batch
        reads += 1
    events.close()
    assert [(p.prefix, p.withdraw) for p in got] == [(p, False) for p in prefixes] + [(prefixes[3], True)]
    assert got[0].next_hop == "192.168.1.7" and got[0].neighbor == ""  # a local path: no neighbor
    assert reads < len(got)  # several messages per read
    table = [p for batch in speaker.dump_best(4) for p in batch]
    assert sorted(p.prefix for p in table) == sorted(prefixes[:3] + prefixes[4:])
    assert {p.next_hop for p in table} == {"192.168.1.7"}


def test_failed_call_and_refused_connection(speaker: Speaker, tmp_path: Path) -> None:
    with pytest.raises(StreamError) as err:  # BGP not started: gobgpd refuses the table read
        list(speaker.dump_best(4))
    assert err.value.status > 0
    with pytest.raises(StreamError):
        GrpcStream(f"unix://{tmp_path}/nothing.sock", "/apipb.GobgpApi/WatchEvent", b"")


def test_close_ends_a_blocked_read(speaker: Speaker) -> None:
    speaker.start_bgp(GlobalSpec(asn=64512, router_id="10.0.0.1", port=-1))
    events = speaker.watch_changes()
    next(events)
    timer = threading.Timer(0.2, speaker.close)
    timer.start()
    with pytest.raises(StreamError):
        next(events)  # blocks until the speaker is closed
    timer.join()
