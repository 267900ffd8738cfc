"""The shared batched netlink writer (kr_core.net.netlink) against a real kernel: many requests per send,
one ack per batch, refusals mapped back to the request that caused them."""

from __future__ import annotations

import socket
import struct
import subprocess

import pytest

from kr_core.net import netns
from kr_core.net.netlink import (
    HDR,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NetlinkError,
    NetlinkSocket,
    nla,
)

pytestmark = pytest.mark.root

RTM_NEWADDR, RTM_GETADDR = 20, 22
IFA_LOCAL, IFA_ADDRESS = 2, 1


def newaddr(addr: str, index: int, seq: int, ack: bool) -> bytes:
    raw = socket.inet_aton(addr)
    body = struct.pack("=BBBBI", socket.AF_INET, 32, 0, 254, index) + nla(IFA_LOCAL, raw) + nla(IFA_ADDRESS, raw)
    flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | (NLM_F_ACK if ack else 0)
    return HDR.pack(16 + len(body), RTM_NEWADDR, flags, seq, 0) + body


def test_send_all_batches_and_maps_errors(ns: str) -> None:
    addrs = [f"10.77.{i >> 8}.{i & 255}" for i in range(2500)]
    addrs[1234] = addrs[10]  # a duplicate: EEXIST for that request only
    with netns.in_netns(ns):
        nl = NetlinkSocket(socket.NETLINK_ROUTE)
        try:
            index = socket.if_nametoindex("lo")
            errs = nl.send_all(lambda i, seq, ack: newaddr(addrs[i], index, seq, ack), len(addrs))
            assert errs == {1234: 17}
            assert nl.sent_messages == 2500 and nl.sent_batches == 3
            got = nl.dump(RTM_GETADDR, struct.pack("=BBBBI", socket.AF_INET, 0, 0, 0, 0))
            assert len(got) == 2500  # 127.0.0.1 + 2,499 distinct
            with pytest.raises(NetlinkError):
                nl.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, newaddr(addrs[0], index, 0, False)[16:])
            assert nl.query(RTM_NEWADDR, NLM_F_CREATE, newaddr("10.78.0.1", index, 0, False)[16:]) == []
        finally:
            nl.close()
    out = subprocess.run(["ip", "-n", ns, "-4", "addr", "show", "dev", "lo"], capture_output=True, text=True).stdout
    assert "10.77.9.195/32" in out and "10.78.0.1/32" in out
