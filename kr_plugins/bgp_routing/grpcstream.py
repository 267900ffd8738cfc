"""A small gRPC client for server-streaming calls over plaintext HTTP/2: the raw response messages, many per
``recv``.

Why not grpcio for these: grpcio hands every streamed message over through its completion queue, ~30-40 us
each on this host whatever the deserializer, and gobgpd sends one ``WatchEvent`` message per changed best
path and one ``ListPath`` message per destination. Reading the socket directly costs ~1-2 us a message, so
the injector can follow gobgpd while a burst of thousands of paths arrives. Unary calls stay on grpcio.

One call per connection (unix socket ``unix:///path`` or ``host:port``). What is implemented of HTTP/2
(RFC 9113) is what a client of one stream needs: the preface and SETTINGS (acked), a large receive window
renewed as data is consumed, PING answered, DATA (with padding), HEADERS/CONTINUATION decoded with HPACK
(the ``hpack`` package) to read ``:status`` and the trailers' ``grpc-status``; RST_STREAM, GOAWAY and EOF end
the call. Messages are never compressed (the request does not offer any encoding).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
SETTINGS_ENABLE_PUSH, SETTINGS_INITIAL_WINDOW_SIZE = 2, 4
WINDOW = 1 << 30  # receive window per stream and connection; renewed once half of it was consumed
READ_MAX = 1 << 15  # bytes per recv (~130 gobgpd path events): what one read decodes before handing it on,
                    # so the consumer starts on the first paths of a burst while the next are decoded
STREAM_ID = 1
_FRAME = struct.Struct(">BHBBI")  # length (24 bits: high byte + low 16), type, flags, stream id


class StreamError(OSError):
    """The call failed or ended: ``status`` is the gRPC status code (-1: none was received)."""

    def __init__(self, message: str, status: int = -1) -> None:
        super().__init__(message)
        self.status = status


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _FRAME.pack(n >> 16, n & 0xFFFF, kind, flags, stream) + payload


def _request_headers(method: str, authority: str) -> bytes:
    return hpack.Encoder().encode([(":method", "POST"), (":scheme", "http"), (":path", method),
                                   (":authority", authority), ("content-type", "application/grpc"),
                                   ("te", "trailers")])


def _connect(target: str, timeout: float) -> tuple[socket.socket, str]:
    if target.startswith("unix:"):
        path = target[len("unix:"):]
        path = "/" + path.lstrip("/") if path.startswith("//") else path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            raise
        return sock, "localhost"
    host, _, port = target.rpartition(":")
    sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock, target


def _cut(data: bytearray, pos: int, end: int, parts: list[bytes | memoryview]) -> int:
    """Append the complete gRPC messages in ``data[pos:end]`` (5-byte prefix: compressed flag, length) to
    ``parts`` as views; returns where the first incomplete one starts."""
    view = memoryview(data)
    while end - pos >= 5:
        mlen = int.from_bytes(data[pos + 1:pos + 5], "big")
        if end - pos < 5 + mlen:
            break
        if data[pos]:
            raise StreamError("gRPC stream: compressed message (none was asked for)")
        parts.append(view[pos + 5:pos + 5 + mlen])
        pos += 5 + mlen
    return pos


class GrpcStream:
    """One server-streaming call: ``for blob in GrpcStream(target, "/pkg.Service/Method", request)`` yields
    the complete messages that each read brought, concatenated (at least one per yield). Iteration ends
    when the call ends with status OK; any other end raises :class:`StreamError`. :meth:`close` (from any
    thread) ends a running iteration with StreamError."""

    def __init__(self, target: str, method: str, request: bytes, *, timeout: float = 10.0) -> None:
        try:
            self.sock, authority = _connect(target, timeout)
        except OSError as exc:  # gobgpd not (yet) listening: like any other broken call
            raise StreamError(f"gRPC stream: cannot connect to {target}: {exc}") from exc
        self.sock.settimeout(None)  # a watch waits for events as long as it takes
        self._closed = False
        self._decoder = hpack.Decoder()
        self._block = bytearray()  # a header block spread over HEADERS + CONTINUATION frames
        self._block_ends_stream = False
        self._headers: dict[str, str] = {}
        self._consumed = 0
        settings = struct.pack(">HIHI", SETTINGS_ENABLE_PUSH, 0, SETTINGS_INITIAL_WINDOW_SIZE, WINDOW)
        body = b"\0" + struct.pack(">I", len(request)) + request
        try:
            self.sock.sendall(PREFACE + _frame(SETTINGS, 0, 0, settings)
                              + _frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", WINDOW - 65535))
                              + _frame(HEADERS, END_HEADERS, STREAM_ID, _request_headers(method, authority))
                              + _frame(DATA, END_STREAM, STREAM_ID, body))
        except OSError as exc:
            self.close()
            raise StreamError(f"gRPC stream: {exc}") from exc

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a reader blocked in recv on another thread
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> GrpcStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[bytes]:
        """Per read of the socket that completed at least one message: those messages, concatenated (the
        caller parses them at once as a message whose fields are repeated, see :mod:`.pathwire`)."""
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        have = start = 0  # buf[start:have] holds what is not parsed yet
        msg = bytearray()  # the start of a message whose end has not arrived yet
        while True:
            if have == len(buf):  # make room: move the unparsed tail to the front, or grow for a huge frame
                if start:
                    buf[:have - start] = buf[start:have]
                    have, start = have - start, 0
                else:
                    view.release()
                    buf.extend(bytes(len(buf)))
                    view = memoryview(buf)
            try:
                n = self.sock.recv_into(view[have:have + READ_MAX]) if not self._closed else 0
            except OSError as exc:
                raise StreamError(f"gRPC stream: {exc}") from exc
            if n == 0:
                raise StreamError("gRPC stream: connection closed")
            have += n
            ended = False
            parts: list[bytes | memoryview] = []
            while have - start >= 9:
                hi, lo, kind, flags, stream = _FRAME.unpack_from(buf, start)
                length = (hi << 16) | lo
                if have - start < 9 + length:
                    break
                p0, p1 = start + 9, start + 9 + length
                start = p1
                if kind == DATA:
                    if stream == STREAM_ID:
                        if flags & PADDED:
                            p1 -= buf[p0]
                            p0 += 1
                        self._consumed += length
                        ended = ended or bool(flags & END_STREAM)
                        if msg:  # a message began in an earlier frame
                            msg += view[p0:p1]
                            pos = _cut(msg, 0, len(msg), parts)
                            msg = msg[pos:]
                        else:  # usual: the frame holds whole messages (gobgpd: one)
                            pos = _cut(buf, p0, p1, parts)
                            if pos < p1:
                                msg += view[pos:p1]
                elif kind in (HEADERS, CONTINUATION):
                    if kind == HEADERS:
                        if flags & PADDED:
                            p1 -= buf[p0]
                            p0 += 1
                        if flags & PRIORITY:
                            p0 += 5
                        self._block_ends_stream = bool(flags & END_STREAM)
                    self._block += view[p0:p1]
                    if flags & END_HEADERS:
                        ended = self._header_block() or ended
                elif kind == SETTINGS:
                    if not flags & ACK:
                        self._send(_frame(SETTINGS, ACK, 0))
                elif kind == PING:
                    if not flags & ACK:
                        self._send(_frame(PING, ACK, 0, bytes(view[p0:p1])))
                elif kind == RST_STREAM and stream == STREAM_ID:
                    code = struct.unpack_from(">I", buf, p0)[0] if length >= 4 else -1
                    raise StreamError(f"gRPC stream reset by the server (HTTP/2 error {code})")
                elif kind == GOAWAY:
                    last = struct.unpack_from(">I", buf, p0)[0] & 0x7FFFFFFF if length >= 4 else 0
                    if last < STREAM_ID:  # our call was not taken up; otherwise it runs to its end
                        raise StreamError("gRPC stream: server going away")
            out = b"".join(parts)  # (copies out of buf before the next recv reuses it)
            parts.clear()
            if start == have:
                start = have = 0
            if self._consumed >= WINDOW // 2:
                inc = struct.pack(">I", self._consumed)
                self._send(_frame(WINDOW_UPDATE, 0, 0, inc) + _frame(WINDOW_UPDATE, 0, STREAM_ID, inc))
                self._consumed = 0
            if out:
                yield out
            if ended:
                self._finish()
                return

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise StreamError(f"gRPC stream: {exc}") from exc

    def _header_block(self) -> bool:
        """Decode a complete header block (keeps the HPACK table in step); True when it ends the call."""
        try:
            fields = self._decoder.decode(bytes(self._block))
        except hpack.HPACKError as exc:
            raise StreamError(f"gRPC stream: bad header block ({exc})") from exc
        self._block.clear()
        for name, value in fields:
            self._headers[name if isinstance(name, str) else name.decode()] = (
                value if isinstance(value, str) else value.decode(errors="replace"))
        status = self._headers.get(":status", "200")
        if status != "200":
            raise StreamError(f"gRPC stream: HTTP status {status}")
        return self._block_ends_stream

    def _finish(self) -> None:
        """The call ended: OK returns; anything else raises."""
        status = self._headers.get("grpc-status")
        if status == "0":
            return
        code = int(status) if status and status.isdigit() else -1
        raise StreamError(f"gRPC call failed: status {status or 'missing'} "
                          f"{self._headers.get('grpc-message', '')}".rstrip(), code)
