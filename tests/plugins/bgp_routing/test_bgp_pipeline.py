"""The injector's pipeline (watch -> table read -> batched netlink writes) against a real kernel, with gobgpd
replaced by a scripted speaker so that the order of events is exact: a burst over many stream reads with
withdraws and next-hop changes inside it, reconnects in the middle of a table read (no sweep on a partial
table), and the queue handling on its own."""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from kr_core.net import netns
from kr_plugins.bgp_routing import injector as inj
from kr_plugins.bgp_routing.grpcstream import StreamError
from kr_plugins.bgp_routing.pathwire import LearnedPath

from .netlab import wait_for

NODE, PEER, PEER2 = "192.168.100.1", "192.168.100.100", "192.168.100.101"
CFG = inj.InjectConfig(node_ip4=NODE, local_subnets=("192.168.100.0/24",), enable_overlay=False)


def lp(prefix: str, nh: str = PEER, withdraw: bool = False) -> LearnedPath:
    return LearnedPath(prefix, "" if withdraw else nh, PEER, withdraw, 4)


def prefixes(n: int, base: int = 100) -> list[str]:
    return [f"{base + i // 65536}.{(i // 256) % 256}.{i % 256}.0/24" for i in range(n)]


class Conn:
    """What one connection to the fake gobgpd shows: the table read (batches per family; ``dump_fails_after``
    batches and then an error) and the changes after it; the stream ends (error) when ``end`` is set."""

    def __init__(self, table: list[list[LearnedPath]], events: list[list[LearnedPath]] | None = None,
                 dump_fails_after: int | None = None) -> None:
        self.table, self.events, self.dump_fails_after = table, events or [], dump_fails_after
        self.end = threading.Event()
        self.read_done = threading.Event()
        self.hold = threading.Event()  # the table read starts once this is set
        self.hold.set()
        self.stall_after: int | None = None  # event batches delivered before the stream stalls


class FakeSpeaker:
    """The part of :class:`Speaker` the injector uses; its ``watch_changes`` plays the next :class:`Conn` of
    its script."""

    def __init__(self, script: list[Conn]) -> None:
        self.script = script
        self.conn: Conn | None = None
        self.closed = threading.Event()

    def wait_ready(self, timeout: float = 10.0) -> None:
        pass

    def close(self) -> None:
        self.closed.set()
        if self.conn:
            self.conn.end.set()

    def table_counts(self) -> tuple[int, ...]:
        """What gobgpd holds once the connection's changes are in (it is always ahead of the stream)."""
        held: set[str] = set()
        for batch in (self.conn.table + self.conn.events) if self.conn else []:
            for p in batch:
                (held.discard if p.withdraw else held.add)(p.prefix)
        return (len(held), len(held), len(held), -1, -1, -1)

    def watch_changes(self) -> Iterator[tuple[str, list[LearnedPath]]]:
        if not self.script:
            self.closed.wait()
            raise StreamError("script over")
        self.conn = self.script.pop(0)
        yield "registered", []
        self.conn.read_done.wait(10)
        for batch in self.conn.events[:self.conn.stall_after]:
            yield "paths", batch
        self.conn.end.wait()
        raise StreamError("gobgpd went away")

    def dump_best(self, fam: int) -> Iterator[list[LearnedPath]]:
        assert self.conn is not None and fam == 4
        self.conn.hold.wait(10)
        try:
            for i, batch in enumerate(self.conn.table):
                if self.conn.dump_fails_after is not None and i >= self.conn.dump_fails_after:
                    raise StreamError("ListPath: connection closed")
                yield batch
        finally:
            self.conn.read_done.set()


