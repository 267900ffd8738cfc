"""This node's side of the proxy: ``kube-dummy-if`` and its VIPs, local-table routes, local addresses,
the sysctls kube-router sets.

VIP addresses and their local-table routes are written in batches over one raw rtnetlink socket
(:class:`kr_core.net.netlink.NetlinkSocket`: one ``sendmsg`` per up to 1,000 messages, one ack per batch),
because a cold sync at 10k Services adds 10k+ addresses and as many routes and a pyroute2 call per
address costs ~1 ms on a host (more in UML). Routes are encoded by :func:`kr_core.net.links.encode_route`. Links and address reads use pyroute2, made
lazily in the thread that uses it (a pyroute2 ``IPRoute`` belongs to the thread that created it).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from kr_core.net import links, sysctl
from kr_core.net.links import Route
from kr_core.net.netlink import HDR, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkSocket, nla

log = logging.getLogger("kr.ipvs_proxy.host")

DUMMY = "kube-dummy-if"
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_GETROUTE, RTN_LOCAL = 26, 2
RTA_DST, RTA_OIF, RTA_PRIORITY, RTA_PREFSRC, RTA_TABLE = 1, 4, 6, 7, 15
_HH = struct.Struct("=HH")
_U16 = struct.Struct("=H")
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_NODAD = 0x02
RT_SCOPE_LINK, RT_SCOPE_HOST = 253, 254
RTPROT_KERNEL = 2
TABLE_LOCAL = 255
BINDON_EXCLUDE = ("dummy", "kube", "docker")  # --nodeport-bindon-all-ip skips interfaces named like these
AF = {4: socket.AF_INET, 6: socket.AF_INET6}

SYSCTLS = {
    "net.ipv4.vs.conntrack": 1,
    "net.ipv4.vs.expire_nodest_conn": 1,
    "net.ipv4.vs.expire_quiescent_template": 1,
    "net.ipv4.vs.conn_reuse_mode": 0,
    "net.ipv4.conf.all.arp_ignore": 1,
    "net.ipv4.conf.all.arp_announce": 2,
}


def encode_addr(op: str, family: int, addr: str, index: int, seq: int, ack: bool) -> bytes:
    """RTM_NEWADDR (replace) / RTM_DELADDR of a host-length ``addr`` on link ``index`` (scope link)."""
    raw = socket.inet_pton(AF[family], addr)
    plen = 32 if family == 4 else 128
    body = struct.pack("=BBBBI", AF[family], plen, IFA_F_NODAD if family == 6 else 0, RT_SCOPE_LINK, index)
    body += nla(IFA_LOCAL, raw) + nla(IFA_ADDRESS, raw)
    if family == 6:
        body += nla(IFA_FLAGS, struct.pack("=I", IFA_F_NODAD))
    if op == "add":
        mtype, flags = RTM_NEWADDR, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE
    else:
        mtype, flags = RTM_DELADDR, NLM_F_REQUEST
    return HDR.pack(16 + len(body), mtype, flags | (NLM_F_ACK if ack else 0), seq, 0) + body


_PLACEHOLDER = {4: "192.0.2.1", 6: "2001:db8::1"}


def _templated(msg: bytes, slots: tuple[int, ...], alen: int) -> Callable[[bytes, int, bool], bytes]:
    """An encoder ``(raw address, seq, ack) -> message`` from one sample ``msg`` whose address bytes sit at
    ``slots``: everything else (header size and type, flags, link, table, source...) is copied, only the
    sequence number, the ack flag and the address change. One ``struct`` call per message: 10k VIPs
    are 20k messages on a cold sync."""
    head, flags = msg[:6], _U16.unpack_from(msg, 6)[0] & ~NLM_F_ACK
    pieces, prev = [], 16
    for off in slots:
        pieces.append(msg[prev:off])
        prev = off + alen
    tail = msg[prev:]
    st = struct.Struct("=6sHI4x" + "".join(f"{len(x)}s{alen}s" for x in pieces) + f"{len(tail)}s")
    pack = st.pack
    if len(slots) == 1:
        (p0,) = pieces
        return lambda raw, seq, ack: pack(head, flags | (NLM_F_ACK if ack else 0), seq, p0, raw, tail)
    p0, p1 = pieces
    return lambda raw, seq, ack: pack(head, flags | (NLM_F_ACK if ack else 0), seq, p0, raw, p1, raw, tail)


@functools.lru_cache(maxsize=64)
def addr_encoder(op: str, family: int, index: int) -> Callable[[bytes, int, bool], bytes]:
    """:func:`encode_addr` for one (op, family, link) as a template: the packed address (``inet_pton``)
    goes in at IFA_LOCAL and IFA_ADDRESS."""
    alen = 4 if family == 4 else 16
    sample = encode_addr(op, family, _PLACEHOLDER[family], index, 0, False)
    slots = (16 + 8 + 4, 16 + 8 + 4 + alen + 4)  # ifaddrmsg, then IFA_LOCAL and IFA_ADDRESS
    raw = socket.inet_pton(AF[family], _PLACEHOLDER[family])
    assert all(sample[o:o + alen] == raw for o in slots), "encode_addr layout changed"
    return _templated(sample, slots, alen)


@functools.lru_cache(maxsize=64)
def vip_route_encoder(op: str, family: int, src: str | None, index: int) -> Callable[[bytes, int, bool], bytes]:
    """:func:`kr_core.net.links.encode_route` of a VIP's local route (see :meth:`Host.vip_routes`) as a
    template: the packed VIP goes in at RTA_DST (right after the rtmsg)."""
    alen = 4 if family == 4 else 16
    sample = links.encode_route(_vip_route(family, _PLACEHOLDER[family], src, index), op, 0, ack=False)
    slot = 16 + 12 + 4
    assert sample[slot:slot + alen] == socket.inet_pton(AF[family], _PLACEHOLDER[family]), "encode_route layout changed"
    return _templated(sample, (slot,), alen)


def _vip_route(family: int, addr: str, src: str | None, index: int) -> Route:
    return Route(dst=f"{addr}/{32 if family == 4 else 128}", oif=index, table=TABLE_LOCAL, proto=RTPROT_KERNEL,
                 prefsrc=src, type="local", scope=RT_SCOPE_HOST)


class Host:
    """Link, address and route operations of one network namespace (the calling thread's)."""

    def __init__(self) -> None:
        self._ipr: Any = None
        self._owner: int | None = None
        self._nl: NetlinkSocket | None = None

    @property
    def ipr(self) -> Any:
        if self._ipr is None or self._owner != threading.get_ident():
            from pyroute2 import IPRoute

            if self._ipr is not None:
                self._ipr.close()
            self._ipr, self._owner = IPRoute(), threading.get_ident()
        return self._ipr

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        if self._nl is not None:
            self._nl.close()
            self._nl = None

    # ---------------------------------------------------------------------------------- links
    def ensure_dummy(self) -> int:
        """Create ``kube-dummy-if`` if missing, bring it up; returns its index."""
        idx = links.link_index(self.ipr, DUMMY)
        if idx is None:
            self.ipr.link("add", ifname=DUMMY, kind="dummy")
            idx = links.link_index(self.ipr, DUMMY)
            log.info("link %s created", DUMMY)
        self.ipr.link("set", index=idx, state="up")
        assert idx is not None
        return idx

    def dummy_index(self) -> int | None:
        return links.link_index(self.ipr, DUMMY)

    def delete_dummy(self) -> bool:
        return links.delete_link(self.ipr, DUMMY)

    def _addresses(self) -> list[tuple[int, int, str]]:
        """(link index, family, address) of every address: one raw RTM_GETADDR dump with a lean parser.

        pyroute2 parses ~1-2 ms per address in UML; with 10k VIPs on kube-dummy-if that was 20 s."""
        nl = self._socket()
        ntop, unpack, hh = socket.inet_ntop, struct.unpack_from, _HH.unpack_from

        def parse(p: memoryview) -> tuple[int, int, str] | None:
            af, _plen, _flags, _scope, index = unpack("=BBBBI", p, 0)
            off, end = 8, len(p)
            addr = local = None
            while off + 4 <= end:
                ln, t = hh(p, off)
                if ln < 4:
                    break
                if t == IFA_ADDRESS:
                    addr = bytes(p[off + 4: off + ln])
                elif t == IFA_LOCAL:
                    local = bytes(p[off + 4: off + ln])
                off += (ln + 3) & ~3
            raw = local or addr
            if raw is None or af not in (socket.AF_INET, socket.AF_INET6):
                return None
            return index, 4 if af == socket.AF_INET else 6, ntop(af, raw)

        return nl.dump(RTM_GETADDR, struct.pack("=BBBBI", 0, 0, 0, 0, 0), parse)

    def lo_index(self) -> int:
        idx = links.link_index(self.ipr, "lo")
        assert idx is not None
        return idx

    def dummy_routes(self) -> dict[tuple[int, str], str | None]:
        """(family, VIP) -> source address of every ``local`` host route (/32, /128) of table local through
        ``kube-dummy-if``, except the kernel's own route for an address (IPv4: source = the address itself;
        IPv6: metric 0, no source): what kr installed, in either VIP mode."""
        idx = self.dummy_index()
        if idx is None:
            return {}
        ntop = socket.inet_ntop
        out: dict[tuple[int, str], str | None] = {}
        for af in (socket.AF_INET, socket.AF_INET6):
            fam = 4 if af == socket.AF_INET else 6
            for dst, src, oif, metric in self._local_host_routes(af):
                if oif == idx and src != dst and not (fam == 6 and metric == 0):
                    out[(fam, ntop(af, dst))] = ntop(af, src) if src else None
        return out

    def dummy_addresses(self) -> set[tuple[int, str]]:
        """(family, address) of every address on ``kube-dummy-if`` but the kernel's IPv6 link-local one."""
        idx = self.dummy_index()
        if idx is None:
            return set()
        return {(f, a) for i, f, a in self._addresses() if i == idx and not a.startswith("fe80:")}

    def local_addresses(self) -> list[tuple[str, str]]:
        """(interface name, address) of every address on this node except loopback, link-local and the
        VIPs on ``kube-dummy-if``."""
        names = {link["index"]: link.get("IFLA_IFNAME") for link in self.ipr.get_links()}
        out = []
        for i, _f, addr in self._addresses():
            name = names.get(i, "")
            if name in ("lo", DUMMY) or addr.startswith("fe80:"):
                continue
            out.append((name, addr))
        return out

    # ---------------------------------------------------------------------------------- VIPs
    def apply_addresses(self, add: Iterable[tuple[int, str]], delete: Iterable[tuple[int, str]], index: int,
                        ) -> list[tuple[str, tuple[int, str], int]]:
        """Add/remove VIPs on link ``index`` in batches; returns the failures (op, (family, addr), errno)
        (deleting an absent address is not a failure)."""
        ops = [("del", x) for x in delete] + [("add", x) for x in add]
        if not ops:
            return []
        pton = socket.inet_pton

        def build(i: int, seq: int, ack: bool) -> bytes:
            op, (fam, addr) = ops[i]
            return addr_encoder(op, fam, index)(pton(AF[fam], addr), seq, ack)

        errs = self._socket().send_all(build, len(ops))
        out = []
        for i, e in sorted(errs.items()):
            op, x = ops[i]
            if op == "del" and e in (99, 19):  # EADDRNOTAVAIL / ENODEV: already gone
                continue
            out.append((op, x, e))
        return out

    def vip_routes(self, vips: Iterable[tuple[int, str]], node_ips: dict[int, str], index: int) -> list[Route]:
        """kube-router's ``ip route replace local VIP dev kube-dummy-if table local proto kernel scope host
        src <node IP>``, so host-originated traffic never picks a VIP as its source.

        For IPv6 see :meth:`apply_routes`: the kernel's own local route is deleted first."""
        out = []
        for fam, addr in vips:
            src = node_ips.get(fam)
            if not src:
                continue
            out.append(_vip_route(fam, addr, src, index))
        return out

    def apply_vip_routes(self, replace: Iterable[tuple[int, str]], delete: Iterable[tuple[int, str]],
                         node_ips: dict[int, str], index: int, fresh: Iterable[tuple[int, str]] | None = None,
                         no_src: bool = False) -> links.BatchResult:
        """:meth:`apply_routes` of the :meth:`vip_routes` of these VIPs, encoded from templates (no
        :class:`Route` per VIP; what the kernel refuses is reported as one). ``fresh``: the VIPs whose
        address was just added (their IPv6 kernel route is deleted first; default: every IPv6 one of
        ``replace``); ``index`` is the link the routes go through. A VIP of a family without a node IP
        gets no route, or with ``no_src`` (route mode: the route is all that makes it local) one without
        a source address."""
        pton = socket.inet_pton
        if no_src:
            node_ips = {4: node_ips.get(4) or "", 6: node_ips.get(6) or ""}
            rep, dele = list(replace), list(delete)
        else:
            rep = [(f, a) for f, a in replace if node_ips.get(f)]
            dele = [(f, a) for f, a in delete if node_ips.get(f)]
        v6 = {a: index for f, a in (rep if fresh is None else fresh) if f == 6 and node_ips.get(f)}
        ops: list[tuple[str, int, str, str | None]] = [("delete", f, a, node_ips[f] or None) for f, a in dele]
        ops += [("delete", 6, a, None) for a in sorted(self.kernel_routes6(v6))]
        ops += [("replace", f, a, node_ips[f] or None) for f, a in rep]
        res = links.BatchResult()
        if not ops:
            return res

        def build(i: int, seq: int, ack: bool) -> bytes:
            op, fam, addr, src = ops[i]
            return vip_route_encoder(op, fam, src, index)(pton(AF[fam], addr), seq, ack)

        errs = self._socket().send_all(build, len(ops))
        for op, *_ in ops:
            if op == "replace":
                res.replaced += 1
            else:
                res.deleted += 1
        for i, e in sorted(errs.items()):
            op, fam, addr, src = ops[i]
            if op == "replace":
                res.replaced -= 1
            else:
                res.deleted -= 1
            if op == "delete" and e == errno.ESRCH:
                res.missing += 1
            else:
                res.errors.append((op, _vip_route(fam, addr, src, index), e))
        for op, route, e in res.errors[:10]:
            log.warning("route %s %s: %s", op, route.dst, os.strerror(e))
        return res

    def _socket(self) -> NetlinkSocket:
        if self._nl is None:
            self._nl = NetlinkSocket(socket.NETLINK_ROUTE)
        return self._nl

    def apply_routes(self, replace: list[Route], delete: list[Route]) -> links.BatchResult:
        """Delete, then replace routes over the same socket as the addresses (1,000 messages per
        ``sendmsg``, one ack per batch); deleting a route that is not there is not an error.

        IPv6 local routes are keyed by metric as well: the kernel's own route for a new address has metric 0
        and no ``src``, and a replacement cannot have metric 0 (the kernel makes it 1024), so it would only
        add a second route behind the kernel's; the node would then send from the VIP, and its connections
        to IPv6 VIPs failed. As kube-router does, the kernel's route is deleted: see :meth:`kernel_routes6`."""
        v6 = {r.dst.split("/")[0]: r.oif for r in replace if r.type == "local" and ":" in r.dst}
        strays = [Route(dst=f"{a}/128", oif=v6[a], table=TABLE_LOCAL, proto=RTPROT_KERNEL, type="local",
                        scope=RT_SCOPE_HOST) for a in sorted(self.kernel_routes6(v6))]
        ops = [("delete", r) for r in [*delete, *strays]] + [("replace", r) for r in replace]
        res = links.BatchResult()
        if not ops:
            return res
        errs = self._socket().send_all(lambda i, seq, ack: links.encode_route(ops[i][1], ops[i][0], seq, ack=ack),
                                       len(ops))
        for i, (op, route) in enumerate(ops):
            e = errs.get(i)
            if e is None:
                if op == "replace":
                    res.replaced += 1
                else:
                    res.deleted += 1
            elif op == "delete" and e == errno.ESRCH:
                res.missing += 1
            else:
                res.errors.append((op, route, e))
        for op, route, e in res.errors[:10]:
            log.warning("route %s %s: %s", op, route.dst, os.strerror(e))
        return res

    def kernel_routes6(self, vips: dict[str, int | None], wait: float = 2.0) -> set[str]:
        """Those of ``vips`` (IPv6 address -> link index) whose kernel-made local route (table local, metric
        0) is present, waiting up to ``wait`` seconds for it: the kernel adds it from a work queue after the
        address (even a NODAD one), so right after the address it may not be there yet. A delete without a
        metric removes the lowest-metric match, so once this returned an address, deleting its route removes
        the kernel's and never kr's own (metric 1024)."""
        if not vips:
            return set()
        deadline = time.monotonic() + wait
        while True:
            found = {a for a, oif in self._local_routes6() if a in vips and vips[a] in (None, oif)}
            if len(found) == len(vips) or time.monotonic() >= deadline:
                if len(found) < len(vips):
                    log.warning("%d IPv6 VIPs: no kernel local route after %.1f s", len(vips) - len(found), wait)
                return found
            time.sleep(0.01)

    def _local_routes6(self) -> list[tuple[str, int]]:
        """(address, link index) of the IPv6 ``local``-type, metric-0, /128 routes of table local."""
        ntop = socket.inet_ntop
        return [(ntop(socket.AF_INET6, dst), oif) for dst, _src, oif, metric in self._local_host_routes(socket.AF_INET6)
                if metric == 0]

    def _local_host_routes(self, af: int) -> list[tuple[bytes, bytes | None, int, int]]:
        """(destination, preferred source, link index, metric) of the family's ``local``-type host routes
        (/32, /128) of table local: one raw dump, attributes walked by hand (a hot read at 10k VIPs)."""
        unpack, hh = struct.unpack_from, _HH.unpack_from
        host_len = 32 if af == socket.AF_INET else 128

        def parse(p: memoryview) -> tuple[bytes, bytes | None, int, int] | None:
            rf, dst_len, _s, _t, table, _proto, _scope, rtype = unpack("=BBBBBBBB", p, 0)
            if rf != af or dst_len != host_len or rtype != RTN_LOCAL:
                return None
            off, end = 12, len(p)
            dst = src = None
            oif = metric = 0
            while off + 4 <= end:
                ln, t = hh(p, off)
                if ln < 4:
                    break
                if t == RTA_DST:
                    dst = bytes(p[off + 4: off + ln])
                elif t == RTA_PREFSRC:
                    src = bytes(p[off + 4: off + ln])
                elif t == RTA_OIF:
                    oif = unpack("=I", p, off + 4)[0]
                elif t == RTA_PRIORITY:
                    metric = unpack("=I", p, off + 4)[0]
                elif t == RTA_TABLE:
                    table = unpack("=I", p, off + 4)[0]
                off += (ln + 3) & ~3
            if dst is None or table != TABLE_LOCAL:
                return None
            return dst, src, oif, metric

        return self._socket().dump(RTM_GETROUTE, struct.pack("=BBBBBBBBI", af, 0, 0, 0, 0, 0, 0, 0, 0), parse)

    # ---------------------------------------------------------------------------------- sysctls
    def set_sysctls(self, interfaces: Iterable[str] = ()) -> None:
        for name, value in SYSCTLS.items():
            try:
                sysctl.set(name, value)
            except OSError as exc:
                log.warning("sysctl %s: %s", name, exc)
        for iface in ("all", DUMMY, *interfaces):
            try:
                sysctl.change_from(f"net/ipv4/conf/{iface}/rp_filter", 1, 2)
            except OSError:
                pass
