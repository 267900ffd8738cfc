"""A raw netlink socket that sends many requests per ``sendmsg`` with one ack per batch (any protocol).

Shared by the bulk writers: IPVS (generic netlink), addresses (rtnetlink) and ipsets (netfilter,
:mod:`kr_core.net.ipsetnl`). The caller renders each message (``build(index, seq, ack)``); the socket
batches them and maps the kernel's error replies back to the request indexes.

The kernel handles the messages of one buffer in order and stays silent on success when a message does not
ask for an ack; failures still come back, each as an ``NLMSG_ERROR`` carrying the failing message's
sequence number. So a batch of K requests costs one ``send`` and (usually) one ``recv``, instead of K round
trips (``../shared/reference/ipvs-floors.md``: 0.3-0.4 s instead of 4-5 s for 110k IPVS objects in UML).

``NETLINK_CAP_ACK`` keeps error replies short (no echoed request), and the buffers are forced to 64 MiB so
that even a batch where everything fails fits in the receive queue.
"""

from __future__ import annotations

import mmap
import os
import socket
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any

NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x100, 0x200, 0x400, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
NLA_F_NESTED = 0x8000
HDR = struct.Struct("=IHHII")
ERR = struct.Struct("=i")
BATCH_MAX = 1000
BATCH_BYTES = 1 << 20


class NetlinkError(OSError):
    """A netlink request failed or the reply stream broke."""


def nla(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * (-n % 4)


def nest(kind: int, parts: Sequence[bytes]) -> bytes:
    return nla(kind | NLA_F_NESTED, b"".join(parts))


def iter_attrs(buf: bytes | memoryview, off: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes | memoryview]]:
    """(type without flags, payload) of each attribute in ``buf[off:end]``."""
    end = len(buf) if end is None else end
    while off + 4 <= end:
        ln, kind = struct.unpack_from("=HH", buf, off)
        if ln < 4:
            break
        yield kind & 0x3FFF, buf[off + 4: off + ln]
        off += (ln + 3) & ~3


