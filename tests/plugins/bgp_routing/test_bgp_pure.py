"""Unit tests of the pure parts of bgp_routing: AC-R1..R7 of the kube-router reference."""

from __future__ import annotations

import base64

import pytest

from kr_core.model import EndpointSlice, Node, Service
from kr_core.net.svcip import Validator
from kr_plugins.bgp_routing.desired import Options, external_peers, internal_peers, local_asn
from kr_plugins.bgp_routing.host import ipsets_for, masquerade_rule, render_cni_conf
from kr_plugins.bgp_routing.injector import InjectConfig, decide, vxlan_vni
from kr_plugins.bgp_routing.naming import generate_router_id, grpc_listen_addrs, tunnel_name
from kr_plugins.bgp_routing.nodeinfo import (
    cluster_ipsets,
    node_bgp,
    parse_cluster_id,
    pod_cidrs,
    valid_community,
)
from kr_plugins.bgp_routing.peers import (
    PeerConfig,
    peers_from_annotations,
    peers_from_flags,
    peers_from_yaml,
    reserved_asn,
    valid_cluster_asn,
)
from kr_plugins.bgp_routing.policy import (
    PolicyInputs,
    PrefixEntry,
    Statement,
    VersionedPolicy,
    build,
    diff_sets,
)
from kr_plugins.bgp_routing.vips import AdvertiseFlags, has_local_endpoint, service_vips


def node(name: str, ip: str = "", cidrs: tuple[str, ...] = (), ann: dict[str, str] | None = None,
         ip6: str = "") -> Node:
    addrs = [{"type": "InternalIP", "address": a} for a in (ip, ip6) if a]
    return Node.from_json({"metadata": {"name": name, "annotations": ann or {}},
                           "spec": {"podCIDRs": list(cidrs)}, "status": {"addresses": addrs}})


def svc(name: str = "s", **spec: object) -> Service:
    ann = spec.pop("annotations", {})
    status = spec.pop("status", {})
    return Service.from_json({"metadata": {"name": name, "namespace": "default", "annotations": ann},
                              "spec": {"clusterIP": "10.0.0.1", "ports": [{"port": 80}], **spec}, "status": status})


def slice_(node_name: str, addr: str = "172.20.1.1") -> EndpointSlice:
    return EndpointSlice.from_json({
        "metadata": {"name": "s-abc", "namespace": "default", "labels": {"kubernetes.io/service-name": "s"}},
        "addressType": "IPv4", "endpoints": [{"addresses": [addr], "nodeName": node_name,
                                              "conditions": {"ready": True}}]})


ALL = AdvertiseFlags(True, True, True)
LB = {"loadBalancer": {"ingress": [{"ip": "10.0.255.1"}, {"ip": "10.0.255.2"}]}}


