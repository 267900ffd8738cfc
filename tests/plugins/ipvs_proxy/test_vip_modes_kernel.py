"""``--service-vip-mode`` against a real kernel (the VM's: this host has no dummy links; a namespace made
here, no IPVS needed):
what ends up on ``kube-dummy-if`` and in the local table in each mode, switching modes between agent runs
without the VIP routes ever missing afterwards, adoption, drift repair by a periodic read, the IPv4 flush
of a link's routes when its last IPv4 address goes. Packets through IPVS in both modes: ``test_vm_e2e.py``
and ``test_vm_dualstack.py`` (parametrized over the modes)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator

import pytest

from kr_core.config import ConfigError, Settings, validate_settings
from kr_core.net import netns
from kr_plugins.ipvs_proxy.host import Host
from kr_plugins.ipvs_proxy.model import NodeInfo
from kr_plugins.ipvs_proxy.plugin import Plugin

NODE4, NODE6 = "192.168.90.1", "fd00:90::1"
VIPS = {(4, "10.96.0.10"), (4, "10.96.0.11"), (6, "fd00:96::10"), (6, "fd00:96::11")}


def ip(ns: str, cmd: str) -> str:
    return subprocess.run(["ip", "-n", ns, *cmd.split()], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def ns() -> Iterator[str]:
    subprocess.run(["modprobe", "ipv6"], capture_output=True, check=False)  # a module in the UML kernel
    with netns.temporary("krp-vip") as name:
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
                        "net.ipv6.conf.default.accept_dad=0"], check=False)
        ip(name, "link add eth0 type dummy")
        ip(name, f"addr add {NODE4}/24 dev eth0")
        ip(name, f"addr add {NODE6}/64 dev eth0 nodad")
        ip(name, "link set eth0 up")
        yield name


@contextlib.contextmanager
def agent(ns: str, mode: str, ips: dict[int, str] | None = None) -> Iterator[Plugin]:
    """The plugin's VIP half, as a start would make it: the link ensured, what is there adopted."""
    p = Plugin()
    p.vip_mode = mode
    p.node = NodeInfo(name="node-1", ips={4: NODE4, 6: NODE6} if ips is None else ips)
    with netns.in_netns(ns):
        p.host = Host()
        try:
            p.dummy_idx = p.host.ensure_dummy()
            p._read_vips()
            yield p
        finally:
            p.host.close()


def sync(p: Plugin, ns: str, want: set[tuple[int, str]], reread: bool = False) -> None:
    with netns.in_netns(ns):
        p._sync_vips(set(want), reread=reread)


def addresses(ns: str) -> set[str]:
    return {line.split()[1].split("/")[0] for line in ip(ns, "addr show dev kube-dummy-if").splitlines()
            if line.strip().startswith(("inet ", "inet6 ")) and "scope link" not in line or " 10.96." in line}


def vip_routes(ns: str) -> dict[str, str]:
    """VIP -> the src of each kr-style local route through kube-dummy-if (the kernel's own left out)."""
    out = {}
    for fam in ("-4", "-6"):
        for line in ip(ns, f"{fam} route show table local dev kube-dummy-if").splitlines():
            w = line.split()
            if w[0] == "local" and "src" in w and w[w.index("src") + 1] != w[1]:
                out[w[1]] = w[w.index("src") + 1]
    return out


def expect(ns: str, mode: str, vips: set[tuple[int, str]]) -> None:
    want = {a for _, a in vips}
    assert vip_routes(ns) == {a: NODE4 if "." in a else NODE6 for a in want}, ip(ns, "route show table local")
    assert {a for a in addresses(ns) if a.startswith(("10.96.", "fd00:96:"))} == (want if mode == "address" else set())
    # IPv6 in address mode: no kernel route (metric 0, no src) left in front of kr's
    assert "metric 0" not in "".join(ln for ln in ip(ns, "-6 route show table local").splitlines() if "fd00:96" in ln)


def test_flag_is_validated() -> None:
    validate_settings(Settings({"service-vip-mode": "route"}))
    with pytest.raises(ConfigError, match="service-vip-mode"):
        validate_settings(Settings({"service-vip-mode": "addresses"}))


