"""Real IPVS, real packets, IPv6 and dual stack (inside the VM): the plugin for node-1 of the two-node
namespace topology of :mod:`.vmkit` built with both families, ``--enable-ipv6``.

Services: ``ds`` (ipFamilies [IPv4, IPv6], NodePort, TCP and UDP, backends a, b, c in both families),
``v6`` (IPv6 only, NodePort, TCP, backends a and c) and ``dns`` (dual stack ClusterIP, UDP only, backends a
and c: a UDP client with a fixed source port when its endpoint is removed, and what moves it: the kernel's
``expire_nodest_conn``, not the ``conntrack -D`` kr runs like kube-router). One topology and one proxy for
the module per ``--service-vip-mode`` (the module runs once with VIPs as addresses on ``kube-dummy-if``,
once with the local routes alone); the tests run in file order and each leaves the Services as the next
expects.
"""

from __future__ import annotations

import collections
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from kr_core.model import Node
from kr_core.net import netns
from kr_plugins.ipvs_proxy.model import ANN_HAIRPIN

from .fixtures import ep, eps, svc
from .vmkit import (
    EXT_IP,
    EXT_IP6,
    NODE_IPS,
    NODE_IPS6,
    POD_CIDRS6,
    PODS,
    PODS6,
    Proxy,
    Topology,
    UdpClient,
    sh,
)

pytestmark = pytest.mark.vm

DS4, DS6 = "10.96.1.10", "fd00:96::10"  # Service ds
V6 = "fd00:96::20"  # Service v6
DNS4, DNS6 = "10.96.1.30", "fd00:96::30"  # Service dns
NP_TCP, NP_UDP, NP_V6 = 30090, 30091, 30092
TCP_PORTS = [{"name": "http", "port": 8080, "protocol": "TCP"}]
UDP_PORTS = [{"name": "dns", "port": 5353, "protocol": "UDP"}]


def node_obj(name: str) -> Node:
    i = name[-1]
    return Node.from_json({"metadata": {"name": name},
                           "spec": {"podCIDR": f"10.244.{i}.0/24", "podCIDRs": [f"10.244.{i}.0/24", POD_CIDRS6[name]]},
                           "status": {"addresses": [{"type": "InternalIP", "address": NODE_IPS[name]},
                                                    {"type": "InternalIP", "address": NODE_IPS6[name]}]}})


def slices(name: str, pods: tuple[str, ...], ports: list[dict[str, Any]], families: tuple[int, ...] = (4, 6)) -> list:
    out = []
    if 4 in families:
        out.append(eps(name, [ep(PODS[p][1], PODS[p][0]) for p in pods], ports=ports))
    if 6 in families:
        out.append(eps(name, [ep(PODS6[p], PODS[p][0]) for p in pods], ports=ports, address_type="IPv6"))
    return out


