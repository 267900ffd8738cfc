"""ipset over raw netfilter netlink, batched: whole-set syncs and member updates without a process.

``ipset restore`` costs a process launch (hundreds of ms in User-Mode Linux once the agent is large) and
a ``newfstatat`` per input line (~0.1 ms per member in UML). :class:`IpsetNl` sends the same commands as
netlink messages over one socket (:class:`kr_core.net.netlink.NetlinkSocket`: up to 1,000 per ``sendmsg``,
one ack per batch) and maps refusals back to the set or member that caused them.

:meth:`IpsetNl.sync` follows the atomic pattern of :func:`kr_core.net.ipset.render_sync` (temporary set
filled, swapped with the live one, destroyed) in two batches: first every temporary set is created and
filled; then only the sets whose fill had no error are swapped in. A set that cannot be encoded here or
that the kernel refused is returned, so the caller can take the ``ipset restore`` path for it (which also
gives the tool's error message).

Encoded set types: ``hash:ip``, ``hash:ip,port`` (``10.0.0.1,tcp:80``; ``10.0.0.1,80`` is tcp) and
``hash:net`` (``10.0.0.0/8``, ``nomatch`` excepts), both families.
"""

from __future__ import annotations

import bisect
import logging
import os
import socket
import struct
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .ipset import IpSet, temp_name
from .netlink import HDR, NLA_F_NESTED, NLM_F_ACK, NLM_F_EXCL, NLM_F_REQUEST, NetlinkSocket, iter_attrs, nla

log = logging.getLogger(__name__)

NETLINK_NETFILTER = 12
NFNL_SUBSYS_IPSET = 6
IPSET_PROTOCOL = 6  # the kernel takes 6..7; 6 is understood by every kernel with ipset netlink v6
(IPSET_CMD_CREATE, IPSET_CMD_DESTROY, IPSET_CMD_FLUSH, IPSET_CMD_SWAP, IPSET_CMD_ADD, IPSET_CMD_DEL,
 IPSET_CMD_TYPE) = 2, 3, 4, 6, 9, 10, 13
# command-level attributes
IPSET_ATTR_PROTOCOL, IPSET_ATTR_SETNAME, IPSET_ATTR_TYPENAME, IPSET_ATTR_REVISION = 1, 2, 3, 4
IPSET_ATTR_SETNAME2 = IPSET_ATTR_TYPENAME
IPSET_ATTR_FAMILY, IPSET_ATTR_DATA, IPSET_ATTR_REVISION_MIN = 5, 7, 10
# data attributes
IPSET_ATTR_IP, IPSET_ATTR_CIDR, IPSET_ATTR_PORT, IPSET_ATTR_TIMEOUT, IPSET_ATTR_PROTO = 1, 3, 4, 6, 7
IPSET_ATTR_CADT_FLAGS, IPSET_ATTR_HASHSIZE, IPSET_ATTR_MAXELEM = 8, 18, 19
IPSET_ATTR_IPADDR_IPV4, IPSET_ATTR_IPADDR_IPV6 = 1, 2
IPSET_FLAG_NOMATCH, IPSET_FLAG_WITH_COMMENT = 1 << 2, 1 << 4
NLA_F_NET_BYTEORDER = 0x4000
ENOENT = 2
PROTOS = {"tcp": 6, "udp": 17, "sctp": 132, "udplite": 136}
AF = {"inet": socket.AF_INET, "inet6": socket.AF_INET6}
SUPPORTED = ("hash:ip", "hash:ip,port", "hash:net")

_HH = struct.Struct("=HH")
_IP4 = _HH.pack(12, IPSET_ATTR_IP | NLA_F_NESTED) + _HH.pack(8, IPSET_ATTR_IPADDR_IPV4 | NLA_F_NET_BYTEORDER)
_IP6 = _HH.pack(24, IPSET_ATTR_IP | NLA_F_NESTED) + _HH.pack(20, IPSET_ATTR_IPADDR_IPV6 | NLA_F_NET_BYTEORDER)


class IpsetNlError(OSError):
    """A netlink ipset command failed (``errno`` is the kernel's code, ipset-specific ones are >= 4096)."""


def _mtype(cmd: int) -> int:
    return (NFNL_SUBSYS_IPSET << 8) | cmd


def _head(family: int, *attrs: bytes) -> bytes:
    """nfgenmsg + the protocol attribute + ``attrs``."""
    return struct.pack("=BBH", family, 0, 0) + nla(IPSET_ATTR_PROTOCOL, struct.pack("=B", IPSET_PROTOCOL)) + b"".join(attrs)


