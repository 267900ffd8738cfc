"""Pod responders: on every containerPort a pod declares, answer ``namespace/name\\n``.

TCP and SCTP: accept, send the answer, close. UDP: reply to each datagram with the answer. One
:class:`Responders` instance (one thread, one selector) serves every pod of a node: its sockets are
created inside each pod's netns (:func:`kr_core.lab.netns.in_netns`) and keep belonging to it, so no
process per pod is needed.

SCTP uses the kernel's SCTP sockets where the kernel has SCTP (the VM). Where it has not
(:func:`sctp_supported` is false, as on the development hosts), SCTP ports are served by one raw
protocol-132 socket per netns and address family (:class:`kr_core.lab.rawsctp.RawServer`): an INIT to a
served port is answered with an INIT-ACK carrying the answer in its State Cookie, any other INIT with an
ABORT. That is a raw INIT/INIT-ACK exchange, not an SCTP
association; :func:`kr_core.lab.rawsctp.exchange` is the matching client.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
from dataclasses import dataclass, field

from kr_core.lab.netns import in_netns
from kr_core.lab.rawsctp import RawServer

log = logging.getLogger("kr.lab.responder")

PROTOCOLS = ("TCP", "UDP", "SCTP")


def sctp_supported() -> bool:
    """Whether this kernel has SCTP sockets (not cached: the VM loads the module at run time)."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP).close()
        return True
    except OSError:
        return False


def _listen(family: int, proto: str, port: int) -> socket.socket:
    if proto == "UDP":
        s = socket.socket(family, socket.SOCK_DGRAM)
    elif proto == "SCTP":
        s = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_SCTP)
    else:
        s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    if proto != "UDP":
        s.listen(128)
    s.setblocking(False)
    return s


@dataclass
class _Served:
    answer: bytes
    sockets: list[tuple[socket.socket, str]] = field(default_factory=list)
    raw: list[tuple[tuple[str | None, int], int]] = field(default_factory=list)  # ((netns, family), port)


class Responders:
    """Every pod's responder sockets, served by one thread. ``raw_sctp``: SCTP ports are served by raw
    INIT/INIT-ACK exchanges (:mod:`kr_core.lab.rawsctp`); default: when the kernel has no SCTP."""

    def __init__(self, raw_sctp: bool | None = None) -> None:
        self.raw_sctp = not sctp_supported() if raw_sctp is None else raw_sctp
        self.raw: dict[tuple[str | None, int], RawServer] = {}  # (netns, family): its SCTP ports
        self.sel = selectors.DefaultSelector()
        self.pods: dict[str, _Served] = {}
        self.lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._stop = False
        self.thread = threading.Thread(target=self._loop, name="responders", daemon=True)
        self.thread.start()

    def add(self, key: str, netns: str | None, ports: list[tuple[str, int]], ipv6: bool = False) -> list[str]:
        """Serve ``key`` (``namespace/name``) on ``ports`` [(protocol, port)] inside ``netns``. Returns the
        problems (a port that could not be opened is skipped and named)."""
        self.remove(key)
        served = _Served(answer=f"{key}\n".encode())
        problems: list[str] = []
        families = [socket.AF_INET] + ([socket.AF_INET6] if ipv6 else [])
        raw_ports = {port for proto, port in ports if proto == "SCTP"} if self.raw_sctp else set()
        with in_netns(netns):
            for proto, port in ports:
                if proto == "SCTP" and self.raw_sctp:
                    continue
                for fam in families:
                    try:
                        served.sockets.append((_listen(fam, proto, port), proto))
                    except OSError as e:
                        problems.append(f"{proto}/{port}{'/v6' if fam == socket.AF_INET6 else ''}: {e.strerror or e}")
        with self.lock:
            self.pods[key] = served
            for s, proto in served.sockets:
                self.sel.register(s, selectors.EVENT_READ, (proto, served.answer))
            for fam in families if raw_ports else []:
                where = (netns, fam)
                if where not in self.raw:
                    try:
                        self.raw[where] = RawServer(netns, fam)
                    except OSError as e:
                        problems.append(f"SCTP (raw){'/v6' if fam == socket.AF_INET6 else ''}: {e.strerror or e}")
                        continue
                    self.sel.register(self.raw[where].sock, selectors.EVENT_READ, ("SCTP-RAW", self.raw[where]))
                for port in sorted(raw_ports):
                    if port in self.raw[where].ports:
                        problems.append(f"SCTP/{port}{'/v6' if fam == socket.AF_INET6 else ''}: in use")
                        continue
                    self.raw[where].ports[port] = served.answer
                    served.raw.append((where, port))
        self._wake()
        return problems

    def remove(self, key: str) -> None:
        with self.lock:
            served = self.pods.pop(key, None)
            if served is None:
                return
            for s, _ in served.sockets:
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(s)
                s.close()
            for where, port in served.raw:
                r = self.raw[where]
                r.ports.pop(port, None)
                if not r.ports:
                    del self.raw[where]
                    with contextlib.suppress(KeyError, ValueError):
                        self.sel.unregister(r.sock)
                    r.close()
        self._wake()

    def close(self) -> None:
        self._stop = True
        self._wake()
        for key in list(self.pods):
            self.remove(key)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _loop(self) -> None:
        while not self._stop:
            for key, _ in self.sel.select(timeout=1.0):
                if key.data is None:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                    continue
                proto, answer = key.data
                if proto == "SCTP-RAW":
                    with contextlib.suppress(OSError):
                        answer.handle()
                    continue
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    if proto == "UDP":
                        _, addr = s.recvfrom(2048)
                        s.sendto(answer, addr)
                    else:
                        c, _ = s.accept()
                        try:
                            c.setblocking(True)
                            c.settimeout(1.0)
                            c.sendall(answer)
                            with contextlib.suppress(OSError):
                                c.shutdown(socket.SHUT_WR)
                        finally:
                            c.close()
                except OSError:
                    continue  # closed meanwhile, or a client gone: nothing to do
