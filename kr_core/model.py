"""Small frozen typed views of the Kubernetes objects kr uses.

Objects are built straight from the API's JSON (``from_json``), never through the client's generated model
classes: at 100k endpoints those are too slow and too large. Every view keeps only the fields some
dataplane reads. Unknown or malformed values are kept as the API sent them where a plugin must report them
(a bad CIDR in a policy is the plugin's to log against the policy), and dropped where they cannot be
represented (a port that is not an integer becomes ``None``).

Views are hashable and compare by value, so caches and plugins can diff them cheaply.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, ClassVar

JSON = dict[str, Any]

_intern = sys.intern
_new = object.__new__
_NO: dict[str, Any] = {}  # read-only stand-in for an absent JSON object (never mutated)


def _fast_maker(cls: type) -> Callable[..., Any]:
    """A positional constructor for a frozen slotted dataclass that sets each slot through its member
    descriptor: about 2.5x faster than the dataclass ``__init__`` (which goes through ``object.__setattr__``
    by name for every field). Every field is a required positional argument, in declaration order."""
    names = [f.name for f in fields(cls)]
    env: dict[str, Any] = {"_new": _new, "_cls": cls}
    body = []
    for i, n in enumerate(names):
        env[f"_s{i}"] = getattr(cls, n).__set__
        body.append(f"    _s{i}(o, a{i})\n")
    args = ", ".join(f"a{i}" for i in range(len(names)))
    exec(f"def make({args}):\n    o = _new(_cls)\n{''.join(body)}    return o\n", env)  # noqa: S102
    return env["make"]  # type: ignore[no-any-return]


class _Shared(dict):  # type: ignore[type-arg]
    """A bounded table of shared immutable values (ports tuples, label maps): equal values built from
    different objects become one instance. Cleared when full, so it never grows past ``limit``."""

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def share(self, key: Any, value: Any) -> Any:
        got = self.get(key)
        if got is None:
            if len(self) >= self.limit:
                self.clear()
            self[key] = got = value
        return got


def _shared_ports(table: _Shared, key: tuple[Any, ...], make: Callable[..., Any]) -> tuple[Any, ...]:
    """The ports tuple for raw fields ``key`` (a tuple of argument tuples for ``make``), shared through
    ``table`` with every equal one."""
    try:
        got = table.get(key)
    except TypeError:  # an unhashable field (malformed input): build it unshared
        return tuple(make(*r) for r in key)
    if got is None:
        got = table.share(key, tuple(make(*r) for r in key))
    return got  # type: ignore[no-any-return]


def _istr(v: Any) -> Any:
    """``v`` interned when it is a str (node names, zones, namespaces, protocols repeat a lot)."""
    return _intern(v) if v.__class__ is str else v


class Resource(StrEnum):
    """The resources kr can watch. The value is the Kubernetes ``kind``."""

    SERVICE = "Service"
    ENDPOINTSLICE = "EndpointSlice"
    POD = "Pod"
    NAMESPACE = "Namespace"
    NETWORKPOLICY = "NetworkPolicy"
    NODE = "Node"


class FrozenDict(Mapping[str, str]):
    """An immutable, hashable str->str mapping (labels, annotations, selectors)."""

    __slots__ = ("_d", "_h")

    def __init__(self, data: Mapping[str, str] | None = None) -> None:
        self._d: dict[str, str] = dict(data) if data else {}
        self._h: int | None = None

    def __getitem__(self, key: str) -> str:
        return self._d[key]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key: object) -> bool:
        return key in self._d

    def get(self, key: str, default: Any = None) -> Any:  # noqa: D102 - Mapping.get, faster
        return self._d.get(key, default)

    def items(self):  # type: ignore[no-untyped-def] # noqa: D102 - the dict's own view (C iteration)
        return self._d.items()

    def keys(self):  # type: ignore[no-untyped-def] # noqa: D102
        return self._d.keys()

    def values(self):  # type: ignore[no-untyped-def] # noqa: D102
        return self._d.values()

    def __hash__(self) -> int:
        if self._h is None:
            self._h = hash(frozenset(self._d.items()))
        return self._h

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenDict):
            return self._d == other._d
        if isinstance(other, Mapping):
            return self._d == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenDict({self._d!r})"


EMPTY = FrozenDict()
_LABELS = _Shared(16384)


def _labels(d: Mapping[str, str] | None) -> FrozenDict:
    """A FrozenDict of ``d``; equal label maps share one instance (with interned keys and values)."""
    if not d:
        return EMPTY
    try:
        key = tuple(d.items())
        got = _LABELS.get(key)
    except (TypeError, AttributeError):  # not a mapping of hashable values: not shareable
        return FrozenDict(d)
    if got is None:
        fd = _new(FrozenDict)
        fd._d = {_istr(k): _istr(v) for k, v in key}
        fd._h = None
        got = _LABELS.share(key, fd)
    return got  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    name: str
    namespace: str = ""
    uid: str = ""
    resource_version: str = ""
    labels: FrozenDict = EMPTY
    annotations: FrozenDict = EMPTY
    deletion_timestamp: str | None = None

    @classmethod
    def from_json(cls, m: JSON) -> ObjectMeta:
        get = m.get
        ns = get("namespace")
        lb = get("labels")
        an = get("annotations")
        return _make_meta(
            get("name", ""),
            _istr(ns) if ns else "",
            get("uid", ""),
            get("resourceVersion", ""),
            _labels(lb) if lb else EMPTY,
            FrozenDict(an) if an else EMPTY,  # not shared: often large and unique (last-applied-configuration)
            get("deletionTimestamp"),
        )

    @property
    def key(self) -> str:
        """``namespace/name`` for namespaced objects, ``name`` otherwise (client-go's cache key)."""
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


_make_meta = _fast_maker(ObjectMeta)


class KubeObject:
    """Mixin: every view has ``meta`` and a ``kind``."""

    __slots__ = ()
    kind: ClassVar[Resource]
    meta: ObjectMeta

    @property
    def key(self) -> str:
        return self.meta.key

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def namespace(self) -> str:
        return self.meta.namespace


def _int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.isdigit():
        return int(v)
    return None


# ----------------------------------------------------------------------------------------------- selectors


@dataclass(frozen=True, slots=True)
class LabelSelectorRequirement:
    key: str
    operator: str  # In, NotIn, Exists, DoesNotExist
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        op = self.operator
        if op == "In":
            return self.key in labels and labels[self.key] in self.values
        if op == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if op == "Exists":
            return self.key in labels
        if op == "DoesNotExist":
            return self.key not in labels
        raise ValueError(f"unknown label selector operator {op!r}")


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A metav1.LabelSelector. The empty selector matches everything."""

    match_labels: FrozenDict = EMPTY
    match_expressions: tuple[LabelSelectorRequirement, ...] = ()

    @classmethod
    def from_json(cls, s: JSON | None) -> LabelSelector:
        if not s:
            return cls()
        return cls(
            match_labels=_labels(s.get("matchLabels")),
            match_expressions=tuple(
                LabelSelectorRequirement(e.get("key", ""), e.get("operator", ""), tuple(e.get("values") or ()))
                for e in s.get("matchExpressions") or ()
            ),
        )

    @property
    def is_empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        for k, v in self.match_labels.items():
            if labels.get(k) != v:
                return False
        return all(e.matches(labels) for e in self.match_expressions)


# ----------------------------------------------------------------------------------------------- Namespace


@dataclass(frozen=True, slots=True)
class Namespace(KubeObject):
    kind: ClassVar[Resource] = Resource.NAMESPACE
    meta: ObjectMeta
    phase: str = "Active"

    @classmethod
    def from_json(cls, o: JSON) -> Namespace:
        return cls(meta=ObjectMeta.from_json(o.get("metadata") or {}), phase=(o.get("status") or {}).get("phase", "Active"))


# ----------------------------------------------------------------------------------------------- Pod


FINISHED_PHASES = frozenset({"Succeeded", "Failed", "Completed"})  # a pod in one of these has finished


@dataclass(frozen=True, slots=True)
class ContainerPort:
    container_port: int
    protocol: str = "TCP"
    name: str = ""


@dataclass(frozen=True, slots=True)
class Pod(KubeObject):
    kind: ClassVar[Resource] = Resource.POD
    meta: ObjectMeta
    node_name: str = ""
    host_network: bool = False
    phase: str = ""
    pod_ips: tuple[str, ...] = ()
    host_ip: str = ""
    ports: tuple[ContainerPort, ...] = ()
    ready: bool = False
    termination_grace_period_seconds: int | None = None

    @classmethod
    def from_json(cls, o: JSON) -> Pod:
        spec = o.get("spec") or _NO
        st = o.get("status") or _NO
        sget = st.get
        pips = sget("podIPs")
        ips: tuple[str, ...] = tuple(p["ip"] for p in pips if p.get("ip")) if pips else ()
        if not ips and sget("podIP"):
            ips = (st["podIP"],)
        ports: tuple[ContainerPort, ...] = ()
        containers = spec.get("containers")
        if containers:
            raw = []
            for c in containers:
                for p in c.get("ports") or ():
                    cp = _int(p.get("containerPort"))
                    if cp is not None:
                        raw.append((cp, _istr(p.get("protocol") or "TCP"), _istr(p.get("name") or "")))
            if raw:
                ports = _shared_ports(_CPORTS, tuple(raw), _make_cport)
        conds = sget("conditions")
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds) if conds else False
        tgp = spec.get("terminationGracePeriodSeconds")
        return _make_pod(
            ObjectMeta.from_json(o.get("metadata") or _NO),
            _istr(spec.get("nodeName") or ""),
            bool(spec.get("hostNetwork")),
            _istr(sget("phase") or ""),
            ips,
            _istr(sget("hostIP") or ""),
            ports,
            ready,
            tgp if tgp.__class__ is int else _int(tgp),
        )

    @property
    def pod_ip(self) -> str:
        return self.pod_ips[0] if self.pod_ips else ""

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED_PHASES

    @property
    def actionable(self) -> bool:
        """kube-router's "actionable" pod: has an IP, is not host-network, has not finished."""
        return bool(self.pod_ips) and not self.host_network and not self.finished


_CPORTS = _Shared(4096)  # shared ports tuples, keyed by their raw fields
_make_cport = _fast_maker(ContainerPort)
_make_pod = _fast_maker(Pod)


# ----------------------------------------------------------------------------------------------- Service


@dataclass(frozen=True, slots=True)
class ServicePort:
    port: int
    protocol: str = "TCP"
    name: str = ""
    target_port: int | str | None = None
    node_port: int | None = None
    app_protocol: str | None = None


@dataclass(frozen=True, slots=True)
class LoadBalancerIngress:
    ip: str = ""
    hostname: str = ""
    ip_mode: str | None = None  # "VIP" or "Proxy"


@dataclass(frozen=True, slots=True)
class Service(KubeObject):
    kind: ClassVar[Resource] = Resource.SERVICE
    meta: ObjectMeta
    type: str = "ClusterIP"
    cluster_ips: tuple[str, ...] = ()
    ip_families: tuple[str, ...] = ()
    ip_family_policy: str | None = None
    ports: tuple[ServicePort, ...] = ()
    selector: FrozenDict | None = None
    external_ips: tuple[str, ...] = ()
    load_balancer_ingress: tuple[LoadBalancerIngress, ...] = ()
    load_balancer_source_ranges: tuple[str, ...] = ()
    load_balancer_class: str | None = None
    external_traffic_policy: str = "Cluster"
    internal_traffic_policy: str = "Cluster"
    session_affinity: str = "None"
    session_affinity_timeout: int | None = None
    health_check_node_port: int | None = None
    publish_not_ready_addresses: bool = False
    traffic_distribution: str | None = None
    external_name: str = ""

    @classmethod
    def from_json(cls, o: JSON) -> Service:
        spec = o.get("spec") or _NO
        get = spec.get
        cips = get("clusterIPs")
        cips = tuple(cips) if cips else ()
        if not cips and get("clusterIP"):
            cips = (spec["clusterIP"],)
        ports: tuple[ServicePort, ...] = ()
        sports = get("ports")
        if sports:
            raw = []
            for p in sports:
                port = _int(p.get("port"))
                if port is None:
                    continue
                tp = p.get("targetPort")
                if tp.__class__ is str:
                    tp = _intern(tp)
                elif not isinstance(tp, (int, str)) or isinstance(tp, bool):
                    tp = None
                raw.append((port, _istr(p.get("protocol") or "TCP"), _istr(p.get("name") or ""), tp,
                            _int(p.get("nodePort")), p.get("appProtocol")))
            if raw:
                ports = _shared_ports(_SPORTS, tuple(raw), _make_sport)
        sel = get("selector")
        aff = get("sessionAffinityConfig")
        aff_cfg = ((aff.get("clientIP") or _NO).get("timeoutSeconds")) if aff else None
        st = o.get("status")
        lb = st.get("loadBalancer") if st else None
        ingress = lb.get("ingress") if lb else None
        fams = get("ipFamilies")
        eips = get("externalIPs")
        ranges = get("loadBalancerSourceRanges")
        hcnp = get("healthCheckNodePort")
        return _make_service(
            ObjectMeta.from_json(o.get("metadata") or _NO),
            _istr(get("type") or "ClusterIP"),
            cips,
            tuple(_istr(f) for f in fams) if fams else (),
            _istr(get("ipFamilyPolicy")),
            ports,
            _labels(sel) if sel else (EMPTY if sel is not None else None),
            tuple(eips) if eips else (),
            tuple(
                LoadBalancerIngress(i.get("ip") or "", i.get("hostname") or "", i.get("ipMode")) for i in ingress
            ) if ingress else (),
            tuple(ranges) if ranges else (),
            get("loadBalancerClass"),
            _istr(get("externalTrafficPolicy") or "Cluster"),
            _istr(get("internalTrafficPolicy") or "Cluster"),
            _istr(get("sessionAffinity") or "None"),
            _int(aff_cfg) if aff_cfg is not None else None,
            _int(hcnp) if hcnp is not None else None,
            bool(get("publishNotReadyAddresses")),
            get("trafficDistribution"),
            get("externalName") or "",
        )

    @property
    def headless(self) -> bool:
        return not self.cluster_ips or self.cluster_ips[0] in ("None", "")


_SPORTS = _Shared(4096)
_make_sport = _fast_maker(ServicePort)
_make_service = _fast_maker(Service)


# ----------------------------------------------------------------------------------------------- EndpointSlice

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True, slots=True)
class Endpoint:
    addresses: tuple[str, ...]
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str = ""
    zone: str = ""
    hint_zones: tuple[str, ...] = ()
    target_ref: tuple[str, str, str] | None = None  # (kind, namespace, name)


