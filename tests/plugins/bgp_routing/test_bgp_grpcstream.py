"""The HTTP/2 stream reader: framing against a scripted server on a socket pair (messages split over frames
and several in one, padding, PING and SETTINGS answered, trailers decoded), and against a real gobgpd (in a
network namespace the test creates): paths added over the API arrive on the watch in order, many per read;
a table read sees them; a failed call and a refused connection raise StreamError; closing the speaker ends
a blocked read."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import hpack
import pytest

from kr_core.net import netns
from kr_plugins.bgp_routing import grpcstream as gs
from kr_plugins.bgp_routing.desired import GlobalSpec
from kr_plugins.bgp_routing.gobgpd import Gobgpd
from kr_plugins.bgp_routing.grpcstream import GrpcStream, StreamError
from kr_plugins.bgp_routing.speaker import Speaker
from kr_plugins.bgp_routing.stubs import load

from .conftest import need_bgp_tools


def _scripted(frames: list[bytes]) -> tuple[GrpcStream, socket.socket, threading.Thread]:
    """A GrpcStream on one end of a socket pair; the other end reads the client's request, then sends
    ``frames`` one ``send`` each (so frames and messages cross read boundaries), then closes."""
    client, server = socket.socketpair()
    st = GrpcStream.__new__(GrpcStream)
    st.__dict__.update(sock=client, _closed=False, _decoder=hpack.Decoder(), _block=bytearray(),
                       _block_ends_stream=False, _headers={}, _consumed=0)

    def serve() -> None:
        for f in frames:
            server.sendall(f)
            time.sleep(0.002)  # (likely separate reads; the test does not depend on it)
        server.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=serve)
    t.start()
    return st, server, t


def _grpc(*msgs: bytes) -> bytes:
    return b"".join(b"\0" + len(m).to_bytes(4, "big") + m for m in msgs)


def test_framing() -> None:
    enc = hpack.Encoder()
    head = gs._frame(gs.HEADERS, gs.END_HEADERS, 1, enc.encode([(":status", "200"), ("content-type", "application/grpc")]))
    trailers = enc.encode([("grpc-status", "0"), ("grpc-message", "")])
    data = _grpc(b"one", b"two", b"three" * 100, b"four")
    frames = [gs._frame(gs.SETTINGS, 0, 0, b""), head[:5], head[5:],
              gs._frame(gs.DATA, 0, 1, data[:3]),  # a message prefix split over frames
              gs._frame(gs.DATA, 0, 1, data[3:20]),
              gs._frame(gs.PING, 0, 0, b"12345678"),
              gs._frame(gs.DATA, gs.PADDED, 1, bytes([4]) + data[20:] + b"\0" * 4),  # the rest, padded
              gs._frame(gs.DATA, 0, 1, _grpc(b"five", b"six")),
              gs._frame(gs.HEADERS, gs.END_STREAM, 1, trailers[:2]),  # trailers over HEADERS + CONTINUATION
              gs._frame(gs.CONTINUATION, gs.END_HEADERS, 1, trailers[2:])]
    st, server, t = _scripted(frames)
    try:
        blobs = list(st)
        assert b"".join(blobs) == b"onetwo" + b"three" * 100 + b"fourfivesix"
        answers = server.recv(1 << 16)
        assert gs._frame(gs.SETTINGS, gs.ACK, 0) in answers and gs._frame(gs.PING, gs.ACK, 0, b"12345678") in answers
    finally:
        t.join()
        st.close()
        server.close()


@pytest.mark.parametrize("end", ["error-trailers", "reset", "eof"])
def test_framing_errors(end: str) -> None:
    enc = hpack.Encoder()
    frames = [gs._frame(gs.HEADERS, gs.END_HEADERS, 1, enc.encode([(":status", "200")])),
              gs._frame(gs.DATA, 0, 1, _grpc(b"x"))]
    if end == "error-trailers":
        frames.append(gs._frame(gs.HEADERS, gs.END_STREAM | gs.END_HEADERS, 1,
                                enc.encode([("grpc-status", "5"), ("grpc-message", "no such table")])))
    elif end == "reset":
        frames.append(gs._frame(gs.RST_STREAM, 0, 1, (2).to_bytes(4, "big")))
    st, server, t = _scripted(frames)
    got: list[bytes] = []
    try:
        with pytest.raises(StreamError) as err:
            for blob in st:
                got.append(blob)
        assert b"".join(got) in (b"x", b"")  # what came before the end (a reset may drop it)
        if end == "error-trailers":
            assert got == [b"x"] and err.value.status == 5 and "no such table" in str(err.value)
    finally:
        t.join()
        st.close()
        server.close()


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
