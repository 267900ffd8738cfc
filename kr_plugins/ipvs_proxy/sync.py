"""Diff the committed IPVS state against the desired one (pure) and keep the committed state current.

:func:`plan` produces the operations (tuples of :mod:`kr_plugins.ipvs_proxy.ipvs`) that turn ``committed``
into ``desired`` for a set of virtual servers (all of them in a full sync, one Service's in an event),
and nothing else: unchanged servers and destinations produce no operation, so a periodic sync with
nothing changed sends no message. Servers are never deleted and re-created to change a parameter (that
would push every destination through the kernel's dest trash, see ipvs-floors.md finding 1): the
scheduler, flags and timeout are changed in place (``set-svc``), weights likewise (``set-dest``).

With graceful termination a removed destination first gets weight 0 (``set-dest``) and is returned in
``Plan.drain``; the caller deletes it once its connections are gone or its grace period is over.

A full sync plans with ``whole=True``: a server not committed at all is one ``add-vs`` carrying the
desired server, and on a cold sync (nothing committed) the plan is just that per server, with no diff
object by object. :func:`commit` then keeps the model's destination dict itself as the committed one
(no copy of 100k destinations) and copies a server's dict only when a later change to it is committed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .ipvs import ADD_DEST, ADD_SVC, ADD_VS, DEL_DEST, DEL_SVC, SET_DEST, SET_SVC, Op
from .model import DKey, DVal, VirtualServer, VKey, VParams

Committed = dict[VKey, tuple[VParams, dict[DKey, DVal]]]


@dataclass
class Plan:
    ops: list[Op] = field(default_factory=list)
    drain: list[tuple[VKey, DKey]] = field(default_factory=list)  # destinations now at weight 0
    kept: list[VKey] = field(default_factory=list)  # unwanted servers kept because of --excluded-cidrs

    def count(self, kind: str) -> int:
        return sum(1 for o in self.ops if o[0] == kind)


def excluded(key: VKey, cidrs: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    if not key.addr:
        return False
    a = ipaddress.ip_address(key.addr)
    return any(a.version == n.version and a in n for n in cidrs)


def plan(committed: Mapping[VKey, tuple[VParams, dict[DKey, DVal]]], desired: Mapping[VKey, VirtualServer],
         keys: Iterable[VKey] | None = None, *, graceful: bool = False,
         excluded_cidrs: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] = (), whole: bool = False) -> Plan:
    """Operations turning ``committed`` into ``desired`` for ``keys`` (default: every key of both).

    ``whole``: a server not committed at all becomes one :data:`~.ipvs.ADD_VS` operation carrying the
    desired server (rendered straight from it; a cold sync's 100k destinations need no tuple each)
    instead of ``add-svc`` + one ``add-dest`` per destination."""
    p = Plan()
    ops = p.ops
    if keys is None:
        keys = list(desired) + [k for k in committed if k not in desired] if committed else desired
    if whole and not committed:  # cold sync: everything is new
        get = desired.get
        ops.extend([(ADD_VS, k, vs) for k in keys if (vs := get(k)) is not None])
        return p
    excl = list(excluded_cidrs)
    for k in keys:
        want = desired.get(k)
        have = committed.get(k)
        if want is None:
            if have is None:
                continue
            if excl and excluded(k, excl):
                p.kept.append(k)
                continue
            ops.append((DEL_SVC, k, None))
            continue
        wdests = want.dests
        if have is None:
            if whole:
                ops.append((ADD_VS, k, want))
                continue
            ops.append((ADD_SVC, k, want.params))
            ops.extend((ADD_DEST, k, (a, port, w, fwd)) for (a, port), (w, fwd) in wdests.items())
            continue
        hparams, hdests = have
        if hparams != want.params:
            ops.append((SET_SVC, k, want.params))
        if hdests == wdests:
            continue
        for d, hv in hdests.items():
            if d in wdests:
                continue
            if graceful:
                if hv[0] != 0:
                    ops.append((SET_DEST, k, (d[0], d[1], 0, hv[1])))
                p.drain.append((k, d))
            else:
                ops.append((DEL_DEST, k, d))
        for d, wv in wdests.items():
            hv = hdests.get(d)
            if hv is None:
                ops.append((ADD_DEST, k, (d[0], d[1], wv[0], wv[1])))
            elif hv != wv:
                ops.append((SET_DEST, k, (d[0], d[1], wv[0], wv[1])))
    return p


def commit(committed: Committed, ops: Iterable[Op]) -> None:
    """Record successfully applied ``ops`` in ``committed``.

    Destination dicts are shared, never changed in place: an :data:`~.ipvs.ADD_VS` commits the desired
    server's own dict (which the model may share between a Service's servers), so the first destination
    change of a server in a call works on a copy (copy on write)."""
    mine: set[VKey] = set()  # servers whose dict this call made

    def own(k: VKey) -> dict[DKey, DVal] | None:
        cur = committed.get(k)
        if cur is None:
            return None
        if k in mine:
            return cur[1]
        d = dict(cur[1])
        committed[k] = (cur[0], d)
        mine.add(k)
        return d

    for kind, k, arg in ops:
        if kind == ADD_VS:
            committed[k] = (arg.params, arg.dests)
            mine.discard(k)
        elif kind in (ADD_SVC, SET_SVC):
            cur = committed.get(k)
            if cur is None:
                committed[k] = (arg, {})
                mine.add(k)
            else:
                committed[k] = (arg, cur[1])
        elif kind == DEL_SVC:
            committed.pop(k, None)
            mine.discard(k)
        elif kind in (ADD_DEST, SET_DEST):
            d = own(k)
            if d is not None:
                d[(arg[0], arg[1])] = (arg[2], arg[3])
        elif kind == DEL_DEST:
            d = own(k)
            if d is not None:
                d.pop(arg, None)

