"""bgp_routing against real gobgpd and BIRD, in network namespaces made by :mod:`.netlab`."""

from __future__ import annotations

import os
import signal
import time

import pytest

from .netlab import EXT_IP, wait_for

pytestmark = pytest.mark.root


def test_ibgp_full_mesh_pod_to_pod(netlab_factory) -> None:  # type: ignore[no-untyped-def]
    lab = netlab_factory(2)
    n1, n2 = lab.nodes
    assert not lab.ping(n1, n2.pod_ip), "pods must not reach each other before BGP routes exist"
    t0 = time.monotonic()
    lab.start_agent(n1)
    lab.start_agent(n2)
    lab.wait_established(n1, [n2.ip])
    wait_for(lambda: n2.pod_cidr.split("/")[0] in n1.routes(), 10, "node-2's pod CIDR in node-1's kernel")
    wait_for(lambda: n1.pod_cidr.split("/")[0] in n2.routes(), 10, "node-1's pod CIDR in node-2's kernel")
    assert f"{n2.pod_cidr} via {n2.ip} dev eth0" in n1.routes()
    print(f"sessions up and routes in both kernels {time.monotonic() - t0:.1f} s after start")
    assert wait_for(lambda: lab.ping(n1, n2.pod_ip), 5, "pod-1 -> pod-2 ping")
    assert lab.ping(n2, n1.pod_ip)
    st = n1.plugin().state()
    assert st["summary"]["established"] == 1 and st["summary"]["routes"] == 1
    assert {"kind": "advertised", "prefix": n1.pod_cidr, "next_hop": n1.ip} in st["items"]
    # host setup: ipsets and FORWARD accepts
    ipset = lab_ipset(n1)
    assert "10.244.2.0/24" in ipset and n2.ip in ipset
    fwd = os.popen(f"ip netns exec {n1.ns} iptables -S FORWARD").read()
    assert "kube-router: allow traffic from kube-bridge" in fwd
    cni = (lab.tmp / n1.name / "10-kuberouter.conf").read_text()
    assert n1.pod_cidr in cni
    # kube-router's metric names
    from prometheus_client import generate_latest

    assert n1.agent is not None
    text = generate_latest(n1.agent.metrics.registry).decode()
    assert f'kube_router_bgp_peer_info{{address="{n2.ip}",asn="64512",state="ESTABLISHED",type="internal"}} 1.0' in text
    for name in ("kube_router_controller_bgp_advertisements_received_total",
                 'kube_router_controller_bgp_advertisements_sent_total{type="pod-route"}',
                 "kube_router_controller_bgp_internal_peers_sync_time_count", "kube_router_controller_routes_sync_time",
                 "kube_router_host_routes_sync_time_count", "kube_router_host_routes_synced 1.0",
                 "kube_router_host_routes_added_total", "kube_router_controller_bgp_peers 1.0"):
        assert name in text, name


def lab_ipset(node) -> str:  # type: ignore[no-untyped-def]
    return os.popen(f"ip netns exec {node.ns} ipset list").read()


