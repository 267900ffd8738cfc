"""Route messages for the injector's bursts, packed from templates.

:func:`kr_core.net.links.encode_route` builds each message from a :class:`Route` (~3.5 us, most of it
parsing the destination). A burst of learned routes differs only in the destination: one message per
(operation, family, gateway, output interface, source, table) is built by ``encode_route`` with a
placeholder destination, checked, and copied per route with the prefix length, destination and sequence
number written in (~1 us). Anything unusual (host bits set in the prefix) goes through ``encode_route``.
"""

from __future__ import annotations

import functools
import socket
import struct

from kr_core.net.links import Route, encode_route

_NLMSG_FLAGS_SEQ = struct.Struct("=HI")  # nlmsghdr flags (offset 6) and sequence number (offset 8)
NLM_F_ACK = 0x4
_DST_LEN_AT = 16 + 1  # rtmsg.rtm_dst_len
_DST_AT = 16 + 12 + 4  # RTA_DST payload: the first attribute after the rtmsg
_PLACEHOLDER = {socket.AF_INET: "192.0.2.0/24", socket.AF_INET6: "2001:db8::/64"}


@functools.lru_cache(maxsize=1024)
def _template(op: str, family: int, gateway: str | None, oif: int | None, table: int, proto: int,
              prefsrc: str | None, rtype: str, scope: int | None, priority: int | None) -> tuple[bytes, int, int]:
    """(message, flags, address length) for ``op`` of a route with these attributes and a placeholder
    destination."""
    route = Route(dst=_PLACEHOLDER[family], gateway=gateway, oif=oif, table=table, proto=proto, prefsrc=prefsrc,
                  type=rtype, scope=scope, priority=priority)
    msg = encode_route(route, op, 0, ack=False)
    alen = 4 if family == socket.AF_INET else 16
    placeholder = _PLACEHOLDER[family].split("/")[0]
    if msg[_DST_AT:_DST_AT + alen] != socket.inet_pton(family, placeholder):
        raise AssertionError("encode_route layout changed: RTA_DST is not the first attribute")
    flags = struct.unpack_from("=H", msg, 6)[0]
    return msg, flags, alen


def encode(route: Route, op: str, seq: int, ack: bool) -> bytes:
    """Byte for byte what ``encode_route(route, op, seq, ack=ack)`` returns (tests check it), faster."""
    addr, _, plen_s = route.dst.partition("/")
    family, bits = (socket.AF_INET6, 128) if ":" in addr else (socket.AF_INET, 32)
    try:
        raw = socket.inet_pton(family, addr)
        plen = int(plen_s)
    except (OSError, ValueError):
        return encode_route(route, op, seq, ack=ack)
    if not 0 <= plen <= bits or (plen < bits and int.from_bytes(raw, "big") & ((1 << (bits - plen)) - 1)):
        return encode_route(route, op, seq, ack=ack)  # garbage or host bits set: the reference path decides
    tpl, flags, alen = _template(op, family, route.gateway, route.oif, route.table, route.proto, route.prefsrc,
                                 route.type, route.scope, route.priority)
    msg = bytearray(tpl)
    msg[_DST_LEN_AT] = plen
    msg[_DST_AT:_DST_AT + alen] = raw
    _NLMSG_FLAGS_SEQ.pack_into(msg, 6, flags | NLM_F_ACK if ack else flags, seq)
    return bytes(msg)
