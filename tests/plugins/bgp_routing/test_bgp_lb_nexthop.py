"""LoadBalancer IP advertisement and ``--override-nexthop``, against real gobgpd and BIRD 2 in namespaces."""

from __future__ import annotations

from typing import Any

import pytest

from .netlab import EXT_IP, NET, sh, wait_for

pytestmark = pytest.mark.root

LB_RANGE = "10.255.0.0/24"


def _service(name: str, ingress: list[dict[str, str]], annotations: dict[str, str] | None = None,
             cluster_ip: str = "10.96.0.99", svc_type: str = "LoadBalancer") -> Any:
    from kr_core.model import Service

    return Service.from_json({
        "metadata": {"name": name, "namespace": "default", "annotations": annotations or {}},
        "spec": {"type": svc_type, "clusterIP": cluster_ip, "ports": [{"port": 80}]},
        "status": {"loadBalancer": {"ingress": ingress}}})


def _bird_vias(lab: Any, prefix: str) -> set[str]:
    """Next hops BIRD holds for exactly ``prefix`` (``show route for`` would fall back to a covering route)."""
    out = lab.birdc("show", "route", prefix, "all")
    return {line.split("via ", 1)[1].split()[0] for line in out.splitlines() if "via " in line}


def test_loadbalancer_ips_advertised_and_withdrawn(netlab_factory) -> None:  # type: ignore[no-untyped-def]
    """node-1 runs with --advertise-loadbalancer-ip, node-2 without: BIRD gets node-1's LB ingress IPs (not
    ipMode Proxy, not outside --loadbalancer-ip-range, not with skiplbips or advertise.loadbalancerip=false),
    and from node-2 only the Service that opts in by annotation. Annotation and status changes apply live."""
    lab = netlab_factory(2)
    n1, n2 = lab.nodes
    lab.start_bird([n1, n2])
    for n in (n1, n2):
        n.annotations = {"kube-router.io/peers": f"- remoteip: {EXT_IP}\n  remoteasn: 64600\n"}
    web = _service("web", [{"ip": "10.255.0.1"}, {"ip": "10.255.0.2", "ipMode": "Proxy"}, {"ip": "172.16.9.9"},
                           {"hostname": "lb.example.com"}], cluster_ip="10.96.0.61")
    skip = _service("skip", [{"ip": "10.255.0.3"}], {"kube-router.io/service.skiplbips": "false"})  # presence
    off = _service("off", [{"ip": "10.255.0.4"}], {"kube-router.io/service.advertise.loadbalancerip": "false"})
    optin = _service("optin", [{"ip": "10.255.0.5"}], {"kube-router.io/service.advertise.loadbalancerip": "true"})
    objs = [web, skip, off, optin]
    lab.start_agent(n1, objs, **{"advertise-loadbalancer-ip": True, "loadbalancer-ip-range": [LB_RANGE]})
    lab.start_agent(n2, objs, **{"loadbalancer-ip-range": [LB_RANGE]})
    lab.wait_established(n1, [n2.ip, EXT_IP])
    lab.wait_established(n2, [n1.ip, EXT_IP])

    wait_for(lambda: _bird_vias(lab, "10.255.0.1/32") == {n1.ip}, 15, "web's LB IP from node-1 only")
    wait_for(lambda: _bird_vias(lab, "10.255.0.5/32") == {n1.ip, n2.ip}, 15, "optin's LB IP from both nodes")
    wait_for(lambda: _bird_vias(lab, n2.pod_cidr) == {n2.ip}, 15, "pod CIDRs in BIRD (everything exported)")
    for prefix in ("10.255.0.2/32", "172.16.9.9/32", "10.255.0.3/32", "10.255.0.4/32", "10.96.0.61/32",
                   "10.96.0.99/32"):
        assert _bird_vias(lab, prefix) == set(), prefix
    assert any("172.16.9.9" in k and "loadbalancer-ip-range" in k for k in n1.plugin()._logged)
    routes = n1.plugin().state()["items"]
    assert {"kind": "advertised", "prefix": "10.255.0.1/32", "next_hop": n1.ip} in routes

    # skiplbips added to web: withdrawn; its removal from skip: advertised (annotations read live)
    lab.publish(_service("web", [{"ip": "10.255.0.1"}], {"kube-router.io/service.skiplbips": ""}, "10.96.0.61"))
    lab.publish(_service("skip", [{"ip": "10.255.0.3"}]))
    wait_for(lambda: _bird_vias(lab, "10.255.0.1/32") == set(), 15, "web's LB IP withdrawn (skiplbips)")
    wait_for(lambda: _bird_vias(lab, "10.255.0.3/32") == {n1.ip}, 15, "skip's LB IP advertised")
    # the per-service annotation turns it off under the flag: withdrawn
    lab.publish(_service("skip", [{"ip": "10.255.0.3"}], {"kube-router.io/service.advertise.loadbalancerip": "no"}))
    wait_for(lambda: _bird_vias(lab, "10.255.0.3/32") == set(), 15, "skip's LB IP withdrawn (annotation false)")
    # the LB controller changes the ingress IP: the old /32 goes, the new one comes
    lab.publish(_service("optin", [{"ip": "10.255.0.6"}], {"kube-router.io/service.advertise.loadbalancerip": "1"}))
    wait_for(lambda: _bird_vias(lab, "10.255.0.6/32") == {n1.ip, n2.ip} and not _bird_vias(lab, "10.255.0.5/32"),
             15, "optin's new LB IP replaces the old one")
    # type changed to NodePort with the status left behind: kube-router reads LB IPs of type LoadBalancer only
    lab.publish(_service("skip", [{"ip": "10.255.0.3"}]))
    wait_for(lambda: _bird_vias(lab, "10.255.0.3/32") == {n1.ip}, 15, "skip's LB IP advertised again")
    lab.publish(_service("skip", [{"ip": "10.255.0.3"}], svc_type="NodePort"))
    wait_for(lambda: _bird_vias(lab, "10.255.0.3/32") == set(), 15, "LB IP of a NodePort Service withdrawn")
    # the Service deleted: withdrawn everywhere
    for n in (n1, n2):
        assert n.feed is not None
        n.feed.delete(_service("optin", [{"ip": "10.255.0.6"}]))
    wait_for(lambda: _bird_vias(lab, "10.255.0.6/32") == set(), 15, "deleted Service's LB IP withdrawn")
    assert _bird_vias(lab, n1.pod_cidr) == {n1.ip}  # nothing else moved