class NetlinkSocket:
    """One raw netlink socket (opened in the calling thread's network namespace)."""

    def __init__(self, protocol: int) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
        self.sock.bind((0, 0))
        self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        for opt, fallback in ((SO_SNDBUFFORCE, socket.SO_SNDBUF), (SO_RCVBUFFORCE, socket.SO_RCVBUF)):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, opt, 64 << 20)
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, fallback, 8 << 20)
        # a kernel-side receive timeout: Python's settimeout() adds a poll() and clock reads to every recv,
        # which costs ~1 ms per dump in UML (17 s instead of 2 s for 10k per-service dest dumps)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("=qq", 60, 0))
        self.seq = 1
        # receive buffer: an anonymous mapping, so only the pages a reply actually fills are touched (a
        # zeroed bytearray touched all 2,048 pages at every socket made: ~0.1-0.2 s in User-Mode Linux)
        self.buf = mmap.mmap(-1, 8 << 20)
        self.sent_messages = 0  # counters for tests and the benchmark
        self.sent_batches = 0

    def close(self) -> None:
        self.sock.close()
        try:
            self.buf.close()
        except BufferError:  # a caller still holds a view of the last reply: freed with it
            pass

    def next_seq(self, n: int = 1) -> int:
        """Reserve ``n`` consecutive sequence numbers; returns the first (wraps before 2**31)."""
        if self.seq + n >= 0x7FFFFFFF:
            self.seq = 1
        s = self.seq
        self.seq += n
        return s

    def _recv(self) -> Iterator[tuple[int, int, int, memoryview]]:
        """One ``recv``: (type, flags, seq, payload) per message."""
        try:
            n = self.sock.recv_into(self.buf)
        except OSError as exc:
            raise NetlinkError(exc.errno or 0, f"netlink replies lost ({exc}); state unknown") from exc
        mv = memoryview(self.buf)[:n]
        off = 0
        while off + 16 <= n:
            ln, typ, fl, seq, _ = HDR.unpack_from(mv, off)
            if ln < 16:
                break
            yield typ, fl, seq, mv[off + 16: off + ln]
            off += (ln + 3) & ~3

    def send_all(self, build: Callable[[int, int, bool], bytes], count: int) -> dict[int, int]:
        """Send ``count`` requests, rendered by ``build(index, seq, ack)``, in batches of up to 1,000 messages /
        1 MiB with an ack requested only on each batch's last message. Returns ``{index: errno}`` for the
        requests the kernel refused (indexes into 0..count-1)."""
        errors: dict[int, int] = {}
        i = 0
        while i < count:
            base = self.next_seq(min(BATCH_MAX, count - i))
            parts: list[bytes] = []
            size = 0
            j = i
            while j < count and j - i < BATCH_MAX and size < BATCH_BYTES:
                msg = build(j, base + (j - i), False)
                parts.append(msg)
                size += len(msg)
                j += 1
            last = len(parts) - 1
            parts[last] = build(i + last, base + last, True)
            self.sock.send(b"".join(parts))
            self.sent_messages += len(parts)
            self.sent_batches += 1
            last_seq = base + last
            done = False
            while not done:
                for typ, _fl, seq, p in self._recv():
                    if typ != NLMSG_ERROR or not base <= seq <= last_seq:
                        continue
                    err = ERR.unpack_from(p)[0]
                    if err:
                        errors[i + seq - base] = -err
                    if seq == last_seq:
                        done = True
            i = j
        return errors

    def request(self, msg_type: int, flags: int, payload: bytes) -> None:
        """One request with an ack; raises :class:`NetlinkError` on failure."""
        seq = self.next_seq()
        self.sock.send(HDR.pack(16 + len(payload), msg_type, NLM_F_REQUEST | NLM_F_ACK | flags, seq, 0) + payload)
        while True:
            for typ, _fl, s, p in self._recv():
                if typ == NLMSG_ERROR and s == seq:
                    err = ERR.unpack_from(p)[0]
                    if err:
                        raise NetlinkError(-err, f"netlink request type {msg_type}: {os.strerror(-err)}")
                    return

    def query(self, msg_type: int, flags: int, payload: bytes) -> list[bytes]:
        """One request with an ack whose reply carries data (e.g. ``IPSET_CMD_TYPE``): the payloads of the
        reply messages (copied); raises :class:`NetlinkError` on failure."""
        seq = self.next_seq()
        self.sock.send(HDR.pack(16 + len(payload), msg_type, NLM_F_REQUEST | NLM_F_ACK | flags, seq, 0) + payload)
        out: list[bytes] = []
        while True:
            for typ, _fl, s, p in self._recv():
                if s != seq:
                    continue
                if typ == NLMSG_ERROR:
                    err = ERR.unpack_from(p)[0]
                    if err:
                        raise NetlinkError(-err, f"netlink request type {msg_type}: {os.strerror(-err)}")
                    return out
                if typ == NLMSG_DONE:
                    return out
                out.append(bytes(p))

    def dump(self, msg_type: int, payload: bytes, parse: Callable[[memoryview], Any] | None = None) -> list[Any]:
        """One dump request; the payloads of its replies (copied), or ``parse(payload)`` of each (called on
        the receive buffer, no copy) when ``parse`` is given (None results are dropped)."""
        seq = self.next_seq()
        self.sock.send(HDR.pack(16 + len(payload), msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + payload)
        out: list[Any] = []
        while True:
            for typ, _fl, s, p in self._recv():
                if s != seq:
                    continue
                if typ == NLMSG_DONE:
                    return out
                if typ == NLMSG_ERROR:
                    err = ERR.unpack_from(p)[0]
                    if err:
                        raise NetlinkError(-err, f"netlink dump type {msg_type} failed")
                    return out
                if parse is None:
                    out.append(bytes(p))
                else:
                    r = parse(p)
                    if r is not None:
                        out.append(r)
