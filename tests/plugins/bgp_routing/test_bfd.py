"""BFD's pure parts: the control packet codec, the session state machine on an injected clock, and the
``bfd`` settings of the ``kube-router.io/peers`` annotation."""

from __future__ import annotations

import pytest

from kr_plugins.bgp_routing.bfd import (
    LENGTH,
    SLOW_TX_US,
    BfdError,
    Diag,
    Packet,
    Params,
    Session,
    State,
)
from kr_plugins.bgp_routing.peers import BfdConfig, bfd_problem, peers_from_yaml


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


DEFAULT = Params(3, 300_000, 200_000)


def session(params: Params = DEFAULT, disc: int = 0x11) -> tuple[Session, Clock]:
    clock = Clock()
    return Session(params, disc, clock=clock, rand=lambda: 0.999999), clock


def peer_pkt(state: State, your: int = 0x11, *, mult: int = 4, tx: int = 250_000, rx: int = 100_000,
             poll: bool = False, final: bool = False) -> Packet:
    return Packet(state=state, my_disc=0x22, your_disc=your, detect_mult=mult, desired_min_tx=tx, required_min_rx=rx,
                  poll=poll, final=final)


def up(s: Session) -> None:
    s.receive(peer_pkt(State.DOWN, your=0))
    s.receive(peer_pkt(State.UP))
    assert s.state == State.UP


# ------------------------------------------------------------------------------------------ codec
class TestPacket:
    def test_wire_format(self) -> None:
        p = Packet(state=State.UP, my_disc=1, your_disc=2, diag=Diag.NEIGHBOR_DOWN, detect_mult=3,
                   desired_min_tx=100_000, required_min_rx=200_000, poll=True)
        raw = p.encode()
        # version 1 | diag 3; state Up (3) << 6 | P; mult; length 24; discriminators; intervals in us
        assert raw.hex() == "23e00318" "00000001" "00000002" "000186a0" "00030d40" "00000000"
        assert Packet.decode(raw) == p
        assert Packet.decode(raw + b"trailing") == p  # a UDP payload longer than Length is fine

    def test_flags_round_trip(self) -> None:
        p = Packet(state=State.ADMIN_DOWN, my_disc=0xFFFFFFFF, final=True, cpi=True, demand=True, diag=Diag.ADMIN_DOWN)
        assert Packet.decode(p.encode()) == p

    @pytest.mark.parametrize(("mutate", "why"), [
        (lambda b: b[:23], "short"),
        (lambda b: bytes([0x40 | (b[0] & 31)]) + b[1:], "version"),
        (lambda b: b[:3] + bytes([30]) + b[4:], "length"),
        (lambda b: b[:3] + bytes([20]) + b[4:], "length"),
        (lambda b: b[:2] + b"\x00" + b[3:], "multiplier"),
        (lambda b: b[:1] + bytes([b[1] | 0x01]) + b[2:], "multipoint"),
        (lambda b: b[:1] + bytes([b[1] | 0x04]) + b[2:3] + bytes([26]) + b[4:] + b"\x00\x00", "authentication"),
        (lambda b: b[:4] + b"\x00\x00\x00\x00" + b[8:], "my discriminator"),
        (lambda b: b[:1] + bytes([b[1] | 0x30]) + b[2:], "poll and final"),
    ])
    def test_discarded(self, mutate, why: str) -> None:  # type: ignore[no-untyped-def]
        raw = Packet(state=State.DOWN, my_disc=7).encode()
        assert len(raw) == LENGTH
        with pytest.raises(BfdError, match=why):
            Packet.decode(mutate(raw))

    def test_unknown_diag_is_kept_as_none(self) -> None:
        raw = bytearray(Packet(state=State.DOWN, my_disc=7).encode())
        raw[0] = 0x20 | 31
        assert Packet.decode(bytes(raw)).diag == Diag.NONE


