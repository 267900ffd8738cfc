"""Lab pieces that need no root: addressing, names, the proxy's header rewrite, scheduling, tables."""

from __future__ import annotations

import pytest

from kr_core.lab.kubelet import container_ports
from kr_core.lab.probe import format_matrix
from kr_core.lab.proxy import rewrite_head
from kr_core.lab.scheduler import choose
from kr_core.lab.state import LabState, check_name, lab_netns_re, plan, pod_netns
from kr_core.lab.topology import gateway, pod_veth


def test_plan_addresses_per_index():
    a, b = plan("kr", 0, 2, ipv6=True), plan("other", 1, 1, ipv6=False)
    assert a.net4 == "192.168.100.0/24" and a.net6 == "fd00:100::/64"
    assert a.cluster_cidr == "10.244.0.0/16,fd00:10:244::/56" and a.service_cidr == "10.96.0.0/16,fd00:10:96::/112"
    assert [(n.name, n.netns, n.ip4, n.ip6) for n in a.nodes] == [
        ("node-1", "kr-node-1", "192.168.100.11", "fd00:100::11"), ("node-2", "kr-node-2", "192.168.100.12", "fd00:100::12")]
    assert a.cp_ip4 == "192.168.100.2" and a.ext_ip4 == "192.168.100.254"
    assert b.net4 == "192.168.101.0/24" and b.cluster_cidr == "10.245.0.0/16" and b.net6 is None
    with pytest.raises(ValueError):
        plan("kr", 0, 0, False)


def test_names():
    assert check_name("kr") == "kr"
    for bad in ("", "Kr", "kr-1", "1kr", "abcdefghijk"):
        with pytest.raises(ValueError):
            check_name(bad)
    ns = pod_netns("kr", "default/a/uid-1")
    assert ns.startswith("kr-p-") and len(ns) == len("kr-p-") + 8 and ns == pod_netns("kr", "default/a/uid-1")
    assert len(pod_veth(ns)) <= 15
    pat = lab_netns_re("kr")
    assert all(pat.match(n) for n in ("kr-cp", "kr-sw", "kr-ext", "kr-node-12", ns))
    assert not any(pat.match(n) for n in ("kr2-cp", "krx-node-1", "kr-p-xyz", "other", "kr-node-"))
    assert gateway("10.244.3.0/24") == "10.244.3.1" and gateway("fd00:10:244:1::/64") == "fd00:10:244:1::1"


def test_state_roundtrip(tmp_path, monkeypatch):
    monkeypatch.setenv("KR_LAB_ROOT", str(tmp_path))
    st = plan("kr", 3, 1, ipv6=False)
    st.save()
    back = LabState.load("kr")
    assert back is not None and back.nodes[0].ip4 == st.nodes[0].ip4 and back.index == 3
    assert LabState.load("nolab") is None


def test_proxy_rewrite_head():
    head = b"GET /api HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nUser-Agent: kubectl"
    out = rewrite_head(head, "tok", True)
    assert out.endswith(b"\r\n\r\n") and b"Authorization: Bearer tok" in out and b"Connection: close" in out
    assert b"keep-alive" not in out
    kept = rewrite_head(b"GET / HTTP/1.1\r\nAuthorization: Bearer other", "tok", True)
    assert b"Bearer tok" not in kept and b"Bearer other" in kept
    resp = rewrite_head(b"HTTP/1.1 200 OK\r\nContent-Length: 2", "tok", False)
    assert b"Authorization" not in resp and b"Connection: close" in resp


def test_scheduler_choose():
    nodes = [{"metadata": {"name": "node-1", "labels": {"zone": "a"}}},
             {"metadata": {"name": "node-2", "labels": {"zone": "b"}}},
             {"metadata": {"name": "node-3"}, "spec": {"unschedulable": True}}]
    assert choose({"spec": {}}, nodes, {"node-1": 2, "node-2": 1}) == "node-2"
    assert choose({"spec": {}}, nodes, {}) == "node-1"
    assert choose({"spec": {"nodeSelector": {"zone": "a"}}}, nodes, {"node-1": 5}) == "node-1"
    assert choose({"spec": {"nodeSelector": {"zone": "c"}}}, nodes, {}) is None


def test_container_ports():
    pod = {"spec": {"containers": [{"ports": [{"containerPort": 80}, {"containerPort": 53, "protocol": "UDP"}]},
                                   {"ports": [{"containerPort": 80, "protocol": "TCP"}]}]}}
    assert container_ports(pod) == [("TCP", 80), ("UDP", 53)]


def test_format_matrix():
    m = {"port": 80, "protocol": "TCP", "to": "pod",
         "reachable": {"x/a": {"x/a": True, "x/b": False}, "x/b": {"x/a": True, "x/b": True}}}
    text = format_matrix(m)
    rows = [ln for ln in text.splitlines() if ln.startswith("x/")]
    assert rows[0].split()[1:] == [".", "X"] and rows[1].split()[1:] == [".", "."]
    assert "1 = x/a" in text and "2 = x/b" in text
    assert "(no pods)" in format_matrix({"port": 80, "protocol": "TCP", "to": "pod", "reachable": {}})


def test_missing_root_is_one_line(monkeypatch, capsys):
    import os

    from kr_core.lab import cli, demo

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert demo.main([]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "root" in err
    assert cli.main(["up", "--name", "nolabhere"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "root" in err