# ------------------------------------------------------------------------------------------ AC-R1
class TestVipMatrix:
    def vips(self, s: Service, slices: list[EndpointSlice], flags: AdvertiseFlags = ALL) -> tuple[set, set]:
        d = service_vips(s, slices, "node-1", ["10.0.0.1"], flags, Validator(strict=False))
        return set(d.advertise), set(d.withdraw)

    def test_local_endpoints_everything_advertised(self) -> None:
        s = svc(type="LoadBalancer", externalIPs=["1.1.1.1"], status=LB)
        assert self.vips(s, [slice_("node-1")]) == ({"10.0.0.1", "1.1.1.1", "10.0.255.1", "10.0.255.2"}, set())

    def test_clusterip_and_nodeport_variants(self) -> None:
        assert self.vips(svc(externalIPs=["1.1.1.1"]), [])[0] == {"10.0.0.1", "1.1.1.1"}
        assert self.vips(svc(type="NodePort", externalIPs=["1.1.1.1"]), [])[0] == {"10.0.0.1", "1.1.1.1"}

    @pytest.mark.parametrize("local_how", ["etp", "annotation"])
    def test_etp_local_without_local_endpoints(self, local_how: str) -> None:
        extra: dict = {"externalTrafficPolicy": "Local"} if local_how == "etp" else {
            "annotations": {"kube-router.io/service.local": "true"}}
        s = svc(type="LoadBalancer", externalIPs=["1.1.1.1"], status=LB, **extra)
        assert self.vips(s, [slice_("node-2")]) == ({"10.0.0.1"}, {"1.1.1.1", "10.0.255.1", "10.0.255.2"})

    def test_itp_local_without_local_endpoints(self) -> None:
        s = svc(type="LoadBalancer", externalIPs=["1.1.1.1"], status=LB, internalTrafficPolicy="Local")
        assert self.vips(s, [slice_("node-2")]) == ({"1.1.1.1", "10.0.255.1", "10.0.255.2"}, {"10.0.0.1"})

    def test_annotations_opt_in_and_out(self) -> None:
        on = {"kube-router.io/service.advertise.clusterip": "true", "kube-router.io/service.advertise.externalip": "true",
              "kube-router.io/service.advertise.loadbalancerip": "true"}
        s = svc(type="LoadBalancer", externalIPs=["1.1.1.1"], status=LB, annotations=on)
        assert self.vips(s, [], AdvertiseFlags())[0] == {"10.0.0.1", "1.1.1.1", "10.0.255.1", "10.0.255.2"}
        off = {k: "false" for k in on}
        s = svc(type="LoadBalancer", externalIPs=["1.1.1.1"], status=LB, annotations=off)
        assert self.vips(s, [])[0] == set()
        s = svc(type="LoadBalancer", externalIPs=["1.1.1.1"], status=LB,
                annotations={"kube-router.io/service.advertise.clusterip": "garbage"})
        assert "10.0.0.1" not in self.vips(s, [])[0]  # invalid bool = false

    def test_proxy_ipmode_and_skiplbips(self) -> None:
        st = {"loadBalancer": {"ingress": [{"ip": "10.0.255.1", "ipMode": "Proxy"}, {"ip": "10.0.255.2"}]}}
        assert self.vips(svc(type="LoadBalancer", status=st), [])[0] == {"10.0.0.1", "10.0.255.2"}
        s = svc(type="LoadBalancer", status=LB, annotations={"kube-router.io/service.skiplbips": "false"})
        assert self.vips(s, [])[0] == {"10.0.0.1"}

    def test_headless_and_externalname(self) -> None:
        assert self.vips(svc(clusterIP="None"), [])[0] == set()
        assert self.vips(svc(type="ExternalName", externalName="x.example"), [])[0] == set()

    def test_lb_ips_only_from_loadbalancer_services_external_ips_not_from_headless(self) -> None:
        """kube-router's getLoadBalancerIPs/getExternalIPs: LB ingress only of type LoadBalancer (a status left
        on a Service changed to NodePort is not advertised); nothing of a headless Service."""
        assert self.vips(svc(type="NodePort", status=LB), [])[0] == {"10.0.0.1"}
        assert self.vips(svc(type="LoadBalancer", clusterIP="None", externalIPs=["1.1.1.1"], status=LB), []) == \
            (set(), set())
        assert self.vips(svc(clusterIP="", externalIPs=["1.1.1.1"]), []) == (set(), set())

    def test_strict_validation_refuses(self) -> None:
        v = Validator.from_ranges(cluster=["10.96.0.0/12"], external=["1.1.1.0/24"], strict=True)
        d = service_vips(svc(externalIPs=["1.1.1.1", "8.8.8.8"]), [], "node-1", [], ALL, v)
        assert d.advertise == {"10.0.0.1", "1.1.1.1"} and [ip for ip, _ in d.refused] == ["8.8.8.8"]

    def test_local_endpoint_by_address_without_nodename(self) -> None:
        sl = EndpointSlice.from_json({"metadata": {"name": "x", "namespace": "default"},
                                      "endpoints": [{"addresses": ["10.0.0.1"]}]})
        assert has_local_endpoint([sl], "node-1", ["10.0.0.1"])
        assert not has_local_endpoint([sl], "node-1", ["10.0.0.9"])