# ------------------------------------------------------------------------------------------ state machine
class TestSession:
    def test_three_way_handshake_from_down(self) -> None:
        s, _ = session()
        first = Packet.decode(s.transmit() or b"")
        assert (first.state, first.your_disc, first.my_disc) == (State.DOWN, 0, 0x11)
        assert first.desired_min_tx == SLOW_TX_US  # at least 1 s while not Up
        ch = s.receive(peer_pkt(State.DOWN, your=0))
        assert ch is not None and (ch.old, ch.new) == (State.DOWN, State.INIT)
        assert s.remote_disc == 0x22
        reply = Packet.decode(s.transmit() or b"")  # the change goes out at once
        assert (reply.state, reply.your_disc) == (State.INIT, 0x22)
        ch = s.receive(peer_pkt(State.UP))
        assert ch is not None and (ch.old, ch.new, ch.diag) == (State.INIT, State.UP, Diag.NONE)

    def test_down_to_up_on_init(self) -> None:
        s, _ = session()
        ch = s.receive(peer_pkt(State.INIT))
        assert ch is not None and ch.new == State.UP

    def test_up_peer_not_accepted_from_down(self) -> None:
        s, _ = session()
        assert s.receive(peer_pkt(State.UP)) is None and s.state == State.DOWN

    def test_negotiated_intervals_and_detection_time(self) -> None:
        s, _ = session(Params(3, 300_000, 200_000))
        up(s)
        # we send every max(our desired tx 300 ms, their required rx 100 ms)
        assert s.tx_interval == 300_000
        # we detect after their multiplier (4) x max(our required rx 200 ms, their desired tx 250 ms)
        assert s.detection_time == 4 * 250_000
        s.receive(peer_pkt(State.UP, rx=500_000, tx=100_000, mult=2))
        assert s.tx_interval == 500_000 and s.detection_time == 2 * 200_000

    def test_slow_tx_until_up_then_poll(self) -> None:
        s, clock = session(Params(3, 300_000, 200_000))
        s.receive(peer_pkt(State.DOWN, your=0))
        assert s.tx_interval == SLOW_TX_US
        s.receive(peer_pkt(State.UP))
        assert s.tx_interval == 300_000  # a decrease applies at once
        pkt = Packet.decode(s.transmit() or b"")
        assert pkt.poll and pkt.desired_min_tx == 300_000 and pkt.state == State.UP
        clock.t += 0.3
        s.receive(peer_pkt(State.UP, final=True))
        clock.t += 0.3
        assert not Packet.decode(s.transmit() or b"").poll

    def test_final_answers_a_poll_at_once(self) -> None:
        s, clock = session()
        up(s)
        s.transmit()
        assert s.transmit() is None  # not due yet
        s.receive(peer_pkt(State.UP, poll=True))
        pkt = Packet.decode(s.transmit() or b"")
        assert pkt.final and not pkt.poll

    def test_transmit_schedule_with_jitter(self) -> None:
        s, clock = session(Params(3, 300_000, 200_000))
        s.rand = lambda: 0.0  # the shortest jitter: 75 %
        up(s)
        assert s.transmit() is not None
        clock.t += 0.224
        assert s.transmit() is None
        clock.t += 0.002
        assert s.transmit() is not None

    def test_jitter_at_most_90_percent_with_multiplier_1(self) -> None:
        s, clock = session(Params(1, 300_000, 200_000))
        up(s)
        s.transmit()
        clock.t += 0.2701
        assert s.transmit() is not None

    def test_detection_expiry(self) -> None:
        s, clock = session()
        up(s)
        clock.t += 0.999
        assert s.expire() is None
        clock.t += 0.002
        ch = s.expire()
        assert ch is not None and (ch.old, ch.new, ch.diag) == (State.UP, State.DOWN, Diag.DETECTION_EXPIRED)
        assert s.remote_disc == 0 and s.tx_interval == SLOW_TX_US
        pkt = Packet.decode(s.transmit() or b"")
        assert (pkt.state, pkt.your_disc, pkt.diag) == (State.DOWN, 0, Diag.DETECTION_EXPIRED)
        assert s.expire() is None  # once

    def test_packets_keep_it_up(self) -> None:
        s, clock = session()
        up(s)
        for _ in range(20):
            clock.t += 0.9
            s.receive(peer_pkt(State.UP))
            assert s.expire() is None
        assert s.state == State.UP

    def test_next_event(self) -> None:
        s, clock = session()
        up(s)
        s.transmit()
        assert s.next_event() == pytest.approx(clock.t + 0.3, abs=1e-3)  # the next packet, before the detection

    def test_neighbor_down(self) -> None:
        s, _ = session()
        up(s)
        ch = s.receive(peer_pkt(State.DOWN))
        assert ch is not None and (ch.new, ch.diag) == (State.DOWN, Diag.NEIGHBOR_DOWN)

    def test_slow_again_after_neighbor_down(self) -> None:
        s, clock = session()
        up(s)
        s.receive(peer_pkt(State.UP, final=True))
        s.receive(peer_pkt(State.DOWN))
        assert s.tx_interval == 300_000  # the increase to 1 s waits for the peer's Final...
        pkt = Packet.decode(s.transmit() or b"")
        assert pkt.poll and pkt.desired_min_tx == SLOW_TX_US
        clock.t += 2
        s.expire()  # ...or for the peer to be gone
        assert s.tx_interval == SLOW_TX_US and not s.polling

    def test_peer_admin_down(self) -> None:
        s, _ = session()
        up(s)
        ch = s.receive(peer_pkt(State.ADMIN_DOWN))
        assert ch is not None and ch.new == State.DOWN and ch.remote_state == State.ADMIN_DOWN

    def test_discriminator_checks(self) -> None:
        s, _ = session()
        with pytest.raises(BfdError, match="not ours"):
            s.receive(peer_pkt(State.DOWN, your=0x99))
        with pytest.raises(BfdError, match="discriminator 0"):
            s.receive(peer_pkt(State.INIT, your=0))
        assert s.state == State.DOWN and s.remote_disc == 0

    def test_admin_down(self) -> None:
        s, _ = session()
        up(s)
        pkt = Packet.decode(s.admin_down())
        assert (pkt.state, pkt.diag) == (State.ADMIN_DOWN, Diag.ADMIN_DOWN)
        assert s.receive(peer_pkt(State.DOWN)) is None and s.state == State.ADMIN_DOWN

    def test_remote_min_rx_zero_stops_transmission(self) -> None:
        s, clock = session()
        up(s)
        s.transmit()
        s.receive(peer_pkt(State.UP, rx=0))
        clock.t += 5
        assert s.transmit() is None

    def test_update_polls(self) -> None:
        s, clock = session(Params(3, 300_000, 200_000))
        up(s)
        s.receive(peer_pkt(State.UP, final=True))
        s.update(Params(3, 600_000, 200_000))
        assert s.tx_interval == 300_000  # an increase waits for the peer's Final
        assert Packet.decode(s.transmit() or b"").desired_min_tx == 600_000
        s.receive(peer_pkt(State.UP, final=True))
        assert s.tx_interval == 600_000

    @pytest.mark.parametrize("params", [Params(0, 1, 1), Params(256, 1, 1), Params(3, 0, 1), Params(3, 1, 0)])
    def test_invalid_params(self, params: Params) -> None:
        with pytest.raises(ValueError):
            Session(params, 1)

    def test_invalid_discriminator(self) -> None:
        with pytest.raises(ValueError):
            Session(Params(), 0)