@dataclass(frozen=True, slots=True)
class EndpointPort:
    port: int | None
    protocol: str = "TCP"
    name: str = ""
    app_protocol: str | None = None


@dataclass(frozen=True, slots=True)
class EndpointSlice(KubeObject):
    kind: ClassVar[Resource] = Resource.ENDPOINTSLICE
    meta: ObjectMeta
    address_type: str = "IPv4"
    endpoints: tuple[Endpoint, ...] = ()
    ports: tuple[EndpointPort, ...] = ()

    @classmethod
    def from_json(cls, o: JSON) -> EndpointSlice:
        get = o.get
        raw_eps = get("endpoints")
        eps: tuple[Endpoint, ...] = ()
        if raw_eps:
            # the hot loop (100k endpoints per cold start): locals, no per-field keyword calls, interned
            # strings that repeat across endpoints (node names, zones, target kinds and namespaces)
            make, intern, no = _make_endpoint, _intern, _NO
            out = []
            append = out.append
            for e in raw_eps:
                eg = e.get
                c = eg("conditions") or no
                cg = c.get
                ready = cg("ready")
                ready = True if ready is None else bool(ready)  # nil means ready, per the API
                serving = cg("serving")
                serving = ready if serving is None else bool(serving)
                addrs = eg("addresses")
                node = eg("nodeName")
                zone = eg("zone")
                tr = eg("targetRef")
                if tr:
                    tg = tr.get
                    k, n = tg("kind", ""), tg("namespace", "")
                    tr = (intern(k) if k.__class__ is str else k, intern(n) if n.__class__ is str else n,
                          tg("name", ""))
                else:
                    tr = None
                hints = eg("hints")
                fz = hints.get("forZones") if hints else None
                append(make(
                    tuple(addrs) if addrs else (),
                    ready,
                    serving,
                    bool(cg("terminating")),
                    (intern(node) if node.__class__ is str else node) if node else "",
                    (intern(zone) if zone.__class__ is str else zone) if zone else "",
                    tuple(_istr(z.get("name", "")) for z in fz) if fz else (),
                    tr,
                ))
            eps = tuple(out)
        ports: tuple[EndpointPort, ...] = ()
        raw_ports = get("ports")
        if raw_ports:
            key = tuple(
                (_int(p.get("port")), _istr(p.get("protocol") or "TCP"), _istr(p.get("name") or ""),
                 p.get("appProtocol"))
                for p in raw_ports
            )
            ports = _shared_ports(_EPORTS, key, _make_eport)
        return _make_slice(
            ObjectMeta.from_json(get("metadata") or _NO),
            _istr(get("addressType") or "IPv4"),
            eps,
            ports,
        )

    @property
    def service_name(self) -> str:
        """The owning Service's name (label ``kubernetes.io/service-name``), or ``""``."""
        return self.meta.labels.get(SERVICE_NAME_LABEL, "")

    @property
    def service_key(self) -> str:
        """``namespace/service-name``: the key the EndpointSlice index uses."""
        return f"{self.meta.namespace}/{self.service_name}" if self.service_name else ""


