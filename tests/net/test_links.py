"""Links and batched routes through netlink, inside throwaway namespaces."""

from __future__ import annotations

import errno

import pytest

from kr_core.net import links, netns
from kr_core.net.links import LinkError, Route, apply_routes

pytestmark = pytest.mark.root


def _with_ipr(ns: str, fn):
    def body():
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            return fn(ipr)
    return netns.call_in(ns, body)


def test_bridge_and_veth(make_ns) -> None:
    host, pod = make_ns(), make_ns()

    def setup(ipr):
        idx = links.ensure_bridge(ipr, "kube-bridge", addresses=["10.244.0.1/24"], mtu=1450)
        assert links.ensure_bridge(ipr, "kube-bridge", addresses=["10.244.0.1/24"], mtu=1450) == idx  # idempotent
        links.ensure_veth(ipr, "veth-pod1", "eth0", peer_netns=pod, mtu=1450)
        links.set_master(ipr, "veth-pod1", "kube-bridge")
        links.ensure_veth(ipr, "veth-plain", "veth-plain-p")
        with pytest.raises(LinkError, match="not a bridge"):
            links.ensure_bridge(ipr, "veth-plain")
        assert links.delete_link(ipr, "veth-plain") and not links.delete_link(ipr, "veth-plain")
        assert "10.244.0.1/24" in links.addresses(ipr, "kube-bridge")
        assert not links.ensure_address(ipr, "kube-bridge", "10.244.0.1/24")
        assert links.ensure_address(ipr, "kube-bridge", "fd00:244::1/64")
        assert links.delete_address(ipr, "kube-bridge", "fd00:244::1/64")
        return links.link_names(ipr)

    names = _with_ipr(host, setup)
    assert "kube-bridge" in names and "veth-pod1" in names and "eth0" not in names
    show = netns.run(host, ["ip", "-d", "link", "show", "veth-pod1"]).stdout
    assert "master kube-bridge" in show and "mtu 1450" in show

    def pod_side(ipr):
        links.set_up(ipr, "eth0")
        links.ensure_address(ipr, "eth0", "10.244.0.5/24")
    _with_ipr(pod, pod_side)
    assert netns.run(pod, ["ping", "-c1", "-W2", "10.244.0.1"], check=False).returncode == 0


def test_routes_batch(ns: str) -> None:
    _with_ipr(ns, lambda ipr: links.ensure_bridge(ipr, "br0", addresses=["192.168.5.1/24", "fd00:5::1/64"]))
    v4 = [Route(f"10.{i // 256}.{i % 256}.0/24", gateway="192.168.5.2") for i in range(2000)]
    v6 = [Route(f"fd00:{i:x}::/64", gateway="fd00:5::2") for i in range(200)]
    res = apply_routes(replace=v4 + v6, netns=ns)
    assert res.ok and res.replaced == 2200
    out = netns.run(ns, ["ip", "route", "show", "proto", "17"]).stdout.splitlines()
    assert len(out) == 2000 and out[0].startswith("10.0.0.0/24 via 192.168.5.2 dev br0")
    assert len(netns.run(ns, ["ip", "-6", "route", "show", "proto", "17"]).stdout.splitlines()) == 200
    assert len(_with_ipr(ns, links.dump_routes)) == 2000

    # replace is idempotent and changes next hops in place
    moved = [Route(r.dst, gateway="192.168.5.3") for r in v4[:10]]
    assert apply_routes(replace=moved, netns=ns).replaced == 10
    assert "via 192.168.5.3" in netns.run(ns, ["ip", "route", "show", "10.0.0.0/24"]).stdout

    # one bad route does not stop the others; deletes of absent routes are not errors
    bad = Route("10.250.0.0/24", gateway="172.31.0.1")  # gateway not on any link
    res = apply_routes(replace=[Route("10.251.0.0/24", gateway="192.168.5.2"), bad],
                       delete=v4[1000:] + [Route("10.252.0.0/24")], netns=ns)
    assert res.replaced == 1 and res.deleted == 1000 and res.missing == 1
    assert [(op, r.dst, e) for op, r, e in res.errors] == [("replace", "10.250.0.0/24", errno.ENETUNREACH)]
    # a delete that names a gateway only matches that next hop; by destination alone it matches any
    assert apply_routes(delete=moved[:1], netns=ns).missing == 0
    assert apply_routes(delete=[Route(moved[1].dst, gateway="192.168.5.2")], netns=ns).missing == 1
    res = apply_routes(delete=[Route(r.dst) for r in v4[1:] + v6] + [Route("10.251.0.0/24")], netns=ns)
    assert res.ok and res.deleted == 2200 - 1000 - 1 + 1 and res.missing == 1000
    assert netns.run(ns, ["ip", "route", "show", "proto", "17"]).stdout == ""


def test_route_kinds(ns: str) -> None:
    idx = _with_ipr(ns, lambda ipr: links.ensure_bridge(ipr, "br0", addresses=["192.168.5.1/24"]))
    res = apply_routes(replace=[
        Route("10.96.0.10/32", oif=1, type="local", table=255, prefsrc="192.168.5.1"),  # kube-dummy-if style
        Route("10.244.9.0/24", oif=idx, table=77, proto=17),                            # device route in table 77
        Route("10.244.8.0/24", gateway="192.168.5.9", table=1000, priority=20),
    ], netns=ns)
    assert res.ok, res.errors
    assert "local 10.96.0.10 dev lo proto 17 scope host src 192.168.5.1" in netns.run(
        ns, ["ip", "route", "show", "table", "local"]).stdout
    assert "10.244.9.0/24 dev br0 proto 17 scope link" in netns.run(ns, ["ip", "route", "show", "table", "77"]).stdout
    assert "metric 20" in netns.run(ns, ["ip", "route", "show", "table", "1000"]).stdout
