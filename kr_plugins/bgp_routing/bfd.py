"""BFD (RFC 5880) in asynchronous mode for single-hop sessions (RFC 5881): the pure parts.

GoBGP v3 (the gobgpd kr drives) has no BFD, so kr speaks BFD itself, one session per external BGP peer with
BFD enabled; :mod:`.bfdd` does the sockets. This module has no I/O: the control packet codec and the session
state machine, which reads the time from an injected clock (and its jitter from an injected random source),
so every timer can be tested without sleeping.

Supported: AdminDown/Down/Init/Up with the three-way handshake, the negotiated transmit interval (the larger
of our desired minimum TX and the peer's required minimum RX), the detection time (the peer's multiplier
times the larger of our required minimum RX and the peer's desired minimum TX), jitter (75-100%, at most
90% with a multiplier of 1), Poll/Final sequences for interval changes, the 1 s minimum transmit interval
while the session is not Up. Not supported: demand mode, the echo function, authentication (packets with
the A bit are discarded, RFC 5880 6.8.6).
"""

from __future__ import annotations

import enum
import random
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

VERSION = 1
PORT = 3784  # RFC 5881 single-hop control packets
SOURCE_PORTS = (49152, 65535)  # RFC 5881 4: the source port range
TTL = 255  # RFC 5881 5: sent with TTL 255, accepted only with TTL 255 (GTSM)
SLOW_TX_US = 1_000_000  # RFC 5880 6.8.3: desired min TX while the session is not Up
_HEADER = struct.Struct("!BBBBIIIII")
LENGTH = _HEADER.size  # 24 bytes without authentication


class State(enum.IntEnum):
    ADMIN_DOWN = 0
    DOWN = 1
    INIT = 2
    UP = 3


class Diag(enum.IntEnum):
    NONE = 0
    DETECTION_EXPIRED = 1
    ECHO_FAILED = 2
    NEIGHBOR_DOWN = 3
    FORWARDING_RESET = 4
    PATH_DOWN = 5
    CONCATENATED_PATH_DOWN = 6
    ADMIN_DOWN = 7
    REVERSE_CONCATENATED_PATH_DOWN = 8


class BfdError(ValueError):
    """A control packet that must be discarded; the message says why."""


@dataclass(frozen=True)
class Packet:
    """One BFD control packet (RFC 5880 4.1); intervals in microseconds."""

    state: State
    my_disc: int
    your_disc: int = 0
    diag: Diag = Diag.NONE
    detect_mult: int = 3
    desired_min_tx: int = SLOW_TX_US
    required_min_rx: int = SLOW_TX_US
    required_min_echo_rx: int = 0
    poll: bool = False
    final: bool = False
    cpi: bool = False  # control plane independent
    auth: bool = False
    demand: bool = False
    multipoint: bool = False
    version: int = VERSION

    def encode(self) -> bytes:
        flags = ((self.state & 3) << 6 | self.poll << 5 | self.final << 4 | self.cpi << 3 | self.auth << 2
                 | self.demand << 1 | self.multipoint)
        return _HEADER.pack((self.version & 7) << 5 | (self.diag & 31), flags, self.detect_mult, LENGTH,
                            self.my_disc, self.your_disc, self.desired_min_tx, self.required_min_rx,
                            self.required_min_echo_rx)

    @classmethod
    def decode(cls, data: bytes) -> Packet:
        """Parse and apply the stateless reception checks of RFC 5880 6.8.6; raises :class:`BfdError`."""
        if len(data) < LENGTH:
            raise BfdError(f"short packet ({len(data)} bytes)")
        vd, flags, mult, length, my, your, tx, rx, echo = _HEADER.unpack_from(data)
        version = vd >> 5
        if version != VERSION:
            raise BfdError(f"version {version}")
        auth = bool(flags & 0x04)
        if length < (LENGTH + 2 if auth else LENGTH) or length > len(data):
            raise BfdError(f"bad length {length} (payload {len(data)})")
        if auth:
            raise BfdError("authentication is not supported")
        if mult == 0:
            raise BfdError("detect multiplier 0")
        if flags & 0x01:
            raise BfdError("multipoint bit set")
        if my == 0:
            raise BfdError("my discriminator 0")
        poll, final = bool(flags & 0x20), bool(flags & 0x10)
        if poll and final:
            raise BfdError("both poll and final set")
        diag = vd & 31
        return cls(state=State(flags >> 6), my_disc=my, your_disc=your,
                   diag=Diag(diag) if diag in Diag._value2member_map_ else Diag.NONE,
                   detect_mult=mult, desired_min_tx=tx, required_min_rx=rx, required_min_echo_rx=echo,
                   poll=poll, final=final, cpi=bool(flags & 0x08), auth=auth, demand=bool(flags & 0x02),
                   multipoint=False, version=version)


