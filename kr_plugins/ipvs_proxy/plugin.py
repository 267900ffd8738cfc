"""The ipvs_proxy plugin: kube-router's IPVS service proxy (role service-proxy).

How it works (see ``model.py`` for what is built, ``sync.py`` for the diff):

* **Committed state in memory.** ``self.committed`` holds the virtual servers kr owns as they are in the
  kernel (parameters and destinations); the VIPs on ``kube-dummy-if``, the set members and the chains are
  kept the same way. Desired state is computed from the caches; only the difference is sent.
* **Ownership.** kr owns only the virtual servers it created: their keys are recorded in
  ``<state_dir>/owned-vservers.json`` (rewritten when the set of keys changes). Virtual servers of anyone
  else are left alone, unless a Service of ours wants exactly that key (then it is adopted).
* **Start: adopt, never flush.** ``start`` dumps IPVS (raw netlink, 1 + N dumps), the dummy addresses and
  the ipsets; the initial sync then applies only the difference, so established connections survive an
  agent restart.
* **Events.** ``on_service`` / ``on_endpoints`` rebuild one Service's model and apply the difference of
  that Service's virtual servers only (an endpoint change is one netlink batch of the destination
  operations it needs). Node changes and anything global request a full sync.
* **Full sync** (initial, periodic ``--ipvs-sync-period``, requested): rebuild all models, diff everything,
  garbage-collect kr-owned servers nobody wants (except VIPs in ``--excluded-cidrs``), repair drift
  (a service dump: a virtual server deleted or changed by hand is re-created/corrected; chain rule counts
  and set members are checked), and rewrite what differs.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from kr_core import Event, HealthReport, PluginConfigError, PluginContext, PluginInfo, Resource, Role, hookimpl
from kr_core.net.kmod import load_modules

from . import rules as R
from .firewall import Firewall
from .healthcheck import HealthServers
from .host import BINDON_EXCLUDE, DUMMY, Host
from .ipvs import DEL_DEST, DEL_SVC, Ipvs, IpvsError, Op, message_count
from .metrics import ProxyMetrics
from .model import (
    LABEL_ZONE,
    PROTO_NAMES,
    SCHEDULERS,
    Desired,
    NodeInfo,
    Options,
    ServiceModel,
    VirtualServer,
    VKey,
    build_service,
    canonical_ip,
    ip_family,
)
from .sync import Committed, commit, plan

__version__ = "0.1.0"

log = logging.getLogger("kr.ipvs_proxy")

OWNED_FILE = "owned-vservers.json"
DEST_CHECK_PER_SYNC = 1000
SCHED_MODULES = tuple(f"ip_vs_{s}" for s in SCHEDULERS)


class Config(BaseModel):
    """The ``ipvs_proxy:`` section of the kr config file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: iptables backend: detected per family (kube-proxy's iptables-wrapper rules), or forced
    iptables_mode: Literal["auto", "legacy", "nft"] = "auto"
    #: address the NodePort health-check servers listen on ("" = all)
    healthcheck_address: str = ""
    #: how often the graceful-termination queue is checked, seconds
    graceful_check_interval: float = 5.0


class Plugin:
    info = PluginInfo(
        name="ipvs_proxy",
        role=Role.SERVICE_PROXY,
        version=__version__,
        resources=frozenset({Resource.SERVICE, Resource.ENDPOINTSLICE, Resource.POD, Resource.NODE}),
        config_model=Config,
        description="kube-router's IPVS service proxy",
    )

    def __init__(self) -> None:
        self.ctx: PluginContext | None = None
        self.cfg = Config()
        self.opts = Options()
        self.excluded: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.node = NodeInfo(name="")
        self.local: list[tuple[str, str]] | None = None  # local addresses read by this full sync's _node_info
        self.models: dict[str, ServiceModel] = {}
        self.owner: dict[VKey, str] = {}  # which Service's virtual server is authoritative for a key
        # every Service that wants a key: its key ("namespace/name"), a set only when several do
        self.wanted_by: dict[VKey, str | set[str]] = {}
        self.committed: Committed = {}
        self.foreign: dict[VKey, Any] = {}  # in the kernel, not ours (adopted only when a Service wants it)
        self.dirty: set[VKey] = set()  # failed applies: re-read from the kernel before the next diff
        self.owned_written: frozenset[VKey] | None = None
        self.vip_mode = "address"  # --service-vip-mode
        self.vips: set[tuple[int, str]] = set()  # committed VIPs: kr's local-table route through kube-dummy-if
        self.vip_addrs: set[tuple[int, str]] = set()  # committed addresses on kube-dummy-if (address mode)
        self.vip_srcs: dict[tuple[int, str], str | None] | None = None  # routes just read, not yet judged
        self.vip_refs: Counter[tuple[int, str]] = Counter()
        self.set_refs: dict[str, Counter[str]] = {}
        self.graceful: dict[tuple[VKey, tuple[str, int]], float] = {}
        self.ipvs: Ipvs | None = None
        self.host: Host | None = None
        self.fw: Firewall | None = None
        self.hc: HealthServers | None = None
        self.metrics: ProxyMetrics | None = None
        self.dummy_idx: int | None = None
        self.last_error = ""
        self.started = False
        self.timer: threading.Thread | None = None
        self.stopping = threading.Event()
        self.counters: Counter[str] = Counter({"netlink_messages": 0, "netlink_batches": 0})
        self.timings: dict[str, float] = {}  # phases of the last full sync, seconds
        self.adopt_ipvs_seconds = 0.0
        self.dest_check_pos = 0

    # ================================================================================ lifecycle
    @hookimpl
    def configure(self, ctx: PluginContext) -> None:
        self.ctx = ctx
        self.cfg = ctx.config if isinstance(ctx.config, Config) else Config()
        try:
            self.opts = Options.from_settings(ctx.settings)
            self.excluded = [ipaddress.ip_network(c, strict=False) for c in ctx.settings["excluded-cidrs"]]
            self.vip_mode = str(ctx.settings["service-vip-mode"])
            if self.vip_mode not in ("address", "route"):
                raise ValueError(f"--service-vip-mode {self.vip_mode!r} is not one of: address, route")
        except (ValueError, KeyError) as exc:
            raise PluginConfigError(str(exc)) from exc
        self.metrics = ProxyMetrics(ctx.metrics)

    def _settings(self, name: str) -> Any:
        assert self.ctx is not None
        return self.ctx.settings[name]

    @hookimpl
    def start(self, ctx: PluginContext) -> None:
        try:
            self.ipvs = Ipvs()
        except IpvsError:
            load_modules("ip_vs")
            self.ipvs = Ipvs()
        load_modules(*SCHED_MODULES)
        self.host = Host()
        self.dummy_idx = self.host.ensure_dummy()
        self.host.set_sysctls()
        t = [int(self._settings(f)) for f in ("service-tcp-timeout", "service-tcpfin-timeout", "service-udp-timeout")]
        self.ipvs.set_timeouts(*t)
        self.fw = Firewall(self.opts.families, self.cfg.iptables_mode)
        self.hc = HealthServers(self.cfg.healthcheck_address)
        t0 = time.perf_counter()
        with gc_paused():
            self._adopt()
        self.timings = {"adopt": round(time.perf_counter() - t0, 4), "adopt_ipvs_dump": self.adopt_ipvs_seconds}
        log.info("adopted %d virtual servers (%d owned by kr, %d foreign), %d VIP routes, %d VIP addresses, "
                 "iptables %s in %.2fs (VIP mode %s)", len(self.committed) + len(self.foreign), len(self.committed),
                 len(self.foreign), len(self.vip_srcs or ()), len(self.vip_addrs), self.fw.modes,
                 time.perf_counter() - t0, self.vip_mode)
        self.started = True
        self.timer = threading.Thread(target=self._graceful_timer, name="ipvs-graceful", daemon=True)
        self.timer.start()

    def _adopt(self) -> None:
        """Read what a previous run left (no flush): IPVS, dummy addresses, sets."""
        assert self.ipvs and self.host and self.fw
        owned = self._read_owned()
        t0 = time.perf_counter()
        kernel = self.ipvs.dump()
        self.adopt_ipvs_seconds = round(time.perf_counter() - t0, 4)
        for k, (params, dests) in kernel.items():
            if k in owned:
                self.committed[k] = (params, dests)
            else:
                self.foreign[k] = (params, dests)
        self.owned_written = frozenset(self.committed)
        self._read_vips()
        self.fw.read_sets()

    def _owned_path(self) -> str:
        assert self.ctx is not None
        return os.path.join(self.ctx.state_dir, OWNED_FILE)

    def _read_owned(self) -> set[VKey]:
        try:
            with open(self._owned_path()) as f:
                return {VKey(*x) for x in json.load(f)}
        except FileNotFoundError:
            return set()
        except (OSError, ValueError, TypeError) as exc:
            log.warning("%s unreadable (%s): treating no virtual server as kr's", self._owned_path(), exc)
            return set()

    def _write_owned(self, force: bool = False) -> None:
        """Record the keys kr owns, when they changed (a full sync checks; an event only when it added or
        deleted a virtual server: comparing 10k keys per endpoint event would cost more than the event)."""
        if not force and len(self.committed) == len(self.owned_written or ()):
            return
        keys = frozenset(self.committed)
        if keys == self.owned_written:
            return
        path = self._owned_path()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps(list(keys), separators=(",", ":")))  # one write (json.dump writes per item); unsorted
        os.replace(tmp, path)
        self.owned_written = keys

    @hookimpl
    def stop(self) -> None:
        self.stopping.set()
        if self.hc:
            self.hc.stop()
        if self.ipvs:
            self.ipvs.close()
        if self.host:
            self.host.close()
        if self.fw:
            self.fw.close()

    @hookimpl
    def cleanup(self) -> None:
        """Remove kr's virtual servers (recorded ones and those on kube-dummy-if VIPs), the dummy link,
        the chains, jumps and sets."""
        assert self.ctx is not None
        host = Host()
        vips = {a for _, a in host.dummy_addresses()} | {a for _, a in host.dummy_routes()}
        owned = self._read_owned()
        try:
            ipvs = Ipvs()
        except IpvsError:
            ipvs = None
        if ipvs is not None:
            ops: list[Op] = [(DEL_SVC, ks.key, None) for ks in ipvs.services() if ks.key in owned or ks.key.addr in vips]
            res = ipvs.apply(ops)
            log.info("cleanup: %d virtual servers removed", len(ops) - len(res.failed or []))
            ipvs.close()
        host.delete_dummy()
        host.close()
        for mode in ("legacy", "nft"):
            try:
                fw = Firewall(self.opts.families, mode)
                try:
                    fw.cleanup()
                finally:
                    fw.close()
            except Exception as exc:  # one backend may be missing entirely
                log.debug("cleanup (%s): %s", mode, exc)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._owned_path())

    @hookimpl
    def health(self) -> HealthReport | None:
        if self.last_error:
            return HealthReport(False, self.last_error)
        return None

    # ================================================================================ node
    def _node_info(self) -> NodeInfo:
        """This node's IPs and pod CIDRs; also keeps the local addresses read for it (``self.local``), which
        the same full sync's firewall sets reuse (a second read would parse every VIP added meanwhile)."""
        assert self.ctx is not None and self.host is not None
        name = self.ctx.node_name
        node = self.ctx.caches.nodes.get(name)
        local = self.local = self.host.local_addresses()
        ips: dict[int, str] = {}
        pod_cidrs: tuple[str, ...] = ()
        zone = ""
        if node is not None:
            for t in ("InternalIP", "ExternalIP"):
                for a in node.addresses_of(t):
                    f = ip_family(a)
                    if f and f not in ips:
                        ips[f] = canonical_ip(a)
            pod_cidrs = node.pod_cidrs
            zone = node.meta.labels.get(LABEL_ZONE, "")
        for iface, a in local:  # no Node object (yet): the first address of each family not on our links
            f = ip_family(a)
            if f and f not in ips and iface != DUMMY and not iface.startswith("kube-"):
                ips[f] = a
        bindon = tuple(sorted({a for iface, a in local if not any(x in iface for x in BINDON_EXCLUDE)}))
        return NodeInfo(name=name, ips=ips, local_ips=bindon if self.opts.nodeport_bindon_all_ip else
                        tuple(sorted(set(ips.values()))), pod_cidrs=pod_cidrs, zone=zone)

    def _local_ips(self) -> dict[int, set[str]]:
        assert self.host is not None
        out: dict[int, set[str]] = {4: set(), 6: set()}
        for iface, a in self.local if self.local is not None else self.host.local_addresses():
            f = ip_family(a)
            if f and iface != DUMMY:
                out[f].add(a)
        return out

    # ================================================================================ models
    def _build(self, key: str) -> ServiceModel:
        assert self.ctx is not None
        svc = self.ctx.caches.services.get(key)
        if svc is None:
            return ServiceModel(key=key, skipped="deleted")
        try:
            m = build_service(svc, self.ctx.caches.endpoints_for(key), self.node, self.opts, key)
        except Exception as exc:  # a bug or an input nobody foresaw: this Service only
            log.exception("Service %s: model failed: %s; not served", key, exc)
            self._problem("model-error")
            return ServiceModel(key=key, skipped=f"model error: {exc}")
        for p in m.problems:
            log.warning("Service %s: %s", key, p)
            self._problem(p.split(" ", 1)[0])
        return m

    def _problem(self, kind: str) -> None:
        if self.metrics:
            self.metrics.problems.labels(kind=kind[:40]).inc()

    # ================================================================================ sync
    @hookimpl
    def sync(self, reason: str) -> None:
        if not self.started:
            return
        # A "graceful" request is still a full sync: the broadcaster merges pending requests into the first
        # one's reason, so a request made meanwhile (a node change, a given-up event) may hide behind it.
        # The timer asks only while destinations drain (experimental flag, bounded by the grace period).
        if self.graceful:
            self._process_graceful()
        t0 = time.perf_counter()
        try:
            with gc_paused():
                self._full_sync(reason)
            self.last_error = ""
        except Exception as exc:
            self.last_error = f"sync failed: {exc}"
            raise
        finally:
            if self.metrics:
                self.metrics.sync_time.observe(time.perf_counter() - t0)

    def _full_sync(self, reason: str) -> None:
        assert self.ctx is not None and self.ipvs and self.fw
        tm = self.timings = {}
        t = time.perf_counter()
        self.node = self._node_info()
        services = self.ctx.caches.services
        keys = services.keys()  # plus the Services gone since the last sync (no set of 10k keys twice)
        keys += [k for k in self.models if services.get(k) is None]
        self.models = {}
        for key in keys:
            m = self._build(key)
            if m.vservers or m.vips or not m.skipped:
                self.models[key] = m
        t = _lap(tm, "model", t)
        desired = Desired.build(self.models.values())
        for c in desired.conflicts:
            log.warning("conflict: %s", c)
        self.owner = {k: vs.service for k, vs in desired.vservers.items()}
        self.wanted_by = dict(self.owner)  # one Service each, but where several want a key (conflicts)
        if desired.conflicts:
            for m in self.models.values():
                for k in m.vservers:
                    cur = self.wanted_by[k]
                    if cur != m.key:
                        self.wanted_by[k] = ({cur} if isinstance(cur, str) else cur) | {m.key}
        if reason == "periodic" or self.dirty:
            self._repair_drift(periodic=reason == "periodic")
        for k in list(self.foreign):
            if k in desired.vservers:  # a Service wants exactly this one: adopt it
                self.committed[k] = self.foreign.pop(k)
        p = plan(self.committed, desired.vservers, graceful=bool(self._settings("ipvs-graceful-termination")),
                 excluded_cidrs=self.excluded, whole=True)
        t = _lap(tm, "diff", t)
        self._apply(p.ops, desired.vservers)
        self._drain(p.drain)
        t = _lap(tm, "ipvs", t)
        # the initial sync follows the adoption's read; any later full sync reads again (drift, a new node IP)
        self._sync_vips({v for m in self.models.values() for v in m.vips}, reread=reason != "initial")
        self.vip_refs = Counter(v for m in self.models.values() for v in m.vips)
        t = _lap(tm, "vips", t)
        self._sync_firewall(desired, full=True, periodic=reason == "periodic")
        t = _lap(tm, "firewall", t)
        assert self.hc is not None
        self.hc.sync(desired.healthchecks())
        self._after_apply()
        gc.freeze()  # what a full sync built is long-lived: keep it out of every later collection (event p99)
        _lap(tm, "rest", t)
        log.info("sync (%s): %d Services, %d virtual servers, %d destinations; %d IPVS messages sent%s",
                 reason, len(self.models), len(self.committed), sum(len(d) for _, d in self.committed.values()),
                 message_count(p.ops), f", {len(p.kept)} kept (--excluded-cidrs)" if p.kept else "")

    def _repair_drift(self, periodic: bool) -> None:
        """Compare the kernel's virtual servers (one dump, no destinations) with the committed ones; forget
        what differs so the diff re-creates it. Servers that failed to apply are re-read whole."""
        assert self.ipvs is not None
        kernel = {ks.key: ks.params for ks in self.ipvs.services()}
        if periodic:
            for k, (params, dests) in list(self.committed.items()):
                if k not in kernel:
                    log.warning("virtual server %s (Service %s) vanished from the kernel: re-creating", k,
                                self.owner.get(k, "?"))
                    del self.committed[k]
                elif kernel[k] != params:
                    log.warning("virtual server %s changed behind kr's back (%s): correcting", k, kernel[k])
                    self.committed[k] = (kernel[k], dests)
            self._check_dests()
        for k in list(self.dirty):
            self.committed.pop(k, None)
            if k in kernel:
                self.committed[k] = (kernel[k], {d: (v[0], v[1]) for d, v in self.ipvs.dests(k).items()})
        self.dirty.clear()

    def _check_dests(self) -> None:
        """Destination-level drift, a slice per periodic sync: the destinations of up to
        ``DEST_CHECK_PER_SYNC`` virtual servers (round robin) are dumped and compared; what differs is taken
        as committed, so the diff repairs it. All of 10k servers are covered within 10 periods."""
        assert self.ipvs is not None
        keys = sorted(self.committed)
        if not keys:
            return
        start = self.dest_check_pos % len(keys)
        chosen = (keys[start:] + keys[:start])[:DEST_CHECK_PER_SYNC]
        self.dest_check_pos = start + len(chosen)
        for k in chosen:
            params, dests = self.committed[k]
            live = {d: (v[0], v[1]) for d, v in self.ipvs.dests(k).items()}
            if live != dests:
                log.warning("virtual server %s (Service %s): destinations changed behind kr's back: repairing", k,
                            self.owner.get(k, "?"))
                self.committed[k] = (params, live)

    def _apply(self, ops: list[Op], desired: dict[VKey, VirtualServer]) -> None:
        assert self.ipvs is not None
        if not ops:
            return
        res = self.ipvs.apply(ops)
        failed_keys = {op[1] for op, _e in res.failed or []}
        for op, e in (res.failed or [])[:20]:
            log.error("IPVS %s %s (Service %s) failed: %s", op[0], op[1], self.owner.get(op[1], "?"),
                      os.strerror(e))
        ok = [o for o in ops if o[1] not in failed_keys] if failed_keys else ops
        commit(self.committed, ok)
        if failed_keys:
            self.dirty |= failed_keys
            if self.metrics:
                self.metrics.apply_failures.inc(len(res.failed or []))
            self.last_error = f"{len(res.failed or [])} IPVS operations failed (first: {os.strerror((res.failed or [])[0][1])})"
        self._flush_udp_conntrack([o for o in ok if o[0] == DEL_DEST and o[1].proto == socket.IPPROTO_UDP])
        if self.metrics:
            self.metrics.netlink_messages.inc(res.sent)
        self.counters["netlink_messages"] += res.sent
        self.counters["netlink_batches"] += res.batches

    def _flush_udp_conntrack(self, removed: list[Op]) -> None:
        """UDP has no connection end: flows to a removed destination would keep going to it until they
        time out. Delete their conntrack entries (kube-router runs ``conntrack -D`` too; here only the flows
        whose reply comes from the removed endpoint, not every flow of the Service).

        What moves such a client to another backend is the kernel, not this: with ``expire_nodest_conn=1``
        (set at start) kernels since 5.9 expire the IPVS connections to a removed destination at once and drop
        their conntrack entries; with 0 the client stays blackholed whether or not its entry is deleted here
        (both shown in the VM, ``test_vm_dualstack.py``). The commands go through the firewall's launcher: an
        exec from the agent itself costs ~0.6 s each in UML, on the endpoint-change path."""
        if not removed or not shutil.which("conntrack"):
            return
        launcher = self.fw.launcher if self.fw is not None else None
        for _kind, k, (addr, port) in removed[:100]:
            argv = ["conntrack", "-D", "-p", "udp", "--orig-dst", k.addr, "--dport", str(k.port),
                    "--reply-src", addr, "--reply-port-src", str(port)]
            if k.family == 6:
                argv[1:1] = ["-f", "ipv6"]
            if launcher is not None:  # exit 1: nothing matched
                launcher.run(argv, timeout=10)
            else:
                subprocess.run(argv, capture_output=True, check=False, timeout=10)

    def _after_apply(self, owners_changed: bool = True) -> None:
        self._write_owned(force=owners_changed)
        if self.metrics:
            self.metrics.services.set(len(self.committed))
            if owners_changed:  # O(virtual servers): not on the endpoint-change path
                self.metrics.owners(self.owner)

    # ---------------------------------------------------------------------------------- VIPs and routes
    def _read_vips(self) -> None:
        """What the kernel has: the addresses on ``kube-dummy-if`` and kr's local routes through it (judged
        against this node's IPs by the next :meth:`_sync_vips`)."""
        assert self.host is not None
        self.vip_addrs = self.host.dummy_addresses()
        self.vip_srcs = self.host.dummy_routes()

    def _sync_vips(self, want: set[tuple[int, str]], reread: bool = False) -> None:
        """Make ``want`` (a set the caller made: it may be kept) the VIPs local on this node: each one's
        local-table route through ``kube-dummy-if`` (source: the node IP), plus, in ``address`` mode, the
        VIP as an address on the link; in ``route`` mode no address (any found there is removed).

        ``reread`` (full syncs but the initial one): the kernel's addresses and routes are read again first,
        so a VIP address or route removed by hand is put back (drift), and routes whose source is no longer
        the node IP are replaced. IPv4 drops every route through a link when
        its last IPv4 address goes: before that happens, the wanted VIP routes are moved to ``lo`` (a
        ``replace``, the route never missing), and moved back once the addresses are gone."""
        assert self.host is not None
        if self.dummy_idx is None or self.host.dummy_index() != self.dummy_idx:
            self.dummy_idx = self.host.ensure_dummy()
            self._read_vips()
        elif reread:
            self._read_vips()
        ips = self.node.ips
        if self.vip_srcs is not None:
            self.vips = {v for v, src in self.vip_srcs.items() if src == (ips.get(v[0]) or None)}
            self.vip_srcs = None
        route_mode = self.vip_mode == "route"
        want_addrs = set() if route_mode else want
        add = sorted(want_addrs - self.vip_addrs)
        delete = sorted(self.vip_addrs - want_addrs)
        rt_add = want - self.vips
        rt_del = sorted(self.vips - want)
        if not (add or delete or rt_add or rt_del):
            return
        park: list[tuple[int, str]] = []
        if any(f == 4 for f, _ in delete) and not any(f == 4 for f, _ in want_addrs):
            park = sorted(v for v in self.vips & want if v[0] == 4)  # the last IPv4 address goes: see above
            if park:
                self.host.apply_vip_routes(park, [], ips, self.host.lo_index(), fresh=(), no_src=route_mode)
        errs = self.host.apply_addresses(add, delete, self.dummy_idx)
        for op, (_f, a), e in errs[:20]:
            log.error("VIP %s on %s: %s failed: %s", a, DUMMY, op, os.strerror(e))
        bad = {x for _, x, _ in errs}
        if bad or delete or self.vip_addrs:
            self.vip_addrs = (self.vip_addrs - (set(delete) - bad)) | (set(add) - bad)
        else:  # only additions to nothing, all done: what is there now is exactly what was wanted
            self.vip_addrs = want_addrs
        added = [x for x in add if x not in bad] if bad else add
        replace = rt_add.union(added, park) if added or park else rt_add
        res = self.host.apply_vip_routes(replace, rt_del, ips, self.dummy_idx, fresh=added, no_src=route_mode)
        failed = {(4 if "." in r.dst else 6, r.dst.split("/")[0]) for op, r, _e in res.errors if op == "replace"}
        done = (set(replace) if route_mode else {v for v in replace if ips.get(v[0])}) - failed
        if not rt_del and not self.vips and done == want:
            self.vips = want
        else:
            self.vips = (self.vips - set(rt_del)) | done
        log.info("%s: %d VIP addresses added, %d removed; %d VIP routes set, %d removed (VIP mode %s)", DUMMY,
                 len(add), len(delete), len(done), len(rt_del), self.vip_mode)

    # ---------------------------------------------------------------------------------- firewall
    def _set_entries(self, desired_models: list[ServiceModel]) -> dict[str, Counter[str]]:
        """How many Services want each member of the VIP sets. A Service with one virtual server (most of
        them) is counted inline, without the two per-Service sets of :meth:`_add_set_refs`."""
        out: dict[str, Counter[str]] = {}
        names = {f: (R.kernel_set(R.SET_SVIP, f), R.kernel_set(R.SET_SVIP_PRT, f)) for f in (4, 6)}
        for m in desired_models:
            vs = m.vservers
            if len(vs) != 1:
                self._add_set_refs(out, m, 1)
                continue
            for k in vs:
                if k.fwmark:
                    continue
                n1, n2 = names[k.family]
                c = out.get(n1)
                if c is None:
                    c = out[n1] = Counter()
                c[k.addr] = c.get(k.addr, 0) + 1
                e = f"{k.addr},{PROTO_NAMES[k.proto]}:{k.port}"
                c = out.get(n2)
                if c is None:
                    c = out[n2] = Counter()
                c[e] = c.get(e, 0) + 1
        return out

    @staticmethod
    def _add_set_refs(refs: dict[str, Counter[str]], m: ServiceModel, sign: int) -> None:
        for f, a in m.svip():
            refs.setdefault(R.kernel_set(R.SET_SVIP, f), Counter())[a] += sign
        for f, e in m.svip_prt():
            refs.setdefault(R.kernel_set(R.SET_SVIP_PRT, f), Counter())[e] += sign

    def _chains(self, desired: Desired | None = None,
                ) -> tuple[dict[tuple[int, str, str], list[list[str]]], list[tuple[int, str, str]]]:
        """The chains wanted per family (``desired``: this full sync's, else rebuilt from the models)."""
        if desired is None:
            desired = Desired.build(self.models.values())
        want: dict[tuple[int, str, str], list[list[str]]] = {}
        remove: list[tuple[int, str, str]] = []
        for f in self.opts.families:
            want[(f, "filter", R.CHAIN_SERVICES)] = R.firewall_rules(f, desired.source_ranges(f), self.opts.permit_all)
            want[(f, "nat", R.CHAIN_SNAT)] = R.snat_rules(f, self.node.ips.get(f, ""), self.node.pod_cidrs,
                                                            self.opts.masquerade_all)
            hp = R.hairpin_rules(f, desired.hairpin(f))
            if hp:
                want[(f, "nat", R.CHAIN_HAIRPIN)] = hp
            else:
                remove.append((f, "nat", R.CHAIN_HAIRPIN))
        return want, remove

    def _sync_firewall(self, desired: Desired, full: bool, periodic: bool = False) -> None:
        assert self.fw is not None
        if periodic:  # chain drift is checked by every chain sync (it reads the ruleset anyway)
            self.fw.check_sets()
        self.set_refs = self._set_entries(list(self.models.values()))
        local = self._local_ips()
        self.local = None
        sets = []
        for f in self.opts.families:
            sets += R.ipsets(f, (a for a, n in self.set_refs.get(R.kernel_set(R.SET_SVIP, f), {}).items() if n > 0),
                             (e for e, n in self.set_refs.get(R.kernel_set(R.SET_SVIP_PRT, f), {}).items() if n > 0),
                             local[f])
        t = time.perf_counter()
        self.fw.sync_sets(sets)
        t = _lap(self.timings, "firewall_ipsets", t)
        self._apply_chains(desired)
        _lap(self.timings, "firewall_chains_and_jumps", t)

    def _apply_chains(self, desired: Desired | None = None) -> None:
        """Chains (created or rewritten), the jumps into them, deletion of chains no longer wanted (their
        jumps are gone by then): one save and at most one restore per family."""
        assert self.fw is not None
        want, remove = self._chains(desired)
        jumps = {}
        for f in self.opts.families:
            jumps.update(self.fw.jumps(f, hairpin=(f, "nat", R.CHAIN_HAIRPIN) in want))
        self.fw.sync_iptables(want, remove, jumps)

    # ================================================================================ events
    @hookimpl
    def on_service(self, event: Event) -> None:
        self._service_changed(event.obj.key)

    @hookimpl
    def on_endpoints(self, event: Event) -> None:
        keys = {s.service_key for s in (event.new, event.old) if s is not None and s.service_key}
        for key in keys:
            self._service_changed(key)

    @hookimpl
    def on_node(self, event: Event) -> None:
        assert self.ctx is not None
        if event.obj.name == self.ctx.node_name and self.started:
            self.ctx.request_sync(f"node {event.obj.name} changed")

    @hookimpl
    def on_pod(self, event: Event) -> None:
        """Pods matter only through EndpointSlices (and hostNetwork for DSR, not implemented): nothing."""

    def _service_changed(self, key: str) -> None:
        if not self.started:
            return
        assert self.fw is not None and self.hc is not None
        old = self.models.get(key) or ServiceModel(key=key)
        new = self._build(key)
        if new.vservers or new.vips or not new.skipped:
            self.models[key] = new
        else:
            self.models.pop(key, None)
        affected = set(old.vservers) | set(new.vservers)
        wanted = self.wanted_by
        for k in old.vservers:
            s = wanted.get(k)
            if s == key:
                del wanted[k]
            elif isinstance(s, set):
                s.discard(key)
                if len(s) <= 1:
                    wanted[k] = next(iter(s)) if s else ""
        for k in new.vservers:
            s = wanted.get(k)
            if not s:
                wanted[k] = key
            elif isinstance(s, set):
                s.add(key)
            elif s != key:
                wanted[k] = {s, key}
        desired: dict[VKey, VirtualServer] = {}
        for k in affected:
            w = wanted.get(k)
            if not w:
                wanted.pop(k, None)
                self.owner.pop(k, None)
                continue
            owners = {w} if isinstance(w, str) else w
            o = self.owner.get(k)
            if o not in owners:
                o = min(owners)
                self.owner[k] = o
            desired[k] = self.models[o].vservers[k]
            if k in self.foreign:
                self.committed[k] = self.foreign.pop(k)
        p = plan(self.committed, desired, keys=sorted(affected), graceful=bool(self._settings("ipvs-graceful-termination")),
                 excluded_cidrs=self.excluded)
        self._apply(p.ops, desired)
        self._drain(p.drain)
        # VIPs
        self.vip_refs.update(new.vips)
        self.vip_refs.subtract(old.vips)
        if new.vips != old.vips:
            self._sync_vips({v for v, n in self.vip_refs.items() if n > 0})
            self.vip_refs = +self.vip_refs
        # sets: member deltas
        if old.svip() != new.svip() or old.svip_prt() != new.svip_prt():
            before = {n: {e for e, c in cnt.items() if c > 0} for n, cnt in self.set_refs.items()}
            self._add_set_refs(self.set_refs, old, -1)
            self._add_set_refs(self.set_refs, new, 1)
            after = {n: {e for e, c in cnt.items() if c > 0} for n, cnt in self.set_refs.items()}
            add = [(n, e) for n, es in after.items() for e in es - before.get(n, set())]
            delete = [(n, e) for n, es in before.items() for e in es - after.get(n, set())]
            self.fw.update_members(add, delete)
        if old.hairpin != new.hairpin or old.source_ranges != new.source_ranges:
            self._apply_chains()
        if old.healthcheck != new.healthcheck:
            self.hc.sync(Desired.build(self.models.values()).healthchecks())
        if p.ops or new.vips != old.vips:
            log.info("Service %s: %s", key, _describe(p.ops) or "VIPs updated")
        self._after_apply(owners_changed=set(old.vservers) != set(new.vservers))

    # ================================================================================ graceful termination
    def _drain(self, drain: list[tuple[VKey, tuple[str, int]]]) -> None:
        if not drain:
            return
        fallback = float(self._settings("ipvs-graceful-period"))
        now = time.monotonic()
        for item in drain:
            if item not in self.graceful:
                self.graceful[item] = now + self._grace_period(item[0], item[1][0], fallback)

    def _grace_period(self, k: VKey, addr: str, fallback: float) -> float:
        """The endpoint pod's ``terminationGracePeriodSeconds`` (kube-router's choice), else the flag."""
        assert self.ctx is not None
        ns = self.owner.get(k, "").partition("/")[0]
        if ns:
            try:
                for pod in self.ctx.caches.pods_in(ns):
                    if addr in pod.pod_ips and pod.termination_grace_period_seconds is not None:
                        return float(pod.termination_grace_period_seconds)
            except LookupError:
                pass
        return fallback

    def _graceful_timer(self) -> None:
        while not self.stopping.wait(self.cfg.graceful_check_interval):
            if self.graceful and self.ctx is not None:
                self.ctx.request_sync("graceful")

    def _process_graceful(self) -> None:
        """Delete draining destinations whose connections are gone or whose grace period is over."""
        assert self.ipvs is not None
        now = time.monotonic()
        ops: list[Op] = []
        by_svc: dict[VKey, list[tuple[tuple[str, int], float]]] = {}
        for (k, d), deadline in list(self.graceful.items()):
            cur = self.committed.get(k)
            if cur is None or d not in cur[1] or cur[1][d][0] != 0:
                del self.graceful[(k, d)]  # gone already, or wanted again
                continue
            by_svc.setdefault(k, []).append((d, deadline))
        for k, items in by_svc.items():
            try:
                live = self.ipvs.dests(k, conns=True)
            except OSError:
                live = {}
            for d, deadline in items:
                v = live.get(d)
                if v is None or v[2] + v[3] == 0 or now >= deadline:
                    ops.append((DEL_DEST, k, d))
                    del self.graceful[(k, d)]
        if ops:
            self._apply(ops, {})
            log.info("graceful termination: %d destinations removed", len(ops))

    # ================================================================================ state
    @hookimpl
    def state(self) -> dict[str, Any]:
        items = []
        for k, (params, dests) in sorted(self.committed.items(), key=lambda kv: (self.owner.get(kv[0], ""), kv[0])):
            svc = self.owner.get(k, "")
            m = self.models.get(svc)
            vs = m.vservers.get(k) if m else None
            items.append({
                "service": svc or "(unowned)", "kind": vs.kind if vs else "", "vip": str(k),
                "scheduler": params.sched, "flags": params.flags, "timeout": params.timeout,
                "destinations": [f"{a}:{p}" if ":" not in a else f"[{a}]:{p}" for (a, p), (w, _f) in sorted(dests.items())
                                 if w > 0],
                "draining": sum(1 for w, _f in dests.values() if w == 0),
            })
        return {
            "summary": {"services": len(self.models), "virtual_servers": len(self.committed),
                        "destinations": sum(len(d) for _, d in self.committed.values()), "vips": len(self.vips),
                        "vip_addresses": len(self.vip_addrs), "service_vip_mode": self.vip_mode,
                        "foreign_virtual_servers": len(self.foreign), "draining": len(self.graceful),
                        "iptables": self.fw.modes if self.fw else {}, **self.counters,
                        "last_sync_seconds": self.timings},
            "items": items,
        }


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection during a bulk rebuild: it allocates ~10 objects per destination, and
    the collector's generation-2 passes over them made a 10k-Service model build 3-4x slower (1.6 s
    instead of 0.4 s). Nothing built there is cyclic garbage; the collector resumes afterwards."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _lap(timings: dict[str, float], name: str, t0: float) -> float:
    t = time.perf_counter()
    timings[name] = round(t - t0, 4)
    return t


def _describe(ops: list[Op]) -> str:
    c = Counter(o[0] for o in ops)
    return ", ".join(f"{n} {kind}" for kind, n in sorted(c.items()))

