"""kube-router flags on the command line and in the config file; validation messages name the key path."""

from __future__ import annotations

import pytest

from kr_core.cli import build_parser, cli_flags
from kr_core.config import ConfigError, merge, parse_config, parse_node_port_range
from kr_core.flags import FLAGS, FLAGS_BY_NAME, format_duration, parse_duration

# kube-router reference section 2: every flag, with its default
EXPECTED_DEFAULTS = {
    "run-router": True, "run-service-proxy": True, "run-firewall": True, "run-loadbalancer": False,
    "cache-sync-timeout": 60.0, "enable-ipv4": True, "enable-ipv6": False,
    "service-cluster-ip-range": ["10.96.0.0/12"], "strict-external-ip-validation": True,
    "service-node-port-range": "30000-32767", "health-port": 20244, "metrics-port": 0, "metrics-path": "/metrics",
    "ipvs-sync-period": 300.0, "ipvs-graceful-period": 30.0, "ipvs-permit-all": True, "hairpin-mode": False,
    "masquerade-all": False, "nodeport-bindon-all-ip": False, "service-tcp-timeout": 0.0,
    "iptables-sync-period": 300.0, "netpol-default-deny": False, "use-nftables-for-netpol": False,
    "routes-sync-period": 300.0, "injected-routes-sync-period": 60.0, "advertise-pod-cidr": True,
    "advertise-cluster-ip": False, "cluster-asn": 0, "nodes-full-mesh": True, "enable-ibgp": True,
    "bgp-port": 179, "bgp-holdtime": 90.0, "bgp-graceful-restart-time": 90.0,
    "bgp-graceful-restart-deferral-time": 360.0, "gobgp-admin-address": "127.0.0.1", "gobgp-admin-port": 50051,
    "bfd-port": 3784, "bfd-detection-multiplier": 3, "enable-overlay": True, "overlay-type": "subnet",
    "overlay-encap": "ipip", "overlay-encap-port": 5555, "enable-pod-egress": True, "enable-cni": True,
    "auto-mtu": True, "disable-source-dest-check": True, "loadbalancer-default-class": True,
    "loadbalancer-sync-period": 60.0, "peer-router-ips": [], "excluded-cidrs": [],
}


def test_every_reference_flag_exists_with_its_default():
    for name, default in EXPECTED_DEFAULTS.items():
        assert FLAGS_BY_NAME[name].default == default, name
    assert len(FLAGS) >= 75


def _run(argv):
    ns = build_parser().parse_args(["run", *argv])
    return merge({}, cli_flags(ns))


def test_command_line_syntax_like_pflag():
    s = _run(["--run-router=false", "--masquerade-all", "--ipvs-sync-period=1m30s", "--service-cluster-ip-range",
              "10.96.0.0/12,fd00::/108", "--enable-ipv6=true", "--peer-router-ips=1.1.1.1", "--peer-router-ips",
              "2.2.2.2", "--peer-router-asns=65000,65001", "-v", "3"])
    assert s.run_router is False and s.masquerade_all is True
    assert s.ipvs_sync_period == 90.0
    assert s.service_cluster_ip_range == ["10.96.0.0/12", "fd00::/108"]
    assert s.peer_router_ips == ["1.1.1.1", "2.2.2.2"] and s.peer_router_asns == [65000, 65001]
    assert s.v == "3"


def test_config_file_keys_and_command_line_wins():
    cfg = parse_config({"ipvs-sync-period": "10s", "masquerade-all": True, "hairpin-mode": "true"})
    ns = build_parser().parse_args(["run", "--ipvs-sync-period=20s"])
    s = merge(cfg.flags, cli_flags(ns))
    assert s.ipvs_sync_period == 20.0 and s.masquerade_all is True and s.hairpin_mode is True
    assert s["ipvs-sync-period"] == 20.0
    assert "ipvs-sync-period" in s.explicit and "run-router" not in s.explicit


