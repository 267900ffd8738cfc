"""The plugin through kr's public API (PluginHost + FeedSource), with the kernel step replaced by a recorder;
AC-N8 (flag validation, kube-router's parsers in the core) and AC-N9 (pod event filtering)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from kr_core import PluginContext
from kr_core.config import ConfigError, Settings, parse_node_port_range, validate_settings
from kr_core.net.netpol.backend import pod_changed
from kr_core.plugins import PluginHost, from_classes, validate_plugin_config
from kr_core.watch import Caches, FeedSource
from kr_plugins.netpol_iptables import plugin as plugin_mod
from kr_plugins.netpol_iptables.plugin import Plugin
from tests.conformance.builders import node, ns, pod, policy


class FakeDataplane:
    """Records what the plugin asks of the kernel step."""

    def __init__(self, families, **_):
        self.families = tuple(families)
        self.modes = dict.fromkeys(self.families, "nft")
        self.chains = {f: {} for f in self.families}
        self.sets = {}
        self.applies = []
        self.members = []
        self.iptables_restores = self.ipset_restores = 0

    def adopt(self):
        pass

    def apply(self, rulesets):
        from kr_plugins.netpol_iptables.dataplane import ApplyResult
        self.applies.append(rulesets)
        for f, rs in rulesets.items():
            self.chains[f] = {c: tuple(r) for c, r in rs.chains.items()}
            for s in rs.sets.values():
                self.sets[s.kernel_name] = s
        return ApplyResult()

    def update_members(self, add, delete):
        self.members.append((list(add), list(delete)))
        return len(self.members[-1][0]) + len(self.members[-1][1])

    def ensure_jumps(self):
        return False


@pytest.fixture
def running(monkeypatch):
    monkeypatch.setattr(plugin_mod, "Dataplane", FakeDataplane)
    host = PluginHost(from_classes([Plugin]))
    p = host.get("netpol_iptables")
    caches = Caches(host.resources)
    ctx = PluginContext(name="netpol_iptables", settings=Settings(), node_name="node-1", metrics=CollectorRegistry(),
                        config=validate_plugin_config(Plugin.info, {}), caches=caches.view(Plugin.info.resources))
    feed = FeedSource([ns("x"), ns("y"), node("node-1", "10.0.0.1", ["10.244.0.0/24"]),
                       pod("a", "x", "10.244.0.5"), pod("r", "y", "10.244.1.5", node="node-2")])
    p.configure(ctx)
    feed.start(caches, p.deliver)
    p.start(ctx)
    p.sync("initial")
    return p, feed


def test_config_is_validated():
    with pytest.raises(Exception, match="Extra inputs"):
        validate_plugin_config(Plugin.info, {"iptables-mode": "nft"})
    with pytest.raises(Exception, match="iptables_mode"):
        validate_plugin_config(Plugin.info, {"iptables_mode": "xtables"})
    assert validate_plugin_config(Plugin.info, {"iptables_mode": "legacy"}).iptables_mode == "legacy"


def test_events_flow_and_state(running):
    p, feed = running
    dp = p.instance.dp
    feed.add(policy("web", "x", {"podSelector": {"matchLabels": {"pod": "a"}},
                                 "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "c"}}}]}]}))
    n_applies = len(dp.applies)
    feed.add(pod("c1", "y", "10.244.1.9", node="node-2", labels={"role": "c"}))  # remote peer: members only
    assert len(dp.applies) == n_applies and dp.members[-1][0][0][2] == "10.244.1.9"
    feed.add(pod("b", "x", "10.244.0.6"))  # a local pod: rules
    assert len(dp.applies) == n_applies + 1
    st = p.state()
    assert st["summary"]["local_pods"] == 2 and st["summary"]["policies_on_node"] == 1
    row = next(i for i in st["items"] if i["pod"] == "x/a")
    assert row["ingress_policies"] == ["x/web"] and row["chain"].startswith("KUBE-POD-FW-")
    assert p.health().healthy


def test_ac_n9_pod_event_filtering(running):
    p, feed = running
    dp = p.instance.dp
    base = pod("a", "x", "10.244.0.5")
    before = (len(dp.applies), len(dp.members))
    annotated = type(base).from_json({"metadata": {"name": "a", "namespace": "x", "labels": {"pod": "a"},
                                                   "annotations": {"note": "x"}},
                                      "spec": {"nodeName": "node-1"}, "status": {"phase": "Running", "podIP": "10.244.0.5"}})
    assert not pod_changed(base, annotated)
    feed.update(annotated)
    assert (len(dp.applies), len(dp.members)) == before
    for changed in (pod("a", "x", "10.244.0.7"), pod("a", "x", "10.244.0.5", labels={"pod": "z"}),
                    pod("a", "x", "10.244.0.5", phase="Succeeded")):
        assert pod_changed(base, changed)


def test_ac_n8_flag_validation():
    assert parse_node_port_range("8080-8090") == (8080, 8090) == parse_node_port_range("8080:8090")
    for bad in ("8080,8081", "foo:bar", "8080,8081-8090", "8090-8080", "132000-132001"):
        with pytest.raises(ValueError):
            parse_node_port_range(bad)
    with pytest.raises(ValueError, match="port 1"):
        parse_node_port_range("8090-8080")
    for cidrs in (["10.10.10"], ["foo"], ["10.0.0.1"], ["10.0.0.0/8", "fd00::/64", "10.1.0.0/16"], ["fd00::/64"]):
        with pytest.raises(ConfigError):
            validate_settings(Settings({"service-cluster-ip-range": cidrs}))
    with pytest.raises(ConfigError):
        validate_settings(Settings({"service-external-ip-range": ["10.0.0.0/8", "bad"]}))