@dataclass(frozen=True)
class Params:
    """Our side of a session: intervals in microseconds."""

    detect_mult: int = 3
    desired_min_tx: int = 1_000_000
    required_min_rx: int = 1_000_000

    @classmethod
    def from_ms(cls, detect_mult: int, desired_min_tx_ms: int, required_min_rx_ms: int) -> Params:
        """The flags and the annotation give milliseconds (kube-router converts them to microseconds too)."""
        return cls(detect_mult, desired_min_tx_ms * 1000, required_min_rx_ms * 1000)


@dataclass(frozen=True)
class Change:
    """A state transition of a session."""

    old: State
    new: State
    diag: Diag
    remote_state: State  # the peer's state as last received (ADMIN_DOWN: the peer turned BFD off)


class Session:
    """One BFD session in asynchronous mode (active role).

    Feed it received packets (:meth:`receive`), ask it for the packet to send when :meth:`next_event` comes
    (:meth:`transmit`), and call :meth:`expire` to run the detection timer. ``clock`` returns seconds
    (monotonic); ``rand`` returns a float in [0, 1) for the transmit jitter.
    """

    def __init__(self, params: Params, local_disc: int, *, clock: Callable[[], float] = time.monotonic,
                 rand: Callable[[], float] = random.random) -> None:
        if not 0 < local_disc < 1 << 32:
            raise ValueError("the local discriminator must be a nonzero 32-bit number")
        if not 1 <= params.detect_mult <= 255 or params.desired_min_tx <= 0 or params.required_min_rx <= 0:
            raise ValueError(f"invalid BFD parameters {params}")
        self.params = params
        self.clock = clock
        self.rand = rand
        self.state = State.DOWN
        self.remote_state = State.DOWN
        self.local_disc = local_disc
        self.remote_disc = 0
        self.diag = Diag.NONE
        self.remote_min_rx = 1  # RFC 5880 6.8.1: initialised to 1 (us)
        self.remote_desired_tx = 0
        self.remote_mult = 0
        self.polling = False  # a Poll Sequence of ours is in progress (we set P until the peer answers with F)
        self.owe_final = False  # the peer polled: answer with F at once
        self._tx_in_use = self.advertised_tx  # the interval our timing uses (may lag the advertised one, 6.8.3)
        now = clock()
        self._next_tx = now  # send the first packet at once
        self._detect_deadline: float | None = None
        self.last_rx: float | None = None
        self.transitions = 0

    # ------------------------------------------------------------------------------------------ intervals
    @property
    def advertised_tx(self) -> int:
        """bfd.DesiredMinTxInterval as sent: at least 1 s while not Up (RFC 5880 6.8.3)."""
        return self.params.desired_min_tx if self.state == State.UP else max(self.params.desired_min_tx, SLOW_TX_US)

    @property
    def tx_interval(self) -> int:
        """The negotiated transmit interval (us): our desired min TX vs the peer's required min RX."""
        return max(self._tx_in_use, self.remote_min_rx)

    @property
    def detection_time(self) -> int:
        """The detection time (us): the peer's multiplier times the larger of our required min RX and the
        peer's desired min TX (0 before anything was received)."""
        return self.remote_mult * max(self.params.required_min_rx, self.remote_desired_tx)

    def _set_state(self, new: State, diag: Diag) -> Change | None:
        if new == self.state:
            return None
        old, before = self.state, self.advertised_tx
        self.state = new
        self.diag = diag
        self.transitions += 1
        after = self.advertised_tx
        if after != before:
            self._interval_changed(before, after)
        return Change(old, new, diag, self.remote_state)

    def _interval_changed(self, before: int, after: int) -> None:
        """Our advertised interval changed: a Poll Sequence (only meaningful once the peer knows us); an
        increase takes effect when it ends, a decrease at once (RFC 5880 6.8.3)."""
        if self.state == State.UP or self.remote_disc:
            self.polling = True
        if after < before or not self.polling:
            self._tx_in_use = after
            self._next_tx = min(self._next_tx, self.clock())

    def update(self, params: Params) -> None:
        """New local parameters (configuration changed): applied through a Poll Sequence."""
        if params == self.params:
            return
        if not 1 <= params.detect_mult <= 255 or params.desired_min_tx <= 0 or params.required_min_rx <= 0:
            raise ValueError(f"invalid BFD parameters {params}")
        before = self.advertised_tx
        self.params = params
        self.polling = bool(self.remote_disc)
        self._interval_changed(before, self.advertised_tx)
        self._next_tx = min(self._next_tx, self.clock())

    # ------------------------------------------------------------------------------------------ reception
    def receive(self, pkt: Packet) -> Change | None:
        """A decoded packet from the peer (RFC 5880 6.8.6, after the stateless checks of :meth:`Packet.decode`).
        Raises :class:`BfdError` if it must be discarded; returns the state change it caused, if any."""
        if pkt.your_disc and pkt.your_disc != self.local_disc:
            raise BfdError(f"your discriminator {pkt.your_disc} is not ours ({self.local_disc})")
        if pkt.your_disc == 0 and pkt.state not in (State.DOWN, State.ADMIN_DOWN):
            raise BfdError(f"your discriminator 0 in state {pkt.state.name}")
        now = self.clock()
        self.remote_disc = pkt.my_disc
        self.remote_state = pkt.state
        self.remote_min_rx = pkt.required_min_rx
        self.remote_desired_tx = pkt.desired_min_tx
        self.remote_mult = pkt.detect_mult
        self.last_rx = now
        if pkt.final and self.polling:
            self.polling = False
            self._tx_in_use = self.advertised_tx
        if pkt.poll:
            self.owe_final = True
        self._detect_deadline = now + self.detection_time / 1e6
        if self.state == State.ADMIN_DOWN:
            return None
        change: Change | None = None
        if pkt.state == State.ADMIN_DOWN:
            if self.state != State.DOWN:
                change = self._set_state(State.DOWN, Diag.NEIGHBOR_DOWN)
        elif self.state == State.DOWN:
            if pkt.state == State.DOWN:
                change = self._set_state(State.INIT, Diag.NONE)
            elif pkt.state == State.INIT:
                change = self._set_state(State.UP, Diag.NONE)
        elif self.state == State.INIT:
            if pkt.state in (State.INIT, State.UP):
                change = self._set_state(State.UP, Diag.NONE)
        elif pkt.state == State.DOWN:  # Up
            change = self._set_state(State.DOWN, Diag.NEIGHBOR_DOWN)
        if change is not None or self.owe_final:
            self._next_tx = min(self._next_tx, now)  # tell the peer at once
        return change

    def expire(self) -> Change | None:
        """Run the detection timer: nothing valid received for a detection time brings Init/Up down."""
        if self._detect_deadline is None or self.clock() < self._detect_deadline:
            return None
        self._detect_deadline = None
        self.remote_disc = 0
        self.remote_state = State.DOWN
        self.remote_min_rx = 1
        self.polling = False  # nobody answers a Poll now: what we advertise applies
        self._tx_in_use = self.advertised_tx
        if self.state in (State.INIT, State.UP):
            return self._set_state(State.DOWN, Diag.DETECTION_EXPIRED)
        return None

    # ------------------------------------------------------------------------------------------ transmission
    def packet(self) -> Packet:
        """The control packet describing our current state."""
        return Packet(state=self.state, my_disc=self.local_disc, your_disc=self.remote_disc, diag=self.diag,
                      detect_mult=self.params.detect_mult, desired_min_tx=self.advertised_tx,
                      required_min_rx=self.params.required_min_rx, poll=self.polling and not self.owe_final,
                      final=self.owe_final)

    def transmit(self) -> bytes | None:
        """The packet to send now, if one is due (periodic, a state change, or a Final owed); schedules the next."""
        now = self.clock()
        if now < self._next_tx and not self.owe_final:
            return None
        if self.remote_min_rx == 0:  # the peer asked us not to send (RFC 5880 6.8.7)
            self._next_tx = now + self.tx_interval / 1e6
            return None
        pkt = self.packet()
        self.owe_final = False
        if now >= self._next_tx:
            jitter = 0.75 + self.rand() * (0.15 if self.params.detect_mult == 1 else 0.25)
            self._next_tx = now + self.tx_interval / 1e6 * jitter
        return pkt.encode()

    def admin_down(self) -> bytes:
        """Take the session administratively down (it is being removed); the packet that tells the peer."""
        self._set_state(State.ADMIN_DOWN, Diag.ADMIN_DOWN)
        self._detect_deadline = None
        return self.packet().encode()

    def next_event(self) -> float:
        """When :meth:`transmit` or :meth:`expire` next has something to do (clock seconds)."""
        t = self._next_tx
        if self._detect_deadline is not None:
            t = min(t, self._detect_deadline)
        return t
