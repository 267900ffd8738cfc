"""Templated route messages are byte for byte what the reference encoder builds."""

from __future__ import annotations

import itertools

import pytest

from kr_core.net.links import Route, encode_route
from kr_plugins.bgp_routing.routewire import encode

ROUTES = [Route(dst="10.0.0.0/8", gateway="1.2.3.4"), Route(dst="10.1.2.3/32"), Route(dst="0.0.0.0/0", gateway="1.1.1.1"),
          Route(dst="2001:db8:1::/48", gateway="fe80::1"), Route(dst="::/0", gateway="fd00::1"),
          Route(dst="10.9.0.0/16", oif=7, prefsrc="192.168.1.1"), Route(dst="10.9.0.0/16", table=77, proto=17),
          Route(dst="fd00::5/128", oif=3, table=77), Route(dst="10.9.0.0/16", table=1000, priority=5),
          Route(dst="10.0.0.1/8", gateway="1.2.3.4"),  # host bits set: the reference path clears them
          Route(dst="192.0.2.0/24", gateway="1.2.3.4"),  # the placeholder itself
          Route(dst="10.0.0.7", gateway="1.2.3.4")]  # no length: a host route


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.dst)
def test_template_matches_encode_route(route: Route) -> None:
    for op, seq, ack in itertools.product(("replace", "delete"), (1, 2**31 - 2), (False, True)):
        assert encode(route, op, seq, ack) == encode_route(route, op, seq, ack=ack)


def test_bad_destination_raises_like_encode_route() -> None:
    for dst in ("10.0.0.0/33", "nonsense", "10.0.0.0/-1"):
        with pytest.raises(ValueError):
            encode_route(Route(dst), "replace", 1)
        with pytest.raises(ValueError):
            encode(Route(dst), "replace", 1, True)
