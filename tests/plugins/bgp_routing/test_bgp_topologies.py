"""Route reflectors, per-ASN peering and the vxlan overlay, against real gobgpd in namespaces."""

from __future__ import annotations

import os
import time

import pytest

from kr_plugins.bgp_routing.naming import tunnel_name

from .netlab import wait_for

pytestmark = pytest.mark.root


def test_route_reflector_then_live_switch_to_full_mesh(netlab_factory) -> None:  # type: ignore[no-untyped-def]
    lab = netlab_factory(3)
    srv, c1, c2 = lab.nodes
    srv.annotations = {"kube-router.io/rr.server": "42"}
    c1.annotations = {"kube-router.io/rr.client": "42"}
    c2.annotations = {"kube-router.io/rr.client": "42"}
    for n in lab.nodes:
        lab.start_agent(n)
    lab.wait_established(srv, [c1.ip, c2.ip])
    # clients peer only with the server; the server reflects c2's pod CIDR to c1 with c2 as next hop
    assert set(lab.peer_states(c1)) == {srv.ip}
    wait_for(lambda: f"{c2.pod_cidr} via {c2.ip}" in c1.routes(), 15, "c2's pod CIDR reflected to c1")
    assert wait_for(lambda: lab.ping(c1, c2.pod_ip), 5, "client-to-client pod ping through reflected routes")
    assert srv.plugin().state()["summary"]["export_policy"] is None  # RR servers install no policies

    # annotations removed live: every node becomes a full-mesh peer, no restart
    for n in lab.nodes:
        n.annotations = {}
    for n in lab.nodes:
        lab.publish(n.node())
    wait_for(lambda: set(lab.peer_states(c1)) == {srv.ip, c2.ip}, 10, "c1 peers with c2 directly")
    lab.wait_established(c1, [srv.ip, c2.ip], timeout=30)
    assert c1.plugin().state()["summary"]["export_policy"] is not None
    assert lab.ping(c1, c2.pod_ip)


def test_no_full_mesh_peers_by_node_asn_and_bad_input(netlab_factory) -> None:  # type: ignore[no-untyped-def]
    lab = netlab_factory(3)
    a, b, c = lab.nodes
    a.annotations = {"kube-router.io/node.asn": "65010",
                     "kube-router.io/peers": "- remoteip: 192.168.100.99\n  remoteasn: 23456\n- {remoteip: x}",
                     "kube-router.io/node.bgp.communities": "nonsense"}
    b.annotations = {"kube-router.io/node.asn": "65010"}
    c.annotations = {"kube-router.io/node.asn": "65020"}
    for n in lab.nodes:
        lab.start_agent(n, **{"nodes-full-mesh": False})
    lab.wait_established(a, [b.ip])
    assert set(lab.peer_states(a)) == {b.ip}  # c has another ASN; both bad external peers skipped
    assert lab.peer_states(c) == {}
    wait_for(lambda: f"{b.pod_cidr} via {b.ip}" in a.routes(), 10, "b's route on a")
    logged = " ".join(a.plugin()._logged)
    assert "reserved" in logged and "remoteasn is required" in logged and "nonsense" in logged
    assert a.plugin().state()["summary"]["asn"] == 65010
    # node-a moves to AS 65020, live: its BGP instance restarts with the new AS and it peers with c instead
    a.annotations["kube-router.io/node.asn"] = "65020"
    lab.publish(a.node())
    wait_for(lambda: a.plugin().state()["summary"]["asn"] == 65020, 10, "new local AS")
    wait_for(lambda: set(lab.peer_states(a)) == {c.ip}, 10, "a peers with c only")
    lab.wait_established(a, [c.ip], timeout=30)
    wait_for(lambda: f"{c.pod_cidr} via {c.ip}" in a.routes() and b.pod_cidr.split("/")[0] not in a.routes(), 10,
             "a routes to c, not to b")


def test_vxlan_overlay_across_subnets(netlab_factory) -> None:  # type: ignore[no-untyped-def]
    lab = netlab_factory(2, subnets=[1, 2])
    n1, n2 = lab.nodes
    flags = {"enable-overlay": True, "overlay-encap": "vxlan"}
    for n in lab.nodes:
        lab.start_agent(n, **flags)
    lab.wait_established(n1, [n2.ip])
    tun = tunnel_name(n2.ip)
    wait_for(lambda: f"{n2.pod_cidr} dev {tun}" in n1.routes(), 15, "route through the vxlan tunnel")
    assert f"{n2.ip} dev {tun}" in n1.routes("77")
    assert "vxlan" in os.popen(f"ip -n {n1.ns} -d link show {tun}").read()
    assert "from 10.244.1.0/24 lookup 77" in os.popen(f"ip -n {n1.ns} rule").read()
    # the switch in between knows nothing about pod CIDRs: only the tunnel carries pod traffic
    assert wait_for(lambda: lab.ping(n1, n2.pod_ip), 10, "pod ping through vxlan")
    # node-2 gone: route and tunnel removed
    assert n1.feed is not None
    n1.feed.delete(n2.node())
    wait_for(lambda: tun not in os.popen(f"ip -n {n1.ns} link").read(), 15, "tunnel removed")
    assert n2.pod_cidr.split("/")[0] not in n1.routes()


