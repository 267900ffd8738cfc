"""SCTP for kernels without SCTP: one INIT / INIT-ACK exchange over raw IP sockets (protocol 132).

On a kernel built without SCTP (``socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP)`` fails, see
:func:`kr_core.lab.responder.sctp_supported`) netfilter still parses SCTP headers: ``sctp dport``,
``meta l4proto sctp``, iptables' ``-p sctp --dport`` and conntrack's SCTP tracker (which checks the
CRC32c and the verification tags) all work on raw protocol-132 packets. So the lab and the conformance
suite probe SCTP ports with this module there:

* the client (:func:`exchange`) sends an SCTP packet with one INIT chunk from a raw socket in its netns
  and waits for the INIT-ACK that answers it (ports swapped, verification tag = the INIT's initiate tag);
* the server (:class:`RawServer`, served by :class:`kr_core.lab.responder.Responders`) reads every
  protocol-132 packet reaching its netns from one raw socket, and answers an INIT to a served port
  with an INIT-ACK whose State Cookie carries the pod's answer (``namespace/name\\n``), and an INIT to
  any other port with an ABORT, as an SCTP stack does for an out-of-the-blue INIT.

**These are not SCTP associations**: no COOKIE-ECHO, no DATA, no SHUTDOWN; the conntrack entry is left
half-open (COOKIE_WAIT) and times out. What is exercised is what a network policy decides on: the first packet
of each direction crossing the FORWARD/INPUT/OUTPUT hooks, matched by protocol and port, and conntrack
letting the answer back. A probe is connected when the INIT-ACK arrives; refused when an ABORT or an
ICMP error arrives (a policy's REJECT; the kernel's protocol-unreachable when no raw socket takes the
packet); blocked when nothing arrives in time. Where the kernel has SCTP (the VM), real associations are
used instead, through ordinary SCTP sockets.

The packet code (:func:`crc32c`, :func:`init`, :func:`init_ack`, :func:`abort`, :func:`parse`) is pure.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
from dataclasses import dataclass

from kr_core.lab.netns import in_netns

IPPROTO_SCTP = 132
INIT, INIT_ACK, ABORT = 1, 2, 6
STATE_COOKIE = 7  # INIT-ACK parameter
COMMON = struct.Struct("!HHII")  # source port, destination port, verification tag, checksum
INIT_FIXED = struct.Struct("!IIHHI")  # initiate tag, a_rwnd, outbound streams, inbound streams, initial TSN


def _table() -> list[int]:
    out = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        out.append(c)
    return out


_CRC = _table()


def crc32c(data: bytes) -> int:
    """CRC32c (Castagnoli, reflected, init and final XOR 0xffffffff): ``crc32c(b"123456789") == 0xE3069283``."""
    c = 0xFFFFFFFF
    for b in data:
        c = (c >> 8) ^ _CRC[(c ^ b) & 0xFF]
    return c ^ 0xFFFFFFFF


def chunk(ctype: int, flags: int, value: bytes) -> bytes:
    """A chunk: type, flags, length (without padding), value padded to 4 bytes."""
    body = struct.pack("!BBH", ctype, flags, 4 + len(value)) + value
    return body + b"\0" * (-len(body) % 4)


def packet(sport: int, dport: int, vtag: int, chunks: bytes) -> bytes:
    """Common header + chunks, with the CRC32c over the whole packet (checksum field zero) stored
    little-endian, as RFC 9260 appendix A's byte order comes out on the wire."""
    raw = COMMON.pack(sport, dport, vtag, 0) + chunks
    return raw[:8] + struct.pack("<I", crc32c(raw)) + raw[12:]


def init(sport: int, dport: int, tag: int, tsn: int) -> bytes:
    """An INIT (verification tag 0, as RFC 9260 requires) offering ``tag`` as initiate tag."""
    return packet(sport, dport, 0, chunk(INIT, 0, INIT_FIXED.pack(tag, 65536, 10, 10, tsn)))


def init_ack(got: Parsed, tag: int, tsn: int, cookie: bytes) -> bytes:
    """The INIT-ACK answering the INIT ``got``: ports swapped, verification tag = its initiate tag, our own
    initiate tag ``tag``, and a State Cookie parameter carrying ``cookie``."""
    param = struct.pack("!HH", STATE_COOKIE, 4 + len(cookie)) + cookie
    param += b"\0" * (-len(param) % 4)
    return packet(got.dport, got.sport, got.init_tag, chunk(INIT_ACK, 0, INIT_FIXED.pack(tag, 65536, 10, 10, tsn)
                                                            + param))


def abort(got: Parsed) -> bytes:
    """The ABORT an SCTP stack sends for an INIT it cannot take (T bit 0, verification tag = initiate tag)."""
    return packet(got.dport, got.sport, got.init_tag, chunk(ABORT, 0, b""))


@dataclass
class Parsed:
    """An SCTP packet's common header and chunks (type, flags, value without padding)."""

    sport: int
    dport: int
    vtag: int
    checksum_ok: bool
    chunks: list[tuple[int, int, bytes]]

    @property
    def first(self) -> int | None:
        return self.chunks[0][0] if self.chunks else None

    @property
    def init_tag(self) -> int:
        """The initiate tag of a leading INIT or INIT-ACK chunk (0 when there is none)."""
        if self.first in (INIT, INIT_ACK) and len(self.chunks[0][2]) >= INIT_FIXED.size:
            return int(INIT_FIXED.unpack_from(self.chunks[0][2])[0])
        return 0

    def cookie(self) -> bytes | None:
        """The State Cookie parameter of a leading INIT-ACK."""
        if self.first != INIT_ACK:
            return None
        v = self.chunks[0][2]
        i = INIT_FIXED.size
        while i + 4 <= len(v):
            ptype, plen = struct.unpack_from("!HH", v, i)
            if plen < 4:
                return None
            if ptype == STATE_COOKIE:
                return v[i + 4:i + plen]
            i += plen + (-plen % 4)
        return None