def test_override_nexthop_is_next_hop_self_towards_external_peers(netlab_factory) -> None:  # type: ignore[no-untyped-def]
    """kube-router's --override-nexthop adds next-hop-self to the export statements towards external peers
    (the node's pod CIDR and Service VIPs); it is not applied to the pod CIDR towards iBGP peers, and routes
    learned over iBGP are not re-advertised to external peers at all (the export policy matches only the
    node's own pod CIDR and VIPs).

    It shows when the session's local address is not the node IP the paths carry: each node peers with BIRD
    from a second address (``localip`` of the ``peers`` annotation). node-1 runs with --override-nexthop,
    node-2 without."""
    lab = netlab_factory(2)
    n1, n2 = lab.nodes
    local = {n.name: f"{NET}.{200 + n.index}" for n in lab.nodes}
    for n in (n1, n2):
        sh(n.ns, "ip", "addr", "add", f"{local[n.name]}/24", "dev", "eth0")
        n.annotations = {"kube-router.io/peers":
                         f"- remoteip: {EXT_IP}\n  remoteasn: 64600\n  localip: {local[n.name]}\n"}
    peers = "".join(f"protocol bgp {n.name.replace('-', '_')} from k8snode {{ neighbor {local[n.name]} as 64512; }}\n"
                    for n in (n1, n2))
    lab.start_bird([], extra=peers)
    svc = _service("web", [{"ip": "10.255.0.1"}], cluster_ip="10.96.0.61")
    flags: dict[str, Any] = {"advertise-cluster-ip": True, "advertise-loadbalancer-ip": True,
                             "loadbalancer-ip-range": [LB_RANGE]}
    lab.start_agent(n1, [svc], **flags, **{"override-nexthop": True})
    lab.start_agent(n2, [svc], **flags)
    lab.wait_established(n1, [n2.ip, EXT_IP])
    lab.wait_established(n2, [n1.ip, EXT_IP])

    # node-1: next hop self (the session's local address) on its pod CIDR, cluster IP and LB IP;
    # node-2: the next hop its paths carry, its node IP
    wait_for(lambda: _bird_vias(lab, n1.pod_cidr) == {local[n1.name]}, 15, "node-1's pod CIDR, next hop self")
    wait_for(lambda: _bird_vias(lab, n2.pod_cidr) == {n2.ip}, 15, "node-2's pod CIDR, its node IP")
    for vip in ("10.96.0.61/32", "10.255.0.1/32"):
        wait_for(lambda v=vip: _bird_vias(lab, v) == {local[n1.name], n2.ip}, 15, f"{vip}: self from node-1 only")
    # iBGP: untouched by the flag, node-2 reaches node-1's pods via node-1's own IP
    wait_for(lambda: f"{n1.pod_cidr} via {n1.ip} dev eth0" in n2.routes(), 15, "node-1's pod CIDR on node-2")
    assert f"{n2.pod_cidr} via {n2.ip} dev eth0" in n1.routes()
    assert wait_for(lambda: lab.ping(n1, n2.pod_ip), 5, "pod ping over iBGP routes")
    # routes node-1 learned over iBGP are not re-advertised to BIRD, with or without next-hop-self
    assert local[n1.name] not in _bird_vias(lab, n2.pod_cidr)
    assert local[n2.name] not in _bird_vias(lab, n1.pod_cidr)
    exported = lab.birdc("show", "route", "protocol", "node_1")
    assert n2.pod_cidr not in exported, exported

    # the flag turned off on node-1 (a new agent): the next hop is the node IP again
    lab.stop_agent(n1)
    lab.start_agent(n1, [svc], **flags)
    lab.wait_established(n1, [n2.ip, EXT_IP], timeout=30)
    wait_for(lambda: _bird_vias(lab, n1.pod_cidr) == {n1.ip}, 15, "node-1's pod CIDR with its node IP")
    wait_for(lambda: _bird_vias(lab, "10.255.0.1/32") == {n1.ip, n2.ip}, 15, "LB IP with node IPs")
