"""The BFD speaker's I/O: UDP sockets and one thread running the :class:`.bfd.Session` state machines.

Single hop (RFC 5881): control packets go to the peer's BFD port (3784) from a per-session source port in
49152-65535 with TTL (hop limit) 255, and are accepted only with TTL 255. One listening socket per
(address family, port) receives for every session; packets are matched to a session by our discriminator,
or by the sender's address while the peer does not know it yet.

State changes are handed to ``on_change(peer, change)`` from a separate notifier thread, so a slow
callback (a gRPC call to gobgpd) never delays packets or timers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import random
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kr_core.net import netns as kr_netns

from .bfd import SOURCE_PORTS, TTL, BfdError, Change, Packet, Params, Session

log = logging.getLogger("kr.bgp_routing.bfd")

# Linux socket options Python's socket module may not name
_IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)
_IP_TTL_CMSG = getattr(socket, "IP_TTL", 2)
_IPV6_RECVHOPLIMIT = getattr(socket, "IPV6_RECVHOPLIMIT", 51)
_IPV6_HOPLIMIT = getattr(socket, "IPV6_HOPLIMIT", 52)


@dataclass(frozen=True)
class SessionSpec:
    """A wanted session: the peer, our address towards it, the peer's BFD port and our parameters."""

    peer: str
    local: str
    port: int
    params: Params

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.peer else socket.AF_INET


@dataclass
class _Live:
    spec: SessionSpec
    session: Session
    sock: socket.socket | None = None
    error: str = ""
    sent: int = 0
    received: int = 0
    discarded: int = 0


