"""The pure model: Service + EndpointSlices + node -> virtual servers, VIPs, sets (AC-P1..P7 and more)."""

from __future__ import annotations

from kr_core.net.svcip import Validator
from kr_plugins.ipvs_proxy.model import (
    ANN_HAIRPIN,
    ANN_LOCAL,
    ANN_SCHEDFLAGS,
    ANN_SCHEDULER,
    ANN_SKIPLBIPS,
    FWD_MASQ,
    Desired,
    NodeInfo,
    Options,
    VKey,
    VParams,
    build_service,
)

from .fixtures import NODE, NODE_DS, OPTS, OPTS_DS, ep, eps, svc

TCP, UDP = 6, 17


def summary(m):
    """(vip, proto, port, persistent, scheduler) tuples, as the acceptance cases state them."""
    return {(k.addr, k.proto, k.port, bool(v.params.flags & 1), v.params.sched) for k, v in m.vservers.items()}


def ext_svc(**kw):
    return svc(externalIPs=["1.1.1.1", "2.2.2.2"], **kw)


# ------------------------------------------------------------------------------------ AC-P1 .. AC-P3

def test_ac_p1_external_ips_without_endpoints():
    m = build_service(ext_svc(), [], NODE, OPTS)
    assert m.vips == {(4, "10.0.0.1"), (4, "1.1.1.1"), (4, "2.2.2.2")}
    assert summary(m) == {("10.0.0.1", TCP, 8080, False, "rr"), ("1.1.1.1", TCP, 8080, False, "rr"),
                          ("2.2.2.2", TCP, 8080, False, "rr")}
    assert all(not v.dests for v in m.vservers.values())
    assert not m.problems


def lb(ingress, annotations=None):
    return ext_svc(type="LoadBalancer", annotations=annotations,
                   status={"loadBalancer": {"ingress": ingress}})


def test_ac_p2_loadbalancer_ingress():
    a = build_service(lb([{"ip": "10.255.0.1"}, {"ip": "10.255.0.2"}]), [], NODE, OPTS)
    assert len(a.vservers) == 5
    b = build_service(lb([{"ip": "10.255.0.1"}, {"ip": "10.255.0.2"}], {ANN_SKIPLBIPS: "false"}), [], NODE, OPTS)
    assert len(b.vservers) == 3
    c = build_service(lb([{"hostname": "lb.example.com"}]), [], NODE, OPTS)
    assert len(c.vservers) == 3
    d = build_service(lb([{"ip": "10.255.0.1", "ipMode": "Proxy"}, {"ip": "10.255.0.2", "ipMode": "Proxy"}]),
                      [], NODE, OPTS)
    assert len(d.vservers) == 3
    e = build_service(lb([{"ip": "10.255.0.1", "ipMode": "Proxy"}, {"ip": "10.255.0.2", "ipMode": "VIP"}]),
                      [], NODE, OPTS)
    assert len(e.vservers) == 4 and (4, "10.255.0.2") in e.vips and (4, "10.255.0.1") not in e.vips


def test_ac_p3_endpoint_expansion():
    sl = eps("svc-1", [ep("172.20.1.1", "node-1"), ep("172.20.1.2", "node-2")])
    m = build_service(ext_svc(), [sl], NODE, OPTS)
    dests = {(k.addr, k.port, d, w, fwd) for k, v in m.vservers.items() for d, (w, fwd) in v.dests.items()}
    assert len(dests) == 6
    for vip in ("10.0.0.1", "1.1.1.1", "2.2.2.2"):
        for a in ("172.20.1.1", "172.20.1.2"):
            assert (vip, 8080, (a, 80), 1, FWD_MASQ) in dests


# ------------------------------------------------------------------------------------ AC-P4 / AC-P5

def test_ac_p4_internal_traffic_policy_local():
    s = svc(cluster_ip="10.100.1.2", internalTrafficPolicy="Local")
    sl = eps("svc-1", [ep("172.20.1.2"), ep("172.20.1.3"), ep("172.20.2.2", "node-2")])
    m = build_service(s, [sl], NODE, OPTS)
    assert set(m.vservers[VKey(4, TCP, "10.100.1.2", 8080)].dests) == {("172.20.1.2", 80), ("172.20.1.3", 80)}
    # no local endpoint: no virtual server at all, VIP still on the dummy interface (fast reject)
    s2 = svc(cluster_ip="10.100.1.3", internalTrafficPolicy="Local")
    m2 = build_service(s2, [eps("svc-1", [ep("172.20.2.2", "node-2")])], NODE, OPTS)
    assert m2.vservers == {} and m2.vips == {(4, "10.100.1.3")} and m2.svip_prt() == set()


