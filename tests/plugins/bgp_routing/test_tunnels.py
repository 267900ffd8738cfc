"""kr_plugins.bgp_routing.tunnels: the overlay tunnel commands and the recognition of existing tunnels (pure).

The link lines are what Debian 12's iproute2 prints (``ip -d -o link show``) for the tunnels these commands
create, captured in the QEMU VM; the data path itself is tested there (test_overlay_fou_vm.py).
"""

from __future__ import annotations

import pytest

from kr_plugins.bgp_routing.tunnels import (
    fou_port_command,
    fou_port_open,
    gue_port,
    tunnel_command,
    tunnel_matches,
    vxlan_vni,
)

FOU4 = ("5: t4@NONE: <POINTOPOINT,NOARP> mtu 1468 qdisc noop state DOWN mode DEFAULT group default qlen 1000\\"
        "    link/ipip 10.1.1.2 peer 10.2.2.2 promiscuity 0  allmulti 0 minmtu 0 maxmtu 0 \\    ipip ipip remote "
        "10.2.2.2 local 10.1.1.2 ttl 225 pmtudisc encap gue encap-sport auto encap-dport 5555 noencap-csum "
        "noencap-csum6 noencap-remcsum addrgenmode eui64 numtxqueues 1")
IPIP4 = ("6: t4p@NONE: <POINTOPOINT,NOARP,UP,LOWER_UP> mtu 1480 qdisc noop state DOWN mode DEFAULT group default\\"
         "    link/ipip 10.1.1.2 peer 10.2.2.2 promiscuity 0  allmulti 0 minmtu 0 maxmtu 0 \\    ipip any remote "
         "10.2.2.2 local 10.1.1.2 ttl 225 pmtudisc addrgenmode eui64 numtxqueues 1")
FOU6 = ("3: t6@NONE: <POINTOPOINT,NOARP> mtu 1440 qdisc noop state DOWN mode DEFAULT group default qlen 1000\\"
        "    link/tunnel6 fd00:1::2 peer fd00:2::2 permaddr c62e:eb48:2fc1:: promiscuity 0  allmulti 0 minmtu 68 "
        "maxmtu 65523 \\    ip6tnl ip6ip6 remote fd00:2::2 local fd00:1::2 hoplimit 225 encaplimit 4 tclass 0x00 "
        "flowlabel 0x00000 encap gue encap-sport auto encap-dport 5555 noencap-csum encap-csum6 noencap-remcsum")
IP6IP6 = ("7: t6p@NONE: <POINTOPOINT,NOARP> mtu 1452 qdisc noop state DOWN mode DEFAULT group default qlen 1000\\"
          "    link/tunnel6 fd00:1::2 peer fd00:2::2 permaddr eeef:d918:454f:: promiscuity 0  allmulti 0 minmtu 68 "
          "maxmtu 65535 \\    ip6tnl ip6ip6 remote fd00:2::2 local fd00:1::2 hoplimit 225 encaplimit 4 tclass 0x00")


def vxlan_line(vni: int) -> str:
    return ("8: tv: <BROADCAST,MULTICAST> mtu 1500 qdisc noop state DOWN mode DEFAULT group default qlen 1000\\"
            "    link/ether de:d3:95:28:c8:4b brd ff:ff:ff:ff:ff:ff promiscuity 0  allmulti 0 minmtu 68 maxmtu 65535 "
            f"\\    vxlan id {vni} remote 10.2.2.2 local 10.1.1.2 srcport 0 0 dstport 4789 ttl auto ageing 300")