class BfdDaemon:
    """All BFD sessions of one agent, in the agent's (or ``netns``'s) network namespace."""

    def __init__(self, on_change: Callable[[str, Change], None], *, netns: str | None = None) -> None:
        self.on_change = on_change
        self.netns = netns
        self._lock = threading.Lock()
        self._want: dict[str, SessionSpec] = {}
        self._live: dict[str, _Live] = {}
        self._listeners: dict[tuple[int, int], socket.socket] = {}
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._stop = threading.Event()
        self._events: queue.Queue[tuple[str, Change] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._notifier: threading.Thread | None = None
        self._discs: set[int] = set()
        self._rand = random.SystemRandom()
        self._logged: set[str] = set()

    # ------------------------------------------------------------------------------------------ control
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kr-bfd", daemon=True)
        self._notifier = threading.Thread(target=self._notify, name="kr-bfd-notify", daemon=True)
        self._thread.start()
        self._notifier.start()

    def stop(self) -> None:
        """Send AdminDown on every session (the peer keeps its BGP session, RFC 5882 3.2), close everything.
        Idempotent."""
        if self._stop.is_set():
            return
        self.configure({})
        self._wake()
        deadline = time.monotonic() + 2
        while self._live and time.monotonic() < deadline and self._thread and self._thread.is_alive():
            time.sleep(0.01)
        self._stop.set()
        self._wake()
        if self._thread:
            self._thread.join(5)
        self._events.put(None)
        if self._notifier:
            self._notifier.join(5)
        for s in self._listeners.values():
            s.close()
        self._listeners.clear()
        self._sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def configure(self, want: dict[str, SessionSpec]) -> None:
        """The sessions wanted now (by peer address); the loop adds, updates and removes sessions."""
        with self._lock:
            self._want = dict(want)
        self._wake()

    def snapshot(self) -> list[dict[str, Any]]:
        """One dict per session, for ``kr state``."""
        with self._lock:
            live = list(self._live.values())
        out = []
        for lv in live:
            s = lv.session
            out.append({
                "peer": lv.spec.peer, "local": lv.spec.local, "port": lv.spec.port, "state": s.state.name,
                "remote_state": s.remote_state.name, "diag": s.diag.name, "local_disc": s.local_disc,
                "remote_disc": s.remote_disc, "tx_interval_ms": s.tx_interval / 1000,
                "detection_time_ms": s.detection_time / 1000, "detect_mult": lv.spec.params.detect_mult,
                "sent": lv.sent, "received": lv.received, "discarded": lv.discarded, "error": lv.error,
            })
        return sorted(out, key=lambda d: d["peer"])

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _notify(self) -> None:
        while True:
            item = self._events.get()
            if item is None:
                return
            try:
                self.on_change(*item)
            except Exception:  # the callback's problem; keep notifying
                log.exception("BFD state change handler failed for peer %s", item[0])

    # ------------------------------------------------------------------------------------------ loop
    def _run(self) -> None:
        try:
            with kr_netns.in_netns(self.netns):
                while not self._stop.is_set():
                    self._reconcile()
                    timeout = self._service()
                    for key, _ in self._sel.select(timeout):
                        if key.data is None:
                            with contextlib.suppress(BlockingIOError):
                                os.read(self._wake_r, 4096)
                        else:
                            self._read(key.fileobj)  # type: ignore[arg-type]
        except Exception:
            log.exception("BFD speaker stopped")

    def _service(self) -> float:
        """Run timers and transmissions; returns the select timeout until the next one."""
        now = time.monotonic()
        nxt = now + 1.0
        for lv in list(self._live.values()):
            ch = lv.session.expire()
            if ch is not None:
                self._changed(lv, ch)
            self._send(lv)
            nxt = min(nxt, lv.session.next_event())
        return max(0.0, nxt - time.monotonic())

    def _changed(self, lv: _Live, ch: Change) -> None:
        self._events.put((lv.spec.peer, ch))

    def _send(self, lv: _Live) -> None:
        data = lv.session.transmit()
        if data is None:
            return
        if lv.sock is None:
            self._open(lv)
            if lv.sock is None:
                return
        try:
            lv.sock.sendto(data, (lv.spec.peer, lv.spec.port))
            lv.sent += 1
            lv.error = ""
        except OSError as e:
            self._note(lv, f"send to {lv.spec.peer}:{lv.spec.port}: {e.strerror}")

    def _note(self, lv: _Live, error: str) -> None:
        lv.error = error
        if error not in self._logged:
            self._logged.add(error)
            log.warning("BFD session with peer %s: %s", lv.spec.peer, error)

    # ------------------------------------------------------------------------------------------ sockets
    def _listener(self, family: int, port: int) -> socket.socket | None:
        key = (family, port)
        if key in self._listeners:
            return self._listeners[key]
        s = socket.socket(family, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET:
                s.setsockopt(socket.IPPROTO_IP, _IP_RECVTTL, 1)
                s.bind(("0.0.0.0", port))
            else:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVHOPLIMIT, 1)
                s.bind(("::", port))
        except OSError as e:
            s.close()
            msg = f"cannot listen on BFD port {port}: {e.strerror}"
            if msg not in self._logged:
                self._logged.add(msg)
                log.warning("%s", msg)
            return None
        s.setblocking(False)
        self._sel.register(s, selectors.EVENT_READ, key)
        self._listeners[key] = s
        return s

    def _open(self, lv: _Live) -> None:
        """The session's sending socket: our address, a free source port in 49152-65535, TTL 255."""
        fam = lv.spec.family
        for _ in range(64):
            s = socket.socket(fam, socket.SOCK_DGRAM)
            try:
                if fam == socket.AF_INET:
                    s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, TTL)
                else:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, TTL)
                s.bind((lv.spec.local, self._rand.randint(*SOURCE_PORTS)))
            except OSError as e:
                s.close()
                if e.errno == 98:  # EADDRINUSE: another port
                    continue
                self._note(lv, f"cannot bind {lv.spec.local}: {e.strerror}")
                return
            s.setblocking(False)
            lv.sock = s
            return
        self._note(lv, "no free source port in 49152-65535")

    def _read(self, s: socket.socket) -> None:
        for _ in range(64):
            try:
                data, anc, _flags, addr = s.recvmsg(512, socket.CMSG_SPACE(4))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.debug("BFD receive: %s", e)
                return
            ttl = None
            for level, typ, value in anc:
                if (level, typ) in ((socket.IPPROTO_IP, _IP_TTL_CMSG), (socket.IPPROTO_IPV6, _IPV6_HOPLIMIT)) \
                        and len(value) >= 4:
                    ttl = struct.unpack("i", value[:4])[0]
            self._input(data, addr[0].split("%")[0], ttl)

    def _input(self, data: bytes, src: str, ttl: int | None) -> None:
        try:
            pkt = Packet.decode(data)
        except BfdError as e:
            log.debug("BFD packet from %s discarded: %s", src, e)
            return
        lv = None
        if pkt.your_disc:
            lv = next((x for x in self._live.values() if x.session.local_disc == pkt.your_disc), None)
        else:
            lv = self._live.get(src)
        if lv is None or lv.spec.peer != src:
            log.debug("BFD packet from %s matches no session", src)
            return
        if ttl is not None and ttl != TTL:  # RFC 5881 5: single hop only
            lv.discarded += 1
            log.debug("BFD packet from %s discarded: TTL %s", src, ttl)
            return
        try:
            ch = lv.session.receive(pkt)
        except BfdError as e:
            lv.discarded += 1
            log.debug("BFD packet from %s discarded: %s", src, e)
            return
        lv.received += 1
        if ch is not None:
            self._changed(lv, ch)
        self._send(lv)  # a state change or a Final goes out at once

    # ------------------------------------------------------------------------------------------ sessions
    def _new_disc(self) -> int:
        while True:
            d = self._rand.randint(1, (1 << 32) - 1)
            if d not in self._discs:
                self._discs.add(d)
                return d

    def _reconcile(self) -> None:
        with self._lock:
            want = dict(self._want)
        for peer in [p for p in self._live if p not in want or (want[p].local, want[p].port)
                     != (self._live[p].spec.local, self._live[p].spec.port)]:
            lv = self._live[peer]
            data = lv.session.admin_down()
            if lv.sock is not None:
                with contextlib.suppress(OSError):
                    lv.sock.sendto(data, (lv.spec.peer, lv.spec.port))
                lv.sock.close()
            self._discs.discard(lv.session.local_disc)
            with self._lock:
                del self._live[peer]
            log.info("BFD session with peer %s removed", peer)
        for peer, spec in want.items():
            lv = self._live.get(peer)
            if lv is not None:
                if lv.spec.params != spec.params:
                    lv.session.update(spec.params)
                    lv.spec = spec
                    log.info("BFD session with peer %s: parameters changed to %s", peer, spec.params)
                continue
            if self._listener(spec.family, spec.port) is None:
                continue
            lv = _Live(spec, Session(spec.params, self._new_disc(), rand=self._rand.random))
            with self._lock:
                self._live[peer] = lv
            log.info("BFD session with peer %s added (from %s, port %d, multiplier %d, tx %d ms, rx %d ms)",
                     peer, spec.local, spec.port, spec.params.detect_mult, spec.params.desired_min_tx // 1000,
                     spec.params.required_min_rx // 1000)
