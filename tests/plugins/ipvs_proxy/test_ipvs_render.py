"""Batched IPVS writer and VIP message templates render exactly the reference messages (no kernel needed)."""

from __future__ import annotations

import struct

import pytest

from kr_core.net.netlink import HDR, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST
from kr_plugins.ipvs_proxy import ipvs as I
from kr_plugins.ipvs_proxy.model import VirtualServer, VKey, VParams

K4 = VKey(4, 6, "10.96.0.10", 80)
K6 = VKey(6, 17, "fd00:96::a", 53)
FAMILY_ID = 0x23


def writer() -> I.Ipvs:
    """An :class:`Ipvs` without a socket (``render`` never sends)."""
    x = I.Ipvs.__new__(I.Ipvs)
    x.enc, x.family_id, x.nl = I.Encoder(), FAMILY_ID, None
    x._wbuf, x._dtails = bytearray(64), {}
    return x


def expected(ops: list[I.Op], base: int, batch: int) -> bytes:
    """Every single operation as ``Encoder.op`` builds it, with its header; an ack on each batch's last."""
    single = []
    for op in ops:
        if op[0] == I.ADD_VS:
            single += [I.single_op(op, j) for j in range(1 + len(op[2].dests))]
        else:
            single.append(op)
    enc, out = I.Encoder(), b""
    for i, op in enumerate(single):
        p = enc.op(op)
        flags = NLM_F_REQUEST | (NLM_F_CREATE | NLM_F_EXCL if op[0] in (I.ADD_SVC, I.ADD_DEST) else 0)
        if (i + 1) % batch == 0 or i + 1 == len(single):
            flags |= NLM_F_ACK
        out += HDR.pack(16 + len(p), FAMILY_ID, flags, base + i, 0) + p
    return out


OPS: list[I.Op] = [
    (I.ADD_VS, K4, VirtualServer(K4, VParams("rr", 1, 300), {("10.244.1.1", 8080): (1, 0), ("10.244.1.2", 8080): (1, 0),
                                                              ("10.244.1.3", 9090): (5, 2)})),
    (I.DEL_DEST, K4, ("10.244.1.9", 8080)),
    (I.ADD_VS, K6, VirtualServer(K6, VParams("mh", 8, 0), {("fd00:244::1", 53): (1, 0), ("fd00:244::2", 53): (1, 0)})),
    (I.ADD_VS, VKey(4, 6, "10.96.0.11", 81), VirtualServer(VKey(4, 6, "10.96.0.11", 81), VParams(), {})),
    (I.ADD_DEST, K4, ("10.244.1.4", 8080, 1, 0)),
    (I.SET_SVC, K6, VParams("rr", 0, 0)),
    (I.DEL_SVC, K4, None),
]


def test_batched_rendering_equals_the_single_messages() -> None:
    assert I.message_count(OPS) == 12
    assert writer().render(OPS, base_seq=100) == expected(OPS, 100, I.BATCH)


@pytest.mark.parametrize("batch", [1, 2, 3, 5])
def test_an_ack_ends_every_batch(monkeypatch: pytest.MonkeyPatch, batch: int) -> None:
    monkeypatch.setattr(I, "BATCH", batch)
    got = writer().render(OPS, base_seq=7)
    assert got == expected(OPS, 7, batch)
    off, acks = 0, []
    while off < len(got):
        ln, _t, fl = struct.unpack_from("=IHH", got, off)
        acks.append(bool(fl & NLM_F_ACK))
        off += ln
    assert sum(acks) == -(-12 // batch)


def test_single_op_maps_a_message_back_to_its_operation() -> None:
    op = OPS[0]
    assert I.single_op(op, 0) == (I.ADD_SVC, K4, VParams("rr", 1, 300))
    assert I.single_op(op, 3) == (I.ADD_DEST, K4, ("10.244.1.3", 9090, 5, 2))
    assert I.single_op(OPS[1], 0) is OPS[1]


@pytest.mark.parametrize("family,addr,src", [(4, "10.96.3.4", "192.168.60.1"), (6, "fd00:96::1:2", "fd00:50::1"),
                                             (6, "fd00:96::7", None)])
@pytest.mark.parametrize("ack", [False, True])
def test_vip_templates_equal_the_reference_encoders(family: int, addr: str, src: str | None, ack: bool) -> None:
    import socket

    from kr_core.net.links import encode_route
    from kr_plugins.ipvs_proxy import host as H

    raw = socket.inet_pton(socket.AF_INET if family == 4 else socket.AF_INET6, addr)
    for op in ("add", "del"):
        assert H.addr_encoder(op, family, 7)(raw, 4242, ack) == H.encode_addr(op, family, addr, 7, 4242, ack)
    for op in ("replace", "delete"):
        want = encode_route(H._vip_route(family, addr, src, 7), op, 99, ack=ack)
        assert H.vip_route_encoder(op, family, src, 7)(raw, 99, ack) == want


@pytest.mark.parametrize("k", [K4, K6, VKey(4, 132, "10.96.0.1", 36412), VKey(6, 0, "", 0, 7)])
@pytest.mark.parametrize("params", [VParams(), VParams("mh", 0x9, 300)])
def test_cached_service_parts_equal_the_attribute_by_attribute_encoding(k: VKey, params: VParams) -> None:
    from kr_core.net.netlink import nest, nla

    enc = I.Encoder()
    for _ in range(2):  # cold and cached
        assert enc.key_nest(k) == nest(I.ATTR_SERVICE, enc.key_attrs(k))
        netmask = struct.pack("!I", 0xFFFFFFFF) if k.family == 4 else struct.pack("=I", 128)
        assert enc.service(k, params) == nest(I.ATTR_SERVICE, [
            *enc.key_attrs(k), nla(I.SVC_SCHED_NAME, params.sched.encode() + b"\0"),
            nla(I.SVC_FLAGS, struct.pack("=II", params.flags, 0xFFFFFFFF)),
            nla(I.SVC_TIMEOUT, struct.pack("=I", params.timeout)), nla(I.SVC_NETMASK, netmask)])