_EPORTS = _Shared(4096)
_make_endpoint = _fast_maker(Endpoint)
_make_eport = _fast_maker(EndpointPort)
_make_slice = _fast_maker(EndpointSlice)


# ----------------------------------------------------------------------------------------------- NetworkPolicy


@dataclass(frozen=True, slots=True)
class IPBlock:
    cidr: str
    except_: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PolicyPeer:
    """One ``from``/``to`` entry. Exactly one of ip_block or (pod_selector and/or namespace_selector) is set."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None

    @classmethod
    def from_json(cls, p: JSON) -> PolicyPeer:
        ipb = p.get("ipBlock")
        return cls(
            pod_selector=LabelSelector.from_json(p["podSelector"]) if p.get("podSelector") is not None else None,
            namespace_selector=(
                LabelSelector.from_json(p["namespaceSelector"]) if p.get("namespaceSelector") is not None else None
            ),
            ip_block=IPBlock(ipb.get("cidr", ""), tuple(ipb.get("except") or ())) if ipb else None,
        )


@dataclass(frozen=True, slots=True)
class PolicyPort:
    protocol: str = "TCP"
    port: int | str | None = None  # number, named port, or None (all ports)
    end_port: int | None = None

    @classmethod
    def from_json(cls, p: JSON) -> PolicyPort:
        port = p.get("port")
        if isinstance(port, bool) or not isinstance(port, (int, str)):
            port = None
        return cls(protocol=p.get("protocol") or "TCP", port=port, end_port=_int(p.get("endPort")))


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """An ingress or egress rule. Empty ``peers`` means all peers; empty ``ports`` means all ports."""

    peers: tuple[PolicyPeer, ...] = ()
    ports: tuple[PolicyPort, ...] = ()

    @classmethod
    def from_json(cls, r: JSON, peer_key: str) -> PolicyRule:
        return cls(
            peers=tuple(PolicyPeer.from_json(p) for p in r.get(peer_key) or ()),
            ports=tuple(PolicyPort.from_json(p) for p in r.get("ports") or ()),
        )


@dataclass(frozen=True, slots=True)
class NetworkPolicy(KubeObject):
    kind: ClassVar[Resource] = Resource.NETWORKPOLICY
    meta: ObjectMeta
    pod_selector: LabelSelector = field(default_factory=LabelSelector)
    policy_types: tuple[str, ...] = ("Ingress",)
    ingress: tuple[PolicyRule, ...] = ()
    egress: tuple[PolicyRule, ...] = ()

    @classmethod
    def from_json(cls, o: JSON) -> NetworkPolicy:
        spec = o.get("spec") or {}
        ingress = tuple(PolicyRule.from_json(r or {}, "from") for r in spec.get("ingress") or ())
        egress = tuple(PolicyRule.from_json(r or {}, "to") for r in spec.get("egress") or ())
        types = tuple(spec.get("policyTypes") or ())
        if not types:  # the API server's defaulting, for objects that skipped it
            types = ("Ingress", "Egress") if spec.get("egress") else ("Ingress",)
        return cls(
            meta=ObjectMeta.from_json(o.get("metadata") or {}),
            pod_selector=LabelSelector.from_json(spec.get("podSelector")),
            policy_types=types,
            ingress=ingress,
            egress=egress,
        )


# ----------------------------------------------------------------------------------------------- Node


@dataclass(frozen=True, slots=True)
class NodeAddress:
    type: str  # InternalIP, ExternalIP, Hostname, ...
    address: str


@dataclass(frozen=True, slots=True)
class Node(KubeObject):
    kind: ClassVar[Resource] = Resource.NODE
    meta: ObjectMeta
    addresses: tuple[NodeAddress, ...] = ()
    pod_cidrs: tuple[str, ...] = ()
    provider_id: str = ""
    ready: bool = False

    @classmethod
    def from_json(cls, o: JSON) -> Node:
        spec = o.get("spec") or {}
        st = o.get("status") or {}
        cidrs = tuple(spec.get("podCIDRs") or ())
        if not cidrs and spec.get("podCIDR"):
            cidrs = (spec["podCIDR"],)
        return cls(
            meta=ObjectMeta.from_json(o.get("metadata") or {}),
            addresses=tuple(NodeAddress(a.get("type", ""), a.get("address", "")) for a in st.get("addresses") or ()),
            pod_cidrs=cidrs,
            provider_id=spec.get("providerID") or "",
            ready=any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or ()),
        )

    def addresses_of(self, addr_type: str) -> tuple[str, ...]:
        return tuple(a.address for a in self.addresses if a.type == addr_type)

    @property
    def primary_ip(self) -> str:
        """kube-router's primary node IP: first InternalIP, else first ExternalIP, else ``""``."""
        for t in ("InternalIP", "ExternalIP"):
            ips = self.addresses_of(t)
            if ips:
                return ips[0]
        return ""


MODEL_TYPES: dict[Resource, type[KubeObject]] = {
    Resource.SERVICE: Service,
    Resource.ENDPOINTSLICE: EndpointSlice,
    Resource.POD: Pod,
    Resource.NAMESPACE: Namespace,
    Resource.NETWORKPOLICY: NetworkPolicy,
    Resource.NODE: Node,
}


def from_json(resource: Resource, obj: JSON) -> KubeObject:
    """Build the view of ``resource`` from an API object's JSON."""
    return MODEL_TYPES[resource].from_json(obj)  # type: ignore[attr-defined,no-any-return]
