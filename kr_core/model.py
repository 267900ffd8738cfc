"""Small frozen typed views of the Kubernetes objects kr uses.

Objects are built straight from the API's JSON (``from_json``), never through the client's generated model
classes: at 100k endpoints those are too slow and too large. Every view keeps only the fields some
dataplane reads. Unknown or malformed values are kept as the API sent them where a plugin must report them
(a bad CIDR in a policy is the plugin's to log against the policy), and dropped where they cannot be
represented (a port that is not an integer becomes ``None``).

Views are hashable and compare by value, so caches and plugins can diff them cheaply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

JSON = dict[str, Any]


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


def _labels(d: Mapping[str, str] | None) -> FrozenDict:
    return FrozenDict(d) if d else EMPTY


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
        return cls(
            name=m.get("name", ""),
            namespace=m.get("namespace", "") or "",
            uid=m.get("uid", ""),
            resource_version=m.get("resourceVersion", ""),
            labels=_labels(m.get("labels")),
            annotations=_labels(m.get("annotations")),
            deletion_timestamp=m.get("deletionTimestamp"),
        )

    @property
    def key(self) -> str:
        """``namespace/name`` for namespaced objects, ``name`` otherwise (client-go's cache key)."""
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


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
        spec = o.get("spec") or {}
        st = o.get("status") or {}
        ips = tuple(p["ip"] for p in st.get("podIPs") or () if p.get("ip"))
        if not ips and st.get("podIP"):
            ips = (st["podIP"],)
        ports = []
        for c in spec.get("containers") or ():
            for p in c.get("ports") or ():
                cp = _int(p.get("containerPort"))
                if cp is not None:
                    ports.append(ContainerPort(cp, p.get("protocol") or "TCP", p.get("name") or ""))
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or ()
        )
        return cls(
            meta=ObjectMeta.from_json(o.get("metadata") or {}),
            node_name=spec.get("nodeName") or "",
            host_network=bool(spec.get("hostNetwork")),
            phase=st.get("phase") or "",
            pod_ips=ips,
            host_ip=st.get("hostIP") or "",
            ports=tuple(ports),
            ready=ready,
            termination_grace_period_seconds=_int(spec.get("terminationGracePeriodSeconds")),
        )

    @property
    def pod_ip(self) -> str:
        return self.pod_ips[0] if self.pod_ips else ""

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed", "Completed")

    @property
    def actionable(self) -> bool:
        """kube-router's "actionable" pod: has an IP, is not host-network, has not finished."""
        return bool(self.pod_ips) and not self.host_network and not self.finished


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
        spec = o.get("spec") or {}
        st = o.get("status") or {}
        cips = tuple(spec.get("clusterIPs") or ())
        if not cips and spec.get("clusterIP"):
            cips = (spec["clusterIP"],)
        ports = []
        for p in spec.get("ports") or ():
            port = _int(p.get("port"))
            if port is None:
                continue
            tp = p.get("targetPort")
            ports.append(
                ServicePort(
                    port=port,
                    protocol=p.get("protocol") or "TCP",
                    name=p.get("name") or "",
                    target_port=tp if isinstance(tp, (int, str)) and not isinstance(tp, bool) else None,
                    node_port=_int(p.get("nodePort")),
                    app_protocol=p.get("appProtocol"),
                )
            )
        sel = spec.get("selector")
        aff_cfg = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get("timeoutSeconds")
        return cls(
            meta=ObjectMeta.from_json(o.get("metadata") or {}),
            type=spec.get("type") or "ClusterIP",
            cluster_ips=cips,
            ip_families=tuple(spec.get("ipFamilies") or ()),
            ip_family_policy=spec.get("ipFamilyPolicy"),
            ports=tuple(ports),
            selector=FrozenDict(sel) if sel is not None else None,
            external_ips=tuple(spec.get("externalIPs") or ()),
            load_balancer_ingress=tuple(
                LoadBalancerIngress(i.get("ip") or "", i.get("hostname") or "", i.get("ipMode"))
                for i in (st.get("loadBalancer") or {}).get("ingress") or ()
            ),
            load_balancer_source_ranges=tuple(spec.get("loadBalancerSourceRanges") or ()),
            load_balancer_class=spec.get("loadBalancerClass"),
            external_traffic_policy=spec.get("externalTrafficPolicy") or "Cluster",
            internal_traffic_policy=spec.get("internalTrafficPolicy") or "Cluster",
            session_affinity=spec.get("sessionAffinity") or "None",
            session_affinity_timeout=_int(aff_cfg),
            health_check_node_port=_int(spec.get("healthCheckNodePort")),
            publish_not_ready_addresses=bool(spec.get("publishNotReadyAddresses")),
            traffic_distribution=spec.get("trafficDistribution"),
            external_name=spec.get("externalName") or "",
        )

    @property
    def headless(self) -> bool:
        return not self.cluster_ips or self.cluster_ips[0] in ("None", "")


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
        eps = []
        for e in o.get("endpoints") or ():
            c = e.get("conditions") or {}
            ready = c.get("ready")
            ready = True if ready is None else bool(ready)  # nil means ready, per the API
            serving = c.get("serving")
            serving = ready if serving is None else bool(serving)
            tr = e.get("targetRef")
            hints = e.get("hints") or {}
            eps.append(
                Endpoint(
                    addresses=tuple(e.get("addresses") or ()),
                    ready=ready,
                    serving=serving,
                    terminating=bool(c.get("terminating")),
                    node_name=e.get("nodeName") or "",
                    zone=e.get("zone") or "",
                    hint_zones=tuple(z.get("name", "") for z in hints.get("forZones") or ()),
                    target_ref=(tr.get("kind", ""), tr.get("namespace", ""), tr.get("name", "")) if tr else None,
                )
            )
        return cls(
            meta=ObjectMeta.from_json(o.get("metadata") or {}),
            address_type=o.get("addressType") or "IPv4",
            endpoints=tuple(eps),
            ports=tuple(
                EndpointPort(_int(p.get("port")), p.get("protocol") or "TCP", p.get("name") or "", p.get("appProtocol"))
                for p in o.get("ports") or ()
            ),
        )

    @property
    def service_name(self) -> str:
        """The owning Service's name (label ``kubernetes.io/service-name``), or ``""``."""
        return self.meta.labels.get(SERVICE_NAME_LABEL, "")

    @property
    def service_key(self) -> str:
        """``namespace/service-name``: the key the EndpointSlice index uses."""
        return f"{self.meta.namespace}/{self.service_name}" if self.service_name else ""


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