def ds_svc(**kw: Any) -> Any:
    return svc("ds", cluster_ip=[DS4, DS6], type="NodePort", ipFamilies=["IPv4", "IPv6"],
               ipFamilyPolicy="RequireDualStack", **kw,
               ports=[{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": NP_TCP},
                      {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353, "nodePort": NP_UDP}])


def ds_slices() -> list:
    return slices("ds", ("a", "b", "c"), TCP_PORTS + UDP_PORTS)


def v6_svc() -> Any:
    return svc("v6", cluster_ip=V6, type="NodePort", ipFamilies=["IPv6"], ipFamilyPolicy="SingleStack",
               ports=[{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": NP_V6}])


def dns_svc() -> Any:
    return svc("dns", cluster_ip=[DNS4, DNS6], ipFamilies=["IPv4", "IPv6"], ipFamilyPolicy="RequireDualStack",
               ports=[{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}])


def dns_slices(pods: tuple[str, ...] = ("a", "c")) -> list:
    return slices("dns", pods, UDP_PORTS)


@pytest.fixture(scope="module", params=["address", "route"])
def mode(request: pytest.FixtureRequest) -> str:
    """``--service-vip-mode``: each mode gets its own topology (IPVS connection entries a mode's tests
    leave behind would steer the next mode's connections from the same pods: ``conn_reuse_mode=0``)."""
    return str(request.param)


@pytest.fixture(scope="module")
def topo(mode: str) -> Iterator[Topology]:
    t = Topology(ipv6=True)
    sh(t.ns["ext"], f"ip route add 10.96.1.0/24 via {NODE_IPS['node-1']}")  # this module's IPv4 cluster IPs
    yield t
    t.close()


@pytest.fixture(scope="module")
def proxy(topo: Topology, mode: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    state = str(tmp_path_factory.mktemp("kr-state"))
    p = Proxy(topo.ns["node-1"], state, [node_obj("node-1"), node_obj("node-2"), ds_svc(), *ds_slices(),
                                         v6_svc(), *slices("v6", ("a", "c"), TCP_PORTS, (6,)),
                                         dns_svc(), *dns_slices()],
              flags={"enable-ipv6": True, "service-vip-mode": mode})
    try:
        p.start()
        yield p
    finally:
        try:
            p.call(p.caller.cleanup)
        finally:
            p.stop()


def who(answers: Any) -> collections.Counter[str]:
    return collections.Counter(a.split()[0] for a in answers if a)


def client_of(answer: str) -> str:
    """The client address a pod saw, from ``<pod> <ip>:<port>``."""
    return answer.split()[1].rsplit(":", 1)[0]


def test_ipv6_kernel_state(topo: Topology, proxy: Proxy) -> None:
    ns = topo.ns["node-1"]
    out = sh(ns, "ipvsadm -Ln")
    for line in (f"TCP  {DS4}:80 rr", f"TCP  [{DS6}]:80 rr", f"UDP  [{DS6}]:53 rr", f"TCP  [{V6}]:80 rr",
                 f"TCP  [{NODE_IPS6['node-1']}]:{NP_TCP} rr", f"TCP  {NODE_IPS['node-1']}:{NP_TCP} rr",
                 f"TCP  [{NODE_IPS6['node-1']}]:{NP_V6} rr", f"UDP  [{DNS6}]:53 rr", f"-> [{PODS6['c']}]:8080"):
        assert line in out, (line, out)
    assert f"{NODE_IPS['node-1']}:{NP_V6}" not in out  # a single-stack IPv6 Service has no IPv4 NodePort
    dummy = sh(ns, "ip addr show kube-dummy-if")
    mode = proxy.ctx.settings["service-vip-mode"]
    for v in (DS4, DS6, V6, DNS6):  # addresses only in address mode; the local route in both
        assert (v in dummy) == (mode == "address"), (mode, v, dummy)
    assert f"src {NODE_IPS['node-1']}" in sh(ns, f"ip route show table local {DS4}")
    assert f"src {NODE_IPS6['node-1']}" in sh(ns, f"ip -6 route show table local {V6}")
    assert f"{V6},tcp:80" in sh(ns, "ipset list inet6:kube-router-svip-prt")
    save6 = sh(ns, "ip6tables-save")
    assert "--match-set inet6:kube-router-svip dst" in save6 and ":KUBE-ROUTER-SERVICES" in save6, save6
    assert f"-j SNAT --to-source {NODE_IPS6['node-1']}" in save6, save6


def test_ipv6_clusterip_from_pod_spreads_and_keeps_pod_source(topo: Topology, proxy: Proxy) -> None:
    answers = [topo.ask("b", DS6, 80, timeout=1.5) for _ in range(6)]
    # rr over a, b, c; b reaching itself through the VIP needs hairpin, as in IPv4
    assert who(answers) == {"a": 2, "c": 2} and answers.count("") == 2, answers
    assert all(client_of(a) == PODS6["b"] for a in answers if a), answers


def test_ipv6_clusterip_and_nodeport_from_ext(topo: Topology, proxy: Proxy) -> None:
    for vip, port in ((DS6, 80), (NODE_IPS6["node-1"], NP_TCP)):
        answers = [topo.ask("ext", vip, port) for _ in range(6)]
        assert who(answers) == {"a": 2, "b": 2, "c": 2}, (vip, answers)
        for a in answers:  # local pods see the client, the remote one sees node-1 (SNAT, ip6tables)
            assert client_of(a) == (NODE_IPS6["node-1"] if a.startswith("c ") else EXT_IP6), (vip, answers)


def test_dual_stack_ipv4_side_and_ipv6_only_service(topo: Topology, proxy: Proxy) -> None:
    answers = [topo.ask("ext", NODE_IPS["node-1"], NP_TCP) for _ in range(3)]
    assert who(answers) == {"a": 1, "b": 1, "c": 1}, answers
    assert all(client_of(a) in (EXT_IP, NODE_IPS["node-1"]) for a in answers), answers
    for vip, port in ((V6, 80), (NODE_IPS6["node-1"], NP_V6)):
        assert who(topo.ask("ext", vip, port) for _ in range(4)) == {"a": 2, "c": 2}, vip
    assert topo.ask("ext", NODE_IPS["node-1"], NP_V6, timeout=1.5) == ""


def test_node_itself_to_clusterip_uses_node_ip(topo: Topology, proxy: Proxy) -> None:
    """Host-originated traffic to a VIP takes the node IP as source (the VIP's local route carries it), so
    remote backends can answer."""
    ns = topo.ns["node-1"]
    routes = sh(ns, f"ip -6 route show table all {DS6}")
    answers = [topo.ask("node-1", DS6, 80, timeout=1.5) for _ in range(3)]
    assert who(answers) == {"a": 1, "b": 1, "c": 1}, (answers, routes, sh(ns, f"ip -6 route get {DS6}"))
    assert {client_of(a) for a in answers} == {NODE_IPS6["node-1"]}, (answers, routes)
    local = sh(ns, f"ip -6 route show table local {DS6}")
    assert local.count("\n") == 1 and f"src {NODE_IPS6['node-1']}" in local, local  # one local route, with src
    answers = [topo.ask("node-1", DS4, 80, timeout=1.5) for _ in range(3)]  # and the IPv4 side of it
    assert who(answers) == {"a": 1, "b": 1, "c": 1}, answers
    assert {client_of(a) for a in answers} == {NODE_IPS["node-1"]}, answers


def test_ipv6_udp(topo: Topology, proxy: Proxy) -> None:
    for vip, port in ((DS6, 53), (NODE_IPS6["node-1"], NP_UDP)):
        answers = [topo.ask_udp("ext", vip, port) for _ in range(3)]
        assert who(answers) == {"a": 1, "b": 1, "c": 1}, (vip, answers)


def test_ipv6_firewall_and_session_affinity(topo: Topology, proxy: Proxy) -> None:
    def connect(port: int) -> str:
        try:
            netns.call_in(topo.ns["ext"], socket.create_connection, (DS6, port), timeout=3).close()
            return "connected"
        except OSError as e:
            return type(e).__name__

    assert connect(81) == "ConnectionRefusedError"  # icmp6-port-unreachable from KUBE-ROUTER-SERVICES
    sh(topo.ns["ext"], f"ping -6 -c1 -W3 {DS6} >/dev/null")  # echo requests to VIPs are let in
    proxy.feed.update(ds_svc(sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}}))
    try:
        assert f"TCP  [{DS6}]:80 rr persistent 60" in sh(topo.ns["node-1"], "ipvsadm -Ln")
        answers = [topo.ask("ext", DS6, 80) for _ in range(4)]
        assert all(answers) and len(who(answers)) == 1, answers
    finally:
        proxy.feed.update(ds_svc())


def test_ipv6_hairpin(topo: Topology, proxy: Proxy) -> None:
    proxy.feed.update(ds_svc(annotations={ANN_HAIRPIN: ""}))
    try:
        save = sh(topo.ns["node-1"], "ip6tables-save -t nat")
        assert f"-A KUBE-ROUTER-HAIRPIN -s {PODS6['a']}/128 -d {PODS6['a']}/128" in save, save
        answers = [topo.ask("a", DS6, 80, timeout=1.5) for _ in range(6)]
        assert who(answers) == {"a": 2, "b": 2, "c": 2}, answers
        assert {client_of(a) for a in answers if a.startswith("a ")} == {DS6}, answers  # SNAT to the VIP
    finally:
        proxy.feed.update(ds_svc())
    assert ":KUBE-ROUTER-HAIRPIN" not in sh(topo.ns["node-1"], "ip6tables-save -t nat")


def conntrack(topo: Topology, family: int, vip: str) -> str:
    """node-1's conntrack entries for UDP flows to ``vip``:53."""
    return sh(topo.ns["node-1"], f"conntrack -L -f ipv{family} -p udp --orig-dst {vip} --dport 53 2>/dev/null",
              check=False)


def ipvs_conns(topo: Topology, client_port: int) -> list[str]:
    """node-1's IPVS connections from ext's port ``client_port``."""
    srcs = (f"{hostport(EXT_IP, client_port)} ", f"{hostport(EXT_IP6, client_port)} ")
    return [ln for ln in sh(topo.ns["node-1"], "ipvsadm -Lnc").splitlines() if ln.split()[3:4] and
            f"{ln.split()[3]} " in srcs]


def dns_pod_ip(family: int, pod: str) -> str:
    return PODS[pod][1] if family == 4 else PODS6[pod]


def hostport(ip: str, port: int) -> str:
    """``ip:port`` as ipvsadm prints it (IPv6 in brackets)."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def replied_by(family: int, pod: str) -> str:
    """How a conntrack entry whose reply comes from ``pod``:5353 reads."""
    return f"src={dns_pod_ip(family, pod)} "


@pytest.mark.parametrize("family", [4, 6])
def test_udp_client_moves_when_its_endpoint_is_removed(topo: Topology, proxy: Proxy, family: int) -> None:
    """A client that keeps one source port is stuck to one backend (one IPVS connection, one conntrack
    entry); once that endpoint is removed its next datagrams reach the remaining backend, and no conntrack
    entry or IPVS connection of the removed one is left."""
    vip = DNS4 if family == 4 else DNS6
    client = UdpClient(topo.ns["ext"], family, 40000 + family)
    try:
        first = [client.ask(vip, 53) for _ in range(3)]
        assert all(first) and len(who(first)) == 1, first
        stuck = first[0].split()[0]
        other = "c" if stuck == "a" else "a"
        assert replied_by(family, stuck) in conntrack(topo, family, vip)
        proxy.feed.update(dns_slices((other,))[family // 6])
        ct = conntrack(topo, family, vip)
        assert replied_by(family, stuck) not in ct, ct
        after = [client.ask(vip, 53) for _ in range(3)]
        assert who(after) == {other: 3}, after
        mine = ipvs_conns(topo, client.port)
        assert len(mine) == 1 and hostport(dns_pod_ip(family, other), 5353) in mine[0], mine
    finally:
        client.close()
        proxy.feed.update(dns_slices()[family // 6])


@pytest.mark.parametrize("family", [4, 6])
def test_udp_flush_alone_does_not_move_a_client(topo: Topology, proxy: Proxy, family: int) -> None:
    """The control: with ``net.ipv4.vs.expire_nodest_conn=0`` (kr sets 1) the kernel keeps the IPVS
    connection to the removed destination and drops the client's datagrams, although kr's ``conntrack -D``
    did delete exactly that endpoint's entries (another client's entry, on the other backend, stays)."""
    ns = topo.ns["node-1"]
    vip = DNS4 if family == 4 else DNS6
    sh(ns, "sysctl -qw net.ipv4.vs.expire_nodest_conn=0")
    c1 = UdpClient(topo.ns["ext"], family, 41000 + family)
    c2 = UdpClient(topo.ns["ext"], family, 42000 + family)
    try:
        one, two = c1.ask(vip, 53), c2.ask(vip, 53)
        assert one and two and one.split()[0] != two.split()[0], (one, two)  # rr: one client per backend
        stuck, other = one.split()[0], two.split()[0]
        proxy.feed.update(dns_slices((other,))[family // 6])
        ct = conntrack(topo, family, vip)
        assert replied_by(family, stuck) not in ct and replied_by(family, other) in ct, ct
        mine = ipvs_conns(topo, c1.port)  # the IPVS connection to the removed backend is kept
        assert len(mine) == 1 and hostport(dns_pod_ip(family, stuck), 5353) in mine[0], mine
        assert [c1.ask(vip, 53, timeout=0.5) for _ in range(2)] == ["", ""]
        assert c2.ask(vip, 53).startswith(f"{other} ")
    finally:
        sh(ns, "sysctl -qw net.ipv4.vs.expire_nodest_conn=1")
        c1.close()
        c2.close()
        proxy.feed.update(dns_slices()[family // 6])
