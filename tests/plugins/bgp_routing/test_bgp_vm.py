"""kube-router's own overlay encapsulations (ipip, fou/GUE) across subnets: inside the lab VM, whose kernel
has them (this host's has not)."""

from __future__ import annotations

import os
import subprocess

import pytest

from kr_plugins.bgp_routing.naming import tunnel_name

from .netlab import wait_for


def _gue_supported() -> bool:
    from kr_core.net import netns

    with netns.temporary("krgue") as ns:
        r = netns.run(ns, ["ip", "link", "add", "t", "type", "ipip", "remote", "10.0.0.2", "local", "10.0.0.1",
                           "encap", "gue", "encap-sport", "auto", "encap-dport", "5555"], check=False)
        return r.returncode == 0


@pytest.mark.vm
@pytest.mark.parametrize("encap", ["ipip", "fou"])
def test_overlay_across_subnets(netlab_factory, encap: str) -> None:  # type: ignore[no-untyped-def]
    for mod in ("ipip", "fou", "br_netfilter"):
        subprocess.run(["modprobe", mod], check=False)
    if encap == "fou" and not _gue_supported():
        pytest.skip("this kernel refuses GUE encapsulation on ipip links (no CONFIG_NET_FOU_IP_TUNNELS)")
    lab = netlab_factory(2, subnets=[1, 2])
    n1, n2 = lab.nodes
    flags = {"enable-overlay": True, "overlay-encap": encap}
    for n in lab.nodes:
        lab.start_agent(n, **flags)
    lab.wait_established(n1, [n2.ip], timeout=40)
    tun = tunnel_name(n2.ip)
    wait_for(lambda: f"{n2.pod_cidr} dev {tun}" in n1.routes(), 20, f"route through the {encap} tunnel")
    details = os.popen(f"ip -n {n1.ns} -d link show {tun}").read()
    assert "ipip" in details and (encap != "fou" or "encap gue" in details), details
    assert wait_for(lambda: lab.ping(n1, n2.pod_ip), 10, f"pod ping through {encap}")
    assert n1.feed is not None
    n1.feed.delete(n2.node())
    wait_for(lambda: tun not in os.popen(f"ip -n {n1.ns} link").read(), 15, "tunnel removed")
