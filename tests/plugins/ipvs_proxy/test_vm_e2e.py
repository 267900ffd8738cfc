"""Real IPVS, real packets (inside the VM): the plugin for node-1 of a two-node namespace topology.

One topology and one proxy for the module per ``--service-vip-mode`` (every test using them runs in both
modes); the tests run in file order and each leaves the Services as the
next expects. Run: ``.venv/bin/pytest tests/plugins/ipvs_proxy -m vm``.
"""

from __future__ import annotations

import collections
import subprocess
import time

import pytest

from kr_plugins.ipvs_proxy.model import ANN_HAIRPIN, ANN_SCHEDULER

from .fixtures import ep, eps, node, svc
from .vmkit import EXT_IP, NODE_IPS, PODS, Proxy, Topology, converse, sh

pytestmark = pytest.mark.vm

CIP, EIP, LBIP = "10.96.0.10", "203.0.113.10", "10.255.0.10"
NP = 30080


def web(**kw):
    ports = [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": NP},
             {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353, "nodePort": NP + 1}]
    return svc("web", cluster_ip=CIP, type="LoadBalancer", externalIPs=[EIP], ports=ports,
               status={"loadBalancer": {"ingress": [{"ip": LBIP}]}}, **kw)


def web_eps(pods=("a", "b", "c")):
    return eps("web", [ep(PODS[p][1], PODS[p][0]) for p in pods],
               ports=[{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}])


@pytest.fixture(scope="module", params=["address", "route"])
def mode(request):
    """``--service-vip-mode``: each mode gets its own topology (IPVS connection entries a mode's tests
    leave behind would steer the next mode's connections from the same pods: ``conn_reuse_mode=0``)."""
    return request.param


@pytest.fixture(scope="module")
def topo(mode):
    t = Topology()
    yield t
    t.close()


def objects():
    return [node("node-1", NODE_IPS["node-1"], "10.244.1.0/24"), node("node-2", NODE_IPS["node-2"], "10.244.2.0/24"),
            web(), web_eps()]


@pytest.fixture(scope="module")
def proxy(topo, mode, tmp_path_factory):
    state = str(tmp_path_factory.mktemp("kr-state"))
    p = Proxy(topo.ns["node-1"], state, objects(), flags={"service-vip-mode": mode})
    p.mode = mode
    p.start()
    yield p
    p.stop()


def ipvsadm(topo, args="-Ln"):
    return sh(topo.ns["node-1"], f"ipvsadm {args}")


def table(topo):
    """``ipvsadm -Ln`` without the connection counters."""
    return sorted(" ".join(line.split()[:3] if "->" in line else line.split()) for line in ipvsadm(topo).splitlines()[3:])


def who(answers):
    return collections.Counter(a.split()[0] for a in answers if a)


def restart(topo, proxy, mode):
    """Stop the agent, start a new one on the same node and state dir (``--service-vip-mode`` ``mode``);
    ``proxy`` then drives the new one. Returns it."""
    proxy.stop()
    p2 = Proxy(topo.ns["node-1"], proxy.ctx.state_dir, objects(), flags={"service-vip-mode": mode})
    p2.start()
    proxy.caller, proxy.plugin, proxy.feed = p2.caller, p2.plugin, p2.feed
    return p2


def vip_layout(topo, mode):
    """Each VIP local through its route (source: the node IP) in both modes; an address only in address mode."""
    ns = topo.ns["node-1"]
    dummy = sh(ns, "ip addr show kube-dummy-if")
    for vip in (CIP, EIP, LBIP):
        assert (f"inet {vip}/32" in dummy) == (mode == "address"), (mode, vip, dummy)
        route = sh(ns, f"ip route show table local {vip}")
        assert f"local {vip} dev kube-dummy-if proto kernel scope host src {NODE_IPS['node-1']}" in route, route


