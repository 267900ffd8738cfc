"""The bgp_routing plugin (role pod-routing): pod networking by BGP with a managed gobgpd.

What it does, as kube-router's routing controller:

* starts ``gobgpd`` with its API on a unix socket (:mod:`.gobgpd`), configures it entirely over gRPC
  (:mod:`.speaker`), restarts it if it dies and re-advertises everything;
* advertises the node's pod CIDR(s) and, per flags/annotations, Service VIPs (:mod:`.vips`); iBGP full mesh
  or per-ASN peering, route reflectors, external peers from flags or node annotations (:mod:`.desired`,
  :mod:`.peers`); export/import policies with hitless versioned replacement (:mod:`.policy`);
* injects learned routes into the kernel, directly or through an overlay tunnel (:mod:`.injector`);
* host setup: kube-bridge, CNI config, FORWARD accepts, pod egress masquerade, ipsets (:mod:`.host`);
* BFD for external peers with kr's own speaker (:mod:`.bfd`, :mod:`.bfdd`; GoBGP v3 has none): a session
  that goes Down after Up disables the BGP peer in gobgpd at once, Up again enables it.
* on AWS (``--disable-source-dest-check``): the EC2 source/destination check of every ``aws://`` node is
  turned off once, off the event thread (:mod:`.aws`).

Beyond kube-router, node annotation changes (ASN, peers, communities, prepend, RR role) apply live.
Bad input (an unparseable annotation, a reserved ASN, an invalid community) is logged against the node,
counted in ``kr_bgp_routing_bad_input_total`` and skipped; everything else is still configured.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from typing import Any

import grpc
from pydantic import BaseModel, ConfigDict

from kr_core import (
    Event,
    EventType,
    HealthReport,
    PluginConfigError,
    PluginContext,
    PluginInfo,
    Resource,
    Role,
    hookimpl,
)
from kr_core.net import netns as kr_netns
from kr_core.net.svcip import Validator

from .aws import SourceDestCheck
from .bfd import Change, Params
from .bfd import State as BfdState
from .bfdd import BfdDaemon, SessionSpec
from .desired import GlobalSpec, Options, PeerSpec, external_peers, internal_peers, local_asn
from .gobgpd import Gobgpd
from .host import DEFAULT_CNI_CONF, Host, ipsets_for
from .injector import InjectConfig, Injector
from .metrics import Metrics
from .naming import TUNNEL_PREFIX, generate_router_id, grpc_listen_addrs
from .nodeinfo import cluster_ipsets, node_bgp, node_ip_of_family, node_ips, pod_cidrs
from .peers import BfdConfig, PeerConfig, bfd_problem, peers_from_annotations, peers_from_flags, valid_cluster_asn
from .policy import EXPORT_POLICY, IMPORT_POLICY, DefinedSet, PolicyInputs, VersionedPolicy, build, diff_sets
from .speaker import PeerStatus, Speaker
from .stubs import StubsError, load
from .tunnels import DEFAULT_GUE_PORT, fou_port_command
from .vips import AdvertiseFlags, VipDecision, service_vips, vip_prefix

__version__ = "0.1.0"

log = logging.getLogger("kr.bgp_routing")


def _in_other_netns(netns: str | None) -> bool:
    """True when the agent (or its ``netns``) runs in a named network namespace (``ip netns``, under
    /run/netns): the lab and the tests, where several agents share one filesystem."""
    if netns:
        return True
    try:
        me = os.stat("/proc/thread-self/ns/net")
        for entry in os.scandir("/run/netns"):
            st = entry.stat()
            if (st.st_dev, st.st_ino) == (me.st_dev, me.st_ino):
                return True
    except OSError:
        pass
    return False


def _routing_view(node: Any) -> tuple[Any, ...]:
    """What routing reads from a Node: addresses, pod CIDRs, kube-router annotations."""
    ann = tuple(sorted((k, v) for k, v in node.meta.annotations.items() if k.startswith("kube-router.io/")))
    return node.addresses, node.pod_cidrs, ann


class Config(BaseModel):
    """The ``bgp_routing:`` section of the kr config file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the gobgpd binary
    gobgpd: str = "gobgpd"
    #: gobgpd's API socket (default: <state_dir>/gobgpd.sock)
    socket: str = ""
    #: do everything (gobgpd, routes, links, iptables, ipsets) inside this named network namespace (tests)
    netns: str | None = None
    #: CNI config file (default: $KUBE_ROUTER_CNI_CONF_FILE or /etc/cni/net.d/10-kuberouter.conf, but
    #: <state_dir>/10-kuberouter.conf when the agent runs in a named netns (`ip netns`), as in the lab);
    #: ``{state_dir}`` and ``{node}`` are replaced (one file per node when several agents share a filesystem)
    cni_conf_file: str = ""
    #: kube-bridge, CNI config, FORWARD accepts, pod egress masquerade (ipsets are always kept)
    host_setup: bool = True
    #: gobgpd log level
    gobgpd_log_level: str = "info"


