"""ipset: atomic set updates rendered as one ``ipset restore`` script, and a thin runner.

Sync pattern (kube-router's): each set is filled into a temporary set, swapped with the live one and the
temporary destroyed, so a packet never sees a half-filled set::

    create TMP-<hash> hash:ip family inet hashsize 1024 maxelem 65536 timeout 0 -exist
    flush TMP-<hash>
    add TMP-<hash> 10.244.1.5
    create KUBE-DST-ABC hash:ip family inet hashsize 1024 maxelem 65536 timeout 0 -exist
    swap TMP-<hash> KUBE-DST-ABC
    destroy TMP-<hash>

IPv6 sets are named ``inet6:<name>`` as kube-router does (:func:`set_name`). ``hash:net`` sets take
``nomatch`` entries for ipBlock excepts. ``ipset restore`` is not one transaction: it applies line by line
and stops at the first error, so atomicity is per set (the swap). Entries are therefore validated here,
before anything is rendered, and a set's type cannot change in place (the swap would fail: destroy it
first).

Hot updates of single members have two paths. Measured with ``tests/net/bench_net.py`` in a fresh netns
on this 2-core host (under load from other work, so ±50 %), a set of 10,000 members, one add + one del
per call, median of 200 calls:

* :meth:`IpsetRunner.update_members` (``ipset restore -exist`` with just ``add``/``del`` lines, one
  process): 4.1 ms per call (10 ms through ``ip netns exec``, which adds a second exec);
* :class:`IpsetNetlink` (pyroute2 ``IPSet``, socket already open): 0.6 ms per call, about 7x faster;
* but in bulk pyroute2 is ~40x slower: 10,000 single adds take 4.0 s against 0.1 s for one restore
  (0.13-0.2 s for the temp+swap sync of the whole set).

So bulk always goes through a restore; for a trickle of single-member events :class:`IpsetNetlink` is the
faster path (one per thread: pyroute2 opens a socket per thread), and ``update_members`` is the simple one.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
import socket
import subprocess
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import netns as _netns
from .netns import in_netns

log = logging.getLogger(__name__)

MAX_NAME = 31
INET6_PREFIX = "inet6:"
TMP_PREFIX = "TMP-"


class IpsetError(RuntimeError):
    """``ipset`` failed; ``stderr`` names the failing line of a restore."""

    def __init__(self, message: str, *, stderr: str = "") -> None:
        super().__init__(message)
        self.stderr = stderr


def set_name(name: str, family: str = "inet") -> str:
    """The kernel name of a set: IPv6 sets get kube-router's ``inet6:`` prefix."""
    if family == "inet6" and not name.startswith(INET6_PREFIX):
        name = INET6_PREFIX + name
    if len(name) > MAX_NAME:
        raise ValueError(f"ipset name {name!r} is longer than {MAX_NAME} characters")
    return name


def temp_name(name: str) -> str:
    """Deterministic temporary set for ``name``: ``TMP-`` + 16 base32 chars of sha256 (20 chars)."""
    digest = base64.b32encode(hashlib.sha256(name.encode()).digest()).decode()
    return TMP_PREFIX + digest[:16]


@dataclass(frozen=True)
class IpSet:
    """Desired content of one set. ``name`` is the base name; IPv6 sets get ``inet6:`` when rendered."""

    name: str
    type: str = "hash:ip"
    family: str = "inet"  # inet | inet6
    entries: Sequence[str] = ()
    nomatch: Sequence[str] = ()  # hash:net* only: entries excepted from the match
    hashsize: int = 1024
    maxelem: int = 65536
    timeout: int | None = 0  # kube-router creates every set with "timeout 0"; None: no timeout support
    comment: bool = False

    @property
    def kernel_name(self) -> str:
        return set_name(self.name, self.family)

    def create_options(self) -> str:
        opts = [self.type]
        if self.type.startswith("hash:"):
            opts += ["family", self.family, "hashsize", str(self.hashsize), "maxelem", str(self.maxelem)]
        if self.timeout is not None:
            opts += ["timeout", str(self.timeout)]
        if self.comment:
            opts.append("comment")
        return " ".join(opts)


@dataclass
class Invalid:
    """Entries refused by :func:`validate` as ``(set name, entry, reason)``."""

    items: list[tuple[str, str, str]] = field(default_factory=list)


def _check_addr(entry: str, family: str, net: bool) -> None:
    """An address (``net``: address/prefix) of ``family``, checked with inet_pton (C; ~50x faster than
    ipaddress, which matters for the tens of thousands of members of a full sync)."""
    af = socket.AF_INET6 if family == "inet6" else socket.AF_INET
    addr, slash, plen = entry.partition("/")
    try:
        socket.inet_pton(af, addr)
        if not slash or (net and plen.isdigit() and int(plen) <= (128 if af == socket.AF_INET6 else 32)):
            return
    except OSError:
        pass
    # invalid: let ipaddress say why
    parsed = ipaddress.ip_network(entry, strict=False) if net else ipaddress.ip_address(entry)
    if parsed.version != (6 if family == "inet6" else 4):
        raise ValueError(f"address family is not {family}")
    raise ValueError(f"not a plain {'prefix' if net else 'address'}")