def _name(kind: int, name: str) -> bytes:
    return nla(kind, name.encode() + b"\0")


def _ip(family: str, addr: str) -> bytes:
    if family == "inet":
        return _IP4 + socket.inet_aton(addr) if addr.count(".") == 3 else _bad(addr)
    return _IP6 + socket.inet_pton(socket.AF_INET6, addr)


def _bad(addr: str) -> bytes:
    raise ValueError(f"not an IPv4 address: {addr!r}")


def encode_entry(set_type: str, family: str, entry: str, nomatch: bool = False) -> bytes:
    """The ``IPSET_ATTR_DATA`` nest of one member of a ``set_type`` set of ``family`` (inet/inet6).

    Raises ValueError for an entry or a type this module does not encode (the caller falls back to
    ``ipset restore``)."""
    try:
        if set_type == "hash:ip":
            body = _ip(family, entry)
        elif set_type == "hash:ip,port":
            ip, _, pp = entry.partition(",")
            proto_s, _, port_s = pp.rpartition(":")
            proto = PROTOS[proto_s or "tcp"]
            port = int(port_s)
            if not 0 <= port <= 65535:
                raise ValueError(f"port {port} out of range")
            body = _ip(family, ip) + _HH.pack(6, IPSET_ATTR_PORT | NLA_F_NET_BYTEORDER) + struct.pack("!H2x", port) + \
                _HH.pack(5, IPSET_ATTR_PROTO) + struct.pack("=B3x", proto)
        elif set_type == "hash:net":
            ip, _, cidr_s = entry.partition("/")
            bits = 32 if family == "inet" else 128
            cidr = int(cidr_s) if cidr_s else bits
            if not 1 <= cidr <= bits:
                raise ValueError(f"prefix length {cidr} out of range")
            body = _ip(family, ip) + _HH.pack(5, IPSET_ATTR_CIDR) + struct.pack("=B3x", cidr)
        else:
            raise ValueError(f"set type {set_type} not encoded here")
    except (KeyError, OSError) as exc:
        raise ValueError(f"{set_type} entry {entry!r}: {exc}") from None
    if nomatch:
        if set_type != "hash:net":
            raise ValueError(f"nomatch needs a hash:net type, not {set_type}")
        body += nla(IPSET_ATTR_CADT_FLAGS | NLA_F_NET_BYTEORDER, struct.pack("!I", IPSET_FLAG_NOMATCH))
    return _HH.pack(4 + len(body), IPSET_ATTR_DATA | NLA_F_NESTED) + body


def encode_create(s: IpSet, name: str, revision: int, exclusive: bool) -> tuple[int, int, bytes]:
    """(message type, flags, payload) of ``ipset create name <s's type and options>`` (``-exist`` unless
    ``exclusive``)."""
    data = []
    if s.type.startswith("hash:"):
        data += [nla(IPSET_ATTR_HASHSIZE | NLA_F_NET_BYTEORDER, struct.pack("!I", s.hashsize)),
                 nla(IPSET_ATTR_MAXELEM | NLA_F_NET_BYTEORDER, struct.pack("!I", s.maxelem))]
    if s.timeout is not None:
        data.append(nla(IPSET_ATTR_TIMEOUT | NLA_F_NET_BYTEORDER, struct.pack("!I", s.timeout)))
    if s.comment:
        data.append(nla(IPSET_ATTR_CADT_FLAGS | NLA_F_NET_BYTEORDER, struct.pack("!I", IPSET_FLAG_WITH_COMMENT)))
    payload = _head(AF[s.family], _name(IPSET_ATTR_SETNAME, name), _name(IPSET_ATTR_TYPENAME, s.type),
                    nla(IPSET_ATTR_REVISION, struct.pack("=B", revision)),
                    nla(IPSET_ATTR_FAMILY, struct.pack("=B", AF[s.family])),
                    nla(IPSET_ATTR_DATA | NLA_F_NESTED, b"".join(data)))
    return _mtype(IPSET_CMD_CREATE), NLM_F_EXCL if exclusive else 0, payload


def encode_cmd(cmd: int, name: str, name2: str | None = None) -> tuple[int, int, bytes]:
    """destroy / flush (one set name) or swap (two)."""
    attrs = [_name(IPSET_ATTR_SETNAME, name)]
    if name2 is not None:
        attrs.append(_name(IPSET_ATTR_SETNAME2, name2))
    return _mtype(cmd), 0, _head(socket.AF_INET, *attrs)


