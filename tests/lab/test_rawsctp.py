"""SCTP on a kernel without SCTP (:mod:`kr_core.lab.rawsctp`): raw INIT/INIT-ACK exchanges, not associations.

The packet code against known CRC32c vectors (RFC 3720 B.4, the check value), then real packets: a client
and a server namespace behind a router namespace whose nftables forward chain drops everything but
``ct state established`` and a few ``sctp dport``s, so an exchange only completes when netfilter matched
the INIT by port and conntrack's SCTP tracker (which checks the CRC32c and the verification tags) took the
INIT-ACK as its reply.
"""

from __future__ import annotations

import concurrent.futures
import errno
import os
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator

import pytest

from kr_core.lab import rawsctp
from kr_core.lab.responder import Responders
from kr_core.net import netns


def test_crc32c_known_vectors():
    assert rawsctp.crc32c(b"123456789") == 0xE3069283
    assert rawsctp.crc32c(bytes(32)) == 0x8A9136AA
    assert rawsctp.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert rawsctp.crc32c(bytes(range(32))) == 0x46DD794E
    assert rawsctp.crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C


def test_init_layout_and_checksum_byte_order():
    pkt = rawsctp.init(40000, 80, 0x01020304, 7)
    assert len(pkt) == 12 + 4 + 16
    assert struct.unpack("!HHI", pkt[:8]) == (40000, 80, 0)  # an INIT carries verification tag 0
    assert pkt[12:16] == bytes([1, 0, 0, 20])  # chunk type INIT, flags 0, length 20
    assert pkt[8:12] == struct.pack("<I", rawsctp.crc32c(pkt[:8] + bytes(4) + pkt[12:]))
    got = rawsctp.parse(pkt)
    assert got is not None and got.checksum_ok and got.first == rawsctp.INIT and got.init_tag == 0x01020304
    bad = bytearray(pkt)
    bad[20] ^= 1
    assert not rawsctp.parse(bytes(bad)).checksum_ok  # type: ignore[union-attr]


def test_init_ack_and_abort_answer_the_init():
    init = rawsctp.parse(rawsctp.init(40000, 80, 0xAABBCCDD, 1))
    assert init is not None
    ack = rawsctp.parse(rawsctp.init_ack(init, 0x11111111, 5, b"x/a\n"))
    assert ack is not None and ack.checksum_ok
    assert (ack.sport, ack.dport, ack.vtag, ack.first) == (80, 40000, 0xAABBCCDD, rawsctp.INIT_ACK)
    assert ack.init_tag == 0x11111111 and ack.cookie() == b"x/a\n"
    ab = rawsctp.parse(rawsctp.abort(init))
    assert ab is not None and ab.checksum_ok
    assert (ab.sport, ab.dport, ab.vtag, ab.first, ab.chunks[0][1]) == (80, 40000, 0xAABBCCDD, rawsctp.ABORT, 0)
    assert len(rawsctp.abort(init)) % 4 == 0 and len(rawsctp.init_ack(init, 1, 1, b"odd")) % 4 == 0


def test_parse_rejects_truncated_packets():
    pkt = rawsctp.init(1, 2, 3, 4)
    assert rawsctp.parse(pkt[:10]) is None
    assert rawsctp.parse(pkt[:-4]) is None  # the chunk says 20 bytes, 16 are there
    v4 = bytes([0x45]) + bytes(19) + pkt
    assert rawsctp.strip_ip(v4, socket.AF_INET) == pkt and rawsctp.strip_ip(pkt, socket.AF_INET6) == pkt


# ----------------------------------------------------------------------------------------- real packets

RULES = """table inet t {
    chain f {
        type filter hook forward priority 0; policy drop;
        ct state invalid counter drop
        ct state established,related counter accept
        sctp dport { 80, 81, 83 } counter accept
        sctp dport 82 counter reject
        meta l4proto sctp counter
    }
}
"""


def _ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, timeout=20)


