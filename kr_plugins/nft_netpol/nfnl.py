"""Hot-path changes as one raw nfnetlink batch (one nf_tables transaction), without libnftables.

Why: libnftables fetches the definitions of every set and chain of the ruleset before it runs any command
(its cache), so one ``add element`` into a table of 1,000 sets and 1,300 chains costs 1.5-2.5 ms (JSON
input slower than text), most of it listing. The hot path of a network-policy backend is exactly that:
a pod appears, its address goes into a few sets (and, for a local pod, its own chain is created). This
module encodes only those messages: set and verdict-map elements (``NFT_MSG_NEWSETELEM``/``DELSETELEM``),
plain address sets (``NEWSET``/``DELSET``), regular chains (``NEWCHAIN``/``DELCHAIN``, flush = ``DELRULE``) and
rules made of the expressions pod and policy chains use (immediate verdicts and jumps, ``fib saddr type
local``, ``limit``, ``log group``, ``reject``, ``ip[6] saddr/daddr @set``, ``meta l4proto``, ``tcp/udp/sctp
dport`` equal to a port or in a range, a comment),
between ``NFNL_MSG_BATCH_BEGIN`` and ``_END``; it sends them on a netfilter netlink socket and reads one ack
per message, so the kernel applies them atomically (all or nothing, as libnftables would) in tens of
microseconds. :func:`ops_from_json` says whether a libnftables JSON command list can go this way; anything
else (base chains, set definitions, interval sets, other expressions) goes through libnftables.

The socket belongs to the network namespace of the thread that creates :class:`ElementWriter`.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import struct
import threading
from collections.abc import Iterable, Sequence

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NFT_MSG_NEWSET = 9
NFT_MSG_DELSET = 11
NFT_MSG_NEWCHAIN = 3
NFT_MSG_DELCHAIN = 5
NFT_MSG_NEWRULE = 6
NFT_MSG_DELRULE = 8
NFT_MSG_NEWSETELEM = 12
NFT_MSG_DELSETELEM = 14
NLM_F_APPEND = 0x800
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_CREATE = 0x400
NLMSG_ERROR = 0x2
NLA_F_NESTED = 0x8000
NFPROTO = {"inet": 1, "ip": 2, "ip6": 10}
NFT_JUMP = -3
NFT_GOTO = -4
NFT_RETURN = -5
NF_DROP, NF_ACCEPT = 0, 1
VERDICTS = {"accept": NF_ACCEPT, "drop": NF_DROP, "return": NFT_RETURN}
LIMIT_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}

# attribute types
LIST_TABLE, LIST_SET, LIST_ELEMENTS = 1, 2, 3
LIST_ELEM = 1
ELEM_KEY, ELEM_DATA = 1, 2
DATA_VALUE, DATA_VERDICT = 1, 2
VERDICT_CODE, VERDICT_CHAIN = 1, 2


class NfnlError(RuntimeError):
    def __init__(self, err: int, what: str = "") -> None:
        super().__init__(f"nfnetlink{f' ({what})' if what else ''}: {os.strerror(err)} (errno {err})")
        self.errno = err


def _attr(kind: int, payload: bytes, nested: bool = False) -> bytes:
    length = 4 + len(payload)
    pad = (4 - length % 4) % 4
    return struct.pack("=HH", length, kind | (NLA_F_NESTED if nested else 0)) + payload + b"\0" * pad


def _str(kind: int, text: str) -> bytes:
    return _attr(kind, text.encode() + b"\0")


# an address element, pre-encoded: LIST_ELEM{ ELEM_KEY{ DATA_VALUE<address> } } (no padding: 4/16 bytes)
_ELEM4 = struct.pack("=HHHHHH", 16, LIST_ELEM | NLA_F_NESTED, 12, ELEM_KEY | NLA_F_NESTED, 8, DATA_VALUE)
_ELEM6 = struct.pack("=HHHHHH", 28, LIST_ELEM | NLA_F_NESTED, 24, ELEM_KEY | NLA_F_NESTED, 20, DATA_VALUE)
_inet_pton = socket.inet_pton


def _packed(addr: str) -> bytes:
    return _inet_pton(socket.AF_INET6 if ":" in addr else socket.AF_INET, addr)


def _key(addr: str) -> bytes:
    return _attr(ELEM_KEY, _attr(DATA_VALUE, _packed(addr)), nested=True)


def _verdict(target: str, code: int = NFT_JUMP) -> bytes:
    v = _attr(VERDICT_CODE, struct.pack(">i", code)) + _str(VERDICT_CHAIN, target)
    return _attr(ELEM_DATA, _attr(DATA_VERDICT, v, nested=True), nested=True)


Element = str | tuple[str, str]  # an address, or (address, chain to jump to) for a verdict map
#: ("add"|"delete", set name, elements) | ("add_chain"|"flush_chain"|"delete_chain", chain) |
#: ("add_rule", chain, encoded expressions, comment) | ("add_set", name, key type, key length) | ("delete_set", name)
Op = tuple


# ------------------------------------------------------------------------------------------ rules

def _u32(kind: int, v: int) -> bytes:
    return _attr(kind, struct.pack(">I", v & 0xFFFFFFFF))


def _expr(name: str, data: bytes) -> bytes:
    return _attr(LIST_ELEM, _str(1, name) + _attr(2, data, nested=True), nested=True)


def _verdict_expr(code: int, chain: str | None = None) -> bytes:
    v = _attr(VERDICT_CODE, struct.pack(">i", code)) + (_str(VERDICT_CHAIN, chain) if chain else b"")
    return _expr("immediate", _u32(1, 0) + _attr(2, _attr(DATA_VERDICT, v, nested=True), nested=True))


ADDR_FIELDS = {("ip", "saddr"): (2, 12, 4), ("ip", "daddr"): (2, 16, 4),
               ("ip6", "saddr"): (10, 8, 16), ("ip6", "daddr"): (10, 24, 16)}  # nfproto, offset, length
L4PROTO = {"tcp": 6, "udp": 17, "sctp": 132}
SET_KEY = {"ipv4_addr": (7, 4), "ipv6_addr": (8, 16)}  # nft datatype id, key length


def _cmp(op: int, data: bytes) -> bytes:
    return _expr("cmp", _u32(1, 1) + _u32(2, op) + _attr(3, _attr(DATA_VALUE, data), nested=True))


def _meta(key: int) -> bytes:
    return _expr("meta", _u32(1, 1) + _u32(2, key))  # dreg 1, key (15 nfproto, 16 l4proto)


def _payload(base: int, offset: int, length: int) -> bytes:
    return _expr("payload", _u32(1, 1) + _u32(2, base) + _u32(3, offset) + _u32(4, length))


def _match_expr(v: dict) -> bytes | None:
    left, right = v["left"], v["right"]
    if v["op"] != "==":
        return None
    if left == {"fib": {"result": "type", "flags": ["saddr"]}} and right == "local":
        fib = _u32(1, 1) + _u32(2, 3) + _u32(3, 1)  # dreg 1, result addrtype, flags saddr
        return _expr("fib", fib) + _cmp(0, struct.pack("=I", 2))  # RTN_LOCAL
    if left == {"meta": {"key": "l4proto"}} and right in L4PROTO:
        return _meta(16) + _cmp(0, bytes([L4PROTO[right]]))
    pl = left.get("payload") if isinstance(left, dict) else None
    if not pl:
        return None
    where = ADDR_FIELDS.get((pl["protocol"], pl["field"]))
    if where is not None and isinstance(right, str) and right.startswith("@"):
        nfproto, off, length = where
        return (_meta(15) + _cmp(0, bytes([nfproto])) + _payload(1, off, length)
                + _expr("lookup", _str(1, right[1:]) + _u32(2, 1)))
    if pl["protocol"] in L4PROTO and pl["field"] == "dport":
        head = _meta(16) + _cmp(0, bytes([L4PROTO[pl["protocol"]]])) + _payload(2, 2, 2)
        if isinstance(right, int) and not isinstance(right, bool):
            return head + _cmp(0, struct.pack(">H", right))
        if isinstance(right, dict) and set(right) == {"range"}:
            lo, hi = right["range"]
            return head + _cmp(5, struct.pack(">H", lo)) + _cmp(3, struct.pack(">H", hi))  # gte, lte
    return None


def encode_expr(e: dict) -> bytes | None:
    """One libnftables JSON statement as netlink expressions; None when this module does not know it."""
    if len(e) != 1:
        return None
    ((k, v),) = e.items()
    if k == "match":
        return _match_expr(v)
    if k in VERDICTS and v is None:
        return _verdict_expr(VERDICTS[k])
    if k == "jump" and isinstance(v, dict) and set(v) == {"target"}:
        return _verdict_expr(NFT_JUMP, v["target"])
    if k == "limit" and isinstance(v, dict) and set(v) == {"rate", "burst", "per"} and v["per"] in LIMIT_UNITS:
        data = (_attr(1, struct.pack(">Q", v["rate"])) + _attr(2, struct.pack(">Q", LIMIT_UNITS[v["per"]]))
                + _u32(3, v["burst"]) + _u32(4, 0) + _u32(5, 0))
        return _expr("limit", data)
    if k == "log" and isinstance(v, dict) and set(v) == {"group"}:
        return _expr("log", _attr(1, struct.pack(">H", v["group"])))
    if k == "reject" and v is None:
        return _expr("reject", _u32(1, 2) + _attr(2, struct.pack("B", 1)))  # icmpx port-unreachable
    return None


def ops_from_json(cmds: Sequence[dict], table: str, known_sets: Iterable[str]) -> list[Op] | None:
    """libnftables JSON commands as :data:`Op`\\ s, or None when any of them is beyond this module."""
    known = set(known_sets)
    ops: list[Op] = []
    for c in cmds:
        if len(c) != 1:
            return None
        ((verb, body),) = c.items()
        if len(body) != 1:
            return None
        ((kind, spec),) = body.items()
        if spec.get("table") != table:
            return None
        if kind == "set" and verb == "add":
            if set(spec) - {"family", "table", "name", "type"} or spec["type"] not in SET_KEY:
                return None  # interval sets and others: libnftables
            known.add(spec["name"])
            ops.append(("add_set", spec["name"], *SET_KEY[spec["type"]]))
        elif kind == "set" and verb == "delete":
            ops.append(("delete_set", spec["name"]))
        elif kind == "element" and verb in ("add", "delete"):
            if spec["name"] not in known:
                return None
            elems = [e if isinstance(e, str) else (e[0], e[1]["jump"]["target"])
                     if isinstance(e, list) and set(e[1]) == {"jump"} else None for e in spec["elem"]]
            if any(x is None for x in elems):
                return None
            ops.append((verb, spec["name"], elems))
        elif kind == "chain" and verb in ("add", "flush", "delete"):
            if set(spec) - {"family", "table", "name"}:
                return None  # a base chain
            ops.append((f"{verb}_chain", spec["name"]))
        elif kind == "rule" and verb == "add":
            if set(spec) - {"family", "table", "chain", "expr", "comment"}:
                return None
            parts = [encode_expr(e) for e in spec["expr"]]
            if any(p is None for p in parts):
                return None
            ops.append(("add_rule", spec["chain"], b"".join(parts), spec.get("comment")))  # type: ignore[arg-type]
        else:
            return None
    return ops


def encode_elements(elems: Iterable[Element], with_data: bool = True) -> bytes:
    out = []
    for e in elems:
        if isinstance(e, tuple):
            body = _key(e[0]) + (_verdict(e[1]) if with_data else b"")
            out.append(_attr(LIST_ELEM, body, nested=True))
        elif ":" in e:
            out.append(_ELEM6 + _inet_pton(socket.AF_INET6, e))
        else:
            out.append(_ELEM4 + _inet_pton(socket.AF_INET, e))
    return b"".join(out)


class ElementWriter:
    """Adds and removes elements of named sets and verdict maps of one table, one batch per call."""

    def __init__(self, family: str, table: str) -> None:
        self.family = NFPROTO[family]
        self.table = table
        self._lock = threading.Lock()
        self._seq = itertools.count(int.from_bytes(os.urandom(2), "big") << 8)
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        self.sock.settimeout(5.0)

    def close(self) -> None:
        self.sock.close()

    def _msg(self, mtype: int, flags: int, seq: int, family: int, res_id: int, attrs: bytes) -> bytes:
        body = struct.pack("=BBH", family, 0, socket.htons(res_id)) + attrs
        return struct.pack("=IHHII", 16 + len(body), mtype, flags, seq, 0) + body

    def apply(self, changes: Sequence[Op], what: str = "") -> int:
        """``changes``: :data:`Op`\\ s, element ops being (``"add"`` | ``"delete"``, set or map name,
        elements). One transaction; raises :class:`NfnlError` (nothing applied) when the kernel refuses any
        of it. Returns messages sent."""
        changes = [c for c in changes if c[0] not in ("add", "delete") or c[2]]
        if not changes:
            return 0
        sub = NFNL_SUBSYS_NFTABLES << 8
        ack = NLM_F_REQUEST | NLM_F_ACK
        table = _str(1, self.table)
        with self._lock:
            seqs = []
            parts = [self._msg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, next(self._seq), 0, NFNL_SUBSYS_NFTABLES, b"")]
            for op in changes:
                seq = next(self._seq)
                seqs.append(seq)
                kind = op[0]
                if kind in ("add", "delete"):
                    _, name, elems = op
                    mtype, flags = (NFT_MSG_NEWSETELEM, ack | NLM_F_CREATE) if kind == "add" else (NFT_MSG_DELSETELEM, ack)
                    attrs = (_str(LIST_TABLE, self.table) + _str(LIST_SET, name)
                             + _attr(LIST_ELEMENTS, encode_elements(elems, with_data=kind == "add"), nested=True))
                elif kind == "add_set":
                    _, name, key_type, key_len = op
                    udata = struct.pack("=BBI", 0, 4, 2)  # NFTNL_UDATA_SET_KEYBYTEORDER: big endian
                    attrs = (table + _str(2, name) + _u32(3, 0) + _u32(4, key_type) + _u32(5, key_len)
                             + _u32(10, seq & 0xFFFFFFFF) + _attr(13, udata))
                    mtype, flags = NFT_MSG_NEWSET, ack | NLM_F_CREATE
                elif kind == "delete_set":
                    mtype, flags, attrs = NFT_MSG_DELSET, ack, table + _str(2, op[1])
                elif kind == "add_chain":
                    mtype, flags, attrs = NFT_MSG_NEWCHAIN, ack | NLM_F_CREATE, table + _str(3, op[1])
                elif kind == "delete_chain":
                    mtype, flags, attrs = NFT_MSG_DELCHAIN, ack, table + _str(3, op[1])
                elif kind == "flush_chain":
                    mtype, flags, attrs = NFT_MSG_DELRULE, ack, table + _str(2, op[1])
                elif kind == "add_rule":
                    _, chain, exprs, comment = op
                    attrs = table + _str(2, chain) + _attr(4, exprs, nested=True)
                    if comment:
                        text = comment.encode()[:126] + b"\0"
                        attrs += _attr(7, struct.pack("BB", 0, len(text)) + text)
                    mtype, flags = NFT_MSG_NEWRULE, ack | NLM_F_CREATE | NLM_F_APPEND
                else:
                    raise ValueError(f"unknown op {kind!r}")
                parts.append(self._msg(sub | mtype, flags, seq, self.family, 0, attrs))
            parts.append(self._msg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, next(self._seq), 0, NFNL_SUBSYS_NFTABLES, b""))
            self.sock.send(b"".join(parts))
            self._acks(set(seqs), what)
        return len(changes)

    def _acks(self, pending: set[int], what: str) -> None:
        first_err = 0
        while pending:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                if first_err:
                    break  # the batch was refused; some kernels do not ack the messages that were fine
                raise NfnlError(errno.ETIMEDOUT, what) from None
            off = 0
            while off + 16 <= len(data):
                length, mtype, _flags, seq, _pid = struct.unpack_from("=IHHII", data, off)
                if mtype == NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", data, off + 16)
                    pending.discard(seq)
                    if err and not first_err:
                        first_err = -err
                        self.sock.settimeout(0.2)
                off += (length + 3) & ~3 if length else len(data)
        self.sock.settimeout(5.0)
        if first_err:
            raise NfnlError(first_err, what)