def test_clusterip_from_pod_spreads_over_all_backends(topo, proxy):
    vip_layout(topo, proxy.mode)
    out = ipvsadm(topo)
    assert f"TCP  {CIP}:80 rr" in out and f"UDP  {CIP}:53 rr" in out, out
    answers = [topo.ask("a", CIP, 80, timeout=1.5) for _ in range(6)]
    # round robin over all three; pod a reaching itself through the VIP needs hairpin (test_hairpin), so
    # those two attempts fail here, as with kube-router without hairpin
    assert who(answers) == {"b": 2, "c": 2} and answers.count("") == 2, answers
    # a pod of this node keeps its own address (no SNAT for pod sources), local and remote backends alike
    assert all(a.split()[1].startswith("10.244.1.10:") for a in answers if a)
    udp = [topo.ask_udp("b", CIP, 53) for _ in range(3)]
    assert len(who(udp)) >= 2, udp


def test_nodeport_externalip_lb_from_ext(topo, proxy):
    for vip, port in ((NODE_IPS["node-1"], NP), (EIP, 80), (LBIP, 80)):
        answers = [topo.ask("ext", vip, port) for _ in range(6)]
        assert who(answers) == {"a": 2, "b": 2, "c": 2}, (vip, answers)
        local = [a for a in answers if a.split()[0] in "ab"]
        remote = [a for a in answers if a.startswith("c ")]
        assert all(a.split()[1].startswith(EXT_IP + ":") for a in local), local  # local pods see the client
        assert all(a.split()[1].startswith(NODE_IPS["node-1"] + ":") for a in remote), remote  # SNAT to node


def test_firewall_rejects_unknown_port_fast(topo, proxy):
    t0 = time.monotonic()
    assert topo.ask("ext", EIP, 81, timeout=5) == ""
    assert time.monotonic() - t0 < 2, "expected an ICMP reject, not a timeout"
    save = sh(topo.ns["node-1"], "iptables-save")
    assert "-A INPUT -m set --match-set kube-router-svip dst" in save and ":KUBE-ROUTER-SERVICES" in save


def test_session_affinity_sticks(topo, proxy):
    proxy.feed.update(web(sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}}))
    assert "persistent 60" in ipvsadm(topo)
    answers = [topo.ask("ext", EIP, 80) for _ in range(5)]
    assert len(who(answers)) == 1, answers
    proxy.feed.update(web())
    assert "persistent" not in ipvsadm(topo)


def test_etp_local_keeps_client_ip_and_uses_local_pods_only(topo, proxy):
    proxy.feed.update(web(externalTrafficPolicy="Local", healthCheckNodePort=32100))
    for vip, port in ((NODE_IPS["node-1"], NP), (EIP, 80)):
        answers = [topo.ask("ext", vip, port) for _ in range(4)]
        assert who(answers) == {"a": 2, "b": 2}, answers
        assert all(a.split()[1].startswith(EXT_IP + ":") for a in answers), answers
    hc = sh(topo.ns["ext"], f"curl -s -m 3 http://{NODE_IPS['node-1']}:32100/healthz")
    assert "2 Service Endpoints found" in hc
    # the cluster IP keeps all three
    assert who(topo.ask("b", CIP, 80, timeout=1.5) for _ in range(6)) == {"a": 2, "c": 2}
    proxy.feed.update(web())


def test_hairpin(topo, proxy):
    proxy.feed.update(web(annotations={ANN_HAIRPIN: ""}))
    save = sh(topo.ns["node-1"], "iptables-save -t nat")
    assert "-A KUBE-ROUTER-HAIRPIN -s 10.244.1.10/32 -d 10.244.1.10/32" in save, save
    answers = [topo.ask("a", CIP, 80, timeout=1.5) for _ in range(6)]
    assert who(answers) == {"a": 2, "b": 2, "c": 2}, answers
    mine = [x for x in answers if x.startswith("a ")]
    assert mine and all(x.split()[1].startswith(CIP + ":") for x in mine), answers  # SNAT to the VIP
    proxy.feed.update(web())
    assert ":KUBE-ROUTER-HAIRPIN" not in sh(topo.ns["node-1"], "iptables-save -t nat")


def test_deleted_endpoint_gets_no_new_connections(topo, proxy):
    proxy.feed.update(web_eps(("a", "c")))
    out = ipvsadm(topo)
    assert PODS["b"][1] not in out and PODS["a"][1] in out
    assert who(topo.ask("ext", EIP, 80) for _ in range(6)) == {"a": 3, "c": 3}
    proxy.feed.update(web_eps())