def validate_entry(set_type: str, family: str, entry: str) -> None:
    """Raise ValueError when ``entry`` is not a valid member of a ``set_type`` set of ``family``.

    Checks the address part(s) of hash:ip, hash:net, hash:ip,port, hash:net,port, hash:ip,port,ip and
    hash:ip,port,net entries (ports as ``[proto:]port``); other types are passed through unchecked.
    """
    if not entry or any(c.isspace() for c in entry):
        raise ValueError("empty or contains whitespace")
    kinds = set_type.split(":", 1)[1].split(",") if set_type.startswith("hash:") else []
    if not kinds:
        return
    parts = entry.split(",")
    if len(parts) != len(kinds):
        raise ValueError(f"expected {len(kinds)} part(s) for {set_type}")
    for kind, part in zip(kinds, parts, strict=True):
        if kind in ("ip", "net"):
            _check_addr(part, family, kind == "net")
        elif kind == "port":
            proto, _, port = part.rpartition(":")
            if proto and proto not in ("tcp", "udp", "sctp", "udplite", "icmp", "icmpv6") and not proto.isdigit():
                raise ValueError(f"unknown protocol {proto!r}")
            lo, _, hi = port.partition("-")
            for p in (lo, hi) if hi else (lo,):
                if not p.isdigit() or not 0 <= int(p) <= 65535:
                    raise ValueError(f"invalid port {port!r}")


def validate(sets: Iterable[IpSet]) -> Invalid:
    """Every invalid entry of ``sets``; render only after dropping these (and logging them)."""
    bad = Invalid()
    for s in sets:
        for e in (*s.entries, *s.nomatch):
            try:
                validate_entry(s.type, s.family, e)
            except ValueError as exc:
                bad.items.append((s.kernel_name, e, str(exc)))
        if s.nomatch and not s.type.startswith("hash:net"):
            bad.items.append((s.kernel_name, ",".join(s.nomatch), f"nomatch needs a hash:net type, not {s.type}"))
    return bad


def render_sync(sets: Iterable[IpSet], *, destroy: Iterable[str] = ()) -> str:
    """An ``ipset restore`` script that makes each set hold exactly its entries (temp set + swap), then
    destroys the sets named in ``destroy`` (kernel names, e.g. from :meth:`IpsetRunner.list_names`).

    Raises ValueError on an invalid entry (see :func:`validate`). Entries are de-duplicated and sorted, so
    the same model renders the same text.
    """
    sets = list(sets)
    bad = validate(sets)
    if bad.items:
        name, entry, reason = bad.items[0]
        raise ValueError(f"ipset {name}: invalid entry {entry!r}: {reason} ({len(bad.items)} invalid in total)")
    out: list[str] = []
    seen: set[str] = set()
    for s in sets:
        name = s.kernel_name
        if name in seen:
            raise ValueError(f"ipset {name}: listed twice")
        seen.add(name)
        tmp = temp_name(name)
        opts = s.create_options()
        out.append(f"create {tmp} {opts} -exist")
        out.append(f"flush {tmp}")
        out.extend(f"add {tmp} {e}" for e in sorted(set(s.entries)))
        out.extend(f"add {tmp} {e} nomatch" for e in sorted(set(s.nomatch)))
        out.append(f"create {name} {opts} -exist")
        out.append(f"swap {tmp} {name}")
        out.append(f"destroy {tmp}")
    for name in destroy:
        if name in seen:
            raise ValueError(f"ipset {name}: both synced and destroyed")
        out.append(f"destroy {name}")
    return "\n".join(out) + "\n" if out else ""


def render_members(add: Iterable[tuple[str, str]] = (), delete: Iterable[tuple[str, str]] = ()) -> str:
    """``add``/``del`` lines for single-member hot updates: pairs of (kernel set name, entry).

    Applied with ``ipset restore -exist``, an add of a present member and a del of a missing one are no-ops.
    """
    lines = [f"del {name} {entry}" for name, entry in delete]
    lines += [f"add {name} {entry}" for name, entry in add]
    for line in lines:
        if len(line.split()) != 3:
            raise ValueError(f"ipset member line {line!r} is malformed")
    return "\n".join(lines) + "\n" if lines else ""


def parse_names(list_n_output: str, prefixes: Sequence[str] = ()) -> list[str]:
    """Set names from ``ipset list -n`` output, optionally only those with a prefix (``inet6:`` aware)."""
    names = [n.strip() for n in list_n_output.splitlines() if n.strip()]
    if not prefixes:
        return names
    pre = tuple(prefixes) + tuple(INET6_PREFIX + p for p in prefixes)
    return [n for n in names if n.startswith(pre)]