def test_ext_bird_communities_prepend_vips_restart_and_delete(netlab_factory) -> None:  # type: ignore[no-untyped-def]
    from kr_core.model import EndpointSlice, Service

    lab = netlab_factory(2)
    n1, n2 = lab.nodes
    lab.start_bird([n1, n2])
    for n in (n1, n2):
        n.annotations = {"kube-router.io/peers": f"- remoteip: {EXT_IP}\n  remoteasn: 64600\n",
                         "kube-router.io/node.bgp.communities": "65000:100,no-export,bogus",
                         "kube-router.io/path-prepend.as": "65100", "kube-router.io/path-prepend.repeat-n": "2"}
    svc = Service.from_json({"metadata": {"name": "web", "namespace": "default"},
                             "spec": {"clusterIP": "10.96.0.50", "externalIPs": ["1.1.1.1"], "ports": [{"port": 80}],
                                      "externalTrafficPolicy": "Local"}})
    eps = EndpointSlice.from_json({"metadata": {"name": "web-1", "namespace": "default",
                                                "labels": {"kubernetes.io/service-name": "web"}},
                                   "endpoints": [{"addresses": [n1.pod_ip], "nodeName": n1.name}]})
    flags = {"advertise-cluster-ip": True, "advertise-external-ip": True, "strict-external-ip-validation": False}
    lab.start_agent(n1, [svc, eps], **flags)
    lab.start_agent(n2, [svc, eps], **flags)
    lab.wait_established(n1, [n2.ip, EXT_IP])
    lab.wait_established(n2, [n1.ip, EXT_IP])

    def bird_has(prefix: str, via: str) -> bool:
        out = lab.birdc("show", "route", "for", prefix, "all")
        return f"via {via}" in out

    wait_for(lambda: bird_has("10.244.1.0/24", n1.ip) and bird_has("10.244.2.0/24", n2.ip), 15, "pod CIDRs in BIRD")
    out = lab.birdc("show", "route", "for", "10.244.1.0/24", "all")
    assert "BGP.as_path: 65100 65100 64512" in out, out
    assert "(65000,100)" in out and "(65535,65281)" in out, out
    # node-2's pod CIDR is not re-exported by node-1 (export policy: own pod CIDR only)
    assert f"via {n1.ip}" not in lab.birdc("show", "route", "for", "10.244.2.0/24", "all")
    # VIPs: cluster IP from both, external IP (ETP Local) only from node-1 which has the endpoint
    wait_for(lambda: bird_has("10.96.0.50/32", n1.ip) and bird_has("10.96.0.50/32", n2.ip), 10, "cluster IP")
    wait_for(lambda: bird_has("1.1.1.1/32", n1.ip), 10, "external IP from node-1")
    assert f"via {n2.ip}" not in lab.birdc("show", "route", "for", "1.1.1.1/32", "all")
    # the endpoint moves to node-2: node-1 withdraws the external IP (ETP Local), node-2 advertises it
    moved = EndpointSlice.from_json({"metadata": {"name": "web-1", "namespace": "default",
                                                  "labels": {"kubernetes.io/service-name": "web"}},
                                     "endpoints": [{"addresses": [n2.pod_ip], "nodeName": n2.name}]})
    lab.publish(moved)
    wait_for(lambda: bird_has("1.1.1.1/32", n2.ip) and not bird_has("1.1.1.1/32", n1.ip), 10, "external IP moved")
    lab.publish(eps)
    wait_for(lambda: bird_has("1.1.1.1/32", n1.ip), 10, "external IP back on node-1")
    # the invalid community was reported against the node and skipped
    assert any("bogus" in k for k in n1.plugin()._logged)

    # kill -9 gobgpd on node-1: restarted, everything re-advertised
    old_pid = n1.plugin().daemon.pid
    os.kill(old_pid, signal.SIGKILL)
    t0 = time.monotonic()
    wait_for(lambda: n1.plugin().daemon.pid != old_pid and n1.plugin().daemon.alive(), 10, "gobgpd restarted")
    lab.wait_established(n1, [n2.ip, EXT_IP], timeout=30)
    wait_for(lambda: bird_has("10.244.1.0/24", n1.ip) and bird_has("1.1.1.1/32", n1.ip), 15, "re-advertised")
    wait_for(lambda: n2.pod_cidr.split("/")[0] in n1.routes(), 15, "routes back in node-1's kernel")
    print(f"gobgpd kill -9 -> sessions and routes back in {time.monotonic() - t0:.1f} s")
    assert lab.ping(n1, n2.pod_ip)

    # annotation change applied live: new prepend count and community
    n1.annotations["kube-router.io/path-prepend.repeat-n"] = "3"
    n1.annotations["kube-router.io/node.bgp.communities"] = "65000:200"
    lab.publish(n1.node())
    wait_for(lambda: "BGP.as_path: 65100 65100 65100 64512" in lab.birdc("show", "route", "for", "10.244.1.0/24",
                                                                          "all"), 15, "new prepend in BIRD")
    assert "(65000,200)" in lab.birdc("show", "route", "for", "10.244.1.0/24", "all")
    assert n1.plugin().export.version >= 2  # versioned, hitless replacement

    # node-2 deleted from the API (its agent still runs): node-1 drops the peer and the route
    assert n1.feed is not None
    n1.feed.delete(n2.node())
    wait_for(lambda: n2.ip not in lab.peer_states(n1), 10, "node-2's peer removed from node-1")
    wait_for(lambda: n2.pod_cidr.split("/")[0] not in n1.routes(), 10, "node-2's route withdrawn from node-1")
    wait_for(lambda: "10.244.2.0/24" not in lab_ipset(n1), 10, "node-2's pod CIDR out of the ipset")


def test_flag_peers_md5_import_policy(netlab_factory) -> None:  # type: ignore[no-untyped-def]
    """--peer-router-* flags with an MD5 password; the import policy rejects the default route and the node's
    customimportreject prefixes; the export policy sends no VIPs and no pod CIDRs with --advertise-pod-cidr=false."""
    import base64

    lab = netlab_factory(1)
    n1 = lab.nodes[0]
    lab.start_bird([n1], exports=["0.0.0.0/0", "172.30.0.0/24", "172.31.0.0/24"], template_extra='password "s3cret";')
    n1.annotations = {"kube-router.io/node.bgp.customimportreject": "172.31.0.0/16"}
    lab.start_agent(n1, **{"peer-router-ips": [EXT_IP], "peer-router-asns": [64600],
                           "peer-router-passwords": [base64.b64encode(b"s3cret").decode()],
                           "advertise-pod-cidr": False})
    lab.wait_established(n1, [EXT_IP])
    wait_for(lambda: "172.30.0.0/24" in n1.routes(), 10, "accepted route in the kernel")
    routes = n1.routes()
    assert "default" not in routes and "172.31.0.0" not in routes, routes
    assert lab.birdc("show", "route", "protocol", "node_1").count("/") == 0  # nothing exported to BIRD