def test_restart_keeps_established_connections_and_adopts(topo, proxy, tmp_path_factory):
    conns = [topo.connect("ext", EIP, 80) for _ in range(3)]
    first = [converse(c) for c in conns]
    assert all(first), first
    before = table(topo)
    # a new agent on the same node and state dir: adopts, changes nothing, connections keep working
    p2 = restart(topo, proxy, proxy.mode)
    try:
        assert table(topo) == before
        assert p2.state()["summary"]["netlink_messages"] == 0, p2.state()["summary"]
        again = [converse(c) for c in conns]
        assert again == first, (first, again)
        for c in conns:
            c.close()
        # an endpoint change through the new instance is exactly one destination op per virtual server
        p2.feed.update(web_eps(("a", "b")))
        n_vs = len([line for line in ipvsadm(topo).splitlines() if line.startswith(("TCP", "UDP"))])
        assert p2.state()["summary"]["netlink_messages"] == n_vs
    finally:
        p2.feed.update(web_eps())


def test_vip_mode_switch_across_restarts_keeps_connections(topo, proxy):
    """address -> route -> address (or the reverse): established connections to the externalIP keep
    working through both restarts, the addresses come and go, the VIP routes stay; new connections from
    ext, a pod and the node itself work in each mode."""
    other = "route" if proxy.mode == "address" else "address"
    conns = [topo.connect("ext", EIP, 80) for _ in range(3)]
    first = [converse(c) for c in conns]
    assert all(first), first
    try:
        for mode in (other, proxy.mode):
            p = restart(topo, proxy, mode)
            vip_layout(topo, mode)
            assert p.state()["summary"]["service_vip_mode"] == mode
            assert p.state()["summary"]["netlink_messages"] == 0  # IPVS untouched
            again = [converse(c) for c in conns]
            assert again == first, (mode, first, again)
            assert who(topo.ask("ext", EIP, 80) for _ in range(3)) == {"a": 1, "b": 1, "c": 1}, mode
            # pod b reaching itself through the VIP would need hairpin: one of three fails
            assert who(topo.ask("b", CIP, 80, timeout=1.5) for _ in range(3)) == {"a": 1, "c": 1}, mode
            node_answers = [topo.ask("node-1", CIP, 80) for _ in range(3)]
            assert all(node_answers), (mode, node_answers)
    finally:
        for c in conns:
            c.close()


def test_bad_annotations_do_not_stop_good_services(topo, proxy):
    bad = svc("bad", cluster_ip="10.96.0.20", annotations={ANN_SCHEDULER: "nonsense",
                                                            "kube-router.io/service.schedflags": "flag-x"},
              sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": "x"}},
              ports=[{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "weird", "port": 7, "protocol": "ICMP"}])
    proxy.feed.add(bad)
    proxy.feed.add(eps("bad", [ep("10.244.1.10"), ep("not-an-ip")], ports=[{"name": "http", "port": 8080}]))
    out = ipvsadm(topo)
    assert "TCP  10.96.0.20:80 rr persistent 10800" in out, out
    assert topo.ask("b", "10.96.0.20", 80).startswith("a ")
    assert len(who(topo.ask("ext", EIP, 80) for _ in range(3))) == 3
    # the Service goes away: its virtual server, VIP and set entries with it
    proxy.feed.delete(bad)
    assert "10.96.0.20" not in ipvsadm(topo)
    assert "10.96.0.20" not in sh(topo.ns["node-1"], "ip addr show kube-dummy-if")
    assert "10.96.0.20" not in sh(topo.ns["node-1"], "ip route show table local")
    assert "10.96.0.20" not in sh(topo.ns["node-1"], "ipset list kube-router-svip")


