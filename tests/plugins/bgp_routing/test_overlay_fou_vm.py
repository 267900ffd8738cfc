"""The FoU (GUE) overlay data path across subnets, inside the QEMU VM: Debian's amd64 kernel has
CONFIG_NET_FOU_IP_TUNNELS; the UML kernel and this host's kernel have not.

Two nodes on different subnets with a router between them, one pod behind each. Each node's Injector (the
plugin's real tunnel code: tunnel device, GUE receive port, route via the tunnel, host route in table 77)
gets the other node's pod CIDRs as learned BGP paths, IPv4 and IPv6. The pods then ping each other, and the
router's nftables counters show what crossed it: UDP to the GUE port, never plain ipip/ip6ip6, never a pod
address. Switching ``--overlay-encap`` to ipip recreates the tunnels without GUE; a withdrawal removes the
route and the tunnel; the plugin's cleanup removes tunnels and GUE ports. BGP itself is tested elsewhere (test_bgp_vm.py runs ipip with gobgpd in the UML VM).

Python runs ~50x slower under QEMU/TCG than on the host: one pytest process, few ``ip`` calls (batches).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import pytest

from kr_core.lab.vmtest import requires_vm
from kr_core.net import netns

pytestmark = [pytest.mark.vm(kernel="qemu"), requires_vm]

PORT = 5555
R, A, B, PA, PB = "krf-r", "krf-a", "krf-b", "krf-pa", "krf-pb"
NODES = {  # node: (netns, pod netns, underlay v4/v6, router side, pod CIDRs, pod IPs)
    A: dict(pod=PA, ip4="10.1.1.2", ip6="fd00:1::2", gw4="10.1.1.1", gw6="fd00:1::1", rdev="eth-a",
            net4="10.1.1.0/24", net6="fd00:1::/64", cidr4="10.244.1.0/24", cidr6="fd00:244:1::/64",
            pod4="10.244.1.2", pod6="fd00:244:1::2"),
    B: dict(pod=PB, ip4="10.2.2.2", ip6="fd00:2::2", gw4="10.2.2.1", gw6="fd00:2::1", rdev="eth-b",
            net4="10.2.2.0/24", net6="fd00:2::/64", cidr4="10.244.2.0/24", cidr6="fd00:244:2::/64",
            pod4="10.244.2.2", pod6="fd00:244:2::2"),
}
COUNTERS = """
table inet krf {
    chain cnt {
        type filter hook forward priority 0; policy accept;
        meta nfproto ipv4 udp dport @PORT@ counter comment "gue4"
        meta nfproto ipv6 udp dport @PORT@ counter comment "gue6"
        meta l4proto 4 counter comment "ipip"
        meta l4proto 41 counter comment "ip6ip6"
        ip saddr 10.244.0.0/16 counter comment "clear4"
        ip6 saddr fd00:244::/32 counter comment "clear6"
    }
}
""".replace("@PORT@", str(PORT))


def ip_batch(ns: str | None, lines: list[str]) -> None:
    """Several ``ip`` commands in one process (each process costs ~0.2 s under TCG)."""
    cmd = ["ip", *(["-n", ns] if ns else []), "-batch", "-"]
    r = subprocess.run(cmd, input="\n".join(lines) + "\n", capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)}: {r.stderr}\n" + "\n".join(lines)


def out(ns: str, *argv: str, check: bool = True) -> str:
    if argv[0] == "ip":  # `ip -n` enters the namespace itself: one process, no /sys remount
        return subprocess.run(["ip", "-n", ns, *argv[1:]], capture_output=True, text=True, check=check).stdout
    return netns.run(ns, list(argv), check=check).stdout


def sysctls(ns: str, values: dict[str, str]) -> None:
    with netns.in_netns(ns):  # /proc/sys/net opened from this thread belongs to the namespace
        for key, value in values.items():
            with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                f.write(value)


def ping(src_ns: str, dst: str, count: int = 3) -> subprocess.CompletedProcess[str]:
    return netns.run(src_ns, ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "3", dst], check=False)


def counters() -> dict[str, int]:
    """Packets per commented rule of the router's forward chain."""
    data = json.loads(out(R, "nft", "-j", "list", "table", "inet", "krf"))
    got: dict[str, int] = {}
    for item in data["nftables"]:
        rule = item.get("rule")
        if rule and rule.get("comment"):
            got[rule["comment"]] = next(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
    return got


def route_line(ns: str, dst: str, dev: str) -> str:
    """The kernel route to ``dst`` in ``ns`` (asserted to leave through ``dev``)."""
    line = out(ns, "ip", "-6" if ":" in dst else "-4", "route", "show", dst).strip()
    assert f"dev {dev} " in line + " ", f"{dst}: {line!r}"
    return line


def diagnostics() -> str:
    parts = []
    for ns in (A, B):
        for argv in (["ip", "-d", "link"], ["ip", "route"], ["ip", "-6", "route"], ["ip", "route", "show", "table",
                     "77"], ["ip", "-6", "route", "show", "table", "77"], ["ip", "fou", "show"]):
            parts.append(f"[{ns}] {' '.join(argv)}\n{out(ns, *argv, check=False)}")
    parts.append(f"router counters: {counters()}")
    return "\n".join(parts)


@pytest.fixture
def two_subnets() -> Iterator[None]:
    """router R between node A (10.1.1.0/24, fd00:1::/64) and node B (10.2.2.0/24, fd00:2::/64); behind each
    node a pod netns on the node's pod CIDR, routed (not bridged) for brevity."""
    names = [R, A, B, PA, PB]
    try:
        ip_batch(None, [f"netns add {n}" for n in names] + [
            f"link add eth0 netns {n} type veth peer name {c['rdev']} netns {R}" for n, c in NODES.items()] + [
            f"link add pod0 netns {n} type veth peer name eth0 netns {c['pod']}" for n, c in NODES.items()])
        router = ["link set lo up"]
        for n, c in NODES.items():
            router += [f"addr add {c['gw4']}/24 dev {c['rdev']}", f"addr add {c['gw6']}/64 dev {c['rdev']} nodad",
                       f"link set {c['rdev']} up"]
            gw4, gw6 = c["cidr4"].replace("0/24", "1"), c["cidr6"].replace("::/64", "::1")
            ip_batch(n, ["link set lo up", "link set eth0 up", "link set pod0 up",
                         f"addr add {c['ip4']}/24 dev eth0", f"addr add {c['ip6']}/64 dev eth0 nodad",
                         f"route add default via {c['gw4']}", f"route add default via {c['gw6']}",
                         f"addr add {gw4}/24 dev pod0", f"addr add {gw6}/64 dev pod0 nodad"])
            ip_batch(c["pod"], ["link set lo up", "link set eth0 up", f"addr add {c['pod4']}/24 dev eth0",
                                f"addr add {c['pod6']}/64 dev eth0 nodad", f"route add default via {gw4}",
                                f"route add default via {gw6}"])
        ip_batch(R, router)
        for ns in (R, A, B):
            sysctls(ns, {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"})
        netns.run(R, ["nft", "-f", "-"], input=COUNTERS)
        yield
    finally:
        for n in names:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


def test_fou_overlay_between_pods_on_two_subnets(two_subnets: None) -> None:
    if os.environ.get("KR_VM_KERNEL") != "qemu":  # the marker sends it there; by hand it may land elsewhere
        pytest.skip("needs the QEMU VM's kernel (FoU tunnels): vm(kernel='qemu')")
    # nothing loads fou/fou6 here: the plugin must (neither `ip fou add` nor `encap gue` loads them)
    from kr_plugins.bgp_routing.injector import InjectConfig, Injector, LearnedPath, Speaker
    from kr_plugins.bgp_routing.naming import tunnel_name

    def config(me: dict[str, str], encap: str) -> InjectConfig:
        return InjectConfig(node_ip4=me["ip4"], node_ip6=me["ip6"], local_subnets=(me["net4"], me["net6"]),
                            own_prefixes=frozenset({me["cidr4"], me["cidr6"]}), encap=encap, encap_port=PORT)

    def paths(other: dict[str, str], withdraw: bool = False) -> dict[str, LearnedPath]:
        return {other["cidr4"]: LearnedPath(other["cidr4"], other["ip4"], other["ip4"], withdraw, 4),
                other["cidr6"]: LearnedPath(other["cidr6"], other["ip6"], other["ip4"], withdraw, 6)}

    def no_speaker() -> Speaker:
        raise AssertionError("the injector is driven directly here, without gobgpd")

    injectors = {}
    for n, c in NODES.items():
        other = NODES[B if n == A else A]
        inj = Injector(no_speaker, netns=n, resync=3600)
        inj.configure(config(c, "fou"))
        inj._apply(paths(other), redo=False, resync=False)  # what the inject thread does with learned paths
        injectors[n] = inj
    a, b = NODES[A], NODES[B]
    tun4, tun6 = tunnel_name(b["ip4"]), tunnel_name(b["ip6"])

    # the plugin's tunnels on node A: GUE towards B's node IPs, the GUE receive ports, routes via the tunnels
    assert set(injectors[A].tunnels) == {tun4, tun6}
    assert os.path.isdir("/sys/module/fou") and os.path.isdir("/sys/module/fou6")
    details4, details6 = out(A, "ip", "-d", "link", "show", tun4), out(A, "ip", "-d", "link", "show", tun6)
    assert f"ipip ipip remote {b['ip4']} local {a['ip4']}" in details4, details4
    assert f"encap gue encap-sport auto encap-dport {PORT}" in details4, details4
    assert f"ip6tnl ip6ip6 remote {b['ip6']} local {a['ip6']}" in details6, details6
    assert f"encap gue encap-sport auto encap-dport {PORT}" in details6, details6
    fou = out(A, "ip", "fou", "show")
    assert f"port {PORT} gue\n" in fou and f"port {PORT} gue -6" in fou, fou
    assert f"src {a['ip4']}" in route_line(A, b["cidr4"], tun4)
    assert f"src {a['ip6']}" in route_line(A, b["cidr6"], tun6)
    assert f"{b['ip4']} dev {tun4}" in out(A, "ip", "route", "show", "table", "77")

    # pod A -> pod B and back, through GUE on the router's wire
    for dst in (b["pod4"], b["pod6"]):
        p = ping(PA, dst)
        assert p.returncode == 0, f"ping {dst}: {p.stdout}{p.stderr}\n{diagnostics()}"
    seen = counters()
    assert seen["gue4"] >= 6 and seen["gue6"] >= 6, seen  # 3 requests + 3 replies each
    assert seen["ipip"] == seen["ip6ip6"] == seen["clear4"] == seen["clear6"] == 0, seen
    stats = json.loads(out(A, "ip", "-s", "-j", "link", "show", "dev", tun4))[0]["stats64"]
    assert stats["tx"]["packets"] >= 3 and stats["rx"]["packets"] >= 3, stats

    # re-deciding with the same settings keeps the tunnels (no flap)
    before = out(A, "ip", "-o", "link", "show", "dev", tun4).split(":")[0]
    injectors[A]._apply({}, redo=True, resync=True)
    assert out(A, "ip", "-o", "link", "show", "dev", tun4).split(":")[0] == before

    # --overlay-encap=ipip: the same tunnels are recreated without GUE, the GUE ports closed
    for n, c in NODES.items():
        injectors[n].configure(config(c, "ipip"))
        injectors[n]._apply({}, redo=True, resync=False)
    details4 = out(A, "ip", "-d", "link", "show", tun4)
    assert "encap gue" not in details4 and f"remote {b['ip4']}" in details4, details4
    assert out(A, "ip", "fou", "show", check=False).strip() == ""
    for dst in (b["pod4"], b["pod6"]):
        p = ping(PA, dst, count=1)
        assert p.returncode == 0, f"ping {dst} over ipip: {p.stdout}{p.stderr}\n{diagnostics()}"
    after = counters()
    assert after["ipip"] >= 2 and after["ip6ip6"] >= 2 and after["gue4"] == seen["gue4"], after

    # B withdraws its pod CIDRs: A's routes and tunnels go, pod B is unreachable from pod A
    injectors[A]._apply(paths(b, withdraw=True), redo=False, resync=False)
    assert injectors[A].tunnels == {} and injectors[A].routes == {}
    links = out(A, "ip", "-o", "link", "show")
    assert tun4 not in links and tun6 not in links, links
    assert b["cidr4"] not in out(A, "ip", "route") and out(A, "ip", "route", "show", "table", "77").strip() == ""
    assert ping(PA, b["pod4"], count=1).returncode != 0

    # learned again with fou: GUE tunnels (from plain ipip ones: none left here) and ports come back; the
    # plugin's cleanup (kr cleanup) removes routes, tunnels and the GUE ports
    injectors[A].configure(config(a, "fou"))
    injectors[A]._apply(paths(b), redo=False, resync=False)
    assert "encap gue" in out(A, "ip", "-d", "link", "show", tun6)
    assert f"port {PORT} gue -6" in out(A, "ip", "fou", "show")
    from kr_plugins.bgp_routing.plugin import Config, Plugin

    plugin = Plugin()
    plugin.cfg = Config(netns=A)
    plugin.cleanup()
    assert "tun-" not in out(A, "ip", "-o", "link", "show")
    assert out(A, "ip", "fou", "show", check=False).strip() == ""
    assert "proto 17" not in out(A, "ip", "-d", "route") + out(A, "ip", "-d", "-6", "route")
