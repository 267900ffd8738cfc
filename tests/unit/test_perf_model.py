"""The fast paths of kr_core.model.from_json build the same views as the dataclass constructors, share
equal sub-objects (ports tuples, label maps), intern repeated strings, and tolerate malformed input as
before."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from kr_core import model
from kr_core.model import (
    ContainerPort,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    FrozenDict,
    LoadBalancerIngress,
    ObjectMeta,
    Pod,
    Resource,
    Service,
    ServicePort,
    from_json,
)


def _meta(name: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "namespace": "ns", "uid": f"uid-{name}", "resourceVersion": "7", **kw}


def test_fast_maker_equals_dataclass_constructor() -> None:
    make = model._fast_maker(Endpoint)
    args = (("10.0.0.1",), True, False, True, "node-1", "z1", ("z1",), ("Pod", "ns", "p"))
    a, b = make(*args), Endpoint(*args)
    assert type(a) is Endpoint and a == b and hash(a) == hash(b)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.ready = False  # type: ignore[misc]


def test_pod_full_and_defaults() -> None:
    raw = {
        "metadata": _meta("p", labels={"app": "a"}, annotations={"x": "y"}, deletionTimestamp="t"),
        "spec": {"nodeName": "n1", "hostNetwork": True, "terminationGracePeriodSeconds": 30,
                 "containers": [{"ports": [{"containerPort": 80, "protocol": "UDP", "name": "dns"},
                                           {"containerPort": "x"}, {"containerPort": 81}]}]},
        "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.1"}, {"ip": ""}, {"ip": "fd00::1"}],
                   "hostIP": "192.0.2.1", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    want = Pod(
        meta=ObjectMeta("p", "ns", "uid-p", "7", FrozenDict({"app": "a"}), FrozenDict({"x": "y"}), "t"),
        node_name="n1", host_network=True, phase="Running", pod_ips=("10.0.0.1", "fd00::1"), host_ip="192.0.2.1",
        ports=(ContainerPort(80, "UDP", "dns"), ContainerPort(81, "TCP", "")), ready=True,
        termination_grace_period_seconds=30,
    )
    assert from_json(Resource.POD, raw) == want
    assert from_json(Resource.POD, {"metadata": {"name": "q"}}) == Pod(meta=ObjectMeta("q"))
    assert from_json(Resource.POD, {"metadata": {"name": "q"}, "status": {"podIP": "10.1.1.1"},
                                    "spec": {"terminationGracePeriodSeconds": True}}).pod_ips == ("10.1.1.1",)
    assert from_json(Resource.POD, {"metadata": {"name": "q"},
                                    "spec": {"terminationGracePeriodSeconds": "5"}}).termination_grace_period_seconds == 5


def test_service_full_and_defaults() -> None:
    raw = {
        "metadata": _meta("s"),
        "spec": {"type": "LoadBalancer", "clusterIPs": ["10.96.0.10"], "ipFamilies": ["IPv4"],
                 "ipFamilyPolicy": "SingleStack", "selector": {"app": "a"}, "externalIPs": ["192.0.2.9"],
                 "ports": [{"port": 53, "protocol": "UDP", "name": "dns", "targetPort": "dns", "nodePort": 30053,
                            "appProtocol": "dns"},
                           {"port": 80, "targetPort": True}, {"port": "bad"}],
                 "loadBalancerSourceRanges": ["0.0.0.0/0"], "loadBalancerClass": "c",
                 "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Local", "sessionAffinity": "ClientIP",
                 "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}, "healthCheckNodePort": 31000,
                 "publishNotReadyAddresses": True, "trafficDistribution": "PreferClose", "externalName": "e"},
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.1", "ipMode": "VIP"}, {"hostname": "h"}]}},
    }
    want = Service(
        meta=ObjectMeta("s", "ns", "uid-s", "7"), type="LoadBalancer", cluster_ips=("10.96.0.10",),
        ip_families=("IPv4",), ip_family_policy="SingleStack",
        ports=(ServicePort(53, "UDP", "dns", "dns", 30053, "dns"), ServicePort(80, "TCP", "", None, None, None)),
        selector=FrozenDict({"app": "a"}), external_ips=("192.0.2.9",),
        load_balancer_ingress=(LoadBalancerIngress("203.0.113.1", "", "VIP"), LoadBalancerIngress("", "h", None)),
        load_balancer_source_ranges=("0.0.0.0/0",), load_balancer_class="c", external_traffic_policy="Local",
        internal_traffic_policy="Local", session_affinity="ClientIP", session_affinity_timeout=60,
        health_check_node_port=31000, publish_not_ready_addresses=True, traffic_distribution="PreferClose",
        external_name="e",
    )
    assert from_json(Resource.SERVICE, raw) == want
    assert from_json(Resource.SERVICE, {"metadata": {"name": "s"}}) == Service(meta=ObjectMeta("s"))
    empty_sel = from_json(Resource.SERVICE, {"metadata": {"name": "s"}, "spec": {"selector": {}, "clusterIP": "None"}})
    assert empty_sel.selector == FrozenDict() and empty_sel.cluster_ips == ("None",) and empty_sel.headless


def test_endpointslice_full_and_defaults() -> None:
    raw = {
        "metadata": _meta("e", labels={"kubernetes.io/service-name": "s"}),
        "addressType": "IPv6",
        "endpoints": [
            {"addresses": ["fd00::1"], "conditions": {"ready": False, "terminating": True}, "nodeName": "n1",
             "zone": "z1", "hints": {"forZones": [{"name": "z1"}]},
             "targetRef": {"kind": "Pod", "namespace": "ns", "name": "p1", "uid": "u"}},
            {"addresses": ["fd00::2"]},
            {"addresses": ["fd00::3"], "conditions": {"serving": False}, "nodeName": None},
        ],
        "ports": [{"port": 8080, "name": "http", "appProtocol": "h2c"}, {"port": "x", "protocol": "UDP"}],
    }
    want = EndpointSlice(
        meta=ObjectMeta("e", "ns", "uid-e", "7", FrozenDict({"kubernetes.io/service-name": "s"})),
        address_type="IPv6",
        endpoints=(
            Endpoint(("fd00::1",), False, False, True, "n1", "z1", ("z1",), ("Pod", "ns", "p1")),
            Endpoint(("fd00::2",)),
            Endpoint(("fd00::3",), True, False),
        ),
        ports=(EndpointPort(8080, "TCP", "http", "h2c"), EndpointPort(None, "UDP", "", None)),
    )
    got = from_json(Resource.ENDPOINTSLICE, raw)
    assert got == want and hash(got) == hash(want)
    assert got.service_key == "ns/s"
    assert from_json(Resource.ENDPOINTSLICE, {"metadata": {"name": "e"}}) == EndpointSlice(meta=ObjectMeta("e"))


def test_equal_parts_are_shared_and_strings_interned() -> None:
    def es(i: int) -> dict[str, Any]:
        return {"metadata": {"name": f"e{i}", "namespace": "n" + "s", "labels": {"app": "x" + "y"}},
                "endpoints": [{"addresses": [f"10.0.0.{i}"], "nodeName": "node-" + str(7),
                               "targetRef": {"kind": "Po" + "d", "namespace": "n" + "s", "name": f"p{i}"}}],
                "ports": [{"port": 80, "protocol": "TCP", "name": "http"}]}

    a, b = from_json(Resource.ENDPOINTSLICE, es(1)), from_json(Resource.ENDPOINTSLICE, es(2))
    assert a.ports is b.ports
    assert a.meta.labels is b.meta.labels
    assert a.endpoints[0].node_name is b.endpoints[0].node_name
    assert a.meta.namespace is b.meta.namespace
    assert a.endpoints[0].target_ref[0] is b.endpoints[0].target_ref[0]  # type: ignore[index]
    pa = from_json(Resource.POD, {"metadata": {"name": "a"}, "spec": {"containers": [{"ports": [{"containerPort": 1}]}]}})
    pb = from_json(Resource.POD, {"metadata": {"name": "b"}, "spec": {"containers": [{"ports": [{"containerPort": 1}]}]}})
    assert pa.ports is pb.ports and pa.ports == (ContainerPort(1),)


def test_malformed_values_do_not_break_sharing() -> None:
    # an unhashable appProtocol cannot be shared: the ports are built anyway, as before
    o = from_json(Resource.ENDPOINTSLICE, {"metadata": {"name": "e"}, "ports": [{"port": 1, "appProtocol": ["x"]}]})
    assert o.ports[0].app_protocol == ["x"]
    # labels with unhashable values are kept unshared
    m = ObjectMeta.from_json({"name": "x", "labels": {"a": ["b"]}})
    assert m.labels["a"] == ["b"]
    # a non-string node name is kept as sent (not interned), as before
    e = from_json(Resource.ENDPOINTSLICE, {"metadata": {"name": "e"}, "endpoints": [{"addresses": [], "nodeName": 5}]})
    assert e.endpoints[0].node_name == 5


def test_shared_table_is_bounded() -> None:
    t = model._Shared(3)
    for i in range(10):
        assert t.share(i, str(i)) == str(i)
        assert len(t) <= 3
    assert t.share(9, "other") == "9"  # the first value stays while it is in the table
