"""Learned BGP routes into the kernel: gobgpd best-path events -> batched netlink (kube-router's injectRoute).

Two threads, a pipeline: ``bgp-watch`` reads gobgpd's best-path changes (``WatchEvent``) and, once the
watch is registered, the table (``ListPath``), decodes them as they arrive and queues them; it reconnects
(new watch, new table read) when gobgpd restarts. ``bgp-inject`` takes everything queued at once, keeps the
last word per prefix and writes it as batched netlink messages on one kept socket
(:class:`kr_core.net.netlink.NetlinkSocket`, messages from :mod:`.routewire` templates) while the watcher
decodes the next (a netlink send releases the GIL), so routes reach the kernel while gobgpd is still
receiving them. A table read ends with a sweep: held routes it lacks were withdrawn meanwhile. Every
``resync`` seconds (``--injected-routes-sync-period``) all injected routes are re-applied (self-heal after
link flaps) and routes of a previous run that gobgpd did not confirm are dropped.

Bursts are followed on the stream while it keeps up: gobgpd spends ~10 us per path on a watcher and ~6 us
per held path on a table read (measured with 5,000 paths), so with CPU to spare the stream (read many
messages per ``recv``, :mod:`.grpcstream`) is the faster way; on a host whose CPUs are busy the stream
falls behind gobgpd's table, and a burst it lags far behind on is read from the table once gobgpd has
taken it in (:meth:`Injector._behind`).

Per learned path (:func:`decide`): same subnet as a local node IP -> ``dst via next-hop``; overlay needed
(``--overlay-type=full``, or ``subnet`` and the next hop is in another subnet) -> a tunnel
``tun-<hash>`` (ipip, fou or vxlan) and ``dst dev tun-<hash> src <node IP>`` plus a host route to the next
hop in table 77; otherwise no kernel route. Withdrawn routes are deleted, unused tunnels removed.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc

from kr_core.net import netns as kr_netns
from kr_core.net.links import RTPROT_ZEBRA, Route
from kr_core.net.netlink import NetlinkSocket

from .grpcstream import StreamError
from .naming import tunnel_name
from .pathwire import LearnedPath
from .routewire import encode
from .speaker import Speaker
from .tunnels import fou_port_command, fou_port_open, gue_port, load_fou_modules, tunnel_command, tunnel_matches
from .tunnels import vxlan_vni as vxlan_vni  # re-exported: callers import it from here

log = logging.getLogger("kr.bgp_routing.injector")

OVERLAY_TABLE = 77
ADOPT_GRACE = 20.0  # s: routes of a previous run are kept at least this long (GoBGP v3 retries every 5 s)
LOG_EVERY = 1.0  # s: batches of a burst are logged as one summary line at most this often
BURST_GAP = 0.02  # s: stream events closer than this belong to one burst
LAG_CHECK_EVERY = 500  # paths of a burst between two looks at how far behind gobgpd's table the stream is
LAG_MIN = 1000  # paths the stream may lag behind, plus two thirds of the table, before the table is read
QUIET_POLL = 0.003  # s between two table-count reads that must agree before the table is re-read
QUIET_MAX_WAIT = 1.0  # s: the longest a re-read waits for a burst to end (a table that never settles)


@dataclass(frozen=True)
class InjectConfig:
    node_ip4: str = ""
    node_ip6: str = ""
    local_subnets: tuple[str, ...] = ()
    own_prefixes: frozenset[str] = frozenset()
    enable_overlay: bool = True
    overlay_type: str = "subnet"  # subnet | full
    encap: str = "ipip"  # ipip | fou | vxlan
    encap_port: int = 5555


@dataclass
class Injected:
    route: Route
    next_hop: str
    tunnel: str | None


def decide(next_hop: str, cfg: InjectConfig) -> str:
    """'via', 'tunnel' or 'none' for a path with ``next_hop``."""
    try:
        nh = ipaddress.ip_address(next_hop)
    except ValueError:
        return "none"
    same = any(nh in ipaddress.ip_network(s, strict=False) for s in cfg.local_subnets
               if ipaddress.ip_network(s, strict=False).version == nh.version)
    if cfg.enable_overlay and (cfg.overlay_type == "full" or not same):
        return "tunnel"
    return "via" if same else "none"


@dataclass
class InjectStats:
    received: int = 0
    added: int = 0
    removed: int = 0
    syncs: int = 0
    catch_ups: int = 0  # bursts read from the table because the stream fell behind
    last_sync_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


class Injector:
    def __init__(self, make_speaker: Callable[[], Speaker], *, netns: str | None = None, resync: float = 60.0,
                 on_stats: Callable[[str, float], None] | None = None, adopt_grace: float = ADOPT_GRACE) -> None:
        self.make_speaker = make_speaker
        self.netns = netns
        self.resync = resync
        self.adopt_grace = adopt_grace
        self._started_at = time.monotonic()
        self.on_stats = on_stats or (lambda kind, value: None)
        self.cfg = InjectConfig()
        self.routes: dict[str, Injected] = {}
        self.tunnels: dict[str, str] = {}  # name -> next hop
        self.pending: dict[str, LearnedPath] = {}  # paths waiting for a config (no node IP yet)
        self.stats = InjectStats()
        self.connected = threading.Event()
        # ("paths", batch) stream changes; ("begin", []), ("dump", batch)..., ("end", []) a table read;
        # "reconfigure", "resync", "stop"
        self._q: queue.Queue[tuple[str, list[LearnedPath]] | str] = queue.Queue()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._speaker: Speaker | None = None
        self._pending_table: set[str] | None = None
        self._dump_seen: set[str] | None = None  # prefixes of the table read in progress
        self._nl: NetlinkSocket | None = None  # rtnetlink socket of the inject thread, in the node's netns
        self._log_acc: list[Any] = [0, 0, 0, 0.0]  # added, removed, batches, last summary
        self.adopted: dict[tuple[str, int], str] = {}  # (dst, table) -> `ip route` line, from a previous run
        self._decided: tuple[InjectConfig | None, dict[str, str]] = (None, {})

    # -------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._stop.clear()
        self._started_at = time.monotonic()
        self._adopt()
        for name, fn in (("bgp-watch", self._watch_loop), ("bgp-inject", self._inject_loop)):
            t = threading.Thread(target=fn, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._q.put("stop")
        sp = self._speaker
        if sp is not None:
            sp.close()
        for t in self._threads:
            t.join(5)
        self._threads.clear()

    def configure(self, cfg: InjectConfig) -> None:
        """New node IPs/subnets/overlay settings: re-decide every route on the inject thread."""
        with self._lock:
            if cfg == self.cfg:
                return
            self.cfg = cfg
        self._q.put("reconfigure")

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"prefix": p, "next_hop": i.next_hop, "via": i.route.gateway or "", "dev": i.tunnel or "",
                     "table": i.route.table} for p, i in sorted(self.routes.items())]

    def _adopt(self) -> None:
        """Take over what a previous run left (no flush, so traffic keeps flowing): its proto-17 routes are
        kept until re-learned, and deleted at the first periodic resync if BGP never brings them back; its
        ``tun-*`` links are kept for reuse."""
        for table in ("main", str(OVERLAY_TABLE)):
            for fam in ("-4", "-6"):
                out = self._ip(fam, "route", "show", "proto", "17", "table", table, check=False).stdout
                for line in out.splitlines():
                    dst = line.split()[0] if line.strip() else ""
                    if dst and dst != "default":
                        if "/" not in dst:
                            dst += "/128" if ":" in dst else "/32"
                        self.adopted[(dst, OVERLAY_TABLE if table != "main" else 254)] = line
        out = self._ip("-d", "-o", "link", "show", check=False).stdout
        for line in out.splitlines():
            parts = line.split(":", 2)
            if len(parts) < 3:
                continue
            name = parts[1].strip().split("@")[0]
            words = parts[2].split()
            if name.startswith("tun-") and "remote" in words:
                self.tunnels[name] = words[words.index("remote") + 1]
        if self.adopted or self.tunnels:
            log.info("adopted %d routes and %d tunnels left by a previous run", len(self.adopted), len(self.tunnels))

    # -------------------------------------------------------------------------------- watch thread
    def _watch_loop(self) -> None:
        """Watch gobgpd's best paths, then read its table (the watch is registered first, so no change falls
        between the two), then follow the changes. A burst the stream falls far behind on (see
        :meth:`_behind`) drops the watch and starts over on the same channel once gobgpd's table holds
        still; an error (gobgpd restarted, a broken stream) starts over on a new channel."""
        backoff = 0.2
        sp: Speaker | None = None
        while not self._stop.is_set():
            events = None
            catch_up = False
            try:
                if sp is None:
                    sp = self.make_speaker()
                    self._speaker = sp
                    sp.wait_ready(timeout=5)
                events = sp.watch_changes()
                next(events)  # ("registered", []): every change from here on comes on this stream
                seen = self._read_table(sp)
                self.connected.set()
                backoff = 0.2
                last, in_burst, checked = 0.0, 0, 0
                for _kind, batch in events:
                    self._q.put(("paths", batch))
                    for p in batch:
                        if p.withdraw:
                            seen.discard(p.prefix)
                        else:
                            seen.add(p.prefix)
                    now = time.monotonic()
                    if now - last > BURST_GAP:
                        in_burst = checked = 0
                    last = now
                    in_burst += len(batch)
                    if in_burst - checked >= LAG_CHECK_EVERY:
                        checked = in_burst
                        if self._behind(sp, len(seen)):
                            catch_up = True
                            self.stats.catch_ups += 1
                            break
            except (grpc.RpcError, grpc.FutureTimeoutError, StreamError, StopIteration) as exc:
                if self._stop.is_set():
                    return
                log.info("gobgpd watch ended (%s); reconnecting", exc.code() if isinstance(exc, grpc.RpcError)
                         else exc or "connect timeout")
            except Exception:  # keep the watcher alive whatever happens
                if self._stop.is_set():
                    return
                log.exception("gobgpd watch failed; reconnecting")
            finally:
                if events is not None:
                    events.close()
                self.connected.clear()
            if catch_up and sp is not None:  # same channel: a new watch and table read once the burst is over
                self._wait_quiet(sp)
                continue
            if sp is not None:
                with contextlib.suppress(Exception):
                    sp.close()
                sp = None
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def _behind(self, sp: Speaker, seen: int) -> bool:
        """Whether the stream is so far behind gobgpd's table (destinations gobgpd holds vs those the
        stream has brought) that reading the table after the burst is cheaper than following it: gobgpd
        spends ~10 us a path on the watcher and we ~5 us decoding, against ~6 + ~4 us per held path for a
        read plus the wait for the burst's end. Only a growing or shrinking table shows a lag (a burst of
        next-hop changes keeps the counts and stays on the stream). When the CPUs are free the stream keeps
        up; when they are not (other load on the host), a large burst is read from the table."""
        try:
            counts = sp.table_counts()
        except grpc.RpcError:
            return False
        held = max(counts[0], 0) + max(counts[3], 0)
        return abs(held - seen) > LAG_MIN + held * 2 // 3

    def _wait_quiet(self, sp: Speaker) -> None:
        """After the watch was dropped for a burst: poll gobgpd's table counts (a cheap unary call) until
        two reads QUIET_POLL apart agree, at most QUIET_MAX_WAIT, so that the table read after it carries
        the whole burst. gobgpd answers between two UPDATE messages it processes, so an unchanged count
        means no UPDATE was waiting; a burst that goes on after it comes on the new watch."""
        deadline = time.monotonic() + QUIET_MAX_WAIT
        last: tuple[int, ...] | None = None
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                counts = sp.table_counts()
            except grpc.RpcError:
                return  # the new watch will tell what is wrong
            if counts == last:
                return
            last = counts
            self._stop.wait(QUIET_POLL)

    def _read_table(self, sp: Speaker) -> set[str]:
        """Queue gobgpd's best paths of every family it holds, as they arrive: ``begin``, ``dump`` batches,
        ``end`` (the inject thread writes the batches at once and sweeps at ``end``). A read that fails
        raises before ``end``: no sweep on a partial table. Returns the prefixes read."""
        counts = sp.table_counts()
        seen: set[str] = set()
        self._q.put(("begin", []))
        for fam, held in ((4, counts[0]), (6, counts[3])):
            if held >= 0:  # -1: gobgpd has no table of that family
                for batch in sp.dump_best(fam):
                    self._q.put(("dump", batch))
                    seen.update(p.prefix for p in batch)
        self._q.put(("end", []))
        return seen

    # -------------------------------------------------------------------------------- inject thread
    def _inject_loop(self) -> None:
        """Take everything queued (no waiting for more: while a batch is written, the next one gathers),
        keep the last word per prefix, apply it."""
        try:
            self._inject_items()
        finally:
            if self._nl is not None:
                self._nl.close()
                self._nl = None

    def _inject_items(self) -> None:
        next_resync = time.monotonic() + self.resync
        while not self._stop.is_set():
            try:
                item = self._q.get(timeout=max(0.0, next_resync - time.monotonic()))
            except queue.Empty:
                item = "resync"
            items = [item]
            while True:
                try:
                    items.append(self._q.get_nowait())
                except queue.Empty:
                    break
            if "stop" in items:
                return
            paths, redo, resync, table = self._gather(items)
            try:
                self._apply(paths, redo=redo, resync=resync, table=table)
            except Exception as exc:  # a failed batch is retried on the next resync
                log.exception("route injection failed")
                self.stats.errors = [str(exc)]
            if resync:
                next_resync = time.monotonic() + self.resync

    def _gather(self, items: list[tuple[str, list[LearnedPath]] | str]) -> tuple[
            dict[str, LearnedPath], bool, bool, set[str] | None]:
        """(last word per prefix, reconfigure, resync, the complete table when a table read ended here).
        A table read's batches count toward its prefixes; changes after its end in the same take are added
        to them, so the sweep never removes what was just learned."""
        paths: dict[str, LearnedPath] = {}
        redo = resync = False
        table: set[str] | None = None
        for it in items:
            if it == "reconfigure":
                redo = True
                continue
            if it == "resync":
                resync = True
                continue
            kind, batch = it
            if kind == "begin":
                self._dump_seen = set()
                with self._lock:
                    configured = bool(self.cfg.node_ip4 or self.cfg.node_ip6)
                if not configured:  # nothing applied yet: the table read supersedes what waits
                    self.pending, self._pending_table, paths = {}, None, {}
            elif kind == "end":  # (no "begin" seen: nothing to sweep by)
                table, self._dump_seen = self._dump_seen, None
            else:
                seen = self._dump_seen if kind == "dump" else table
                for p in batch:
                    if p.neighbor or p.withdraw:
                        paths[p.prefix] = p
                    if seen is not None and not p.withdraw:
                        seen.add(p.prefix)
        return paths, redo, resync, table

    def _apply(self, paths: dict[str, LearnedPath], *, redo: bool, resync: bool,
               table: set[str] | None = None) -> None:
        t0 = time.monotonic()
        with self._lock:
            cfg = self.cfg
        if not (cfg.node_ip4 or cfg.node_ip6):  # not configured yet: keep the paths for later (a table read's
            if table is not None:                 # "begin" emptied them, see _gather)
                self._pending_table = table
            self.pending.update(paths)
            return
        if self.pending:
            paths = {**self.pending, **paths}
            self.pending = {}
        if table is None:
            table = self._pending_table
        self._pending_table = None
        replace: dict[str, Injected] = {}
        delete: dict[str, Injected] = {}
        received = 0
        if redo:  # settings changed: re-decide every route we hold
            for prefix, inj in list(self.routes.items()):
                paths.setdefault(prefix, LearnedPath(prefix, inj.next_hop, "redo", False, 6 if ":" in prefix else 4))
        for prefix, p in paths.items():
            old = self.routes.get(prefix)
            if p.withdraw or prefix in cfg.own_prefixes or not p.next_hop:
                if old:
                    delete[prefix] = old
                continue
            received += 1
            new = self._route_for(p, cfg)
            if new is None:
                if old:
                    delete[prefix] = old
                continue
            if old and old.route == new.route:
                continue
            if old and (old.route.table != new.route.table or old.route.gateway is None) and old.tunnel != new.tunnel:
                delete[prefix] = old
            replace[prefix] = new
        if table is not None:  # a fresh dump is the whole table: what it lacks was withdrawn meanwhile
            for prefix, inj in self.routes.items():
                if prefix not in table and prefix not in replace:
                    delete[prefix] = inj
        self.stats.received += received
        self.on_stats("received", received)
        repl_routes = [i.route for i in replace.values()]
        extra: list[Route] = []
        for inj in replace.values():
            if inj.tunnel:
                extra.append(Route(dst=f"{inj.next_hop}/{32 if ':' not in inj.next_hop else 128}",
                                   oif=inj.route.oif, table=OVERLAY_TABLE))
        del_routes = [Route(dst=i.route.dst, table=i.route.table, proto=RTPROT_ZEBRA) for i in delete.values()
                      if i.route.dst not in replace]
        for inj in list(replace.values()):
            self.adopted.pop((inj.route.dst, inj.route.table), None)
        for r in extra:
            self.adopted.pop((r.dst, r.table), None)
        if resync:  # self-heal: re-apply what we hold; drop what a previous run left and BGP did not confirm
            repl_routes += [i.route for p, i in self.routes.items() if p not in replace and p not in delete]
            if self.adopted and time.monotonic() - self._started_at >= self.adopt_grace:
                for (dst, table), _line in self.adopted.items():
                    log.info("route %s (table %d) left by a previous run was not re-learned: removed", dst, table)
                    del_routes.append(Route(dst=dst, table=table, proto=RTPROT_ZEBRA))
                self.adopted.clear()
        errors: list[tuple[str, Route, int]] = []
        if repl_routes or del_routes or extra:
            errors = self._write(repl_routes + extra, del_routes)
            failed = {r.dst for op, r, _ in errors if op == "replace"}
            for prefix in list(replace):
                if replace[prefix].route.dst in failed:
                    del replace[prefix]
            self.stats.errors = [f"{op} {r.dst}: errno {e}" for op, r, e in errors[:5]]
        with self._lock:
            for prefix in delete:
                if prefix not in replace:
                    self.routes.pop(prefix, None)
            self.routes.update(replace)
        added, removed = len(replace), len([p for p in delete if p not in replace])
        self.stats.added += added
        self.stats.removed += removed
        self.on_stats("added", added)
        self.on_stats("removed", removed)
        self._log_changes(replace, [p for p in delete if p not in replace])
        if self.tunnels and (delete or errors or redo or resync or table is not None):  # (a walk over all
            self._gc_tunnels()                                        # routes: only when a tunnel may be unused)
        self.stats.syncs += 1
        self.stats.last_sync_seconds = time.monotonic() - t0
        self.on_stats("synced", len(self.routes))
        self.on_stats("sync_time", self.stats.last_sync_seconds)

    def _log_changes(self, replace: dict[str, Injected], removed: list[str]) -> None:
        """One line per route for a few changes; a burst's batches add up to one summary line, written when
        the burst is over (nothing queued) or LOG_EVERY seconds after the last one."""
        acc = self._log_acc
        if len(replace) + len(removed) <= 3 and not acc[0] + acc[1]:
            for prefix, inj in replace.items():
                log.info("route %s: %s%s (learned from BGP)", prefix,
                         f"via {inj.route.gateway}" if inj.route.gateway else f"dev {inj.tunnel}",
                         "" if not inj.tunnel else f" to {inj.next_hop}")
            for prefix in removed:
                log.info("route %s: withdrawn, removed from the kernel", prefix)
            return
        acc[0] += len(replace)
        acc[1] += len(removed)
        acc[2] += 1
        now = time.monotonic()
        if self._q.empty() or now - acc[3] >= LOG_EVERY:
            log.info("routes learned from BGP: %d added/replaced, %d withdrawn in %d batches (%d held)",
                     acc[0], acc[1], acc[2], len(self.routes))
            self._log_acc = [0, 0, 0, now]

    def _write(self, replace: list[Route], delete: list[Route]) -> list[tuple[str, Route, int]]:
        """Deletes, then replaces, as batched netlink messages on the kept socket (opened in the node's
        namespace on first use, reopened after a failure). Returns the refused ones as (op, route, errno);
        deleting a route that is already gone is not a failure."""
        ops = [("delete", r) for r in delete] + [("replace", r) for r in replace]
        if self._nl is None:
            with kr_netns.in_netns(self.netns):
                self._nl = NetlinkSocket(socket.NETLINK_ROUTE)
        try:
            refused = self._nl.send_all(lambda i, seq, ack: encode(ops[i][1], ops[i][0], seq, ack), len(ops))
        except OSError:  # replies lost: the state is unknown, the next resync re-applies everything
            self._nl.close()
            self._nl = None
            raise
        errors = [(ops[i][0], ops[i][1], err) for i, err in sorted(refused.items())
                  if not (ops[i][0] == "delete" and err == errno.ESRCH)]
        for op, r, err in errors[:10]:
            log.warning("route %s %s: %s", op, r.dst, os.strerror(err))
        return errors

    # -------------------------------------------------------------------------------- tunnels
    def _route_for(self, p: LearnedPath, cfg: InjectConfig) -> Injected | None:
        if self._decided[0] is not cfg:
            self._decided = (cfg, {})
        how = self._decided[1].get(p.next_hop)
        if how is None:  # one decision per next hop and config: thousands of paths share a few next hops
            how = self._decided[1][p.next_hop] = decide(p.next_hop, cfg)
        if how == "none":
            return None
        if how == "via":
            return Injected(Route(dst=p.prefix, gateway=p.next_hop), p.next_hop, None)
        local = cfg.node_ip6 if ":" in p.next_hop else cfg.node_ip4
        if not local:
            return None
        name = tunnel_name(p.next_hop)
        idx = self._ensure_tunnel(name, p.next_hop, local, cfg)
        if idx is None:
            return None
        return Injected(Route(dst=p.prefix, oif=idx, prefsrc=local), p.next_hop, name)

    def _ip(self, *args: str, check: bool = True) -> Any:
        # `ip -n NS` enters the namespace itself: one process instead of `ip netns exec NS ip`'s two and its
        # /sys remount (it matters where processes are slow: the QEMU VM, a loaded lab)
        return kr_netns.run(None, ["ip", *(["-n", self.netns] if self.netns else []), *args], check=check)

    def _link_index(self, name: str) -> int | None:
        r = self._ip("-o", "link", "show", "dev", name, check=False)
        if r.returncode != 0:
            return None
        return int(r.stdout.split(":", 1)[0])

    def _link_details(self, name: str) -> tuple[int | None, list[str]]:
        """Index and ``ip -d -o link show`` words of link ``name``; ``(None, [])`` when there is none."""
        r = self._ip("-d", "-o", "link", "show", "dev", name, check=False)
        if r.returncode != 0 or ":" not in r.stdout:
            return None, []
        return int(r.stdout.split(":", 1)[0]), r.stdout.split()

    def _ensure_tunnel(self, name: str, remote: str, local: str, cfg: InjectConfig) -> int | None:
        """The index of tunnel ``name`` to ``remote``, created (and up) if missing. A link of that name that is
        not the tunnel ``cfg`` asks for (other encapsulation or port, other end points: ``--overlay-encap``
        changed, a new node IP, a previous run with other flags) is deleted and created anew, as kube-router
        does; the GUE port it used is closed when the encapsulation no longer uses it."""
        idx, words = self._link_details(name)
        if idx is not None and tunnel_matches(words, remote, local, cfg.encap, cfg.encap_port):
            self.tunnels[name] = remote
            if "UP" not in words[2].strip("<>").split(","):
                self._ip("link", "set", name, "up", check=False)
            return idx
        v6 = ":" in remote
        if idx is not None:
            log.info("tunnel %s to %s: not a %s tunnel from %s (port %s); recreating it", name, remote, cfg.encap,
                     local, cfg.encap_port)
            self._ip("link", "del", name, check=False)
            old_port = gue_port(words)
            if old_port is not None and (cfg.encap != "fou" or old_port != cfg.encap_port):
                self._ip(*fou_port_command(old_port, v6, "del"), check=False)
        if cfg.encap == "fou":
            load_fou_modules()
            r = self._ip(*fou_port_command(cfg.encap_port, v6), check=False)
            if r.returncode != 0 and not fou_port_open(self._ip("fou", "show", check=False).stdout,
                                                       cfg.encap_port, v6):
                log.warning("GUE port %d (IPv%d) not opened: %s", cfg.encap_port, 6 if v6 else 4, r.stderr.strip())
        r = self._ip(*tunnel_command(name, remote, local, cfg.encap, cfg.encap_port), check=False)
        if r.returncode != 0:
            log.error("tunnel %s to %s (%s): %s", name, remote, cfg.encap, r.stderr.strip())
            return None
        self._ip("link", "set", name, "up")
        if cfg.encap == "vxlan":  # L2 tunnel carrying routed traffic: answer ARP for what we route
            kr_netns.run(self.netns, ["sysctl", "-qw", f"net.ipv4.conf.{name}.proxy_arp=1"], check=False)
        self.tunnels[name] = remote
        log.info("tunnel %s (%s) to %s created", name, cfg.encap, remote)
        return self._link_index(name)

    def _gc_tunnels(self) -> None:
        used = {i.tunnel for i in self.routes.values() if i.tunnel}
        for line in self.adopted.values():  # routes of a previous run still carry traffic through these
            words = line.split()
            if "dev" in words:
                used.add(words[words.index("dev") + 1])
        for name in list(self.tunnels):
            if name not in used:
                self._ip("link", "del", name, check=False)
                log.info("tunnel %s to %s removed (no route uses it)", name, self.tunnels.pop(name))

    def cleanup_tunnels(self, names: Iterable[str]) -> None:
        for n in names:
            self._ip("link", "del", n, check=False)