@pytest.mark.parametrize(
    "data,path,msg",
    [
        ({"ipvs-sync-period": "5 minutes"}, "ipvs-sync-period", "invalid duration"),
        ({"ipvs_sync_period": "5s"}, "ipvs_sync_period", "hyphens"),
        ({"nosuch": 1}, "nosuch", "unknown key"),
        ({"plugins": {"enabled": "a"}}, "plugins.enabled", "list"),
        ({"plugins": {"enabled": ["a"], "disabled": ["b"]}}, "plugins", "not both"),
        ({"plugins": {"on": ["a"]}}, "plugins.on", "unknown key"),
        ({"health-port": "abc"}, "health-port", "invalid"),
        ({"masquerade-all": "yes please"}, "masquerade-all", "invalid boolean"),
    ],
)
def test_config_errors_name_the_key(data, path, msg):
    with pytest.raises(ConfigError) as ei:
        parse_config(data, plugin_names={"ipvs_proxy"})
    assert ei.value.path == path and msg in ei.value.message


# AC-N8: flag validation as kube-router does it
@pytest.mark.parametrize("text,expect", [("8080-8090", (8080, 8090)), ("8080:8090", (8080, 8090))])
def test_node_port_range_ok(text, expect):
    assert parse_node_port_range(text) == expect


@pytest.mark.parametrize(
    "text,msg",
    [("8080,8081", "parse"), ("foo:bar", "integers"), ("8080,8081-8090", "parse"), ("8090-8080", "port 1 8090 >= port 2"),
     ("132000-132001", "port 1 132000 is not a valid port")],
)
def test_node_port_range_errors(text, msg):
    with pytest.raises(ValueError, match=msg):
        parse_node_port_range(text)


@pytest.mark.parametrize(
    "flags,path,msg",
    [
        ({"service-cluster-ip-range": ["10.10.10"]}, "service-cluster-ip-range[0]", "invalid CIDR"),
        ({"service-cluster-ip-range": ["foo"]}, "service-cluster-ip-range[0]", "invalid CIDR"),
        ({"service-cluster-ip-range": ["10.0.0.1"]}, "service-cluster-ip-range[0]", "bare IP"),
        ({"service-cluster-ip-range": ["10.0.0.0/16", "fd00::/108", "10.1.0.0/16"], "enable-ipv6": True},
         "service-cluster-ip-range", "too many"),
        ({"service-cluster-ip-range": ["fd00::/108"]}, "service-cluster-ip-range[0]", "--enable-ipv6 is false"),
        ({"service-external-ip-range": ["1.1.1.0/24", "nope"]}, "service-external-ip-range[1]", "invalid CIDR"),
        ({"service-node-port-range": "8090-8080"}, "service-node-port-range", ">="),
        ({"bgp-graceful-restart-time": 5000.0}, "bgp-graceful-restart-time", "4095"),
        ({"ipvs-sync-period": 0.0}, "ipvs-sync-period", "greater than 0"),
        ({"overlay-type": "mesh"}, "overlay-type", "subnet, full"),
        ({"overlay-encap": "gre"}, "overlay-encap", "ipip, fou"),
        ({"overlay-encap": "fou", "overlay-encap-port": 80}, "overlay-encap-port", "1024"),
        ({"bgp-holdtime": 1.0}, "bgp-holdtime", "3s"),
        ({"cluster-asn": 100}, "cluster-asn", "private ASN"),
        ({"bfd-detection-multiplier": 0}, "bfd-detection-multiplier", "255"),
    ],
)
def test_cross_field_validation(flags, path, msg):
    with pytest.raises(ConfigError) as ei:
        merge({}, flags)
    assert ei.value.path == path and msg in ei.value.message


@pytest.mark.parametrize("text,secs", [("0", 0), ("5s", 5), ("1m", 60), ("2h22m", 8520), ("300ms", 0.3),
                                       ("1.5h", 5400), ("1m30s", 90)])
def test_go_durations(text, secs):
    assert parse_duration(text) == pytest.approx(secs)


def test_format_duration():
    assert format_duration(300) == "5m0s" and format_duration(0.5) == "500ms" and format_duration(0) == "0s"
