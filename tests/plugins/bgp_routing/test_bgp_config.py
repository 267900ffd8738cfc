"""Config validation of the bgp_routing plugin (exit-2 errors naming the flag or key)."""

from __future__ import annotations

import pytest

from kr_core.agent import Agent
from kr_core.config import ConfigError, Settings
from kr_core.plugins import from_classes, validate_plugin_config
from kr_core.watch import FeedSource
from kr_plugins.bgp_routing.plugin import Plugin


def configure(**flags: object) -> Agent:
    agent = Agent(Settings({"hostname-override": "n", **flags}), from_classes([Plugin]), {}, FeedSource([]),
                  serve_http=False, state_dir="/tmp/kr-bgp-config-test")
    agent.configure()
    return agent


@pytest.mark.parametrize(("flags", "path"), [
    ({"overlay-encap": "gre"}, "bgp_routing.overlay-encap"),
    ({"overlay-type": "mesh"}, "bgp_routing.overlay-type"),
    ({"cluster-asn": 100}, "bgp_routing.cluster-asn"),
    ({"peer-router-ips": ["10.0.0.1"], "peer-router-asns": [23456]}, "bgp_routing.peer-router-ips"),
    ({"peer-router-ips": ["10.0.0.1", "10.0.0.2"], "peer-router-asns": [65000]}, "bgp_routing.peer-router-ips"),
    ({"overlay-encap": "fou", "overlay-encap-port": 80}, "bgp_routing.overlay-encap-port"),
    ({"enable-bfd": True, "bfd-desired-min-tx-interval": 0}, "bgp_routing.enable-bfd"),
    ({"enable-bfd": True, "bfd-required-min-rx-interval": -1}, "bgp_routing.enable-bfd"),
    ({"enable-bfd": True, "bfd-port": 0}, "bgp_routing.enable-bfd"),
])
def test_bad_flags(flags: dict, path: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as e:
        configure(**flags)
    assert e.value.path == path


def test_good_flags_and_section() -> None:
    configure(**{"overlay-encap": "vxlan", "cluster-asn": 65001, "peer-router-ips": ["10.0.0.1"],
                 "peer-router-asns": [65000]})
    with pytest.raises(Exception, match="Extra inputs"):
        validate_plugin_config(Plugin.info, {"socket_path": "/x"})
    assert validate_plugin_config(Plugin.info, {"netns": "x"}).netns == "x"


def test_enable_bfd_applies_to_the_flag_peers() -> None:
    from kr_plugins.bgp_routing.peers import BfdConfig

    agent = configure(**{"peer-router-ips": ["10.0.0.1"], "peer-router-asns": [65000], "enable-bfd": True,
                         "bfd-port": 4784, "bfd-detection-multiplier": 5, "bfd-desired-min-tx-interval": 300,
                         "bfd-required-min-rx-interval": 200})
    assert agent.host is not None
    plugin = agent.host.get("bgp_routing").instance  # type: ignore[attr-defined]
    assert [p.bfd for p in plugin.flag_peers] == [BfdConfig(True, 4784, 5, 200, 300)]
    # without --enable-bfd the --bfd-* values are not used
    plugin = configure(**{"peer-router-ips": ["10.0.0.1"], "peer-router-asns": [65000], "bfd-port": 0}).host.get(
        "bgp_routing").instance  # type: ignore[union-attr]
    assert not plugin.flag_peers[0].bfd.enabled


def test_cni_default_outside_init_netns() -> None:
    import os

    from kr_core.net import netns
    from kr_plugins.bgp_routing.plugin import _in_other_netns

    assert _in_other_netns("some-netns")
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with netns.temporary("krcni") as ns:
        assert netns.call_in(ns, _in_other_netns, None)  # a named netns: the lab's CNI file goes to state_dir
    assert not _in_other_netns(None)  # this test runs in the root namespace


def test_node_heartbeats_are_ignored() -> None:
    from kr_core.model import Node
    from kr_plugins.bgp_routing.plugin import _routing_view

    def node(rv: str, ready: str, ann: dict[str, str]) -> Node:
        return Node.from_json({"metadata": {"name": "n", "resourceVersion": rv, "annotations": ann},
                               "spec": {"podCIDRs": ["10.1.0.0/24"]},
                               "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
                                          "conditions": [{"type": "Ready", "status": ready}]}})

    a = node("1", "True", {"other.io/x": "1"})
    assert _routing_view(a) == _routing_view(node("2", "False", {"other.io/x": "2"}))
    assert _routing_view(a) != _routing_view(node("2", "True", {"kube-router.io/node.asn": "65000"}))
