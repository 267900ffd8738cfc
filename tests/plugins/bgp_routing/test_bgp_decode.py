"""Slim decoding of gobgpd's paths (wire bytes, no per-field protobuf objects) against the full stubs: the
best-path stream's ``Any``-packed paths and binary table dumps (BGP encoding), one message and many at once."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from kr_plugins.bgp_routing import pathwire as pw
from kr_plugins.bgp_routing import speaker as spk
from kr_plugins.bgp_routing.stubs import GobgpApi, StubsError, load


@pytest.fixture(scope="module")
def g() -> GobgpApi:
    try:
        return load(fetch=False)
    except StubsError as e:
        pytest.skip(str(e))


def _speaker(g: GobgpApi) -> spk.Speaker:
    sp = spk.Speaker.__new__(spk.Speaker)  # no channel: only the message helpers are used
    sp.g = g
    return sp


def _slim(g: GobgpApi, paths: list[Any]) -> list[Any]:
    """``paths`` as gobgpd sends them (one WatchEventResponse), parsed as the slim type."""
    ev = g.api.WatchEventResponse(table=g.api.WatchEventResponse.TableEvent(paths=paths))
    return list(pw._slim_watch_type().FromString(ev.SerializeToString()).table.paths)


def test_slim_decode_matches_full_decode(g: GobgpApi) -> None:
    sp = _speaker(g)
    paths = []
    for prefix, nh in [("10.244.3.0/24", "192.168.1.3"), ("0.0.0.0/0", "10.0.0.1"), ("1.2.3.4/32", "9.9.9.9"),
                       ("2001:db8:1::/64", "fd00::1"), ("::/0", "fe80::1")]:
        p = sp._path(prefix, nh)
        p.neighbor_ip = "192.168.1.3"
        p.pattrs.add().Pack(g.attr.AsPathAttribute())  # an attribute that is not a next hop
        paths.append(p)
    withdrawn = sp._path("10.244.9.0/24", "192.168.1.9")
    withdrawn.is_withdraw, withdrawn.neighbor_ip = True, "<nil>"
    paths.append(withdrawn)
    got = [pw.decode_slim_path(p) for p in _slim(g, paths)]
    assert got == [sp.decode_path(p) for p in paths]
    assert got[3] == pw.LearnedPath("2001:db8:1::/64", "fd00::1", "192.168.1.3", False, 6)  # MP_REACH next hop
    assert got[-1] == pw.LearnedPath("10.244.9.0/24", "192.168.1.9", "", True, 4)


def test_slim_decode_bad_input_is_skipped_not_raised(g: GobgpApi) -> None:
    api, attr = g.api, g.attr
    labeled = api.Path()
    labeled.nlri.Pack(attr.LabeledIPAddressPrefix(prefix="10.0.0.0", prefix_len=8))
    corrupt = api.Path()
    corrupt.nlri.type_url, corrupt.nlri.value = "type.googleapis.com/apipb.IPAddressPrefix", b"\x08\x18\x12\x20abc"
    no_nlri = api.Path()
    bad_nh = api.Path()
    bad_nh.nlri.Pack(attr.IPAddressPrefix(prefix="10.1.0.0", prefix_len=16))
    bad_nh.pattrs.add(type_url="type.googleapis.com/apipb.NextHopAttribute", value=b"\x0a\x05")
    got = [pw.decode_slim_path(p) for p in _slim(g, [labeled, corrupt, no_nlri, bad_nh])]
    assert got[:3] == [None, None, None]
    assert got[3] == pw.LearnedPath("10.1.0.0/16", "", "", False, 4)  # no usable next hop: injected nowhere


def test_wire_fields_reject_truncation() -> None:
    assert list(pw._wire_fields(b"\x08\x96\x01\x12\x02hi")) == [(1, 150), (2, b"hi")]
    for bad in (b"\x08", b"\x08\x96", b"\x12\x05ab", b"\x0b"):
        with pytest.raises(ValueError):
            list(pw._wire_fields(bad))


def _nlri(prefix: str) -> bytes:
    """An NLRI in BGP encoding (RFC 4271 4.3): the length in bits, then the significant bytes."""
    net = ipaddress.ip_network(prefix)
    return bytes([net.prefixlen]) + net.network_address.packed[:(net.prefixlen + 7) // 8]


def _bin_path(g: GobgpApi, prefix: str, next_hop: str, *, best: bool = True, link_local: str = "") -> Any:
    """A ``Path`` as ``ListPath`` with ``enable_only_binary`` sends it: ORIGIN, AS_PATH and the next hop
    (``NEXT_HOP`` for IPv4, ``MP_REACH_NLRI`` for IPv6, with an optional link-local second next hop)."""
    attrs = [b"\x40\x01\x01\x00", b"\x40\x02\x06\x02\x01\x00\x00\xfc\x58"]
    nh = ipaddress.ip_address(next_hop).packed
    if ":" in prefix:
        hops = nh + (ipaddress.ip_address(link_local).packed if link_local else b"")
        value = b"\x00\x02\x01" + bytes([len(hops)]) + hops + b"\x00" + _nlri(prefix)
        attrs.append(b"\x90\x0e" + len(value).to_bytes(2, "big") + value)  # extended length
    else:
        attrs.append(b"\x40\x03\x04" + nh)
    return g.api.Path(nlri_binary=_nlri(prefix), pattrs_binary=attrs, best=best, neighbor_ip="192.168.1.3")


def test_binary_dump_decode(g: GobgpApi) -> None:
    v4 = [_bin_path(g, "10.244.3.0/24", "192.168.1.3"), _bin_path(g, "0.0.0.0/0", "10.0.0.1"),
          _bin_path(g, "1.2.3.4/32", "9.9.9.9"), _bin_path(g, "10.9.0.0/16", "192.168.1.4", best=False)]
    dest = g.api.Destination(prefix="10.244.3.0/24", paths=v4[:1] + v4[3:])  # a best and a second path
    msgs = [g.api.ListPathResponse(destination=dest).SerializeToString()]
    msgs += [g.api.ListPathResponse(destination=g.api.Destination(paths=[p])).SerializeToString() for p in v4[1:3]]
    LP = pw.LearnedPath
    assert pw.decode_list_messages(msgs, 4) == [  # three messages parsed in one call, non-best skipped
        LP("10.244.3.0/24", "192.168.1.3", "192.168.1.3", False, 4), LP("0.0.0.0/0", "10.0.0.1", "192.168.1.3", False, 4),
        LP("1.2.3.4/32", "9.9.9.9", "192.168.1.3", False, 4)]
    v6 = [_bin_path(g, "2001:db8:1::/64", "fd00::1"), _bin_path(g, "::/0", "fd00::2", link_local="fe80::2"),
          _bin_path(g, "2001:db8:2:2::/63", "::ffff:192.168.1.3")]
    msgs = [g.api.ListPathResponse(destination=g.api.Destination(paths=[p])).SerializeToString() for p in v6]
    assert pw.decode_list_messages(msgs, 6) == [
        LP("2001:db8:1::/64", "fd00::1", "192.168.1.3", False, 6),
        LP("::/0", "fd00::2", "192.168.1.3", False, 6),  # the global next hop, not the link-local one
        LP("2001:db8:2:2::/63", "192.168.1.3", "192.168.1.3", False, 6)]  # IPv4-mapped: as gobgpd writes it


def test_binary_dump_bad_input_is_skipped(g: GobgpApi) -> None:
    bad = [g.api.Path(nlri_binary=b"\x21\x0a\x00\x00\x00\x00", best=True),  # /33 in an IPv4 dump
           g.api.Path(nlri_binary=b"\x18\x0a\x00", best=True),  # /24 with two bytes
           g.api.Path(best=True),  # no NLRI
           g.api.Path(nlri_binary=b"\x10\x0a\x01", pattrs_binary=[b"\x40\x03\x02\x01\x02", b"\x40"], best=True)]
    msgs = [g.api.ListPathResponse(destination=g.api.Destination(paths=[p])).SerializeToString() for p in bad]
    assert pw.decode_list_messages(msgs, 4) == [pw.LearnedPath("10.1.0.0/16", "", "", False, 4)]


def test_watch_messages_batch_keeps_order_and_sees_end_of_init(g: GobgpApi) -> None:
    """Many stream messages parse as one batch: paths in order, the registration (peer END_OF_INIT) seen."""
    sp = _speaker(g)
    api = g.api
    msgs = [api.WatchEventResponse(peer=api.WatchEventResponse.PeerEvent(type=api.WatchEventResponse.PeerEvent.INIT)),
            api.WatchEventResponse(peer=api.WatchEventResponse.PeerEvent(
                type=api.WatchEventResponse.PeerEvent.END_OF_INIT))]
    for i in range(300):
        p = sp._path(f"10.{i // 256}.{i % 256}.0/24", "192.168.1.3")
        p.neighbor_ip = "192.168.1.3"
        p.is_withdraw = i % 7 == 0
        msgs.append(api.WatchEventResponse(table=api.WatchEventResponse.TableEvent(paths=[p])))
    raw = [m.SerializeToString() for m in msgs]
    paths, registered = pw.decode_watch_messages(raw)
    assert registered
    assert [(p.prefix, p.withdraw) for p in paths] == [(f"10.{i // 256}.{i % 256}.0/24", i % 7 == 0)
                                                       for i in range(300)]
    assert pw.decode_watch_messages(raw[2:]) == (paths, False)