def test_drift_repaired_by_periodic_sync(topo, proxy):
    sh(topo.ns["node-1"], f"ipvsadm -D -t {EIP}:80")
    sh(topo.ns["node-1"], f"ipset del kube-router-svip-prt {EIP},tcp:80")
    sh(topo.ns["node-1"], "iptables -F KUBE-ROUTER-SERVICES")
    sh(topo.ns["node-1"], f"ipvsadm -d -t {LBIP}:80 -r {PODS['a'][1]}:8080")
    sh(topo.ns["node-1"], f"ip route del local {CIP} dev kube-dummy-if table local")  # the VIP no longer local
    assert f"{EIP}:80" not in ipvsadm(topo)
    proxy.sync("periodic")
    vip_layout(topo, proxy.mode)
    out = ipvsadm(topo)
    assert f"TCP  {EIP}:80 rr" in out and out.count("Masq") >= 3 * 8
    assert f"{EIP},tcp:80" in sh(topo.ns["node-1"], "ipset list kube-router-svip-prt")
    assert "reject all unexpected" in sh(topo.ns["node-1"], "iptables -S KUBE-ROUTER-SERVICES")
    assert PODS["a"][1] in sh(topo.ns["node-1"], f"ipvsadm -Ln -t {LBIP}:80")
    assert who(topo.ask("ext", EIP, 80) for _ in range(3)) == {"a": 1, "b": 1, "c": 1}
    msgs = proxy.state()["summary"]["netlink_messages"]
    proxy.sync("periodic")
    assert proxy.state()["summary"]["netlink_messages"] == msgs  # nothing changed: nothing sent


def test_foreign_virtual_servers_are_left_alone(topo, proxy):
    """kr owns only what it created: a virtual server made by someone else survives full syncs."""
    sh(topo.ns["node-1"], "ipvsadm -A -t 10.99.99.99:1 -s rr && ipvsadm -a -t 10.99.99.99:1 -r 10.244.1.10:1 -m")
    proxy.sync("periodic")
    proxy.sync("requested")
    assert "10.99.99.99:1" in ipvsadm(topo)
    assert proxy.state()["summary"]["virtual_servers"] == len(
        [ln for ln in ipvsadm(topo).splitlines() if ln.startswith(("TCP", "UDP"))]) - 1
    sh(topo.ns["node-1"], "ipvsadm -D -t 10.99.99.99:1")


def test_state_and_metrics(topo, proxy):
    st = proxy.state()
    assert st["summary"]["virtual_servers"] >= 8
    rows = [i for i in st["items"] if i["service"] == "default/web"]
    assert {r["kind"] for r in rows} == {"cluster", "nodeport", "external", "loadbalancer"}
    from prometheus_client import generate_latest
    text = proxy.call(generate_latest, proxy.registry).decode()
    assert "kube_router_controller_ipvs_services " in text
    assert f'kube_router_service_total_connections{{port="80",protocol="tcp",service_name="web",service_vip="{EIP}",svc_namespace="default"}}' in text


def test_cleanup_removes_everything(topo, proxy):
    proxy.stop()
    proxy.call(proxy.caller.cleanup)
    proxy.call(proxy.caller.cleanup)  # twice is fine
    assert table(topo) == []
    save = sh(topo.ns["node-1"], "iptables-save")
    assert "KUBE-ROUTER" not in save and "kube-router" not in save
    assert "kube-dummy-if" not in sh(topo.ns["node-1"], "ip link")
    assert sh(topo.ns["node-1"], "ipset list -n").strip() == ""
    proxy.stop = lambda: None  # already stopped


def test_clean_host_cleanup_in_fresh_namespace():
    from kr_core.net import netns
    with netns.temporary("krp-clean") as ns:
        p = Proxy(ns, "/run/tmp/krp-clean-state", [])
        p.call(p.caller.configure, p.ctx)
        p.call(p.caller.cleanup)
    assert subprocess.run(["true"]).returncode == 0