def etp_svc(**kw):
    return svc(cluster_ip="10.100.1.5", type="NodePort", externalIPs=["203.0.113.5"], externalTrafficPolicy="Local",
               ports=[{"name": "port-1", "port": 8080, "protocol": "TCP", "nodePort": 30080}], **kw)


def test_ac_p5_external_traffic_policy_local():
    sl = eps("svc-1", [ep("172.20.1.2"), ep("172.20.2.2", "node-2")])
    m = build_service(etp_svc(), [sl], NODE, OPTS)
    both, local = {("172.20.1.2", 80), ("172.20.2.2", 80)}, {("172.20.1.2", 80)}
    assert set(m.vservers[VKey(4, TCP, "10.100.1.5", 8080)].dests) == both
    assert set(m.vservers[VKey(4, TCP, "10.0.0.1", 30080)].dests) == local
    assert set(m.vservers[VKey(4, TCP, "203.0.113.5", 8080)].dests) == local
    # only remote endpoints: the ClusterIP server exists with the remote one, the external ones do not
    m2 = build_service(etp_svc(), [eps("svc-1", [ep("172.20.2.2", "node-2")])], NODE, OPTS)
    assert set(m2.vservers) == {VKey(4, TCP, "10.100.1.5", 8080)}
    assert set(m2.vservers[VKey(4, TCP, "10.100.1.5", 8080)].dests) == {("172.20.2.2", 80)}


def test_service_local_annotation_forces_etp_local_only():
    s = svc(cluster_ip="10.100.1.5", externalIPs=["203.0.113.5"], annotations={ANN_LOCAL: "true"})
    m = build_service(s, [eps("svc-1", [ep("172.20.1.2"), ep("172.20.2.2", "node-2")])], NODE, OPTS)
    assert len(m.vservers[VKey(4, TCP, "10.100.1.5", 8080)].dests) == 2
    assert set(m.vservers[VKey(4, TCP, "203.0.113.5", 8080)].dests) == {("172.20.1.2", 80)}
    s2 = svc(cluster_ip="10.100.1.5", externalIPs=["203.0.113.5"], annotations={ANN_LOCAL: "yes"})
    m2 = build_service(s2, [eps("svc-1", [ep("172.20.1.2"), ep("172.20.2.2", "node-2")])], NODE, OPTS)
    assert len(m2.vservers[VKey(4, TCP, "203.0.113.5", 8080)].dests) == 2


# ------------------------------------------------------------------------------------ AC-P6 dual stack

def np_svc(name, ips, node_port, families):
    return svc(name, cluster_ip=ips, type="NodePort", ipFamilies=families,
               ports=[{"name": "p", "port": 80, "protocol": "TCP", "nodePort": node_port}])


def test_ac_p6_dual_stack_nodeport():
    ds = build_service(np_svc("ds", ["10.96.0.50", "fd00::50"], 30500, ["IPv4", "IPv6"]), [], NODE_DS, OPTS_DS)
    keys = set(ds.vservers)
    assert VKey(4, TCP, "10.0.0.1", 30500) in keys and VKey(6, TCP, "2001:db8::1", 30500) in keys
    v4 = build_service(np_svc("v4", ["10.96.0.51"], 30501, ["IPv4"]), [], NODE_DS, OPTS_DS)
    assert {k.family for k in v4.vservers if k.port == 30501} == {4}
    v6 = build_service(np_svc("v6", ["fd00::52"], 30502, ["IPv6"]), [], NODE_DS, OPTS_DS)
    assert {k.family for k in v6.vservers if k.port == 30502} == {6}