def test_cleanup_removes_everything_twice(netlab_factory) -> None:  # type: ignore[no-untyped-def]
    lab = netlab_factory(2, subnets=[1, 2])
    n1, n2 = lab.nodes
    for n in lab.nodes:
        lab.start_agent(n, **{"enable-overlay": True, "overlay-encap": "vxlan"})
    wait_for(lambda: n2.pod_cidr.split("/")[0] in n1.routes(), 30, "route on node-1")
    plugin = n1.plugin()
    lab.stop_agent(n1)
    assert n2.pod_cidr.split("/")[0] in n1.routes()  # stop leaves the dataplane in place
    plugin.cleanup()
    plugin.cleanup()
    assert n1.routes() == "" and n1.routes("77") == ""
    assert "tun-" not in os.popen(f"ip -n {n1.ns} link").read()
    assert "kube-router" not in os.popen(f"ip netns exec {n1.ns} iptables -S FORWARD").read()
    assert "kube-router-pod-subnets" not in os.popen(f"ip netns exec {n1.ns} ipset list -n").read()


def test_graceful_restart_agent_restart_keeps_traffic(netlab_factory) -> None:  # type: ignore[no-untyped-def]
    lab = netlab_factory(2)
    n1, n2 = lab.nodes
    flags = {"bgp-graceful-restart": True, "bgp-graceful-restart-time": 60.0, "injected-routes-sync-period": 3.0}
    for n in lab.nodes:
        lab.start_agent(n, **flags)
    lab.wait_established(n1, [n2.ip])
    wait_for(lambda: lab.ping(n2, n1.pod_ip) and lab.ping(n1, n2.pod_ip), 15, "pods reach each other")
    # node-1's agent stops: gobgpd is killed without a NOTIFICATION, node-2 keeps node-1's routes (GR helper),
    # node-1's kernel keeps its routes (stop leaves the dataplane)
    lab.stop_agent(n1)
    assert lab.ping(n2, n1.pod_ip) and lab.ping(n1, n2.pod_ip)
    assert n2.pod_cidr.split("/")[0] in n1.routes()
    # a new agent adopts the routes (no flush) and converges
    lab.start_agent(n1, **flags)
    assert lab.ping(n1, n2.pod_ip)
    lab.wait_established(n1, [n2.ip], timeout=30)
    wait_for(lambda: n1.plugin().injector.snapshot(), 15, "route re-learned by the new agent")
    assert lab.ping(n1, n2.pod_ip) and lab.ping(n2, n1.pod_ip)
    # a route a previous run left that BGP never confirms is removed at the next resync
    os.system(f"ip -n {n1.ns} route add 10.199.0.0/24 via {n2.ip} proto 17")
    lab.stop_agent(n1)
    lab.start_agent(n1, **flags)
    t0 = time.monotonic()
    wait_for(lambda: "10.199.0.0" not in n1.routes(), 30, "stale adopted route removed")
    assert time.monotonic() - t0 > 10  # kept during the adoption grace period
    assert n2.pod_cidr.split("/")[0] in n1.routes()


def test_new_agent_replaces_gobgpd_left_by_a_crashed_one(netlab_factory) -> None:  # type: ignore[no-untyped-def]
    lab = netlab_factory(2)
    n1, n2 = lab.nodes
    for n in lab.nodes:
        lab.start_agent(n)
    lab.wait_established(n1, [n2.ip])
    old = n1.plugin()
    old_pid = old.daemon.pid
    # a crash, as far as one can in-process: the agent's threads are gone, its gobgpd keeps running
    old.daemon._stopping.set()
    old.injector.stop()
    n1.agent.broadcaster.stop(drain=False)
    n1.agent = None
    assert os.path.exists(f"/proc/{old_pid}")
    lab.start_agent(n1)
    wait_for(lambda: not os.path.exists(f"/proc/{old_pid}") or "zombie" in open(f"/proc/{old_pid}/status").read().lower(),
             10, "the leftover gobgpd stopped")
    lab.wait_established(n1, [n2.ip], timeout=30)
    wait_for(lambda: n1.plugin().injector.snapshot(), 15, "routes re-learned")
    assert lab.ping(n1, n2.pod_ip)