def test_commands_are_kube_routers() -> None:
    assert tunnel_command("tun-x", "10.2.2.2", "10.1.1.2", "fou", 5555) == [
        "link", "add", "tun-x", "type", "ipip", "remote", "10.2.2.2", "local", "10.1.1.2", "ttl", "225",
        "encap", "gue", "encap-sport", "auto", "encap-dport", "5555", "mode", "ipip"]
    assert tunnel_command("tun-x", "fd00:2::2", "fd00:1::2", "fou", 6000) == [
        "link", "add", "tun-x", "type", "ip6tnl", "remote", "fd00:2::2", "local", "fd00:1::2", "ttl", "225",
        "encap", "gue", "encap-sport", "auto", "encap-dport", "6000", "mode", "ip6ip6"]
    assert tunnel_command("tun-x", "10.2.2.2", "10.1.1.2", "ipip", 5555)[-4:] == ["ttl", "225", "mode", "ipip"]
    assert "encap" not in tunnel_command("tun-x", "fd00:2::2", "fd00:1::2", "ipip", 5555)
    vx = tunnel_command("tun-x", "10.2.2.2", "10.1.1.2", "vxlan", 5555)
    assert vx[vx.index("id") + 1] == str(vxlan_vni("10.1.1.2", "10.2.2.2")) and vx[-2:] == ["dstport", "4789"]
    with pytest.raises(ValueError):
        tunnel_command("tun-x", "10.2.2.2", "10.1.1.2", "gre", 5555)


@pytest.mark.parametrize(("line", "remote", "encap"), [
    (FOU4, "10.2.2.2", "fou"), (IPIP4, "10.2.2.2", "ipip"), (FOU6, "fd00:2::2", "fou"), (IP6IP6, "fd00:2::2", "ipip"),
])
def test_existing_link_matches_only_the_same_tunnel(line: str, remote: str, encap: str) -> None:
    words = line.split()
    local = "fd00:1::2" if ":" in remote else "10.1.1.2"
    assert tunnel_matches(words, remote, local, encap, 5555)
    other = "ipip" if encap == "fou" else "fou"
    assert not tunnel_matches(words, remote, local, other, 5555), "encapsulation changed: recreate"
    assert not tunnel_matches(words, remote, local, "vxlan", 5555)
    if encap == "fou":
        assert not tunnel_matches(words, remote, local, "fou", 5556), "GUE port changed: recreate"
    new_local = "fd00:1::9" if ":" in remote else "10.1.1.9"
    assert not tunnel_matches(words, remote, new_local, encap, 5555), "node IP changed: recreate"
    assert not tunnel_matches(words, "10.2.2.3" if ":" not in remote else "fd00:2::3", local, encap, 5555)


def test_vxlan_and_odd_input() -> None:
    vni = vxlan_vni("10.1.1.2", "10.2.2.2")
    assert tunnel_matches(vxlan_line(vni).split(), "10.2.2.2", "10.1.1.2", "vxlan", 5555)
    assert not tunnel_matches(vxlan_line(vni + 1).split(), "10.2.2.2", "10.1.1.2", "vxlan", 5555)
    assert not tunnel_matches(vxlan_line(vni).split(), "10.2.2.2", "10.1.1.2", "ipip", 5555)
    assert not tunnel_matches([], "10.2.2.2", "10.1.1.2", "ipip", 5555)
    assert not tunnel_matches(["remote"], "10.2.2.2", "10.1.1.2", "ipip", 5555)
    # IPv6 written differently is the same address
    assert tunnel_matches(FOU6.split(), "fd00:2:0::2", "fd00:1::0:2", "fou", 5555)


def test_gue_ports() -> None:
    assert gue_port(FOU4.split()) == 5555 and gue_port(FOU6.split()) == 5555
    assert gue_port(IPIP4.split()) is None and gue_port(IP6IP6.split()) is None
    assert fou_port_command(5555, False) == ["fou", "add", "port", "5555", "gue"]
    assert fou_port_command(5555, True) == ["-6", "fou", "add", "port", "5555", "gue"]
    assert fou_port_command(5555, True, "del") == ["-6", "fou", "del", "port", "5555"]
    show = "port 5555 gue\nport 6000 gue -6\n"
    assert fou_port_open(show, 5555, False) and not fou_port_open(show, 5555, True)
    assert fou_port_open(show, 6000, True) and not fou_port_open(show, 6000, False)
    assert not fou_port_open("", 5555, False)