# ------------------------------------------------------------------------------------------ AC-R2
class TestPolicies:
    def inputs(self, **kw: object) -> PolicyInputs:
        base = dict(pod_cidrs=("172.24.0.0/24",), vips=("10.14.0.1", "1.14.1.1"),
                    external_peers=("10.14.0.1", "10.14.0.2"), enable_ibgp=True, advertise_pod_cidr=False,
                    prepend_asn=65100, prepend_repeat=5)
        base.update(kw)
        return PolicyInputs(**base)  # type: ignore[arg-type]

    def test_sets(self) -> None:
        p = build(self.inputs())
        assert p.sets["podcidrdefinedset"].prefixes == {PrefixEntry("172.24.0.0/24", 24, 24)}
        assert p.sets["servicevipsdefinedset"].prefixes == {PrefixEntry("1.14.1.1/32", 32, 32),
                                                           PrefixEntry("10.14.0.1/32", 32, 32)}
        assert p.sets["externalpeerset"].neighbors == {"10.14.0.1/32", "10.14.0.2/32"}
        assert p.sets["allpeerset"].neighbors == {"10.14.0.1/32", "10.14.0.2/32"}

    def test_export_import_with_prepend(self) -> None:
        p = build(self.inputs(ibgp_peers=("10.0.0.2",)))
        assert p.export == (
            Statement("podcidrdefinedset", "iBGPpeerset", "accept"),
            Statement("servicevipsdefinedset", "externalpeerset", "accept", prepend_asn=65100, prepend_repeat=5),
        )
        assert [(s.prefix_set, s.neighbor_set, s.action) for s in p.import_] == [
            ("servicevipsdefinedset", "allpeerset", "reject"),
            ("defaultroutedefinedset", "allpeerset", "reject"),
            ("defaultroutedefinedsetv6", "allpeerset", "reject"),
        ]

    def test_statements_skipped_for_empty_sets(self) -> None:
        p = build(self.inputs())  # no iBGP peers: no pod CIDR -> iBGP statement
        assert [s.prefix_set for s in p.export] == ["servicevipsdefinedset"]

    def test_prepend_needs_both_and_communities(self) -> None:
        p = build(self.inputs(prepend_asn=None, communities=("65000:100", "no-export"), advertise_pod_cidr=True))
        assert all(s.prepend_asn is None and s.communities == ("65000:100", "no-export") for s in p.export)
        assert [s.prefix_set for s in p.export] == ["servicevipsdefinedset", "podcidrdefinedset"]

    def test_custom_import_reject(self) -> None:
        p = build(self.inputs(import_reject=("192.168.0.0/16",)))
        assert p.sets["customimportrejectdefinedset"].prefixes == {PrefixEntry("192.168.0.0/16", 16, 32)}
        assert p.import_[-1] == Statement("customimportrejectdefinedset", "allpeerset", "reject")

    def test_versioned_hitless_swap(self) -> None:
        slot = VersionedPolicy("kube_router_export")
        st = build(self.inputs()).export
        assert slot.plan(st) == ("kube_router_export1", None)
        slot.commit(st)
        assert slot.plan(st) is None
        st2 = build(self.inputs(prepend_repeat=3)).export
        assert slot.plan(st2) == ("kube_router_export2", "kube_router_export1")

    def test_set_diff(self) -> None:
        a = build(self.inputs()).sets
        b = build(self.inputs(vips=("10.14.0.1",))).sets
        d = {x.set.name: x for x in diff_sets(a, b)}
        assert list(d) == ["servicevipsdefinedset"]
        assert d["servicevipsdefinedset"].remove.prefixes == {PrefixEntry("1.14.1.1/32", 32, 32)}
        assert d["servicevipsdefinedset"].add is None


