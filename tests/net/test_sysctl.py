"""sysctls inside a throwaway namespace."""

from __future__ import annotations

import pytest

from kr_core.net import netns, sysctl

pytestmark = pytest.mark.root


def test_set_get(ns: str) -> None:
    root_before = sysctl.get("net.ipv4.ip_forward")  # read only: the root namespace is never written
    sysctl.set("net.ipv4.ip_forward", 0, netns=ns)
    assert sysctl.get("net.ipv4.ip_forward", netns=ns) == "0"
    assert sysctl.set("net.ipv4.ip_forward", 1, netns=ns)
    assert not sysctl.set("net.ipv4.ip_forward", "1", netns=ns)  # unchanged: not written
    assert netns.run(ns, ["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == "1"
    assert sysctl.get("net.ipv4.ip_forward") == root_before


def test_multi_value(ns: str) -> None:
    assert sysctl.set("net.ipv4.ip_local_port_range", "20000\t30000", netns=ns)
    assert sysctl.get("net.ipv4.ip_local_port_range", netns=ns) == "20000 30000"
    assert not sysctl.set("net.ipv4.ip_local_port_range", "20000 30000", netns=ns)


def test_change_from(ns: str) -> None:
    name = "net.ipv4.conf.lo.rp_filter"
    sysctl.set(name, 0, netns=ns)
    assert not sysctl.change_from(name, 1, 2, netns=ns)  # never from 0
    assert sysctl.get(name, netns=ns) == "0"
    sysctl.set(name, 1, netns=ns)
    assert sysctl.change_from(name, 1, 2, netns=ns)
    assert sysctl.get(name, netns=ns) == "2"
    assert not sysctl.change_from(name, 1, 2, netns=ns)


def test_missing(ns: str) -> None:
    with pytest.raises(FileNotFoundError):
        sysctl.get("net.ipv4.conf.nosuchlink.rp_filter", netns=ns)
