"""kr's BFD speaker (:mod:`kr_plugins.bgp_routing.bfdd`) talking to itself over IPv6 between two network
namespaces: handshake, silent loss, recovery, AdminDown when a speaker stops."""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from collections.abc import Iterator

import pytest

from kr_core.net import netns
from kr_plugins.bgp_routing.bfd import Change, Diag, Params, State
from kr_plugins.bgp_routing.bfdd import BfdDaemon, SessionSpec

from .netlab import sh, wait_for

pytestmark = pytest.mark.root

A, B = "fd00:bfd::1", "fd00:bfd::2"


@pytest.fixture
def pair() -> Iterator[tuple[str, str]]:
    if os.geteuid() != 0 or not shutil.which("ip6tables"):
        pytest.skip("needs root and ip6tables")
    tag = uuid.uuid4().hex[:6]
    na, nb = f"kbfd{tag}-a", f"kbfd{tag}-b"
    try:
        netns.create(na)
        netns.create(nb)
        sh(None, "ip", "link", "add", "eth0", "netns", na, "type", "veth", "peer", "name", "eth0", "netns", nb)
        for ns, ip in ((na, A), (nb, B)):
            sh(ns, "ip", "addr", "add", f"{ip}/64", "dev", "eth0", "nodad")
            sh(ns, "ip", "link", "set", "eth0", "up")
        yield na, nb
    finally:
        for ns in (na, nb):
            netns.delete(ns)


class Recorder:
    def __init__(self) -> None:
        self.changes: list[tuple[str, Change]] = []
        self.lock = threading.Lock()

    def __call__(self, peer: str, ch: Change) -> None:
        with self.lock:
            self.changes.append((peer, ch))

    def last(self) -> Change | None:
        with self.lock:
            return self.changes[-1][1] if self.changes else None


def state(d: BfdDaemon) -> str:
    snap = d.snapshot()
    return snap[0]["state"] if snap else ""


def test_two_kr_speakers_over_ipv6(pair: tuple[str, str]) -> None:
    na, nb = pair
    params = Params.from_ms(3, 100, 100)
    ra, rb = Recorder(), Recorder()
    da, db = BfdDaemon(ra, netns=na), BfdDaemon(rb, netns=nb)
    da.start()
    db.start()
    try:
        da.configure({B: SessionSpec(B, A, 3784, params)})
        db.configure({A: SessionSpec(A, B, 3784, params)})
        wait_for(lambda: state(da) == "UP" and state(db) == "UP", 10, "both sessions Up")
        snap = da.snapshot()[0]
        assert snap["remote_disc"] == db.snapshot()[0]["local_disc"] and snap["error"] == ""
        assert snap["tx_interval_ms"] == 100 and snap["detection_time_ms"] == 300

        # silent loss on b's side: both detect it
        for chain in ("INPUT", "OUTPUT"):
            sh(nb, "ip6tables", "-I", chain, "-p", "udp", "-j", "DROP")
        wait_for(lambda: state(da) == "DOWN" and state(db) == "DOWN", 10, "both sessions Down")
        ch = ra.last()
        assert ch is not None and (ch.old, ch.new, ch.diag) == (State.UP, State.DOWN, Diag.DETECTION_EXPIRED)
        for chain in ("INPUT", "OUTPUT"):
            sh(nb, "ip6tables", "-D", chain, "-p", "udp", "-j", "DROP")
        wait_for(lambda: state(da) == "UP" and state(db) == "UP", 10, "both sessions Up again")

        # b stops: it sends AdminDown, a goes Down knowing the peer turned BFD off (no failure)
        db.stop()
        wait_for(lambda: state(da) == "DOWN", 10, "a's session Down after b's AdminDown")
        ch = ra.last()
        assert ch is not None and ch.remote_state == State.ADMIN_DOWN and ch.diag == Diag.NEIGHBOR_DOWN
    finally:
        da.stop()
        db.stop()