@pytest.fixture
def node_ns() -> Iterator[str]:
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2")
    ns = f"krpipe-{uuid.uuid4().hex[:6]}"
    netns.create(ns)
    try:
        netns.run(ns, ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"])
        netns.run(ns, ["ip", "addr", "add", f"{NODE}/24", "dev", "eth0"])
        for dev in ("eth0", "eth1"):
            netns.run(ns, ["ip", "link", "set", dev, "up"])
        yield ns
    finally:
        netns.delete(ns)


def kernel(ns: str) -> dict[str, str]:
    """prefix -> gateway of the proto-17 routes in the main table."""
    out = netns.run(ns, ["ip", "route", "show", "proto", "17"]).stdout
    routes = {}
    for line in out.splitlines():
        w = line.split()
        routes[w[0]] = w[w.index("via") + 1] if "via" in w else ""
    return routes


def start(ns: str, speakers: list[FakeSpeaker]) -> inj.Injector:
    pool = list(speakers)
    i = inj.Injector(lambda: pool.pop(0), netns=ns, resync=3600)
    i.configure(CFG)
    i.start()
    return i


def settle(i: inj.Injector, ns: str, want: dict[str, str]) -> None:
    wait_for(lambda: kernel(ns) == want and i._q.empty(), 20, f"{len(want)} routes in the kernel",
             interval=0.02)
    assert {p: r.route.gateway for p, r in i.routes.items()} == want


def test_burst_over_many_reads_with_withdraws_and_next_hop_changes(node_ns: str) -> None:
    """1,200 changes in 12 stream reads, a withdraw of an earlier path and next-hop changes inside the
    burst; the last word per prefix wins."""
    first = prefixes(1200)
    events = [[lp(p) for p in first[k:k + 100]] for k in range(0, 1200, 100)]
    events[5].append(lp(first[10], withdraw=True))  # learned in read 0, withdrawn in read 5
    events[7].append(lp(first[20], PEER2))  # next hop changes in read 7 ...
    events[11].append(lp(first[20]))  # ... and back in read 11
    events[11].append(lp(first[30], PEER2))
    conn = Conn([[lp("99.0.0.0/24")]], events)
    i = start(node_ns, [FakeSpeaker([conn])])
    try:
        want = {p: PEER for p in first if p != first[10]} | {first[30]: PEER2, "99.0.0.0/24": PEER}
        settle(i, node_ns, want)
    finally:
        i.stop()


def test_stream_far_behind_gobgpd_reads_the_table(node_ns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A burst the stream lags far behind on (gobgpd holds 3,500 more paths than it has brought, more than
    LAG_MIN and two thirds of the table) drops the watch; the same channel's next watch reads the table,
    which is the truth: what the stream brought and the table no longer has is removed, the rest added."""
    monkeypatch.setattr(inj, "LAG_MIN", 300)
    burst = prefixes(4000)
    first = Conn([[lp("99.0.0.0/24")]], [[lp(p) for p in burst[k:k + 100]] for k in range(0, 600, 100)])
    first.events.append([lp(p) for p in burst[600:]])  # what gobgpd holds; the stream stops before it ...
    first.stall_after = 6  # ... and only brings the first 600
    second = Conn([[lp(p) for p in burst[50:2000]], [lp(p) for p in burst[2000:]] + [lp("99.0.0.0/24", PEER2)]])
    sp = FakeSpeaker([first, second])
    i = start(node_ns, [sp])
    try:
        settle(i, node_ns, {p: PEER for p in burst[50:]} | {"99.0.0.0/24": PEER2})
        assert i.stats.catch_ups == 1
        assert not sp.closed.is_set()  # the same channel, a new watch
    finally:
        i.stop()


def test_reconnect_mid_table_read_sweeps_only_after_a_complete_read(node_ns: str) -> None:
    """gobgpd restarts: the stream breaks, a new channel's table read breaks half-way (its paths are
    written, nothing is swept), the next read completes and sweeps what it lacks."""
    a, b, c, d = "10.1.0.0/24", "10.2.0.0/24", "10.3.0.0/24", "10.4.0.0/24"
    c1 = Conn([[lp(a), lp(b), lp(c)]])
    c2 = Conn([[lp(a, PEER2)], [lp(d)]], dump_fails_after=1)
    c3 = Conn([[lp(a, PEER2)], [lp(d)]])
    s1, s2, s3 = FakeSpeaker([c1]), FakeSpeaker([c2]), FakeSpeaker([c3])
    c3.hold.clear()
    i = start(node_ns, [s1, s2, s3])
    try:
        settle(i, node_ns, {a: PEER, b: PEER, c: PEER})
        c1.end.set()  # the stream breaks: new channel, its read fails after the first batch
        wait_for(lambda: kernel(node_ns).get(a) == PEER2 and i._q.empty(), 20, "the partial read's path written")
        assert c2.read_done.is_set()
        assert set(kernel(node_ns)) == {a, b, c}  # no sweep on a partial table
        c3.hold.set()  # the third connection's read completes
        settle(i, node_ns, {a: PEER2, d: PEER})
        assert s1.closed.is_set() and s2.closed.is_set()
    finally:
        i.stop()


def test_gather_order_rules() -> None:
    """Queue handling alone: a table read's prefixes include changes after its end in the same take; a
    table read while not configured supersedes what waited."""
    i = inj.Injector(lambda: None)  # type: ignore[arg-type,return-value]
    items: list[Any] = [("begin", []), ("dump", [lp("10.1.0.0/24")]), ("end", []),
                        ("paths", [lp("10.2.0.0/24"), lp("10.1.0.0/24", withdraw=True)]), "resync"]
    paths, redo, resync, table = i._gather(items)
    assert table == {"10.1.0.0/24", "10.2.0.0/24"} and resync and not redo
    assert paths["10.1.0.0/24"].withdraw and not paths["10.2.0.0/24"].withdraw
    i._apply({"10.9.0.0/24": lp("10.9.0.0/24")}, redo=False, resync=False)  # not configured: waits
    assert set(i.pending) == {"10.9.0.0/24"}
    paths, _, _, table = i._gather([("paths", [lp("10.8.0.0/24")]), ("begin", []), ("dump", [lp("10.7.0.0/24")])])
    assert set(paths) == {"10.7.0.0/24"} and not i.pending and table is None
    assert i._dump_seen == {"10.7.0.0/24"}