# ------------------------------------------------------------------------------------------ AC-R3
class TestInternalPeers:
    def test_full_mesh_and_removal(self) -> None:
        me = node("me", "10.0.0.3")
        nodes = [me, node("a", "10.0.0.1"), node("b", "10.0.0.2")]
        assert [p.address for p in internal_peers(me, nodes, Options())] == ["10.0.0.1", "10.0.0.2"]
        assert [p.address for p in internal_peers(me, nodes[:2], Options())] == ["10.0.0.1"]
        assert all(p.asn == 64512 and p.kind == "internal" for p in internal_peers(me, nodes, Options()))

    def test_no_full_mesh_same_asn_only(self) -> None:
        me = node("me", "10.0.0.3", ann={"kube-router.io/node.asn": "100"})
        nodes = [me, node("a", "10.0.0.1", ann={"kube-router.io/node.asn": "100"}),
                 node("b", "10.0.0.2", ann={"kube-router.io/node.asn": "200"}), node("c", "10.0.0.4")]
        peers = internal_peers(me, nodes, Options(full_mesh=False))
        assert [(p.address, p.asn) for p in peers] == [("10.0.0.1", 100)]
        assert local_asn(node_bgp({}), Options(full_mesh=False)) is None

    def test_other_family_skipped(self) -> None:
        me = node("me", "10.0.0.3")
        assert internal_peers(me, [me, node("v6", "2001:db8::1")], Options()) == []

    def test_route_reflector_roles(self) -> None:
        srv = node("srv", "10.0.0.1", ann={"kube-router.io/rr.server": "42"})
        cl1 = node("c1", "10.0.0.2", ann={"kube-router.io/rr.client": "42"})
        cl2 = node("c2", "10.0.0.3", ann={"kube-router.io/rr.client": "42"})
        nodes = [srv, cl1, cl2]
        assert [p.address for p in internal_peers(cl1, nodes, Options())] == ["10.0.0.1"]
        peers = internal_peers(srv, nodes, Options())
        assert [(p.address, p.rr_client, p.rr_cluster_id) for p in peers] == [
            ("10.0.0.2", True, "0.0.0.42"), ("10.0.0.3", True, "0.0.0.42")]


# ------------------------------------------------------------------------------------------ AC-R4
def test_route_reflector_ids() -> None:
    assert parse_cluster_id("42") == "0.0.0.42"
    assert parse_cluster_id("10.0.0.1") == "10.0.0.1"
    with pytest.raises(ValueError):
        parse_cluster_id("not-an-id")
    nb = node_bgp({"kube-router.io/rr.server": "42", "kube-router.io/rr.client": "x.y"})
    assert nb.rr_server == "0.0.0.42" and nb.rr_client == "" and any("rr.client" in p for p in nb.problems)


# ------------------------------------------------------------------------------------------ AC-R5
class TestPeerParsing:
    def test_yaml(self) -> None:
        pw = base64.b64encode(b"secret").decode()
        text = f"""
- remoteip: 10.0.0.1
  remoteasn: 64513
  password: {pw}
  port: 1790
  localip: 10.0.0.5
  bfd: {{enabled: true, port: 3785}}
- remoteip: 10.0.0.2
  remoteasn: 65100
"""
        peers, problems = peers_from_yaml(text)
        assert problems == []
        assert peers[0] == PeerConfig("10.0.0.1", 64513, 1790, "secret", "10.0.0.5", peers[0].bfd)
        assert peers[0].bfd.enabled and peers[0].bfd.port == 3785
        assert peers[1] == PeerConfig("10.0.0.2", 65100)

    @pytest.mark.parametrize("text", ["- remoteasn: 64513", "- remoteip: 10.0.0.1"])
    def test_yaml_missing_required(self, text: str) -> None:
        peers, problems = peers_from_yaml(text)
        assert peers == [] and len(problems) == 1

    def test_yaml_garbage_and_partial(self) -> None:
        assert peers_from_yaml("[unclosed")[1]
        peers, problems = peers_from_yaml("- {remoteip: 10.0.0.1, remoteasn: 23456}\n- {remoteip: 10.0.0.2, remoteasn: 65001}")
        assert [p.address for p in peers] == ["10.0.0.2"] and "reserved" in problems[0]

    def test_legacy_lists(self) -> None:
        ann = {"kube-router.io/peer.ips": "10.0.0.1,10.0.0.2", "kube-router.io/peer.asns": "65001,65002",
               "kube-router.io/peer.passwords": ",cGFzcw==", "kube-router.io/peer.ports": "179,1790"}
        peers, problems = peers_from_annotations(ann)
        assert problems == [] and [(p.address, p.asn, p.password, p.port) for p in peers] == [
            ("10.0.0.1", 65001, "", 179), ("10.0.0.2", 65002, "pass", 1790)]

    def test_legacy_mismatches(self) -> None:
        assert peers_from_annotations({"kube-router.io/peer.ips": "10.0.0.1,10.0.0.2",
                                       "kube-router.io/peer.asns": "65001"}) == ([], [
            "kube-router.io/peer.*: 2 IPs but 1 ASNs: every peer needs exactly one ASN"])
        peers, problems = peers_from_annotations({"kube-router.io/peer.ips": "10.0.0.1,10.0.0.2",
                                                  "kube-router.io/peer.asns": "65001,65002",
                                                  "kube-router.io/peer.passwords": "cGFzcw=="})
        assert peers == [] and "passwords" in problems[0]

    def test_flags(self) -> None:
        peers, problems = peers_from_flags(["192.168.1.1"], [65000], [], [])
        assert problems == [] and peers == [PeerConfig("192.168.1.1", 65000)]

    def test_asn_rules(self) -> None:
        assert [a for a in (0, 23456, 64000, 64511, 65535, 131071, 4294967295) if not reserved_asn(a)] == []
        assert not any(reserved_asn(a) for a in (1, 63999, 64512, 65534, 131072, 4294967294))
        assert valid_cluster_asn(64512) and valid_cluster_asn(4200000000) and not valid_cluster_asn(65536)

    def test_external_peer_family(self) -> None:
        me = node("me", "10.0.0.3")
        peers, problems = external_peers(me, [PeerConfig("2001:db8::1", 65000), PeerConfig("10.0.0.9", 65000)],
                                         Options())
        assert [p.address for p in peers] == ["10.0.0.9"] and len(problems) == 1