class IpsetRunner:
    """Runs ``ipset`` (optionally inside a named netns). Thread-safe: it only starts processes."""

    def __init__(self, *, netns: str | None = None, binary: str = "ipset", launcher: Any = None) -> None:
        self.netns = netns
        self.binary = binary
        self.launcher = launcher  # a kr_core.net.launcher.Launcher: ipset started from its small helper

    def __repr__(self) -> str:
        return f"IpsetRunner({f'netns={self.netns}' if self.netns else ''})"

    def _run(self, args: Sequence[str], stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = _netns.run(self.netns, [self.binary, *args], input=stdin, check=False, launcher=self.launcher)
        if check and proc.returncode != 0:
            raise IpsetError(f"ipset {' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}",
                             stderr=proc.stderr)
        return proc

    def restore(self, script: str) -> None:
        """``ipset restore -exist`` with ``script`` on stdin (one process)."""
        if not script.strip():
            return
        self._run(["restore", "-exist"], stdin=script)
        lines = script.splitlines()
        swapped = [line.split()[2] for line in lines if line.startswith("swap ")]
        destroyed = [line.split()[1] for line in lines if line.startswith("destroy ") and
                     not line.split()[1].startswith(TMP_PREFIX)]
        log.debug("%s: restore applied: %d lines, sets swapped %s, destroyed %s", self, len(lines),
                 swapped or "none", destroyed or "none")

    def sync(self, sets: Iterable[IpSet], *, destroy: Iterable[str] = ()) -> str:
        """:func:`render_sync` + :meth:`restore`; returns the script."""
        script = render_sync(sets, destroy=destroy)
        self.restore(script)
        return script

    def update_members(self, add: Iterable[tuple[str, str]] = (), delete: Iterable[tuple[str, str]] = ()) -> None:
        self.restore(render_members(add, delete))

    def list_names(self, prefixes: Sequence[str] = ()) -> list[str]:
        """``ipset list -n``, filtered by name prefix (``inet6:``-prefixed names match too)."""
        return parse_names(self._run(["list", "-n"]).stdout, prefixes)

    def members(self, name: str) -> list[str]:
        """Members of a set as ``ipset save`` prints them, without ``timeout N``; a nomatch entry reads
        ``10.0.0.0/24 nomatch``."""
        out = []
        for line in self._run(["save", name]).stdout.splitlines():
            if line.startswith("add "):
                tokens = line.split()
                out.append(tokens[2] + (" nomatch" if "nomatch" in tokens[3:] else ""))
        return out

    def test(self, name: str, entry: str) -> bool:
        """``ipset test``: does ``entry`` match the set (a nomatch entry does not)?"""
        return self._run(["test", name, entry], check=False).returncode == 0

    def destroy(self, name: str) -> bool:
        """Destroy one set; False when it did not exist."""
        proc = self._run(["destroy", name], check=False)
        if proc.returncode == 0:
            log.info("%s: set %s destroyed", self, name)
            return True
        if "does not exist" in proc.stderr:
            return False
        raise IpsetError(f"ipset destroy {name}: {proc.stderr.strip()}", stderr=proc.stderr)


IPSET_ERR_EXIST = 4103  # pyroute2's code for "already added" and for "not in the set" alike


class IpsetNetlink:
    """Single-member hot path over netlink (pyroute2 ``IPSet``), about 7x faster per change than a process.

    Use one instance from one thread: pyroute2 opens a socket per thread, and this class opens it inside
    ``netns`` on first use, so a call from another thread is refused. ``etype`` follows pyroute2: ``ip``,
    ``net``, ``ip,port``, ``net,port``, ... No nomatch flag here (pyroute2 0.9.7 has none): excepts go
    through :func:`render_sync`.
    """

    def __init__(self, *, netns: str | None = None) -> None:
        self.netns = netns
        self._ips: object | None = None
        self._owner: int | None = None

    def _sock(self) -> object:
        if self._ips is None:
            from pyroute2.ipset import IPSet

            with in_netns(self.netns):
                ips = IPSet()
                ips.get_proto_version()  # opens this thread's socket here, inside the namespace
            self._ips, self._owner = ips, threading.get_ident()
        elif self._owner != threading.get_ident():
            raise RuntimeError("IpsetNetlink used from a second thread; make one per thread")
        return self._ips

    def _call(self, op: str, name: str, entry: str, etype: str) -> bool:
        ips = self._sock()
        try:
            getattr(ips, op)(name, entry, etype=etype)
            return True
        except Exception as exc:  # pyroute2's _IPSetError is private
            if getattr(exc, "code", None) == IPSET_ERR_EXIST:
                return False
            raise IpsetError(f"ipset {op} {name} {entry}: {exc}") from exc

    def add(self, name: str, entry: str, *, etype: str = "ip") -> bool:
        """Add a member; False when it was already there."""
        return self._call("add", name, entry, etype)

    def delete(self, name: str, entry: str, *, etype: str = "ip") -> bool:
        """Remove a member; False when it was not there."""
        return self._call("delete", name, entry, etype)

    def test(self, name: str, entry: str, *, etype: str = "ip") -> bool:
        return bool(self._sock().test(name, entry, etype=etype))  # type: ignore[attr-defined]

    def close(self) -> None:
        if self._ips is not None:
            self._ips.close()  # type: ignore[attr-defined]
            self._ips = self._owner = None