@pytest.fixture
def net() -> Iterator[dict[str, str]]:
    """client -- router -- server (and a bare namespace with nothing listening), IPv4 and IPv6."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("nft"):
        pytest.skip("needs root, iproute2 and nft")
    tag = os.urandom(3).hex()
    names = {k: f"krs-{tag}-{k}" for k in ("r", "c", "s", "e")}
    made: list[str] = []
    try:
        for n in names.values():
            netns.create(n)
            made.append(n)
        r = names["r"]
        for i, k in enumerate(("c", "s", "e"), start=1):
            _ip(r, "link", "add", f"to-{k}", "type", "veth", "peer", "name", "eth0", "netns", names[k])
            _ip(r, "addr", "add", f"10.98.{i}.1/24", "dev", f"to-{k}")
            _ip(r, "addr", "add", f"fd98:{i}::1/64", "dev", f"to-{k}", "nodad")
            _ip(r, "link", "set", f"to-{k}", "up")
            _ip(names[k], "addr", "add", f"10.98.{i}.2/24", "dev", "eth0")
            _ip(names[k], "addr", "add", f"fd98:{i}::2/64", "dev", "eth0", "nodad")
            _ip(names[k], "link", "set", "eth0", "up")
            _ip(names[k], "route", "add", "default", "via", f"10.98.{i}.1")
            _ip(names[k], "-6", "route", "add", "default", "via", f"fd98:{i}::1")
        netns.run(r, ["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                      "net.ipv4.icmp_ratelimit=0", "net.ipv4.icmp_msgs_per_sec=100000", "net.ipv6.icmp.ratelimit=0"])
        netns.run(r, ["nft", "-f", "-"], input=RULES)
        for i in (1, 2, 3):  # neighbours resolved before the first probe
            for addr in (f"10.98.{i}.2", f"fd98:{i}::2"):
                netns.run(r, ["ping", "-c1", "-W3", addr], check=False)
        yield names
    finally:
        for n in reversed(made):
            netns.delete(n)


def _counters(router: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in netns.run(router, ["nft", "list", "chain", "inet", "t", "f"]).stdout.splitlines():
        if "counter packets" in line:
            rule, _, rest = line.strip().partition(" counter packets ")
            out[rule] = int(rest.split()[0])
    return out


@pytest.mark.root
@pytest.mark.parametrize("family", [4, 6])
def test_exchange_through_netfilter_and_conntrack(net, family):
    srv, ext = ("10.98.2.2", "10.98.3.2") if family == 4 else ("fd98:2::2", "fd98:3::2")
    resp = Responders(raw_sctp=True)
    try:
        assert resp.add("x/b", net["s"], [("SCTP", 80), ("SCTP", 81), ("TCP", 80)], ipv6=True) == []
        assert rawsctp.exchange(net["c"], srv, 80, 2.0) == "x/b"
        assert rawsctp.exchange(net["c"], srv, 81, 2.0) == "x/b"
        with pytest.raises(ConnectionRefusedError) as abort:  # allowed by the router, no server on 83: ABORT
            rawsctp.exchange(net["c"], srv, 83, 2.0)
        assert abort.value.errno is None
        with pytest.raises(ConnectionRefusedError) as reject:  # the router's reject: ICMP port unreachable
            rawsctp.exchange(net["c"], srv, 82, 2.0)
        assert reject.value.errno == errno.ECONNREFUSED
        with pytest.raises(TimeoutError):  # policy drop
            rawsctp.exchange(net["c"], srv, 84, 0.5)
        with pytest.raises(OSError) as nobody:  # allowed, but no raw socket there: the kernel's ICMP error
            rawsctp.exchange(net["c"], ext, 80, 2.0)
        assert nobody.value.errno in (errno.ENOPROTOOPT, errno.EPROTO)
        # a bad checksum is conntrack-invalid, so the router drops it and the responder would ignore it anyway
        before = _counters(net["r"])
        with netns.in_netns(net["c"]):
            s = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_RAW, 132)
        bad = bytearray(rawsctp.init(40000, 80, 99, 1))
        bad[8] ^= 0xFF
        s.sendto(bytes(bad), (srv, 0))
        s.close()
        for _ in range(50):
            if _counters(net["r"])["ct state invalid"] > before["ct state invalid"]:
                break
            time.sleep(0.05)
        after = _counters(net["r"])
        assert after["ct state invalid"] == before["ct state invalid"] + 1
        # every answer came back as conntrack's reply or related packet: 2 INIT-ACKs, the ABORT, the ICMP error
        assert after["ct state established,related"] == 4
        resp.remove("x/b")
        assert resp.raw == {}
    finally:
        resp.close()


@pytest.mark.root
def test_concurrent_probes_take_only_their_own_icmp_errors(net):
    """Every raw protocol-132 socket connected to an address gets the ICMP errors about all protocol-132
    packets to it: a REJECT of port 82 must not fail the probes of port 80 running at the same time."""
    resp = Responders(raw_sctp=True)
    try:
        resp.add("x/b", net["s"], [("SCTP", 80)])

        def one(port: int) -> str:
            try:
                return rawsctp.exchange(net["c"], "10.98.2.2", port, 2.0)
            except OSError as e:
                return f"errno {e.errno}"

        ports = [80, 82] * 40
        with concurrent.futures.ThreadPoolExecutor(16) as ex:
            got = list(ex.map(one, ports))
        assert {g for p, g in zip(ports, got, strict=True) if p == 80} == {"x/b"}
        assert {g for p, g in zip(ports, got, strict=True) if p == 82} == {f"errno {errno.ECONNREFUSED}"}
    finally:
        resp.close()