def test_dual_stack_endpoints_match_their_family():
    s = svc(cluster_ip=["10.96.0.50", "fd00::50"])
    slices = [eps("svc-1", [ep("10.244.1.5")]), eps("svc-1", [ep("fd00:244::5")], address_type="IPv6")]
    m = build_service(s, slices, NODE_DS, OPTS_DS)
    assert set(m.vservers[VKey(4, TCP, "10.96.0.50", 8080)].dests) == {("10.244.1.5", 80)}
    assert set(m.vservers[VKey(6, TCP, "fd00::50", 8080)].dests) == {("fd00:244::5", 80)}
    # IPv6 disabled: only the IPv4 half
    assert {k.family for k in build_service(s, slices, NODE_DS, OPTS).vservers} == {4}


def test_nodeport_bindon_all_ip():
    node = NodeInfo(name="node-1", ips={4: "10.0.0.1"}, local_ips=("10.0.0.1", "192.168.5.1", "fd00::1"))
    s = np_svc("np", ["10.96.0.51"], 30501, ["IPv4"])
    m = build_service(s, [], node, Options(nodeport_bindon_all_ip=True))
    assert {k.addr for k in m.vservers if k.port == 30501} == {"10.0.0.1", "192.168.5.1"}


# ------------------------------------------------------------------------------------ AC-P7 validation

def test_ac_p7_strict_validation_in_the_model():
    v = Validator.from_ranges(cluster=["10.96.0.0/12"], external=["10.243.0.0/24"], loadbalancer=["10.255.0.0/24"])
    s = svc(cluster_ip="10.96.0.20", type="LoadBalancer", externalIPs=["10.243.0.1", "192.168.100.50"],
            status={"loadBalancer": {"ingress": [{"ip": "10.255.0.1"}, {"ip": "8.8.8.8"}]}})
    m = build_service(s, [], NODE, Options(validator=v))
    assert {a for _, a in m.vips} == {"10.96.0.20", "10.243.0.1", "10.255.0.1"}
    assert any("192.168.100.50" in p for p in m.problems) and any("8.8.8.8" in p for p in m.problems)
    none = build_service(s, [], NODE, Options(validator=Validator.from_ranges(cluster=["10.96.0.0/12"])))
    assert {a for _, a in none.vips} == {"10.96.0.20"}


# ------------------------------------------------------------------------------------ schedulers, affinity

def test_scheduler_flags_and_affinity():
    s = svc(annotations={ANN_SCHEDULER: "mh", ANN_SCHEDFLAGS: "flag-1,flag-2"}, sessionAffinity="ClientIP",
            sessionAffinityConfig={"clientIP": {"timeoutSeconds": 600}})
    m = build_service(s, [], NODE, OPTS)
    assert m.vservers[VKey(4, TCP, "10.0.0.1", 8080)].params == VParams("mh", 0x1 | 0x8 | 0x10, 600)
    d = build_service(svc(sessionAffinity="ClientIP"), [], NODE, OPTS)
    assert d.vservers[VKey(4, TCP, "10.0.0.1", 8080)].params == VParams("rr", 1, 10800)
    for sched in ("rr", "lc", "dh", "sh", "mh"):
        ms = build_service(svc(annotations={ANN_SCHEDULER: sched}), [], NODE, OPTS)
        assert next(iter(ms.vservers.values())).params.sched == sched


def test_garbage_annotations_fall_back_and_are_reported():
    s = svc(annotations={ANN_SCHEDULER: "bogus", ANN_SCHEDFLAGS: "flag-9,,flag-1"},
            sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": "soon"}})
    m = build_service(s, [], NODE, OPTS)
    assert m.vservers[VKey(4, TCP, "10.0.0.1", 8080)].params == VParams("rr", 1, 10800)
    assert any("unknown scheduler" in p for p in m.problems)
    assert any("flag-9" in p for p in m.problems)
    big = build_service(svc(sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 10**9}}),
                        [], NODE, OPTS)
    assert next(iter(big.vservers.values())).params.timeout == 10800 and big.problems


# ------------------------------------------------------------------------------------ endpoints