class Plugin:
    info = PluginInfo(
        name="bgp_routing",
        role=Role.POD_ROUTING,
        version=__version__,
        resources=frozenset({Resource.NODE, Resource.SERVICE, Resource.ENDPOINTSLICE}),
        config_model=Config,
        description="pod networking by BGP with GoBGP",
    )

    def __init__(self) -> None:
        self.ctx: PluginContext | None = None
        self.cfg = Config()
        self.daemon: Gobgpd | None = None
        self.sp: Speaker | None = None
        self.injector: Injector | None = None
        self.host: Host | None = None
        self.metrics: Metrics | None = None
        self.flag_peers: list[PeerConfig] = []
        self.vips: dict[str, VipDecision] = {}
        self._reset_committed()
        self._gobgpd_restarted = threading.Event()
        self.last_error = ""
        self._logged: set[str] = set()
        self._pending_reset: set[str] = set()  # soft reset directions owed after a policy swap
        self._iface: tuple[str, str, list[str], int | None] | None = None  # (node IP, iface, subnets, mtu)
        self._host_key: tuple[Any, ...] | None = None
        self.bfdd: BfdDaemon | None = None
        self._bfd_held: set[str] = set()  # peers whose BGP session kr disabled because BFD went down
        self._bfd_gr_warned = False
        self.srcdst: SourceDestCheck | None = None  # --disable-source-dest-check (AWS)

    def _reset_committed(self) -> None:
        self.global_spec: GlobalSpec | None = None
        self.peers: dict[str, PeerSpec] = {}
        self.paths: dict[str, tuple[str, bytes]] = {}  # prefix -> (next hop, uuid)
        self.sets: dict[str, DefinedSet] = {}
        self.export = VersionedPolicy(EXPORT_POLICY, getattr(self, "export", VersionedPolicy(EXPORT_POLICY)).version)
        self.import_ = VersionedPolicy(IMPORT_POLICY, getattr(self, "import_", VersionedPolicy(IMPORT_POLICY)).version)

    # ------------------------------------------------------------------------------------------ lifecycle
    @hookimpl
    def configure(self, ctx: PluginContext) -> None:
        self.ctx = ctx
        self.cfg = ctx.config or Config()
        s = ctx.settings
        if s.overlay_encap not in ("ipip", "fou", "vxlan"):
            raise PluginConfigError(f"--overlay-encap={s.overlay_encap!r}: use ipip, fou or vxlan", path="overlay-encap")
        if s.overlay_type not in ("subnet", "full"):
            raise PluginConfigError(f"--overlay-type={s.overlay_type!r}: use subnet or full", path="overlay-type")
        if s.overlay_encap == "fou" and s.overlay_encap_port < 1024:
            raise PluginConfigError("--overlay-encap-port must be >= 1024", path="overlay-encap-port")
        if s.cluster_asn and not valid_cluster_asn(s.cluster_asn):
            raise PluginConfigError(f"--cluster-asn={s.cluster_asn}: must be 64512-65535 or 4200000000-4294967294",
                                    path="cluster-asn")
        if not 3 <= s.bgp_holdtime <= 65536:
            raise PluginConfigError("--bgp-holdtime must be between 3s and 18h12m16s", path="bgp-holdtime")
        self.metrics = Metrics(ctx.metrics)
        self.flag_peers, problems = peers_from_flags(
            s.peer_router_ips, s.peer_router_asns, s.peer_router_ports, s.peer_router_passwords,
            s.peer_router_passwords_file)
        if problems:
            raise PluginConfigError("; ".join(problems), path="peer-router-ips")
        if s.enable_bfd:  # --enable-bfd: BFD for the global (flag) peers, with the --bfd-* parameters
            flag_bfd = BfdConfig(True, s.bfd_port, s.bfd_detection_multiplier, s.bfd_required_min_rx_interval,
                                 s.bfd_desired_min_tx_interval)
            problem = bfd_problem(flag_bfd)
            if problem:
                raise PluginConfigError(f"--enable-bfd: {problem}", path="enable-bfd")
            self.flag_peers = [dataclasses.replace(p, bfd=flag_bfd) for p in self.flag_peers]
        self.validator = Validator.from_settings(s)
        self.opts = Options(
            cluster_asn=s.cluster_asn, full_mesh=s.nodes_full_mesh, enable_ibgp=s.enable_ibgp, bgp_port=s.bgp_port,
            hold_time=int(s.bgp_holdtime), multihop_ttl=s.peer_router_multihop_ttl,
            graceful_restart=s.bgp_graceful_restart, gr_time=int(s.bgp_graceful_restart_time),
            gr_deferral=int(s.bgp_graceful_restart_deferral_time), families=tuple(s.families),
        )
        self.adv_flags = AdvertiseFlags(s.advertise_cluster_ip, s.advertise_external_ip, s.advertise_loadbalancer_ip)
        # its thread starts only when a node with an aws:// provider id shows up
        self.srcdst = SourceDestCheck() if s.disable_source_dest_check else None

    def _cni_path(self) -> str:
        """The CNI config file. Default: kube-router's, unless this agent runs in a named network namespace
        (the lab, tests: several agents share one filesystem), where it goes to the state dir."""
        assert self.ctx is not None
        raw = self.cfg.cni_conf_file or os.environ.get("KUBE_ROUTER_CNI_CONF_FILE", "")
        if not raw:
            raw = DEFAULT_CNI_CONF if not _in_other_netns(self.netns) else "{state_dir}/10-kuberouter.conf"
        return raw.replace("{state_dir}", self.ctx.state_dir).replace("{node}", self.ctx.node_name)

    @property
    def netns(self) -> str | None:
        return self.cfg.netns

    @hookimpl
    def start(self, ctx: PluginContext) -> None:
        try:
            g = load(binary=self.cfg.gobgpd)
        except StubsError as e:
            raise RuntimeError(f"bgp_routing cannot start: {e}") from None
        os.makedirs(ctx.state_dir, exist_ok=True)
        sock = self.cfg.socket or os.path.join(ctx.state_dir, "gobgpd.sock")
        s = ctx.settings
        # kube-router's admin API (the `gobgp` CLI's default target) besides kr's own unix socket
        tcp = grpc_listen_addrs(s.gobgp_admin_address, s.gobgp_admin_port) if s.gobgp_admin_port else []
        self.daemon = Gobgpd(sock, binary=self.cfg.gobgpd, netns=self.netns, log_level=self.cfg.gobgpd_log_level,
                             extra_api_hosts=tcp, on_restart=self._on_gobgpd_restart)
        self.daemon.start(graceful_restart=s.bgp_graceful_restart)
        self.sp = Speaker(g, self.daemon.target)
        self.sp.wait_ready(10)
        assert self.metrics is not None
        self.injector = Injector(lambda: Speaker(g, self.daemon.target), netns=self.netns,  # type: ignore[union-attr]
                                 resync=float(ctx.settings.injected_routes_sync_period),
                                 on_stats=self.metrics.injector_stat)
        self.injector.start()
        self.host = Host(netns=self.netns, families=ctx.settings.families)
        with contextlib.suppress(Exception):
            self.host.sysctls()

    def _on_gobgpd_restart(self, count: int) -> None:
        """From the watcher thread: gobgpd is back, empty; the next sync re-configures everything."""
        if self.metrics:
            self.metrics.gobgpd_restarts.inc()
        self._gobgpd_restarted.set()
        if self.ctx:
            self.ctx.request_sync("gobgpd restarted")

    @hookimpl
    def stop(self) -> None:
        if self.srcdst:
            self.srcdst.stop()
        if self.bfdd:
            self.bfdd.stop()  # AdminDown to the peers first: they keep their BGP sessions (RFC 5882 3.2)
            self.bfdd = None
        if self.injector:
            self.injector.stop()
        if self.sp:
            self.sp.close()
        if self.daemon:
            gr = bool(self.ctx and self.ctx.settings.bgp_graceful_restart)
            self.daemon.stop(graceful_restart=gr)

    @hookimpl
    def cleanup(self) -> None:
        """Remove routes (proto zebra), tunnels, GUE ports, ip rules, iptables rules and ipsets this plugin installs."""
        run = kr_netns.run
        for fam in ("-4", "-6"):
            for table in ("main", "77"):
                run(self.netns, ["ip", fam, "route", "flush", "proto", "17", "table", table], check=False)
        links = run(self.netns, ["ip", "-o", "link", "show"], check=False).stdout
        for line in links.splitlines():
            parts = line.split(":")
            if len(parts) > 1 and parts[1].strip().split("@")[0].startswith(TUNNEL_PREFIX):
                run(self.netns, ["ip", "link", "del", parts[1].strip().split("@")[0]], check=False)
        port = self.ctx.settings.overlay_encap_port if self.ctx else DEFAULT_GUE_PORT
        for v6 in (False, True):  # the GUE receive ports FoU tunnels opened (--overlay-encap=fou)
            run(self.netns, ["ip", *fou_port_command(port, v6, "del")], check=False)
        for fam in ("-4", "-6"):
            for _ in range(64):
                if run(self.netns, ["ip", fam, "rule", "del", "table", "77"], check=False).returncode != 0:
                    break
        families = self.ctx.settings.families if self.ctx else (4,)
        Host(netns=self.netns, families=families).cleanup()
        if self.ctx is not None:  # a gobgpd a crashed agent left behind
            sock = self.cfg.socket or os.path.join(self.ctx.state_dir, "gobgpd.sock")
            Gobgpd(sock, binary=self.cfg.gobgpd, netns=self.netns).kill_leftover()

    # ------------------------------------------------------------------------------------------ events
    @hookimpl
    def sync(self, reason: str) -> None:
        assert self.ctx is not None
        me = self.ctx.caches.nodes.get(self.ctx.node_name)
        ips = node_ips(me) if me else ()
        if self.srcdst is not None:
            for node in self.ctx.caches.nodes.list():
                self.srcdst.submit(node.name, node.provider_id)
        self.vips = {}
        for svc in self.ctx.caches.services.list():
            self.vips[svc.key] = self._service_vips(svc.key, ips)
        self.reconcile(reason, full=True)
        self.peer_status()  # refreshes kube_router_bgp_peer_info, as kube-router's periodic loop does

    @hookimpl
    def on_node(self, event: Event) -> None:
        obj = event.obj
        if self.srcdst is not None and event.new is not None and \
                (event.old is None or event.old.provider_id != event.new.provider_id):
            self.srcdst.submit(event.new.name, event.new.provider_id)  # AWS: a node added later
        if event.type is EventType.MODIFIED and event.old is not None and event.new is not None \
                and _routing_view(event.old) == _routing_view(event.new):
            return  # status heartbeats, labels, conditions: nothing routing reads changed
        if event.type is EventType.DELETED:
            log.info("node %s deleted: removing its peer and routes", obj.name)
        elif event.new is not None and event.old is not None and obj.name == self.ctx.node_name:  # type: ignore[union-attr]
            if event.new.meta.annotations != event.old.meta.annotations:
                log.info("node %s (this node): annotations changed; applying live", obj.name)
        self.reconcile(f"node {obj.name} {event.type.value}")

    @hookimpl
    def on_service(self, event: Event) -> None:
        self._service_changed(event.obj.key)

    @hookimpl
    def on_endpoints(self, event: Event) -> None:
        key = event.obj.service_key
        if key:
            self._service_changed(key)

    def _service_changed(self, key: str) -> None:
        assert self.ctx is not None
        me = self.ctx.caches.nodes.get(self.ctx.node_name)
        new = self._service_vips(key, node_ips(me) if me else ())
        old = self.vips.get(key, VipDecision())
        if new.advertise == old.advertise:
            if new.advertise or new.withdraw:
                self.vips[key] = new
            else:
                self.vips.pop(key, None)
            return  # nothing to advertise or withdraw (the common case: VIP advertisement is off)
        self.vips[key] = new
        self.reconcile(f"service {key}")

    def _service_vips(self, key: str, ips: tuple[str, ...]) -> VipDecision:
        assert self.ctx is not None
        svc = self.ctx.caches.services.get(key)
        if svc is None:
            return VipDecision()
        d = service_vips(svc, self.ctx.caches.endpoints_for(key), self.ctx.node_name, ips, self.adv_flags,
                         self.validator, self.ctx.settings.families)
        for ip, why in d.refused:
            self._bad(f"service {key}", f"VIP {ip} not advertised: {why}")
        return d

    # ------------------------------------------------------------------------------------------ reconcile
    def _bad(self, obj: str, problem: str) -> None:
        key = f"{obj}: {problem}"
        if key not in self._logged:
            log.warning("%s", key)
            self._logged.add(key)
            if self.metrics:
                self.metrics.bad_input.labels(obj.split(" ")[0]).inc()

    def reconcile(self, reason: str, *, full: bool = False) -> None:
        """Bring gobgpd, the host and the injector in line with the caches; apply only differences."""
        assert self.ctx is not None and self.sp is not None and self.host is not None and self.injector is not None
        t0 = time.monotonic()
        me = self.ctx.caches.nodes.get(self.ctx.node_name)
        if me is None:
            self._bad(f"node {self.ctx.node_name}", "this node has no Node object yet; nothing configured")
            return
        if self._gobgpd_restarted.is_set():
            self._gobgpd_restarted.clear()
            log.info("gobgpd restarted: re-configuring global, peers, policies and %d paths", len(self.paths))
            self._reset_committed()
        s = self.ctx.settings
        nodes = list(self.ctx.caches.nodes.list())
        mine = node_bgp(me.meta.annotations)
        for p in mine.problems:
            self._bad(f"node {me.name}", p)
        cidrs, problems = pod_cidrs(me)
        for p in problems:
            self._bad(f"node {me.name}", p)
        ip4, ip6 = node_ip_of_family(me, 4), node_ip_of_family(me, 6)
        primary = me.primary_ip
        if not primary:
            self._bad(f"node {me.name}", "no InternalIP/ExternalIP; BGP not configured")
            return
        if full or self._iface is None or self._iface[0] != primary:
            self._iface = (primary, *self.host.iface_of(primary))
        _, iface, subnets, mtu = self._iface

        self.injector.configure(InjectConfig(
            node_ip4=ip4, node_ip6=ip6, local_subnets=tuple(subnets), own_prefixes=frozenset(cidrs),
            enable_overlay=s.enable_overlay, overlay_type=s.overlay_type, encap=s.overlay_encap,
            encap_port=s.overlay_encap_port))

        # global
        asn = local_asn(mine, self.opts)
        if asn is None:
            self._bad(f"node {me.name}", "--nodes-full-mesh=false needs the kube-router.io/node.asn annotation")
            return
        if s.router_id == "generate":
            router_id = generate_router_id(primary)
        elif s.router_id:
            router_id = s.router_id
        elif ip4:
            router_id = ip4
        else:
            self._bad(f"node {me.name}", "no IPv4 address: --router-id is required")
            return
        listen = mine.local_addresses or tuple(ip for ip in (ip4, ip6) if ip)
        gspec = GlobalSpec(asn=asn, router_id=router_id, port=s.bgp_port, listen_addresses=listen,
                           graceful_restart=s.bgp_graceful_restart, gr_time=int(s.bgp_graceful_restart_time),
                           gr_deferral=int(s.bgp_graceful_restart_deferral_time))
        if gspec != self.global_spec:
            if self.global_spec is not None or self.sp.started():
                log.info("BGP global config changed (AS %s -> %s, router id %s): restarting the BGP instance",
                         self.global_spec.asn if self.global_spec else "?", asn, router_id)
                with contextlib.suppress(grpc.RpcError):
                    self.sp.stop_bgp()
                self._reset_committed()
            self.sp.start_bgp(gspec)
            self.global_spec = gspec
            log.info("BGP started on node %s: AS %d, router id %s, listening on %s:%d", me.name, asn, router_id,
                     ",".join(listen), s.bgp_port)

        # peers
        t_peers = time.monotonic()
        ibgp = internal_peers(me, nodes, self.opts)
        if self.flag_peers:
            ext_cfg = self.flag_peers
        else:
            ext_cfg, problems = peers_from_annotations(me.meta.annotations)
            for p in problems:
                self._bad(f"node {me.name}", p)
        ext, problems = external_peers(me, ext_cfg, self.opts)
        for p in problems:
            self._bad(f"node {me.name}", p)
        want_peers = {p.address: p for p in ext}
        want_peers.update({p.address: p for p in ibgp})

        # policies (RR servers install none, as kube-router)
        vips = sorted({ip for d in self.vips.values() for ip in d.advertise})
        if not mine.rr_server:
            self._apply_policies(PolicyInputs(
                pod_cidrs=cidrs, vips=tuple(vips), ibgp_peers=tuple(p.address for p in ibgp),
                external_peers=tuple(p.address for p in ext), import_reject=mine.import_reject,
                enable_ibgp=s.enable_ibgp, advertise_pod_cidr=s.advertise_pod_cidr, override_nexthop=s.override_nexthop,
                communities=mine.communities, prepend_asn=mine.prepend_asn, prepend_repeat=mine.prepend_repeat))
        elif self.export.statements is not None:
            self._drop_policies()
        self._apply_peers(want_peers)
        self._apply_bfd(ext_cfg, ext)
        self._soft_resets()
        if self.metrics:
            self.metrics.internal_peers_sync.observe(time.monotonic() - t_peers)

        # paths: own pod CIDRs and VIPs, next hop = our IP of the family
        want: dict[str, str] = {}
        for c in cidrs:
            nh = ip6 if ":" in c else ip4
            if nh:
                want[c] = nh
        for ip in vips:
            nh = ip6 if ":" in ip else ip4
            if nh:
                want[vip_prefix(ip)] = nh
        self._apply_paths(want, cidrs)

        # host (after BGP, so advertisements are not delayed by it): ipsets always (a cheap compare when unchanged); bridge, CNI, ip rules when their inputs change;
        # FORWARD accepts and pod egress on full syncs (they repair drift there)
        members = cluster_ipsets(nodes)
        self.host.sync_ipsets(ipsets_for(members, s.families))
        overlay_mtu = mtu - (50 if s.overlay_encap == "vxlan" else 20) if mtu and s.enable_overlay else mtu
        host_key = (cidrs, iface, overlay_mtu)
        if full or host_key != self._host_key:
            if self.cfg.host_setup:
                if s.enable_cni:
                    self.host.ensure_bridge(cidrs, overlay_mtu if s.auto_mtu else None)
                    self.host.write_cni(self._cni_path(), cidrs, overlay_mtu if s.auto_mtu else None)
                self.host.forward_accepts(iface)
                self.host.pod_egress(s.enable_pod_egress)
            self.host.overlay_rules(cidrs, s.enable_overlay)
            self._host_key = host_key
        if self.metrics:
            self.metrics.routes_sync.observe(time.monotonic() - t0)
        self.last_error = ""
        log.debug("reconciled (%s) in %.3f s", reason, time.monotonic() - t0)

    def _apply_policies(self, inp: PolicyInputs) -> None:
        assert self.sp is not None
        pol = build(inp)
        diffs = diff_sets(self.sets, pol.sets)
        for d in diffs:
            if d.add is not None:
                self.sp.add_defined_set(d.add)
                self.sets[d.set.name] = DefinedSet(d.set.name, d.set.kind,
                                                   self.sets.get(d.set.name, d.set).prefixes | d.add.prefixes,
                                                   self.sets.get(d.set.name, d.set).neighbors | d.add.neighbors)
        for slot, stmts, default_accept, direction in ((self.export, pol.export, False, "export"),
                                                       (self.import_, pol.import_, True, "import")):
            plan = slot.plan(stmts)
            if plan is None:
                continue
            new, old = plan
            self.sp.add_policy(new, stmts)
            self.sp.assign(direction, new, default_accept)
            if old:
                with contextlib.suppress(grpc.RpcError):
                    self.sp.delete_policy(old)
            slot.commit(stmts)
            if old:  # gobgpd re-evaluates what it already sent only on a soft reset
                self._pending_reset.add("out" if direction == "export" else "in")
            log.info("BGP %s policy %s applied (%d statements)%s", direction, new, len(stmts),
                     f", replacing {old}" if old else "")
        for d in diffs:
            if d.remove is not None:
                self.sp.delete_defined_set_entries(d.remove)
                self.sets[d.set.name] = d.set

    def _soft_resets(self) -> None:
        assert self.sp is not None
        for direction in sorted(self._pending_reset):
            self._pending_reset.discard(direction)
            for addr in self.peers:
                try:
                    self.sp.soft_reset(addr, direction)
                except grpc.RpcError as e:
                    log.debug("soft reset %s of peer %s: %s", direction, addr, e.details())
            log.info("BGP policies changed: soft reset (%s) of %d peers", direction, len(self.peers))

    def _drop_policies(self) -> None:
        """This node became a route-reflector server: as kube-router, no policies (export everything)."""
        assert self.sp is not None
        for slot, direction in ((self.export, "export"), (self.import_, "import")):
            if slot.statements is not None:
                self.sp.assign(direction, None, True)
                with contextlib.suppress(grpc.RpcError):
                    self.sp.delete_policy(slot.name)
                slot.statements = None
                self._pending_reset.add("out" if direction == "export" else "in")
        log.info("route reflector server: BGP policies removed")

    def _apply_peers(self, want: dict[str, PeerSpec]) -> None:
        assert self.sp is not None
        for addr in [a for a in self.peers if a not in want or want[a] != self.peers[a]]:
            old = self.peers.pop(addr)
            try:
                self.sp.delete_peer(addr)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND and "not found" not in (e.details() or "").lower():
                    raise
            log.info("BGP peer %s (%s, AS %d) removed", addr, old.description or old.kind, old.asn)
        for addr, p in want.items():
            if addr in self.peers:
                continue
            try:
                self.sp.add_peer(p)
            except grpc.RpcError as e:
                if "already exists" not in (e.details() or ""):
                    self._bad(f"peer {addr}", f"AddPeer failed: {e.details()}")
                    continue
                self.sp.delete_peer(addr)
                self.sp.add_peer(p)
            self.peers[addr] = p
            log.info("BGP peer %s (%s, AS %d%s) added", addr, p.description or p.kind, p.asn,
                     ", route-reflector client" if p.rr_client else "")
            if addr in self._bfd_held:  # re-added (changed, gobgpd restarted) while BFD is down: keep it down
                self._bfd_disable(addr)

    def _apply_paths(self, want: dict[str, str], cidrs: tuple[str, ...]) -> None:
        assert self.sp is not None
        for prefix in [p for p in self.paths if want.get(p) != self.paths[p][0]]:
            nh, uuid = self.paths.pop(prefix)
            with contextlib.suppress(grpc.RpcError):
                self.sp.delete_path(uuid, prefix)
            kind = "pod-route" if prefix in cidrs else "withdraw-vip"
            if self.metrics:
                self.metrics.adv_sent.labels(kind).inc()
            log.info("BGP path %s withdrawn", prefix)
        for prefix, nh in want.items():
            if prefix in self.paths:
                continue
            uuid = self.sp.add_path(prefix, nh)
            self.paths[prefix] = (nh, uuid)
            if self.metrics:
                self.metrics.adv_sent.labels("pod-route" if prefix in cidrs else "advertise-vip").inc()
            log.info("BGP path %s advertised (next hop %s)", prefix, nh)

    # ------------------------------------------------------------------------------------------ BFD
    def _apply_bfd(self, configs: list[PeerConfig], ext: list[PeerSpec]) -> None:
        """One BFD session per configured external peer with BFD enabled (kr's own BFD speaker, :mod:`.bfdd`:
        GoBGP v3 has no BFD)."""
        enabled = {c.address: c.bfd for c in configs if c.bfd.enabled}
        want = {p.address: SessionSpec(p.address, p.local_address, b.port, Params.from_ms(
            b.detection_multiplier, b.desired_min_tx_interval, b.required_min_rx_interval))
            for p in ext if (b := enabled.get(p.address)) is not None}
        if want and self.opts.graceful_restart and not self._bfd_gr_warned:
            self._bfd_gr_warned = True
            log.warning("BFD is enabled together with BGP graceful restart: when BFD brings a session down, "
                        "peers that keep graceful-restart state may keep its routes until the restart time")
        if self.bfdd is None:
            if not want:
                return
            self.bfdd = BfdDaemon(self._on_bfd, netns=self.netns)
            self.bfdd.start()
        for addr in [a for a in list(self._bfd_held) if a not in want]:  # BFD turned off for a peer it held down
            self._bfd_held.discard(addr)
            if addr in self.peers:
                self._bfd_enable(addr, "BFD disabled")
        if self.metrics:
            for addr in want:
                self.metrics.bfd_session_up.labels(addr)  # 0 until the session is Up
            for labels in [m.labels for m in self.metrics.bfd_session_up.collect()[0].samples]:
                if labels["peer"] not in want:
                    with contextlib.suppress(KeyError):
                        self.metrics.bfd_session_up.remove(labels["peer"])
        self.bfdd.configure(want)

    def _on_bfd(self, peer: str, ch: Change) -> None:
        """A BFD session changed state (from the BFD notifier thread). Up -> Down (not a peer's AdminDown)
        disables the BGP peer at once, so its routes are withdrawn without waiting for the hold timer; Up
        again enables it."""
        failed = ch.old == BfdState.UP and ch.new == BfdState.DOWN and ch.remote_state != BfdState.ADMIN_DOWN
        log.log(logging.WARNING if failed else logging.INFO, "BFD session with peer %s: %s -> %s (diag %s%s)",
                peer, ch.old.name, ch.new.name, ch.diag.name.lower().replace("_", " "),
                ", peer is admin down" if ch.remote_state == BfdState.ADMIN_DOWN else "")
        if self.metrics:
            self.metrics.bfd_session_up.labels(peer).set(1 if ch.new == BfdState.UP else 0)
            self.metrics.bfd_transitions.labels(peer, ch.new.name).inc()
        if failed:
            self._bfd_held.add(peer)
            self._bfd_disable(peer)
        elif ch.new == BfdState.UP and peer in self._bfd_held:
            self._bfd_held.discard(peer)
            self._bfd_enable(peer, "BFD is up again")

    def _bfd_disable(self, peer: str) -> None:
        if self.sp is None:
            return
        try:
            self.sp.disable_peer(peer, "BFD session down")
            log.warning("BGP peer %s shut down: its BFD session went down", peer)
        except grpc.RpcError as e:
            log.warning("BGP peer %s: disabling it after BFD went down failed: %s", peer, e.details())

    def _bfd_enable(self, peer: str, why: str) -> None:
        if self.sp is None:
            return
        try:
            self.sp.enable_peer(peer)
            log.info("BGP peer %s enabled again: %s", peer, why)
        except grpc.RpcError as e:
            log.warning("BGP peer %s: enabling it again failed: %s", peer, e.details())

    # ------------------------------------------------------------------------------------------ reporting
    def peer_status(self) -> list[PeerStatus]:
        if self.sp is None:
            return []
        try:
            peers = self.sp.list_peers()
        except grpc.RpcError:
            return []
        if self.metrics:
            self.metrics.peer_info.clear()
            for p in peers:
                self.metrics.peer_info.labels(p.address, p.type, str(p.asn), p.state).set(1)
            self.metrics.peers.set(len(peers))
        return peers

    @hookimpl
    def health(self) -> HealthReport | None:
        if self.daemon is not None and not self.daemon.alive():
            return HealthReport(False, "gobgpd is not running (restarting)")
        if self.injector is not None and self.injector.stats.errors:
            return HealthReport(False, f"route injection: {self.injector.stats.errors[0]}")
        return None

    @hookimpl
    def state(self) -> dict[str, Any]:
        peers = self.peer_status()
        routes = self.injector.snapshot() if self.injector else []
        items: list[dict[str, Any]] = []
        for p in peers:
            spec = self.peers.get(p.address)
            items.append({"kind": "peer", "address": p.address, "asn": p.asn, "type": p.type, "state": p.state,
                          "uptime_s": p.uptime, "received": p.received, "accepted": p.accepted,
                          "advertised": p.advertised, "description": spec.description if spec else ""})
        bfd = self.bfdd.snapshot() if self.bfdd else []
        for b in bfd:
            items.append({"kind": "bfd", **b, "bgp_held_down": b["peer"] in self._bfd_held})
        for prefix, (nh, _) in sorted(self.paths.items()):
            items.append({"kind": "advertised", "prefix": prefix, "next_hop": nh})
        for r in routes:
            items.append({"kind": "route", **r})
        return {
            "summary": {
                "asn": self.global_spec.asn if self.global_spec else None,
                "router_id": self.global_spec.router_id if self.global_spec else None,
                "peers": len(peers), "established": sum(p.state == "ESTABLISHED" for p in peers),
                "advertised": len(self.paths), "routes": len(routes),
                "bfd_sessions": len(bfd), "bfd_up": sum(b["state"] == "UP" for b in bfd),
                "tunnels": len(self.injector.tunnels) if self.injector else 0,
                "gobgpd_pid": self.daemon.pid if self.daemon else None,
                "gobgpd_restarts": self.daemon.restarts if self.daemon else 0,
                "export_policy": self.export.name if self.export.statements is not None else None,
                "import_policy": self.import_.name if self.import_.statements is not None else None,
            },
            "items": items,
        }
