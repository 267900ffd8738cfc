"""The pure part of the proxy: Kubernetes objects -> the desired IPVS / address / firewall model.

Nothing here touches the kernel. :func:`build_service` turns one Service, its EndpointSlices and what is
known about this node into a :class:`ServiceModel`: the IPVS virtual servers (with their destinations)
the Service needs, the VIPs that go on ``kube-dummy-if``, the entries it contributes to the INPUT
firewall ipsets, its hairpin SNAT rules, its ``loadBalancerSourceRanges`` filters and its NodePort
health-check server, plus the problems found in its input (logged against the Service by the caller).

kube-router's behaviour (``pkg/controllers/proxy``), with these choices where kube-router is silent or
differs:

* ``Local`` traffic policy with no local endpoint: **no virtual server** for that VIP:port (kube-router's
  choice; AC-P4/P5). The VIP stays on ``kube-dummy-if`` and the VIP:port is absent from
  ``kube-router-svip-prt``, so the INPUT firewall rejects new connections at once (ICMP port unreachable)
  instead of letting them hang.
* endpoints: ready ones are used; terminating-but-serving ones only when a port has no ready endpoint at
  all (kube-proxy's KEP-1669 fallback; kube-router uses serving ones always).
* ``trafficDistribution: PreferClose`` / zone hints: when this node has a zone and *every* usable
  endpoint carries hints, only the endpoints hinted for this zone are used (if there is at least one);
  otherwise all.
* ``loadBalancerSourceRanges`` is enforced on LoadBalancer ingress IPs (not by kube-router).
* ``kube-router.io/service.dsr`` is not implemented yet (a later issue): such Services are served in NAT
  mode and a problem is reported. The model carries a forwarding method and FWMARK keys for it.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from kr_core.model import EndpointSlice, Service
from kr_core.net.svcip import Kind, Validator

# ------------------------------------------------------------------------------------------ constants

ANN = "kube-router.io/"
ANN_SCHEDULER = ANN + "service.scheduler"
ANN_SCHEDFLAGS = ANN + "service.schedflags"
ANN_DSR = ANN + "service.dsr"
ANN_HAIRPIN = ANN + "service.hairpin"
ANN_HAIRPIN_EXTERNALIPS = ANN + "service.hairpin.externalips"
ANN_LOCAL = ANN + "service.local"
ANN_SKIPLBIPS = ANN + "service.skiplbips"
LABEL_PROXY_NAME = "service.kubernetes.io/service-proxy-name"
LABEL_HEADLESS = "service.kubernetes.io/headless"
LABEL_ZONE = "topology.kubernetes.io/zone"

PROTOCOLS = {"TCP": socket.IPPROTO_TCP, "UDP": socket.IPPROTO_UDP, "SCTP": 132}
PROTO_NAMES = {v: k.lower() for k, v in PROTOCOLS.items()}
SCHEDULERS = ("rr", "lc", "dh", "sh", "mh")
DEFAULT_SCHEDULER = "rr"
SVC_F_PERSISTENT = 0x1
SCHED_FLAGS = {"flag-1": 0x8, "flag-2": 0x10, "flag-3": 0x20}  # IP_VS_SVC_F_SCHED1..3
DEFAULT_AFFINITY_TIMEOUT = 10800
MAX_AFFINITY_TIMEOUT = 86400
FWD_MASQ = 0
FWD_TUNNEL = 2
WEIGHT = 1
DEST_VAL = (WEIGHT, FWD_MASQ)  # every destination's (weight, forwarding method)

CLUSTER, NODEPORT, EXTERNAL, LOADBALANCER = "cluster", "nodeport", "external", "loadbalancer"

# ------------------------------------------------------------------------------------------ value types


class VKey(NamedTuple):
    """The identity of an IPVS virtual server: (family 4|6, IP protocol number, address, port, fwmark).

    Address-based servers have ``fwmark`` 0; FWMARK servers (DSR) have ``addr`` "" and ``port`` 0.
    """

    family: int
    proto: int
    addr: str
    port: int
    fwmark: int = 0

    def __str__(self) -> str:
        if self.fwmark:
            return f"fwmark:{self.fwmark}/ipv{self.family}"
        host = f"[{self.addr}]" if self.family == 6 else self.addr
        return f"{PROTO_NAMES.get(self.proto, self.proto)}:{host}:{self.port}"


class VParams(NamedTuple):
    """The settable parameters of a virtual server: scheduler, flags (persistence, sched flags), timeout."""

    sched: str = DEFAULT_SCHEDULER
    flags: int = 0
    timeout: int = 0


# destinations: (address, port) -> (weight, forwarding method)
DKey = tuple[str, int]
DVal = tuple[int, int]


@dataclass(slots=True)
class VirtualServer:
    """One desired (or committed) IPVS virtual server and its destinations (``dests`` may be shared with
    the Service's other virtual servers: read-only)."""

    key: VKey
    params: VParams
    dests: dict[DKey, DVal]
    service: str = ""  # namespace/name of the owning Service
    kind: str = CLUSTER
    port_name: str = ""

    def same_kernel_state(self, other: VirtualServer) -> bool:
        return self.params == other.params and self.dests == other.dests


class HairpinRule(NamedTuple):
    """SNAT to ``vip`` for traffic from endpoint ``ep`` to itself through ``vip:port``."""

    family: int
    vip: str
    port: int
    ep: str


class SourceRangeRule(NamedTuple):
    """Only ``ranges`` may reach ``vip:proto/port`` (loadBalancerSourceRanges)."""

    family: int
    vip: str
    proto: int
    port: int
    ranges: tuple[str, ...]
    service: str


@dataclass(frozen=True)
class NodeInfo:
    """What the model needs to know about this node."""

    name: str
    ips: dict[int, str] = field(default_factory=dict)  # family -> primary node IP
    local_ips: tuple[str, ...] = ()  # every local address (for --nodeport-bindon-all-ip and the local-ips set)
    pod_cidrs: tuple[str, ...] = ()
    zone: str = ""

    def __hash__(self) -> int:
        return hash((self.name, tuple(sorted(self.ips.items())), self.local_ips, self.pod_cidrs, self.zone))


@dataclass(frozen=True)
class Options:
    """The kube-router flags the model depends on."""

    families: tuple[int, ...] = (4,)
    validator: Validator = field(default_factory=lambda: Validator(strict=False))
    hairpin_mode: bool = False
    masquerade_all: bool = False
    nodeport_bindon_all_ip: bool = False
    permit_all: bool = True

    @classmethod
    def from_settings(cls, settings: object) -> Options:
        get = settings.__getitem__  # type: ignore[attr-defined]
        return cls(
            families=tuple(settings.families),  # type: ignore[attr-defined]
            validator=Validator.from_settings(settings),
            hairpin_mode=bool(get("hairpin-mode")),
            masquerade_all=bool(get("masquerade-all")),
            nodeport_bindon_all_ip=bool(get("nodeport-bindon-all-ip")),
            permit_all=bool(get("ipvs-permit-all")),
        )


@dataclass(slots=True)
class ServiceModel:
    """Everything one Service asks of this node."""

    key: str
    vservers: dict[VKey, VirtualServer] = field(default_factory=dict)
    vips: set[tuple[int, str]] = field(default_factory=set)  # (family, addr) for kube-dummy-if
    # hairpin rules, source-range filters and problems are () when there are none (most Services): no
    # three empty lists per Service
    hairpin: Sequence[HairpinRule] = ()
    source_ranges: Sequence[SourceRangeRule] = ()
    healthcheck: tuple[int, int] | None = None  # (healthCheckNodePort, local ready endpoints)
    problems: Sequence[str] = ()
    skipped: str = ""  # why the Service is not served at all ("" when served)

    def svip(self) -> set[tuple[int, str]]:
        """(family, VIP) entries for ``kube-router-svip``."""
        return {(k.family, k.addr) for k in self.vservers if not k.fwmark}

    def svip_prt(self) -> set[tuple[int, str]]:
        """(family, "ip,proto:port") entries for ``kube-router-svip-prt``."""
        return {(k.family, f"{k.addr},{PROTO_NAMES[k.proto]}:{k.port}") for k in self.vservers if not k.fwmark}


# ------------------------------------------------------------------------------------------ helpers


def ip_family(addr: str) -> int | None:
    """4 or 6 for a valid IP string, else None (fast path: inet_pton)."""
    try:
        if ":" in addr:
            socket.inet_pton(socket.AF_INET6, addr)
            return 6
        socket.inet_pton(socket.AF_INET, addr)
        return 4
    except (OSError, TypeError, ValueError):
        return None


def canonical_ip(addr: str) -> str:
    """The canonical text of an address (IPv6 compressed, as the kernel prints it back)."""
    return str(ipaddress.ip_address(addr)) if ":" in addr else addr


def parse_scheduler(svc: Service, problems: list[str]) -> VParams:
    """Scheduler, sched flags and session affinity from the annotations and spec; garbage falls back."""
    ann = svc.meta.annotations
    sched = DEFAULT_SCHEDULER
    raw = ann.get(ANN_SCHEDULER)
    if raw is not None:
        s = raw.strip().lower()
        if s in SCHEDULERS:
            sched = s
        else:
            problems.append(f"annotation {ANN_SCHEDULER}={raw!r}: unknown scheduler, using {DEFAULT_SCHEDULER}")
    flags = 0
    raw_flags = ann.get(ANN_SCHEDFLAGS)
    if raw_flags is not None:
        for part in (p.strip() for p in raw_flags.split(",")):
            if not part:
                continue
            if part not in SCHED_FLAGS:
                problems.append(f"annotation {ANN_SCHEDFLAGS}: unknown flag {part!r} ignored")
            elif sched == "mh":
                flags |= SCHED_FLAGS[part]
        if flags == 0 and sched != "mh" and raw_flags.strip():
            problems.append(f"annotation {ANN_SCHEDFLAGS} ignored: sched flags apply only to the mh scheduler")
    timeout = 0
    if svc.session_affinity == "ClientIP":
        flags |= SVC_F_PERSISTENT
        t = svc.session_affinity_timeout
        if t is None:
            timeout = DEFAULT_AFFINITY_TIMEOUT
        elif 0 < t <= MAX_AFFINITY_TIMEOUT:
            timeout = t
        else:
            problems.append(f"sessionAffinityConfig.clientIP.timeoutSeconds={t}: out of range, using "
                            f"{DEFAULT_AFFINITY_TIMEOUT}")
            timeout = DEFAULT_AFFINITY_TIMEOUT
    elif svc.session_affinity not in ("None", ""):
        problems.append(f"sessionAffinity {svc.session_affinity!r} unknown, treated as None")
    return _params(sched, flags, timeout)


@functools.lru_cache(maxsize=1024)
def _params(sched: str, flags: int, timeout: int) -> VParams:
    """One shared :class:`VParams` per distinct value (10k Services have a handful)."""
    return VParams(sched, flags, timeout)


EP_LOCAL, EP_READY = 1, 2  # endpoint flags: on this node; ready (not terminating)
EpBuckets = dict[tuple[str, str, int], dict[DKey, int]]


def collect_endpoints(svc: Service, slices: Iterable[EndpointSlice], node: NodeInfo, problems: list[str],
                      ) -> tuple[EpBuckets, dict[DKey, tuple[str, ...]]]:
    """Usable endpoints per (port name, protocol, family): ready or serving, valid addresses, deduplicated.

    Each bucket maps an endpoint's (addr, port) to its flags (:data:`EP_LOCAL`, :data:`EP_READY`); the
    key tuple is the one the destination dicts use (no copy per endpoint). Zone hints come separately,
    only for endpoints that have some. A small int per endpoint instead of a record: a cold sync at 10k
    Services handles 100k of them."""
    out: EpBuckets = {}
    hints: dict[DKey, tuple[str, ...]] = {}
    pton = socket.inet_pton
    name = node.name
    for sl in slices:
        fam = {"IPv4": 4, "IPv6": 6}.get(sl.address_type)
        if fam is None:
            continue  # FQDN slices are not for proxies
        af = socket.AF_INET if fam == 4 else socket.AF_INET6
        ports = []
        for p in sl.ports:
            if p.port is None or not 0 < p.port < 65536:
                problems.append(f"EndpointSlice {sl.name}: port {p.name!r} has no valid number")
            else:
                ports.append((p.port, out.setdefault((p.name, p.protocol, fam), {})))
        for ep in sl.endpoints:
            if not (ep.ready or ep.serving) or not ep.addresses:
                continue
            addr = ep.addresses[0]  # one address per endpoint (the API allows only one today)
            try:
                pton(af, addr)
            except (OSError, TypeError, ValueError):
                problems.append(f"EndpointSlice {sl.name}: address {addr!r} is not an {sl.address_type} address")
                continue
            if fam == 6:
                addr = canonical_ip(addr)
            ready = ep.ready and not ep.terminating
            flags = (EP_LOCAL if name and ep.node_name == name else 0) | (EP_READY if ready else 0)
            zones = ep.hint_zones
            for port, bucket in ports:
                dkey = (addr, port)
                cur = bucket.get(dkey)
                if cur is None or (ready and not cur & EP_READY):
                    bucket[dkey] = flags
                    if zones:
                        hints[dkey] = zones
                    elif cur is not None:
                        hints.pop(dkey, None)
    return out, hints


def usable(bucket: dict[DKey, int]) -> list[DKey]:
    """Ready endpoints; terminating-but-serving ones only when none is ready."""
    ready = [d for d, f in bucket.items() if f & EP_READY]
    return ready if ready else list(bucket)


def topology_filter(svc: Service, eps: list[DKey], hints: dict[DKey, tuple[str, ...]], node: NodeInfo) -> list[DKey]:
    """Zone hints (PreferClose / topology-aware routing), applied only when complete and non-empty."""
    if not node.zone or not eps:
        return eps
    wants = svc.traffic_distribution == "PreferClose" or any(d in hints for d in eps)
    if not wants or not all(d in hints for d in eps):
        return eps
    same = [d for d in eps if node.zone in hints[d]]
    return same or eps


# ------------------------------------------------------------------------------------------ the builder


def skip_reason(svc: Service) -> str:
    """Why the proxy does not serve ``svc`` at all ("" when it does)."""
    proxy_name = svc.meta.labels.get(LABEL_PROXY_NAME)
    if proxy_name is not None and proxy_name != "kube-router":
        return f"label {LABEL_PROXY_NAME}={proxy_name}"
    if LABEL_HEADLESS in svc.meta.labels:
        return f"label {LABEL_HEADLESS}"
    if svc.type == "ExternalName":
        return "type ExternalName"
    if svc.headless:
        return "headless (no cluster IP)"
    return ""


def build_service(svc: Service, slices: Iterable[EndpointSlice], node: NodeInfo, opts: Options,
                  key: str | None = None) -> ServiceModel:
    """The desired model of one Service (pure). ``key``: ``svc.key`` when the caller has it already (the
    cache's own string, kept by the model instead of a new one per Service)."""
    skey = key if key is not None else svc.key
    m = ServiceModel(key=skey)
    m.skipped = skip_reason(svc)
    if m.skipped:
        return m
    problems: list[str] = []
    ann = svc.meta.annotations
    params = parse_scheduler(svc, problems)
    if ANN_DSR in ann:
        problems.append(f"annotation {ANN_DSR}={ann[ANN_DSR]!r}: DSR is not implemented yet; served in NAT mode")
    local_ann = ann.get(ANN_LOCAL)
    etp_local = svc.external_traffic_policy == "Local" or local_ann == "true"
    itp_local = svc.internal_traffic_policy == "Local"
    hairpin = opts.hairpin_mode or ANN_HAIRPIN in ann
    hairpin_ext = hairpin and ANN_HAIRPIN_EXTERNALIPS in ann

    # addresses, per family
    cluster_ips: list[tuple[int, str]] = []
    for ip in svc.cluster_ips:
        fam = ip_family(ip)
        if fam is None:
            problems.append(f"clusterIP {ip!r} is not an IP address")
        elif fam in opts.families:
            cluster_ips.append((fam, canonical_ip(ip)))
    svc_families = {f for f, _ in cluster_ips}
    external: list[tuple[int, str]] = []
    ok, bad = opts.validator.filter(svc.external_ips, Kind.EXTERNAL)
    problems += [f"externalIP {ip!r} refused: {why}" for ip, why in bad]
    external += [(f, canonical_ip(ip)) for ip in ok if (f := ip_family(ip)) in opts.families]
    lb: list[tuple[int, str]] = []
    if svc.type == "LoadBalancer" and ANN_SKIPLBIPS not in ann:
        ips = [i.ip for i in svc.load_balancer_ingress if i.ip and i.ip_mode != "Proxy"]
        ok, bad = opts.validator.filter(ips, Kind.LOADBALANCER)
        problems += [f"loadBalancer ingress IP {ip!r} refused: {why}" for ip, why in bad]
        lb += [(f, canonical_ip(ip)) for ip in ok if (f := ip_family(ip)) in opts.families]
    node_addrs: dict[int, list[str]] = {}
    for fam in svc_families:
        if opts.nodeport_bindon_all_ip:
            node_addrs[fam] = sorted({canonical_ip(a) for a in node.local_ips if ip_family(a) == fam})
        elif node.ips.get(fam):
            node_addrs[fam] = [canonical_ip(node.ips[fam])]
    src_ranges: list[str] = []
    if svc.type == "LoadBalancer" and svc.load_balancer_source_ranges:
        for r in svc.load_balancer_source_ranges:
            try:
                src_ranges.append(str(ipaddress.ip_network(r.strip(), strict=False)))
            except ValueError:
                problems.append(f"loadBalancerSourceRanges entry {r!r} is not a CIDR; ignored (fails closed)")

    m.vips.update(cluster_ips)
    m.vips.update(external)
    m.vips.update(lb)

    eps_by, hints = collect_endpoints(svc, slices, node, problems)
    any_local = itp_local or etp_local
    hc_local: set[str] = set()
    hairpins: list[HairpinRule] = []
    source_ranges: list[SourceRangeRule] = []
    done: dict[tuple[str, str, int], tuple[dict[DKey, DVal], list[DKey]]] = {}
    for sp in svc.ports:
        proto = PROTOCOLS.get(sp.protocol)
        if proto is None:
            problems.append(f"port {sp.name or sp.port}: protocol {sp.protocol!r} not supported by IPVS")
            continue
        for fam in opts.families:
            # one dict per (port, family), shared by the virtual servers using it (never mutated: the
            # committed state copies on write), one value tuple for all: less to allocate on a cold sync
            bkey = (sp.name, sp.protocol, fam)
            bucket = eps_by.get(bkey)
            if not bucket:
                all_d, local_eps = {}, []
            elif bkey in done:  # two Service ports with one name and protocol (invalid): the same endpoints
                all_d, local_eps = done[bkey]
            else:
                eps = topology_filter(svc, usable(bucket), hints, node)
                local_eps = [d for d in eps if bucket[d] & EP_LOCAL]
                if local_eps:
                    hc_local.update(d[0] for d in local_eps if bucket[d] & EP_READY)
                if len(eps) == len(bucket):  # every endpoint is used: the bucket becomes the dict itself
                    for d in eps:
                        bucket[d] = DEST_VAL  # type: ignore[assignment]
                    all_d = bucket  # type: ignore[assignment]
                else:
                    all_d = dict.fromkeys(eps, DEST_VAL)
                done[bkey] = (all_d, local_eps)
            local_d = dict.fromkeys(local_eps, DEST_VAL) if any_local else all_d

            def add(kind: str, addr: str, port: int, dests: dict[DKey, DVal], local_only: bool,
                    fam: int = fam, proto: int = proto, sp_name: str = sp.name) -> None:
                if local_only and not dests:
                    return  # Local policy, no local endpoint: no virtual server (see module doc)
                k = VKey(fam, proto, addr, port)
                if k in m.vservers:
                    problems.append(f"{k} listed twice; first kept")
                    return
                m.vservers[k] = VirtualServer(k, params, dests, skey, kind, sp_name)

            for f, ip in cluster_ips:
                if f == fam:
                    add(CLUSTER, ip, sp.port, local_d if itp_local else all_d, itp_local)
            if sp.node_port and svc.type in ("NodePort", "LoadBalancer"):
                for ip in node_addrs.get(fam, ()):
                    add(NODEPORT, ip, sp.node_port, local_d if etp_local else all_d, etp_local)
            for f, ip in external:
                if f == fam:
                    add(EXTERNAL, ip, sp.port, local_d if etp_local else all_d, etp_local)
            for f, ip in lb:
                if f == fam:
                    add(LOADBALANCER, ip, sp.port, local_d if etp_local else all_d, etp_local)
                    if svc.load_balancer_source_ranges:
                        rs = tuple(r for r in src_ranges if ip_family(r.split("/")[0]) == fam)
                        source_ranges.append(SourceRangeRule(fam, ip, proto, sp.port, rs, skey))
            if hairpin:
                for d in local_eps:
                    vips = [ip for f, ip in cluster_ips if f == fam]
                    if hairpin_ext:
                        vips += [ip for f, ip in external if f == fam]
                    hairpins += [HairpinRule(fam, v, sp.port, d[0]) for v in vips]
                    if sp.node_port and svc.type in ("NodePort", "LoadBalancer"):
                        hairpins += [HairpinRule(fam, v, sp.node_port, d[0]) for v in node_addrs.get(fam, ())]
    if svc.health_check_node_port and etp_local and svc.type == "LoadBalancer":
        m.healthcheck = (svc.health_check_node_port, len(hc_local))
    if hairpins:
        m.hairpin = sorted(set(hairpins))
    if source_ranges:
        m.source_ranges = source_ranges
    if problems:
        m.problems = problems
    return m


# ------------------------------------------------------------------------------------------ aggregation


@dataclass
class Desired:
    """The whole node's desired state: the union of every Service's model."""

    services: dict[str, ServiceModel] = field(default_factory=dict)
    vservers: dict[VKey, VirtualServer] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, models: Iterable[ServiceModel]) -> Desired:
        d = cls()
        for m in sorted(models, key=lambda m: m.key):
            d.services[m.key] = m
            for k, vs in m.vservers.items():
                cur = d.vservers.get(k)
                if cur is None:
                    d.vservers[k] = vs
                else:
                    d.conflicts.append(f"{k}: wanted by {cur.service} and {m.key}; {cur.service} kept")
        return d

    def vips(self, family: int | None = None) -> set[str]:
        return {a for m in self.services.values() for f, a in m.vips if family in (None, f)}

    def svip(self, family: int) -> set[str]:
        return {k.addr for k in self.vservers if k.family == family and not k.fwmark}

    def svip_prt(self, family: int) -> set[str]:
        return {f"{k.addr},{PROTO_NAMES[k.proto]}:{k.port}" for k in self.vservers if k.family == family and not k.fwmark}

    def hairpin(self, family: int) -> list[HairpinRule]:
        return sorted({r for m in self.services.values() for r in m.hairpin if r.family == family})

    def source_ranges(self, family: int) -> list[SourceRangeRule]:
        return sorted(r for m in self.services.values() for r in m.source_ranges if r.family == family)

    def healthchecks(self) -> dict[int, tuple[str, int]]:
        out: dict[int, tuple[str, int]] = {}
        for m in self.services.values():
            if m.healthcheck:
                port, n = m.healthcheck
                if port not in out:
                    out[port] = (m.key, n)
        return out