def test_endpoint_conditions_and_terminating_fallback():
    sl = eps("svc-1", [ep("10.244.1.1"), ep("10.244.1.2", ready=False, serving=True, terminating=True),
                       ep("10.244.1.3", ready=False, serving=False)])
    m = build_service(svc(), [sl], NODE, OPTS)
    assert set(m.vservers[VKey(4, TCP, "10.0.0.1", 8080)].dests) == {("10.244.1.1", 80)}
    only_term = eps("svc-1", [ep("10.244.1.2", ready=False, serving=True, terminating=True)])
    m2 = build_service(svc(), [only_term], NODE, OPTS)
    assert set(m2.vservers[VKey(4, TCP, "10.0.0.1", 8080)].dests) == {("10.244.1.2", 80)}


def test_port_matching_by_name_and_protocol_multiple_slices():
    s = svc(ports=[{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}])
    ports = [{"name": "dns", "port": 5353, "protocol": "UDP"}, {"name": "dns-tcp", "port": 5354, "protocol": "TCP"}]
    slices = [eps("svc-1", [ep("10.244.1.1")], name="a", ports=ports), eps("svc-1", [ep("10.244.2.1", "n2")], name="b", ports=ports)]
    m = build_service(s, slices, NODE, OPTS)
    assert set(m.vservers[VKey(4, UDP, "10.0.0.1", 53)].dests) == {("10.244.1.1", 5353), ("10.244.2.1", 5353)}
    assert set(m.vservers[VKey(4, TCP, "10.0.0.1", 53)].dests) == {("10.244.1.1", 5354), ("10.244.2.1", 5354)}


def test_topology_hints_prefer_close():
    node = NodeInfo(name="node-1", ips={4: "10.0.0.1"}, zone="a")
    sl = eps("svc-1", [ep("10.244.1.1", zone="a", hints=["a"]), ep("10.244.2.1", "n2", zone="b", hints=["b"])])
    m = build_service(svc(trafficDistribution="PreferClose"), [sl], node, OPTS)
    assert set(m.vservers[VKey(4, TCP, "10.0.0.1", 8080)].dests) == {("10.244.1.1", 80)}
    # one endpoint without hints: all are used
    sl2 = eps("svc-1", [ep("10.244.1.1", hints=["a"]), ep("10.244.2.1", "n2")])
    assert len(build_service(svc(), [sl2], node, OPTS).vservers[VKey(4, TCP, "10.0.0.1", 8080)].dests) == 2
    # no endpoint for this zone: all are used
    sl3 = eps("svc-1", [ep("10.244.2.1", "n2", hints=["b"])])
    assert len(build_service(svc(), [sl3], node, OPTS).vservers[VKey(4, TCP, "10.0.0.1", 8080)].dests) == 1


def test_skipped_services():
    assert build_service(svc(cluster_ip="None"), [], NODE, OPTS).skipped
    assert build_service(svc(type="ExternalName", externalName="x.example"), [], NODE, OPTS).skipped
    assert build_service(svc(labels={"service.kubernetes.io/service-proxy-name": "other"}), [], NODE, OPTS).skipped
    assert not build_service(svc(labels={"service.kubernetes.io/service-proxy-name": "kube-router"}), [], NODE, OPTS).skipped
    assert build_service(svc(labels={"service.kubernetes.io/headless": ""}), [], NODE, OPTS).skipped


def test_bad_endpoint_and_protocol_input_is_reported_and_skipped():
    s = svc(ports=[{"name": "port-1", "port": 8080, "protocol": "TCP"}, {"name": "x", "port": 9, "protocol": "ICMP"}])
    sl = eps("svc-1", [ep("10.244.1.1"), ep("not-an-ip"), ep("fd00::1")])
    m = build_service(s, [sl], NODE, OPTS)
    assert set(m.vservers[VKey(4, TCP, "10.0.0.1", 8080)].dests) == {("10.244.1.1", 80)}
    assert len(m.problems) == 3


# ------------------------------------------------------------------------------------ hairpin, health, ranges

