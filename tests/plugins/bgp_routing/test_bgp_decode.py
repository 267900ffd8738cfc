"""The best-path stream's slim decoding (wire bytes, no per-field protobuf objects) against the full stubs."""

from __future__ import annotations

from typing import Any

import pytest

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
    return list(spk._slim_watch_type().FromString(ev.SerializeToString()).table.paths)


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
    got = [spk.decode_slim_path(p) for p in _slim(g, paths)]
    assert got == [sp.decode_path(p) for p in paths]
    assert got[3] == spk.LearnedPath("2001:db8:1::/64", "fd00::1", "192.168.1.3", False, 6)  # MP_REACH next hop
    assert got[-1] == spk.LearnedPath("10.244.9.0/24", "192.168.1.9", "", True, 4)


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
    got = [spk.decode_slim_path(p) for p in _slim(g, [labeled, corrupt, no_nlri, bad_nh])]
    assert got[:3] == [None, None, None]
    assert got[3] == spk.LearnedPath("10.1.0.0/16", "", "", False, 4)  # no usable next hop: injected nowhere


def test_wire_fields_reject_truncation() -> None:
    assert list(spk._wire_fields(b"\x08\x96\x01\x12\x02hi")) == [(1, 150), (2, b"hi")]
    for bad in (b"\x08", b"\x08\x96", b"\x12\x05ab", b"\x0b"):
        with pytest.raises(ValueError):
            list(spk._wire_fields(bad))
