"""A route counter in its own process for benchmarks: ``python -m tests.bench.route_watch NETNS PROTO``.

It listens to the namespace's IPv4 route notifications (rtnetlink multicast) and keeps the set of routes
with protocol ``PROTO`` in the main table. For each line ``N`` read on stdin it answers, on stdout, the
``time.monotonic()`` at which the set first held exactly N routes after the request (at once when it
already does). The benchmark thus learns when the last route landed without polling ``ip route`` (each
poll is a process and a full dump that compete for the CPU with what is measured, and add up to a poll
interval). Being a separate process, its parsing does not take the GIL from an agent running in the
benchmark's process. CLOCK_MONOTONIC is shared by all processes, so the times compare across them.
"""

from __future__ import annotations

import selectors
import socket
import struct
import subprocess
import sys
import time

from kr_core.net.netns import in_netns

RTMGRP_IPV4_ROUTE = 0x40
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTM_GETROUTE, NLM_F_REQUEST, NLM_F_DUMP = 26, 0x1, 0x300
NLMSG_DONE, NLMSG_ERROR = 3, 2
RTA_DST, RTA_TABLE = 1, 15
SO_RCVBUFFORCE = 33


def _messages(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, length, type) of each netlink message in a datagram."""
    out, off = [], 0
    while off + 16 <= len(data):
        length, mtype = struct.unpack_from("=IH", data, off)
        if length < 16:
            break
        out.append((off, length, mtype))
        off += (length + 3) & ~3
    return out


_HEAD = struct.Struct("=IHHIIBBBBBB")  # nlmsghdr + the start of rtmsg (family, dst_len, src, tos, table, proto)


def _routes(data: bytes, proto: int) -> list[tuple[int, bytes]]:
    """(message type, key) of the main-table IPv4 routes with ``proto`` in a netlink datagram; the key is
    the prefix length and the packed destination."""
    out = []
    off, n = 0, len(data)
    while off + 28 <= n:
        length, mtype, _flags, _seq, _pid, family, dst_len, _src, _tos, table, rproto = _HEAD.unpack_from(data, off)
        if length < 16:
            break
        if mtype in (RTM_NEWROUTE, RTM_DELROUTE) and family == socket.AF_INET and rproto == proto and table == 254:
            dst, a = b"\0\0\0\0", off + 28
            while a + 4 <= off + length:  # the kernel puts RTA_TABLE first, RTA_DST second: a short walk
                alen, atype = struct.unpack_from("=HH", data, a)
                if alen < 4:
                    break
                if atype == RTA_DST and alen == 8:
                    dst = data[a + 4:a + 8]
                    break
                a += (alen + 3) & ~3
            out.append((mtype, bytes([dst_len]) + dst))
        off += (length + 3) & ~3
    return out


class RouteWatch:
    """The benchmark's side: starts the watcher in ``ns`` and asks it when the route count reaches N."""

    def __init__(self, ns: str, proto: int = 17) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.bench.route_watch", ns, str(proto)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self._line(10) != "ready":
            raise RuntimeError("route watcher did not start")

    def _line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError(f"route watcher: no answer within {timeout} s")
        return self.proc.stdout.readline().strip()

    def expect(self, count: int) -> None:
        """Ask for the time the count is ``count`` (send before starting what is measured)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{count}\n")
        self.proc.stdin.flush()

    def reached(self, timeout: float = 120) -> float:
        """The ``time.monotonic()`` at which the count asked for by :meth:`expect` was reached."""
        line = self._line(timeout)
        try:
            return float(line)
        except ValueError:
            raise RuntimeError(f"route watcher: {line}") from None

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def main() -> int:
    ns, proto = sys.argv[1], int(sys.argv[2])
    with in_netns(ns):
        mon = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        dump = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    mon.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
    mon.bind((0, RTMGRP_IPV4_ROUTE))
    mon.setblocking(False)
    held: set[bytes] = set()
    # what is there already: a dump (after subscribing, so nothing falls between the two)
    dump.bind((0, 0))
    dump.send(struct.pack("=IHHII", 28, RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
              + struct.pack("=BBBBBBBBI", socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0))
    done = False
    while not done:
        data = dump.recv(1 << 20)
        done = any(mtype in (NLMSG_DONE, NLMSG_ERROR) for _, _, mtype in _messages(data))
        held.update(d for _, d in _routes(data, proto))
    dump.close()
    sel = selectors.DefaultSelector()
    sel.register(mon, selectors.EVENT_READ)
    sel.register(sys.stdin, selectors.EVENT_READ)
    want: int | None = None
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            if key.fileobj is sys.stdin:
                line = sys.stdin.readline()
                if not line:
                    return 0
                want = int(line)
            else:
                while True:  # drain what is queued (one datagram per route), then select again
                    try:
                        data = mon.recv(1 << 16)
                    except BlockingIOError:
                        break
                    except OSError as exc:  # ENOBUFS: notifications were lost, the count is unknown
                        print(f"lost {exc}", flush=True)
                        return 1
                    for mtype, dst in _routes(data, proto):
                        (held.add if mtype == RTM_NEWROUTE else held.discard)(dst)
                    if want is not None and len(held) == want:
                        print(f"{time.monotonic():.6f}", flush=True)
                        want = None
                continue
            if want is not None and len(held) == want:
                print(f"{time.monotonic():.6f}", flush=True)
                want = None


if __name__ == "__main__":
    sys.exit(main())