# ------------------------------------------------------------------------------------------ annotation
class TestBfdAnnotation:
    def test_full(self) -> None:
        peers, problems = peers_from_yaml("""
- remoteip: 10.0.0.1
  remoteasn: 65001
  bfd: {enabled: true, port: 4784, detection_multiplier: 5, required_min_rx_interval: 300,
        desired_min_tx_interval: "200"}
""")
        assert problems == []
        assert peers[0].bfd == BfdConfig(True, 4784, 5, 300, 200)

    @pytest.mark.parametrize(("bfd", "why"), [
        ("{enabled: true, detection_multiplier: 0}", "multiplier 0"),
        ("{enabled: true, detection_multiplier: 256}", "multiplier 256"),
        ("{enabled: true, port: 70000}", "port 70000"),
        ("{enabled: true, required_min_rx_interval: 0}", "required min RX"),
        ("{enabled: true, desired_min_tx_interval: -5}", "desired min TX"),
        ("{enabled: true, desired_min_tx_interval: fast}", "not a number"),
        ("{enabled: maybe}", "true or false"),
        ("{enabled: true, detect_mult: 3}", "unknown key"),
        ("[1, 2]", "mapping"),
    ])
    def test_invalid_bfd_keeps_the_peer_without_bfd(self, bfd: str, why: str) -> None:
        peers, problems = peers_from_yaml(f"- {{remoteip: 10.0.0.1, remoteasn: 65001, bfd: {bfd}}}\n"
                                          "- {remoteip: 10.0.0.2, remoteasn: 65002, bfd: {enabled: true}}")
        assert [p.address for p in peers] == ["10.0.0.1", "10.0.0.2"]
        assert peers[0].bfd == BfdConfig() and not peers[0].bfd.enabled
        assert peers[1].bfd.enabled
        assert len(problems) == 1 and why in problems[0] and "10.0.0.1" in problems[0]
        assert "without BFD" in problems[0]

    def test_bfd_problem(self) -> None:
        assert bfd_problem(BfdConfig(True)) is None
        assert "multiplier" in (bfd_problem(BfdConfig(True, detection_multiplier=0)) or "")