@pytest.mark.vm
@pytest.mark.parametrize("mode", ["address", "route"])
def test_mode_layout_adoption_and_removal(ns: str, mode: str) -> None:
    with agent(ns, mode) as p:
        sync(p, ns, VIPS)
        expect(ns, mode, VIPS)
        assert p.vips == VIPS and p.vip_addrs == (VIPS if mode == "address" else set())
    with agent(ns, mode) as p:  # a restart adopts exactly that: nothing to do
        assert p.vip_srcs is not None and len(p.vip_srcs) == len(VIPS)
        p.host.apply_vip_routes = p.host.apply_addresses = None  # type: ignore[assignment, method-assign]
        sync(p, ns, VIPS)
        assert p.vips == VIPS
    with agent(ns, mode) as p:
        sync(p, ns, {(4, "10.96.0.11"), (6, "fd00:96::11")})
        expect(ns, mode, {(4, "10.96.0.11"), (6, "fd00:96::11")})
        sync(p, ns, set())
        expect(ns, mode, set())


@pytest.mark.vm
@pytest.mark.parametrize("first,then", [("address", "route"), ("route", "address")])
def test_switch_between_restarts(ns: str, first: str, then: str) -> None:
    with agent(ns, first) as p:
        sync(p, ns, VIPS)
    with agent(ns, then) as p:
        sync(p, ns, VIPS)
        expect(ns, then, VIPS)
    with agent(ns, first) as p:  # and back
        sync(p, ns, VIPS)
        expect(ns, first, VIPS)


@pytest.mark.vm
def test_last_ipv4_address_flushes_routes_and_periodic_sync_repairs(ns: str) -> None:
    """Why the switch to route mode parks the routes on ``lo``: deleting a link's last IPv4 address drops
    every IPv4 route through it. Someone doing that by hand in route mode is repaired by the periodic read."""
    with agent(ns, "route") as p:
        sync(p, ns, VIPS)
        ip(ns, "addr add 10.96.9.9/32 dev kube-dummy-if")
        ip(ns, "addr del 10.96.9.9/32 dev kube-dummy-if")
        assert not any("." in a for a in vip_routes(ns))  # the kernel flushed them
        sync(p, ns, VIPS)  # an event-driven sync trusts its committed state
        assert not any("." in a for a in vip_routes(ns))
        sync(p, ns, VIPS, reread=True)
        expect(ns, "route", VIPS)
        # an address someone put on the link in route mode is removed, the routes stay
        ip(ns, "addr add 10.96.0.10/32 dev kube-dummy-if")
        sync(p, ns, VIPS, reread=True)
        expect(ns, "route", VIPS)


@pytest.mark.vm
def test_address_mode_drift_repaired_by_periodic_read(ns: str) -> None:
    with agent(ns, "address") as p:
        sync(p, ns, VIPS)
        ip(ns, "addr del 10.96.0.10/32 dev kube-dummy-if")
        ip(ns, "-6 route del local fd00:96::11 dev kube-dummy-if table local")
        sync(p, ns, VIPS, reread=True)
        expect(ns, "address", VIPS)


@pytest.mark.vm
def test_route_mode_without_a_node_ip_of_the_family(ns: str) -> None:
    """Route mode, no IPv6 node IP: the IPv6 VIPs still get their local route (no source; in address mode
    the address's own route would make them local); once the node IP is known a full sync's read
    replaces them with ones carrying it."""
    with agent(ns, "route", ips={4: NODE4}) as p:
        sync(p, ns, VIPS)
        for a in ("fd00:96::10", "fd00:96::11"):
            route = ip(ns, f"-6 route show table local {a}")
            assert f"local {a} dev kube-dummy-if" in route and "src" not in route, route
        assert p.vips == VIPS
    with agent(ns, "route", ips={4: NODE4}) as p:  # adopted as they are
        p.host.apply_vip_routes = p.host.apply_addresses = None  # type: ignore[assignment, method-assign]
        sync(p, ns, VIPS)
    with agent(ns, "route", ips={4: NODE4}) as p:
        p.node = NodeInfo(name="node-1", ips={4: NODE4, 6: NODE6})
        sync(p, ns, VIPS, reread=True)
        expect(ns, "route", VIPS)