@dataclass
class SyncResult:
    """What :meth:`IpsetNl.sync` did: the sets swapped in, and those left for the caller (with why)."""

    synced: list[str]
    failed: list[tuple[IpSet, str]]


class IpsetNl:
    """ipset commands over one netfilter netlink socket (opened in the calling thread's namespace).

    Not thread-safe: use one instance per thread, or one per call."""

    def __init__(self) -> None:
        self.nl = NetlinkSocket(NETLINK_NETFILTER)
        self._revisions: dict[tuple[str, str], int] = {}

    def close(self) -> None:
        self.nl.close()

    def __enter__(self) -> IpsetNl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def sent_messages(self) -> int:
        return self.nl.sent_messages

    # ------------------------------------------------------------------------------------------ queries
    def revision(self, set_type: str, family: str) -> int:
        """The newest revision of ``set_type`` this kernel has (``IPSET_CMD_TYPE``, cached)."""
        key = (set_type, family)
        if key not in self._revisions:
            payload = _head(AF[family], _name(IPSET_ATTR_TYPENAME, set_type),
                            nla(IPSET_ATTR_FAMILY, struct.pack("=B", AF[family])))
            try:
                replies = self.nl.query(_mtype(IPSET_CMD_TYPE), 0, payload)
            except OSError as exc:
                raise IpsetNlError(exc.errno or 0, f"ipset type {set_type} ({family}): {exc}") from exc
            rev = None
            for reply in replies:
                for kind, value in iter_attrs(reply, 4):
                    if kind == IPSET_ATTR_REVISION:
                        rev = value[0]
            if rev is None:
                raise IpsetNlError(0, f"ipset type {set_type}: no revision in the kernel's reply")
            self._revisions[key] = rev
        return self._revisions[key]

    # ------------------------------------------------------------------------------------------ writes
    def _send(self, msgs: Sequence[tuple[int, int, bytes]] | _Fill) -> dict[int, int]:
        """Send ``(type, flags, payload)`` messages in batches; ``{index: errno}`` of the refused ones."""

        def build(i: int, seq: int, ack: bool) -> bytes:
            mtype, flags, payload = msgs[i]
            return HDR.pack(16 + len(payload), mtype, NLM_F_REQUEST | flags | (NLM_F_ACK if ack else 0), seq, 0) + payload

        return self.nl.send_all(build, len(msgs)) if msgs else {}

    def sync(self, sets: Iterable[IpSet]) -> SyncResult:
        """Make each set hold exactly its entries (temporary set filled, then swapped in), in two batches.

        A set whose entries or type cannot be encoded, or that the kernel refused at any step, is left as it
        was and returned in :attr:`SyncResult.failed` (its temporary set destroyed)."""
        res = SyncResult([], [])
        fill = _Fill()
        spans: list[tuple[IpSet, int, int]] = []  # (set, first message index, end) of each set's fill
        for s in sets:
            tmp = temp_name(s.kernel_name)
            try:
                if s.type not in SUPPORTED:
                    raise ValueError(f"set type {s.type} not encoded here")
                af = AF[s.family]
                add_head = _head(af, _name(IPSET_ATTR_SETNAME, tmp))
                blob, ends = bytearray(), array("I")
                for e in sorted(set(s.entries)):
                    blob += encode_entry(s.type, s.family, e)
                    ends.append(len(blob))
                for e in sorted(set(s.nomatch)):
                    blob += encode_entry(s.type, s.family, e, nomatch=True)
                    ends.append(len(blob))
                create = encode_create(s, tmp, self.revision(s.type, s.family), exclusive=True)
            except (ValueError, IpsetNlError) as exc:
                res.failed.append((s, str(exc)))
                continue
            first = len(fill)
            fill.add([encode_cmd(IPSET_CMD_DESTROY, tmp), create], add_head, blob, ends)
            spans.append((s, first, len(fill)))
        errs = self._send(fill)
        swap: list[tuple[int, int, bytes]] = []
        swap_spans: list[tuple[IpSet, int, int]] = []
        for s, first, end in spans:
            tmp = temp_name(s.kernel_name)
            bad = [(i, e) for i, e in errs.items() if first <= i < end and not (i == first and e == ENOENT)]
            if bad:
                i, e = min(bad)
                res.failed.append((s, f"{_what(fill[i])} refused: {_strerror(e)} ({len(bad)} refusals)"))
                swap.append(encode_cmd(IPSET_CMD_DESTROY, tmp))
                continue
            first2 = len(swap)
            swap += [encode_create(s, s.kernel_name, self.revision(s.type, s.family), exclusive=False),
                     encode_cmd(IPSET_CMD_SWAP, tmp, s.kernel_name), encode_cmd(IPSET_CMD_DESTROY, tmp)]
            swap_spans.append((s, first2, len(swap)))
        errs2 = self._send(swap)
        for s, first, end in swap_spans:
            bad = sorted((i, e) for i, e in errs2.items() if first <= i < end)
            if bad:
                i, e = bad[0]
                res.failed.append((s, f"{_what(swap[i])} refused: {_strerror(e)}"))
            else:
                res.synced.append(s.kernel_name)
        return res

    def update_members(self, sets: dict[str, tuple[str, str]], add: Iterable[tuple[str, str]] = (),
                       delete: Iterable[tuple[str, str]] = ()) -> dict[tuple[str, str, str], int]:
        """Add/delete single members (``(kernel set name, entry)``), ``sets`` giving each name's (type, family).

        Like ``ipset restore -exist``: an add of a present member and a delete of a missing one are not
        errors. Returns ``{(op, set, entry): errno}`` of the refused ones."""
        ops: list[tuple[str, str, str]] = [("del", n, e) for n, e in delete] + [("add", n, e) for n, e in add]
        msgs = []
        for op, name, entry in ops:
            set_type, family = sets[name]
            payload = _head(AF[family], _name(IPSET_ATTR_SETNAME, name)) + encode_entry(set_type, family, entry)
            msgs.append((_mtype(IPSET_CMD_DEL if op == "del" else IPSET_CMD_ADD), 0, payload))
        return {ops[i]: e for i, e in self._send(msgs).items()}