def parse(data: bytes) -> Parsed | None:
    """An SCTP packet (no IP header), or None when it is too short or a chunk length is wrong."""
    if len(data) < COMMON.size:
        return None
    sport, dport, vtag, _ = COMMON.unpack_from(data)
    ok = struct.unpack_from("<I", data, 8)[0] == crc32c(data[:8] + b"\0\0\0\0" + data[12:])
    chunks = []
    i = COMMON.size
    while i + 4 <= len(data):
        ctype, flags, length = struct.unpack_from("!BBH", data, i)
        if length < 4 or i + length > len(data):
            return None
        chunks.append((ctype, flags, data[i + 4:i + length]))
        i += length + (-length % 4)
    return Parsed(sport, dport, vtag, ok, chunks)


def strip_ip(data: bytes, family: int) -> bytes:
    """A raw IPv4 socket reads the IP header too; a raw IPv6 socket reads the payload only."""
    if family == socket.AF_INET and data:
        return data[(data[0] & 0x0F) * 4:]
    return data


def _random32() -> int:
    return int.from_bytes(os.urandom(4), "big") or 1


IP_RECVERR, IPV6_RECVERR = 11, 25  # linux/in.h, linux/in6.h


def _own_error(s: socket.socket, fam: int, sport: int, dport: int) -> int | None:
    """Drain the error queue; the errno of an ICMP error about our INIT (ports ``sport`` -> ``dport``).

    Every raw protocol-132 socket of a netns connected to the same address gets every ICMP error about
    protocol-132 packets to it, whichever socket sent them: concurrent probes to another port of the same
    pod must not take a REJECT meant for one of them as theirs. With IP_RECVERR each error is queued with
    the offending packet, whose SCTP ports say whose it was."""
    level, opt = (socket.IPPROTO_IP, IP_RECVERR) if fam == socket.AF_INET else (socket.IPPROTO_IPV6, IPV6_RECVERR)
    found = None
    timeout = s.gettimeout()
    s.setblocking(False)  # with a timeout set, Python would first wait for data to read
    try:
        while True:
            try:
                data, anc, _, _ = s.recvmsg(64, 512, socket.MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                return found
            for lvl, typ, cdata in anc:  # struct sock_extended_err starts with ee_errno
                if (lvl, typ) == (level, opt) and len(cdata) >= 4 and data[:4] == struct.pack("!HH", sport, dport):
                    found = struct.unpack_from("=I", cdata)[0]
    finally:
        s.settimeout(timeout)


def exchange(ns: str | None, ip: str, port: int, timeout: float) -> str:
    """Send one INIT to ``ip``:``port`` from netns ``ns`` and wait for its INIT-ACK; returns the State
    Cookie as text (the raw responder's ``namespace/name``). Raises :class:`ConnectionRefusedError` on
    an ABORT, :class:`OSError` on an ICMP error about this INIT (ECONNREFUSED for a REJECT's port
    unreachable, ENOPROTOOPT or EPROTO when nothing at the far end takes protocol 132; see
    :func:`_own_error`), :class:`TimeoutError` when nothing answers."""
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with in_netns(ns):
        s = socket.socket(fam, socket.SOCK_RAW, IPPROTO_SCTP)
    try:
        if fam == socket.AF_INET:
            s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        else:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        s.connect((ip, 0))  # only packets from ip are read
        sport = 32768 + int.from_bytes(os.urandom(2), "big") % 28000
        tag = _random32()
        s.send(init(sport, port, tag, _random32()))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no INIT-ACK")
            s.settimeout(left)
            try:
                data = s.recv(65535)
            except OSError as e:
                if isinstance(e, TimeoutError) or e.errno is None:
                    raise
                err = _own_error(s, fam, sport, port)
                if err is not None:
                    raise OSError(err, os.strerror(err)) from None
                continue  # an error about another probe's packet
            got = parse(strip_ip(data, fam))
            if got is None or not got.checksum_ok or got.vtag != tag or (got.sport, got.dport) != (port, sport):
                continue  # another probe's answer, or noise
            if got.first == INIT_ACK:
                return (got.cookie() or b"").decode(errors="replace").strip()
            if got.first == ABORT:
                raise ConnectionRefusedError(f"ABORT from {ip}:{port}")
    finally:
        s.close()


class RawServer:
    """The SCTP ports of one netns and address family, served from one raw socket: ``ports`` maps a port
    to the answer its INIT-ACK carries (every pod of a netns shares it, as they would share the netns' SCTP
    stack); an INIT to any other port gets an ABORT. See the module docstring: INITs are answered, nothing
    else is. :meth:`handle` is called when the socket is readable."""

    def __init__(self, ns: str | None, family: int) -> None:
        self.family = family
        self.ports: dict[int, bytes] = {}
        with in_netns(ns):
            self.sock = socket.socket(family, socket.SOCK_RAW, IPPROTO_SCTP)
        self.sock.setblocking(False)

    def handle(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            got = parse(strip_ip(data, self.family))
            if got is None or not got.checksum_ok or got.first != INIT or got.vtag != 0 or not got.init_tag:
                continue  # only INITs start anything; everything else is ignored, as OOTB packets may be
            answer = self.ports.get(got.dport)
            reply = abort(got) if answer is None else init_ack(got, _random32(), _random32(), answer)
            with contextlib.suppress(OSError):
                self.sock.sendto(reply, (addr[0], 0))

    def close(self) -> None:
        self.sock.close()
