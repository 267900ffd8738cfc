"""kr_core.net.svcip: strict external/LoadBalancer IP validation (AC-P7) and the per-family ranges."""

from __future__ import annotations

import pytest

from kr_core.config import Settings
from kr_core.net.svcip import Kind, Validator, family_of, parse_ip


def test_ac_p7_strict_ranges():
    v = Validator.from_ranges(cluster=["10.96.0.0/12"], external=["10.243.0.0/24"], loadbalancer=["10.255.0.0/24"])
    assert v.filter_external_ips(["10.243.0.1", "192.168.100.50"])[0] == ["10.243.0.1"]
    assert v.filter_loadbalancer_ips(["10.255.0.1", "8.8.8.8"])[0] == ["10.255.0.1"]


def test_ac_p7_cluster_range_rejected_even_inside_external_range():
    v = Validator.from_ranges(cluster=["10.96.0.0/12"], external=["10.0.0.0/8"])
    ok, bad = v.filter_external_ips(["10.96.0.10", "10.243.0.1"])
    assert ok == ["10.243.0.1"]
    assert bad == [("10.96.0.10", "inside the service cluster IP range")]


def test_ac_p7_strict_off_passes_everything_valid():
    v = Validator.from_ranges(cluster=["10.96.0.0/12"], external=["10.243.0.0/24"], strict=False)
    assert v.filter_external_ips(["10.96.0.10", "192.168.100.50", "2001:db8::1"])[0] == [
        "10.96.0.10", "192.168.100.50", "2001:db8::1"]
    assert v.filter_external_ips(["garbage", " 1.2.3.4", "1.2.3.0/24"])[0] == []


def test_ac_p7_strict_without_range_refuses_all():
    v = Validator.from_ranges(cluster=["10.96.0.0/12"])
    ok, bad = v.filter_external_ips(["10.243.0.1"])
    assert ok == [] and "no --service-external-ip-range" in bad[0][1]
    assert v.filter_loadbalancer_ips(["10.255.0.1"])[0] == []


def test_per_family_ranges_and_helpers():
    v = Validator.from_ranges(cluster=["10.96.0.0/12", "fd00:96::/108"], external=["10.243.0.0/24", "2001:db8:e::/64"])
    assert [str(n) for n in v.ranges(Kind.EXTERNAL, 6)] == ["2001:db8:e::/64"]
    assert [str(n) for n in v.ranges("cluster", 4)] == ["10.96.0.0/12"]
    assert v.external_ip_allowed("2001:db8:e::5") and not v.external_ip_allowed("2001:db8:f::5")
    assert v.is_cluster_ip("fd00:96::a") and not v.is_cluster_ip("10.243.0.1") and not v.is_cluster_ip("x")
    assert family_of("10.0.0.1") == 4 and family_of("::1") == 6 and family_of("nope") is None
    assert parse_ip("1.2.3.4/32") is None


def test_from_settings_and_bad_cidr():
    s = Settings({"service-external-ip-range": ["10.243.0.0/24"], "loadbalancer-ip-range": ["10.255.0.0/24"]})
    v = Validator.from_settings(s)
    assert v.strict and v.external_ip_allowed("10.243.0.9") and not v.external_ip_allowed("10.96.0.1")
    assert Validator.from_settings({"service-cluster-ip-range": [], "strict-external-ip-validation": False}).strict is False
    with pytest.raises(ValueError, match="invalid loadbalancer IP range 'x'"):
        Validator.from_ranges(loadbalancer=["x"])