class _Fill:
    """The messages of a sync's fill batch, made when sent: per set a few commands, then one add per
    member whose data attributes sit in one bytes blob (ends[i] = end of member i). 10k members are one
    blob and an array, not 10k (type, flags, payload) tuples of their own (fresh pages cost in UML)."""

    def __init__(self) -> None:
        self._firsts: list[int] = []
        self._parts: list[tuple[list[tuple[int, int, bytes]], bytes, bytearray, array[int]]] = []
        self._n = 0

    def add(self, cmds: list[tuple[int, int, bytes]], add_head: bytes, blob: bytearray, ends: array[int]) -> None:
        self._firsts.append(self._n)
        self._parts.append((cmds, add_head, blob, ends))
        self._n += len(cmds) + len(ends)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> tuple[int, int, bytes]:
        if not 0 <= i < self._n:
            raise IndexError(i)
        k = bisect.bisect_right(self._firsts, i) - 1
        cmds, add_head, blob, ends = self._parts[k]
        j = i - self._firsts[k]
        if j < len(cmds):
            return cmds[j]
        j -= len(cmds)
        return _ADD, 0, add_head + blob[ends[j - 1] if j else 0: ends[j]]


_ADD = _mtype(IPSET_CMD_ADD)


def _what(msg: tuple[int, int, bytes]) -> str:
    cmd = msg[0] & 0xFF
    return {IPSET_CMD_CREATE: "create", IPSET_CMD_DESTROY: "destroy", IPSET_CMD_SWAP: "swap",
            IPSET_CMD_ADD: "add", IPSET_CMD_DEL: "del", IPSET_CMD_FLUSH: "flush"}.get(cmd, f"command {cmd}")


IPSET_ERRORS = {4097: "protocol error", 4098: "set type not found", 4099: "too many sets", 4100: "set busy",
                4101: "second set missing", 4102: "set types differ", 4103: "set exists with other options",
                4104: "invalid CIDR", 4105: "invalid netmask", 4106: "invalid family", 4107: "timeout unsupported",
                4108: "set referenced", 4109: "invalid IPv4 address", 4110: "invalid IPv6 address",
                4352: "type-specific error (hash full?)"}


def _strerror(e: int) -> str:
    return IPSET_ERRORS.get(e) or os.strerror(e)


def add_members(set_name: str, set_type: str, family: int, entries: Sequence[str]) -> dict[str, int]:
    """Add ``entries`` to an existing set (``family`` 4 or 6); returns ``{entry: errno}`` of the refused ones."""
    fam = "inet" if family == 4 else "inet6"
    with IpsetNl() as nl:
        errs = nl.update_members({set_name: (set_type, fam)}, add=[(set_name, e) for e in entries])
    return {e: err for (_op, _n, e), err in errs.items()}