# ------------------------------------------------------------------------------------------ AC-R6
def test_tunnel_names() -> None:
    assert tunnel_name("10.0.0.1") == "tun-e443169117a"
    assert tunnel_name("100.200.300.400") == "tun-9033d7906c7"
    assert tunnel_name("2001:db8:42:2::/64") == "tun-ba56986ef05"
    assert all(len(tunnel_name(x)) <= 15 for x in ("10.0.0.1", "2001:db8::1"))


def test_grpc_listen_addrs() -> None:
    assert grpc_listen_addrs("", 50051) == ["127.0.0.1:50051"]
    assert grpc_listen_addrs("bogus", 50051) == ["127.0.0.1:50051"]
    for a, want in (("127.0.0.1", "127.0.0.1:50051"), ("0.0.0.0", "0.0.0.0:50051"), ("::1", "[::1]:50051"),
                    ("::", "[::]:50051")):
        assert grpc_listen_addrs(a, 50051) == [want]
    assert grpc_listen_addrs("10.0.0.1", 50051) == ["10.0.0.1:50051", "127.0.0.1:50051"]


def test_communities() -> None:
    for ok in ("4294967041", "65535:65281", "no-export", "NO-EXPORT", "0"):
        assert valid_community(ok), ok
    for bad in ("foo", "65536:1", "1:65536", "4294967296", "a:b", ""):
        assert not valid_community(bad), bad
    nb = node_bgp({"kube-router.io/node.bgp.communities": "65000:1,bogus,no-export"})
    assert nb.communities == ("65000:1", "no-export") and len(nb.problems) == 1


def test_router_id_generate_is_ipv4() -> None:
    rid = generate_router_id("10.0.0.1")
    assert rid.count(".") == 3 and rid == generate_router_id("10.0.0.1") != generate_router_id("10.0.0.2")


# ------------------------------------------------------------------------------------------ AC-R7
def test_pod_cidr_precedence() -> None:
    spec = ("10.1.0.0/24",)
    assert pod_cidrs(node("n", cidrs=spec))[0] == spec
    assert pod_cidrs(node("n", cidrs=spec, ann={"kube-router.io/pod-cidrs": "10.2.0.0/24,bad,10.3.0.0/24"})) == (
        ("10.2.0.0/24", "10.3.0.0/24"), ["kube-router.io/pod-cidrs: 'bad' is not a CIDR; skipped"])
    both = {"kube-router.io/pod-cidrs": "10.2.0.0/24", "kube-router.io/pod-cidr": "10.4.0.0/24"}
    assert pod_cidrs(node("n", cidrs=spec, ann=both))[0] == ("10.4.0.0/24",)
    bad_single = {"kube-router.io/pod-cidrs": "10.2.0.0/24", "kube-router.io/pod-cidr": "junk"}
    assert pod_cidrs(node("n", cidrs=spec, ann=bad_single))[0] == ("10.2.0.0/24",)