def test_graceful_termination_weight_zero_then_removed(tmp_path):
    """--ipvs-graceful-termination: a removed endpoint drains at weight 0, then goes (no connections)."""
    from kr_core.model import Pod
    from kr_core.net import netns

    with netns.temporary("krp-grace") as ns:
        s = svc("g", cluster_ip="10.96.0.30", ports=[{"name": "http", "port": 80, "protocol": "TCP"}])
        two = eps("g", [ep("10.244.1.10"), ep("10.244.1.11")], ports=[{"name": "http", "port": 8080}])
        pod = Pod.from_json({"metadata": {"name": "g-2", "namespace": "default"},
                             "spec": {"nodeName": "node-1", "terminationGracePeriodSeconds": 7},
                             "status": {"phase": "Running", "podIP": "10.244.1.11"}})
        p = Proxy(ns, str(tmp_path), [node("node-1", "192.168.70.1"), s, two, pod],
                  flags={"ipvs-graceful-termination": True, "ipvs-graceful-period": 1.0},
                  section={"graceful_check_interval": 0.2})
        p.start()
        try:
            p.feed.update(eps("g", [ep("10.244.1.10")], ports=[{"name": "http", "port": 8080}]))
            left = max(p.plugin.graceful.values()) - time.monotonic()
            assert 5 < left <= 7, left  # the pod's terminationGracePeriodSeconds, not the 1 s flag
            out = sh(ns, "ipvsadm -Ln -t 10.96.0.30:80")
            assert "10.244.1.11:8080" in out and any(
                "10.244.1.11:8080" in line and line.split()[3] == "0" for line in out.splitlines()), out
            assert p.state()["summary"]["draining"] == 1
            time.sleep(0.5)
            assert "graceful" in p.syncs  # the timer asked for the drain check
            p.sync("graceful")  # no connections: removed before the period is over
            assert "10.244.1.11" not in sh(ns, "ipvsadm -Ln -t 10.96.0.30:80")
            assert p.state()["summary"]["draining"] == 0
        finally:
            p.call(p.caller.cleanup)
            p.stop()


def test_dual_stack_kernel_state(tmp_path):
    """IPv4 + IPv6: virtual servers, NodePorts on both node IPs, VIPs with local routes, inet6 sets and
    ip6tables chains."""
    from kr_core.model import Node
    from kr_core.net import netns

    subprocess.run(["modprobe", "ipv6"], check=False)  # a module in the UML kernel
    with netns.temporary("krp-ds") as ns:
        sh(ns, "ip link add eth0 type dummy && ip addr add 192.168.80.1/24 dev eth0 && "
               "ip addr add fd00:80::1/64 dev eth0 nodad && ip link set eth0 up")
        n = Node.from_json({"metadata": {"name": "node-1"}, "spec": {"podCIDRs": ["10.244.1.0/24", "fd00:244::/64"]},
                            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.80.1"},
                                                     {"type": "InternalIP", "address": "fd00:80::1"}]}})
        s = svc("ds", cluster_ip=["10.96.0.40", "fd00:96::40"], type="NodePort", ipFamilies=["IPv4", "IPv6"],
                ports=[{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30600}])
        slices = [eps("ds", [ep("10.244.1.10")], ports=[{"name": "http", "port": 8080}]),
                  eps("ds", [ep("fd00:244::10")], address_type="IPv6", ports=[{"name": "http", "port": 8080}])]
        p = Proxy(ns, str(tmp_path), [n, s, *slices], flags={"enable-ipv6": True})
        p.start()
        try:
            out = sh(ns, "ipvsadm -Ln")
            for line in ("TCP  10.96.0.40:80 rr", "TCP  [fd00:96::40]:80 rr", "TCP  192.168.80.1:30600 rr",
                         "TCP  [fd00:80::1]:30600 rr", "-> [fd00:244::10]:8080", "-> 10.244.1.10:8080"):
                assert line in out, (line, out)
            assert "fd00:96::40" in sh(ns, "ip -6 addr show kube-dummy-if")
            route = sh(ns, "ip -6 route show table local fd00:96::40")
            assert "dev kube-dummy-if" in route and "src fd00:80::1" in route, route
            assert "src 192.168.80.1" in sh(ns, "ip route show table local 10.96.0.40")
            assert "fd00:96::40" in sh(ns, "ipset list inet6:kube-router-svip")
            assert "fd00:96::40,tcp:80" in sh(ns, "ipset list inet6:kube-router-svip-prt")
            save6 = sh(ns, "ip6tables-save")
            assert ":KUBE-ROUTER-SERVICES" in save6 and "--match-set inet6:kube-router-svip dst" in save6
            assert "-j SNAT --to-source fd00:80::1" in save6
        finally:
            p.call(p.caller.cleanup)
            p.stop()
