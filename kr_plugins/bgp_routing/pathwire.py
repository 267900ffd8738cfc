"""gobgpd's path messages read from their wire bytes: the best-path stream (``WatchEvent``) and table dumps
(``ListPath`` with ``enable_only_binary``).

Both are parsed as slim message classes wire-compatible with GoBGP's (only the fields the injector reads;
the C parser skips the rest), built at run time from descriptors with GoBGP's field numbers, so nothing is
generated or committed. The NLRI and next hop are then read from bytes: the ``Any``-packed NLRI and
attributes of the stream (generic ``api.Path`` access costs ~7 us a path, this ~3 us), and the BGP wire
encoding (RFC 4271 / 4760) of a binary dump, where gobgpd skips building ``Any`` messages altogether.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Iterator
from typing import Any, NamedTuple

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PEER_END_OF_INIT = 2  # WatchEventResponse.PeerEvent.Type: the watch is registered, events follow


class LearnedPath(NamedTuple):
    """One best path (a tuple: thousands are built per burst, a frozen dataclass costs three times as much)."""

    prefix: str
    next_hop: str
    neighbor: str
    withdraw: bool
    family: int


@functools.cache
def _slim_types() -> dict[str, Any]:
    """The slim message classes, by name.

    ``WatchEventResponse``: ``table.paths[]`` with ``nlri`` and ``pattrs`` as raw ``Any`` bytes (fields 1,
    2), ``is_withdraw`` (5), ``neighbor_ip`` (15); ``peer.type``. ``ListPathResponse``:
    ``destination.paths[]`` with ``best`` (4), ``is_withdraw`` (5), ``neighbor_ip`` (15), ``nlri_binary``
    (20), ``pattrs_binary`` (21). ``WatchBatch`` and ``ListBatch`` have the same fields, repeated: the
    concatenation of many serialized responses parses as one of them in one call, every event kept in
    order (protobuf merges concatenated messages; a repeated field appends)."""
    fd = descriptor_pb2.FileDescriptorProto(name="kr_bgp_slim.proto", package="krbgpslim", syntax="proto3")
    f = descriptor_pb2.FieldDescriptorProto

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        m = fd.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            fld = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                fld.type_name = type_name

    one, many = f.LABEL_OPTIONAL, f.LABEL_REPEATED
    message("Path", ("nlri", 1, f.TYPE_BYTES, one, ""), ("pattrs", 2, f.TYPE_BYTES, many, ""),
            ("is_withdraw", 5, f.TYPE_BOOL, one, ""), ("neighbor_ip", 15, f.TYPE_STRING, one, ""))
    message("TableEvent", ("paths", 2, f.TYPE_MESSAGE, many, ".krbgpslim.Path"))
    message("PeerEvent", ("type", 1, f.TYPE_INT32, one, ""))
    for name, label in (("WatchEventResponse", one), ("WatchBatch", many)):
        message(name, ("peer", 2, f.TYPE_MESSAGE, label, ".krbgpslim.PeerEvent"),
                ("table", 3, f.TYPE_MESSAGE, label, ".krbgpslim.TableEvent"))
    message("BinPath", ("best", 4, f.TYPE_BOOL, one, ""), ("is_withdraw", 5, f.TYPE_BOOL, one, ""),
            ("neighbor_ip", 15, f.TYPE_STRING, one, ""), ("nlri_binary", 20, f.TYPE_BYTES, one, ""),
            ("pattrs_binary", 21, f.TYPE_BYTES, many, ""))
    message("Destination", ("paths", 2, f.TYPE_MESSAGE, many, ".krbgpslim.BinPath"))
    for name, label in (("ListPathResponse", one), ("ListBatch", many)):
        message(name, ("destination", 1, f.TYPE_MESSAGE, label, ".krbgpslim.Destination"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"krbgpslim.{name}"))
            for name in ("WatchEventResponse", "WatchBatch", "ListPathResponse", "ListBatch")}


def _slim_watch_type() -> Any:
    """The slim ``WatchEventResponse`` class."""
    return _slim_types()["WatchEventResponse"]


def decode_watch_messages(messages: bytes | list[bytes]) -> tuple[list[LearnedPath], bool]:
    """(paths, whether a peer ``END_OF_INIT`` event was among them) of serialized ``WatchEventResponse``
    messages (a list, or already concatenated), parsed in one call; paths that are not IP prefixes are
    skipped."""
    blob = messages if isinstance(messages, bytes) else b"".join(messages)
    batch = _slim_types()["WatchBatch"].FromString(blob)
    out: list[LearnedPath] = []
    append = out.append
    for ev in batch.table:
        for p in ev.paths:
            lp = decode_slim_path(p)
            if lp is not None:
                append(lp)
    return out, any(ev.type == PEER_END_OF_INIT for ev in batch.peer)


def decode_list_messages(messages: bytes | list[bytes], family: int) -> list[LearnedPath]:
    """The best paths in serialized ``ListPathResponse`` messages (a list, or already concatenated) of a
    binary dump (``enable_only_binary``) of ``family`` (4 or 6), parsed in one call."""
    blob = messages if isinstance(messages, bytes) else b"".join(messages)
    batch = _slim_types()["ListBatch"].FromString(blob)
    out: list[LearnedPath] = []
    v6 = family == 6
    for d in batch.destination:
        for p in d.paths:
            if p.best:
                lp = decode_bin_path(p, v6)
                if lp is not None:
                    out.append(lp)
    return out


def decode_bin_path(p: Any, v6: bool) -> LearnedPath | None:
    """The :class:`LearnedPath` of a slim ``BinPath`` of an IPv6 (``v6``) or IPv4 unicast dump: the NLRI in
    BGP encoding (length in bits, then the significant bytes) and the next hop from the ``NEXT_HOP`` or
    ``MP_REACH_NLRI`` attribute. None when the NLRI does not parse."""
    nlri = p.nlri_binary
    if not nlri or nlri[0] > (128 if v6 else 32) or len(nlri) != 1 + (nlri[0] + 7) // 8:
        return None
    nh = ""
    for a in p.pattrs_binary:
        try:
            got = _BIN_NEXT_HOPS[a]
        except KeyError:
            got = _bin_next_hop(a)
        if got is not None:
            nh = got
    plen = nlri[0]
    addr = nlri[1:]
    try:
        text = socket.inet_ntop(socket.AF_INET6, addr + bytes(16 - len(addr))) if v6 else \
            socket.inet_ntop(socket.AF_INET, addr + bytes(4 - len(addr)))
    except ValueError:
        return None
    neighbor = p.neighbor_ip
    if neighbor == "<nil>":
        neighbor = ""
    return LearnedPath(f"{text}/{plen}", nh, neighbor, p.is_withdraw, 6 if v6 else 4)


_BIN_NEXT_HOPS: dict[bytes, str | None] = {}  # attribute bytes -> next hop (None: not a next hop)
ATTR_NEXT_HOP, ATTR_MP_REACH = 3, 14


def _bin_next_hop(a: bytes) -> str | None:
    """The next hop in a path attribute in BGP encoding, None for other attributes. ``NEXT_HOP`` is shared
    by many paths and cached; ``MP_REACH_NLRI`` carries the NLRI too (the first next hop: the global one
    when a link-local one follows)."""
    if len(a) < 3:
        return None
    flags, kind = a[0], a[1]
    off = 4 if flags & 0x10 else 3  # extended length
    value = a[off:]
    if kind == ATTR_NEXT_HOP:
        got = _addr_text(value) if len(value) in (4, 16) else None
        if len(_BIN_NEXT_HOPS) >= 4096:
            _BIN_NEXT_HOPS.clear()
        _BIN_NEXT_HOPS[a] = got
        return got
    if kind == ATTR_MP_REACH and len(value) >= 4:
        nhlen = value[3]
        nh = value[4:4 + nhlen]
        return _addr_text(nh[:16]) if nhlen in (4, 16, 32) and len(nh) == nhlen else ""
    return None


def _addr_text(b: bytes) -> str:
    """An address as gobgpd writes it (Go's ``net.IP.String``: an IPv4-mapped IPv6 address as IPv4)."""
    if len(b) == 4:
        return socket.inet_ntop(socket.AF_INET, b)
    if b[:12] == b"\0" * 10 + b"\xff\xff":
        return socket.inet_ntop(socket.AF_INET, b[12:])
    return socket.inet_ntop(socket.AF_INET6, b)


_URL = b"type.googleapis.com/apipb."
_PREFIX_ANY = b"\n" + bytes([len(_URL) + len(b"IPAddressPrefix")]) + _URL + b"IPAddressPrefix\x12"
_NEXT_HOPS: dict[bytes, str | None] = {}  # serialized attribute Any -> its next hop (None: not a next hop)


def decode_slim_path(p: Any) -> LearnedPath | None:
    """The :class:`LearnedPath` of one path of :func:`_slim_watch_type` (None when its NLRI is not an IP
    prefix or does not parse): the NLRI and attributes are read from their wire bytes; paths share a few
    attribute encodings, so next hops are looked up by the attribute's bytes."""
    try:
        prefix = _ip_prefix(p.nlri)
    except (ValueError, IndexError):
        return None
    if prefix is None:
        return None
    nh = ""
    for a in p.pattrs:
        try:
            got = _NEXT_HOPS[a]
        except KeyError:
            got = _attr_next_hop(a)
        if got is not None:
            nh = got
    neighbor = p.neighbor_ip
    if neighbor == "<nil>":
        neighbor = ""
    return LearnedPath(prefix, nh, neighbor, p.is_withdraw, 6 if ":" in prefix else 4)


def _ip_prefix(nlri: bytes) -> str | None:
    """``addr/len`` of a serialized ``Any`` holding an ``IPAddressPrefix`` (None: another NLRI type)."""
    if nlri.startswith(_PREFIX_ANY) and nlri[len(_PREFIX_ANY)] < 0x80:  # the usual encoding, no generic parse
        value = nlri[len(_PREFIX_ANY) + 1:]
        if len(value) > 4 and value[0] == 0x08 and value[1] < 0x80 and value[2] == 0x12 and value[3] == len(value) - 4:
            return f"{value[4:].decode()}/{value[1]}"
    url, value = _any(nlri)
    if url != "apipb.IPAddressPrefix":
        return None
    plen, addr = 0, ""
    for num, v in _wire_fields(value):
        if num == 1 and isinstance(v, int):
            plen = v
        elif num == 2 and isinstance(v, bytes):
            addr = v.decode()
    if not addr:
        raise ValueError("IPAddressPrefix without prefix")
    return f"{addr}/{plen}"


def _attr_next_hop(a: bytes) -> str | None:
    """The next hop in a serialized attribute ``Any`` (``NextHopAttribute``, or the first of an
    ``MpReachNLRIAttribute``); None for other attributes. Caches what is shared between paths."""
    try:
        url, value = _any(a)
        if url == "apipb.NextHopAttribute":
            nh = next((v.decode() for num, v in _wire_fields(value) if num == 1 and isinstance(v, bytes)), "")
        elif url == "apipb.MpReachNLRIAttribute":  # carries the NLRI too: unique per path, not cached
            return next((v.decode() for num, v in _wire_fields(value) if num == 2 and isinstance(v, bytes)), "")
        else:
            nh = None
    except (ValueError, UnicodeDecodeError):
        return None
    if len(_NEXT_HOPS) >= 4096:
        _NEXT_HOPS.clear()
    _NEXT_HOPS[a] = nh
    return nh


def _any(buf: bytes) -> tuple[str, bytes]:
    """(``apipb.X`` of the type URL, value bytes) of a serialized ``google.protobuf.Any``."""
    url, value = "", b""
    for num, v in _wire_fields(buf):
        if num == 1 and isinstance(v, bytes):
            url = v.decode()
        elif num == 2 and isinstance(v, bytes):
            value = v
    return url[url.rfind("/") + 1:], value


def _wire_fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of each field of a serialized message: an int for varints, bytes otherwise.
    Raises ValueError on truncated or malformed input."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        wire = key & 7
        if wire == 0:
            v, i = _varint(buf, i)
            yield key >> 3, v
            continue
        if wire == 2:
            size, i = _varint(buf, i)
        elif wire == 1:
            size = 8
        elif wire == 5:
            size = 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if i + size > n:
            raise ValueError("truncated field")
        yield key >> 3, buf[i:i + size]
        i += size


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7