def test_golden_ipsets() -> None:
    vm1 = node("vm1", "10.241.0.20", ("10.242.0.0/24", "2001:db8:42:1000::/64"), ip6="2001:db8:ca2:2::2ca1")
    vm2 = node("vm2", "10.241.0.21", ("10.242.1.0/24", "2001:db8:42:1001::/64"), ip6="2001:db8:ca2:2::e7e5")
    m = cluster_ipsets([vm1, vm2])
    assert m == {"pod-subnets4": {"10.242.0.0/24", "10.242.1.0/24"},
                 "pod-subnets6": {"2001:db8:42:1000::/64", "2001:db8:42:1001::/64"},
                 "node-ips4": {"10.241.0.20", "10.241.0.21"},
                 "node-ips6": {"2001:db8:ca2:2::2ca1", "2001:db8:ca2:2::e7e5"}}
    sets = {(s.kernel_name, s.type): tuple(s.entries) for s in ipsets_for(m, (4, 6))}
    assert sets[("kube-router-pod-subnets", "hash:net")] == ("10.242.0.0/24", "10.242.1.0/24")
    assert sets[("inet6:kube-router-node-ips", "hash:ip")] == ("2001:db8:ca2:2::2ca1", "2001:db8:ca2:2::e7e5")


# ------------------------------------------------------------------------------------------ host and overlay
def test_cni_conf_update_keeps_unknown_fields() -> None:
    conf = {"cniVersion": "0.3.0", "name": "kubernetes", "type": "bridge", "bridge": "kube-bridge",
            "custom": {"x": 1}, "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24"}]]}}
    out = render_cni_conf(conf, ["10.1.0.0/24", "2001:db8::/64"], 1480)
    assert out["custom"] == {"x": 1} and out["mtu"] == 1480
    assert out["ipam"]["ranges"] == [[{"subnet": "10.1.0.0/24"}], [{"subnet": "2001:db8::/64"}]]
    lst = render_cni_conf({"cniVersion": "0.3.0", "plugins": [{"type": "bridge"}, {"type": "portmap"}]},
                          ["10.1.0.0/24"], None)
    assert lst["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.1.0.0/24"}]] and lst["plugins"][1] == {"type": "portmap"}
    assert render_cni_conf(None, ["10.9.0.0/24"], None)["bridge"] == "kube-bridge"


def test_masquerade_rule() -> None:
    r = " ".join(masquerade_rule(4))
    assert "--match-set kube-router-pod-subnets src" in r and "! --match-set kube-router-node-ips dst" in r
    assert "inet6:kube-router-pod-subnets" in " ".join(masquerade_rule(6))


def test_overlay_decision() -> None:
    cfg = InjectConfig(node_ip4="10.0.0.1", local_subnets=("10.0.0.0/24",))
    assert decide("10.0.0.2", cfg) == "via"
    assert decide("10.0.1.2", cfg) == "tunnel"
    assert decide("10.0.1.2", InjectConfig(node_ip4="10.0.0.1", local_subnets=("10.0.0.0/24",),
                                           enable_overlay=False)) == "none"
    assert decide("10.0.0.2", InjectConfig(node_ip4="10.0.0.1", local_subnets=("10.0.0.0/24",),
                                           overlay_type="full")) == "tunnel"
    assert vxlan_vni("10.0.0.1", "10.0.1.2") == vxlan_vni("10.0.1.2", "10.0.0.1")


def test_dual_stack_routes_go_to_ipv4_sessions() -> None:
    p = build(PolicyInputs(pod_cidrs=("10.1.0.0/24", "fd00:1::/64"), ibgp_peers=("10.0.0.2",)))
    assert [(s.prefix_set, s.neighbor_set) for s in p.export] == [("podcidrdefinedset", "iBGPpeerset"),
                                                                  ("podcidrdefinedsetv6", "iBGPpeerset")]