def test_ac_p10_hairpin_model():
    s = svc(cluster_ip="10.42.13.240", annotations={ANN_HAIRPIN: ""},
            ports=[{"name": "port-1", "port": 80, "protocol": "TCP"}])
    m = build_service(s, [eps("svc-1", [ep("10.244.2.23"), ep("10.244.3.3", "node-2")])], NODE, OPTS)
    assert [(r.vip, r.port, r.ep) for r in m.hairpin] == [("10.42.13.240", 80, "10.244.2.23")]
    s2 = svc(cluster_ip="10.42.13.240", type="NodePort", annotations={ANN_HAIRPIN: ""},
             ports=[{"name": "port-1", "port": 80, "protocol": "TCP", "nodePort": 30080}])
    m2 = build_service(s2, [eps("svc-1", [ep("10.244.2.23")])], NODE, OPTS)
    assert {(r.vip, r.port) for r in m2.hairpin} == {("10.42.13.240", 80), ("10.0.0.1", 30080)}
    assert build_service(s.__class__.from_json({"metadata": {"name": "n", "namespace": "d"},
                                                "spec": {"clusterIP": "10.1.1.1"}}), [], NODE, OPTS).hairpin == ()
    assert build_service(s2, [eps("svc-1", [ep("10.244.2.23")])], NODE, Options()).hairpin
    plain = svc(cluster_ip="10.42.13.241")
    assert build_service(plain, [eps("svc-1", [ep("10.244.2.23")])], NODE, Options(hairpin_mode=True)).hairpin


def test_healthcheck_and_source_ranges():
    s = svc(cluster_ip="10.96.0.70", type="LoadBalancer", externalTrafficPolicy="Local", healthCheckNodePort=32000,
            loadBalancerSourceRanges=["192.0.2.0/24", "garbage"],
            ports=[{"name": "port-1", "port": 80, "protocol": "TCP", "nodePort": 30070}],
            status={"loadBalancer": {"ingress": [{"ip": "10.255.0.7"}]}})
    m = build_service(s, [eps("svc-1", [ep("10.244.1.1"), ep("10.244.1.2", ready=False, serving=True,
                                                               terminating=True), ep("10.244.2.1", "n2")])], NODE, OPTS)
    assert m.healthcheck == (32000, 1)
    assert [(r.vip, r.port, r.ranges) for r in m.source_ranges] == [("10.255.0.7", 80, ("192.0.2.0/24",))]
    assert any("garbage" in p for p in m.problems)
    m0 = build_service(s, [], NODE, OPTS)
    assert m0.healthcheck == (32000, 0)


def test_desired_aggregation_and_conflicts():
    a = build_service(svc("a", cluster_ip="10.96.0.1", externalIPs=["1.1.1.1"]), [], NODE, OPTS)
    b = build_service(svc("b", cluster_ip="10.96.0.2", externalIPs=["1.1.1.1"]), [], NODE, OPTS)
    d = Desired.build([b, a])
    assert d.vservers[VKey(4, TCP, "1.1.1.1", 8080)].service == "default/a"
    assert len(d.conflicts) == 1 and "default/b" in d.conflicts[0]
    assert d.svip(4) == {"10.96.0.1", "10.96.0.2", "1.1.1.1"}
    assert "1.1.1.1,tcp:8080" in d.svip_prt(4)


def test_destination_dicts_share_nothing_mutable_across_ports_and_policies():
    """Two Service ports with one name and protocol (invalid, but seen) get the same endpoints; a Local
    policy's dict holds only the local ones; a filtered port (terminating endpoints dropped) keeps the
    ready ones only. Every destination value is the weight/method pair, never an endpoint flag."""
    s = svc(ports=[{"name": "p", "port": 80, "protocol": "TCP", "nodePort": 30080},
                   {"name": "p", "port": 81, "protocol": "TCP", "nodePort": 30081}],
            type="NodePort", externalTrafficPolicy="Local")
    sl = eps("svc-1", [ep("10.244.1.1"), ep("10.244.2.1", "node-2"), ep("10.244.2.2", "node-2", ready=False,
                                                                        serving=True, terminating=True)],
             ports=[{"name": "p", "port": 8080, "protocol": "TCP"}])
    m = build_service(s, [sl], NODE, OPTS)
    by = {(k.port, vs.kind): vs.dests for k, vs in m.vservers.items()}
    want_all = {("10.244.1.1", 8080): (1, 0), ("10.244.2.1", 8080): (1, 0)}
    assert by[(80, "cluster")] == by[(81, "cluster")] == want_all
    local = [d for (port, kind), d in by.items() if kind == "nodeport"]
    assert len(local) == 2 and all(d == {("10.244.1.1", 8080): (1, 0)} for d in local)
