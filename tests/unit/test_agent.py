"""Agent start-up order, start failures, cache-sync timeout; caches and model views."""

from __future__ import annotations

import pytest

from kr_core import PluginInfo, Resource, hookimpl
from kr_core.agent import Agent, AgentError
from kr_core.config import merge
from kr_core.events import EventType
from kr_core.model import EndpointSlice, NetworkPolicy, Node, Pod, Service
from kr_core.plugins import from_classes
from kr_core.watch.cache import Caches

from ..conftest import make_pod, recording_plugin
from .agent_fixture import make_agent  # noqa: F401 - fixture


def test_start_order_is_kube_routers(make_agent, recorder):  # noqa: F811
    classes = [recording_plugin(n, role, recorder) for n, role in
               [("a_third_party", "audit"), ("netpol", "network-policy"), ("proxy", "service-proxy"),
                ("routing", "pod-routing")]]
    agent, _ = make_agent(*classes)
    agent.start()
    assert [p for p, h, _ in recorder.calls if h == "start"] == ["routing", "proxy", "netpol", "a_third_party"]


def test_plugin_start_failure_is_isolated_and_retried(make_agent, recorder):  # noqa: F811
    class Bad:
        info = PluginInfo(name="bad", role="pod-routing", version="1")
        attempts = 0

        @hookimpl
        def start(self, ctx):
            Bad.attempts += 1
            if Bad.attempts < 3:
                raise OSError("gobgpd not found: apt-get install gobgpd")

        @hookimpl
        def sync(self, reason):
            recorder.add("bad", "sync", reason)

    agent, _ = make_agent(Bad, recording_plugin("proxy", "service-proxy", recorder))
    agent.configure()
    agent.workers["bad"].retry_base = 0.05
    agent.start()
    # the other plugin starts and syncs although "bad" could not start
    assert recorder.wait(lambda r: r.of("proxy", "sync"))
    assert agent.health_problems() == ["bad: start failed: OSError: gobgpd not found: apt-get install gobgpd"]
    # the start is retried on bad's own worker; once it succeeds, its initial sync runs and health recovers
    assert recorder.wait(lambda r: r.of("bad", "sync") == ["initial"], timeout=5)
    assert Bad.attempts == 3 and agent.health_problems() == []
    assert agent.metrics.registry.get_sample_value(
        "kr_plugin_hook_failures_total", {"plugin": "bad", "hook": "start"}) == 2


def test_cache_sync_timeout(recorder):
    class NeverSyncs:
        def start(self, caches, sink):
            pass

        def stop(self):
            pass

    agent = Agent(merge({}, {"cache-sync-timeout": 0.2}), from_classes([recording_plugin("p", "r", recorder)]),
                  None, NeverSyncs(), node="n", serve_http=False)
    with pytest.raises(AgentError, match=r"caches did not sync within 0.2s \(--cache-sync-timeout\)"):
        agent.start()
    agent.stop()


def test_only_needed_resources_are_cached(make_agent, recorder):  # noqa: F811
    agent, _ = make_agent(recording_plugin("p", "r", recorder, frozenset({Resource.POD, Resource.SERVICE})),
                          recording_plugin("q", "s", recorder, frozenset({Resource.NODE})))
    agent.configure()
    assert set(agent.caches.stores) == {Resource.POD, Resource.SERVICE, Resource.NODE}


def test_cache_indexes_and_relist_diff():
    caches = Caches()
    pods = caches[Resource.POD]
    pods.apply(EventType.ADDED, make_pod("a", node="n1"))
    pods.apply(EventType.ADDED, make_pod("b", node="n2", ns="other"))
    view = caches.view([Resource.POD])
    assert [p.name for p in view.pods_on("n1")] == ["a"]
    assert [p.name for p in view.pods_in("other")] == ["b"]
    assert pods.apply(EventType.MODIFIED, make_pod("a", node="n1")) is None  # nothing changed
    ev = pods.apply(EventType.MODIFIED, make_pod("a", node="n2", rv="2"))
    assert ev.type is EventType.MODIFIED and ev.old.node_name == "n1"
    assert view.pods_on("n1") == [] and sorted(p.name for p in view.pods_on("n2")) == ["a", "b"]
    events = pods.replace([make_pod("a", node="n2", rv="3"), make_pod("c")])
    assert sorted((e.type.value, e.obj.name) for e in events) == [("ADDED", "c"), ("DELETED", "b"), ("MODIFIED", "a")]
    assert view.pods_in("other") == []


def test_model_views_from_api_json():
    svc = Service.from_json({
        "metadata": {"name": "web", "namespace": "shop", "annotations": {"kube-router.io/service.scheduler": "lc"}},
        "spec": {"type": "LoadBalancer", "clusterIPs": ["10.96.0.5", "fd00::5"], "ipFamilies": ["IPv4", "IPv6"],
                 "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080}],
                 "externalTrafficPolicy": "Local", "sessionAffinity": "ClientIP",
                 "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}, "healthCheckNodePort": 31000},
        "status": {"loadBalancer": {"ingress": [{"ip": "10.255.0.1"}, {"hostname": "lb.example", "ipMode": "Proxy"}]}},
    })
    assert svc.cluster_ips == ("10.96.0.5", "fd00::5") and svc.ports[0].target_port == "http"
    assert svc.session_affinity_timeout == 60 and svc.load_balancer_ingress[1].ip_mode == "Proxy"
    assert svc.meta.annotations["kube-router.io/service.scheduler"] == "lc"
    eps = EndpointSlice.from_json({
        "metadata": {"name": "web-x", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.1.2"], "nodeName": "n1", "conditions": {"ready": False, "serving": True,
                       "terminating": True}}, {"addresses": ["10.244.1.3"]}],
        "ports": [{"name": "http", "port": 8080}],
    })
    assert eps.service_key == "shop/web" and eps.endpoints[0].serving and not eps.endpoints[0].ready
    assert eps.endpoints[1].ready  # nil conditions mean ready
    pol = NetworkPolicy.from_json({
        "metadata": {"name": "p", "namespace": "x"},
        "spec": {"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["a"]}]},
                 "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                             "ports": [{"port": 80, "endPort": 90}, {"port": "http", "protocol": "UDP"}]}]},
    })
    assert pol.policy_types == ("Ingress", "Egress")
    assert pol.pod_selector.matches({"app": "a"}) and not pol.pod_selector.matches({"app": "b"})
    assert pol.egress[0].peers[0].ip_block.except_ == ("10.1.0.0/16",)
    assert pol.egress[0].ports[1].port == "http" and pol.egress[0].ports[0].end_port == 90
    node = Node.from_json({"metadata": {"name": "n1"}, "spec": {"podCIDRs": ["10.244.1.0/24"]},
                           "status": {"addresses": [{"type": "ExternalIP", "address": "1.2.3.4"},
                                                    {"type": "InternalIP", "address": "192.168.1.10"}]}})
    assert node.primary_ip == "192.168.1.10" and node.pod_cidrs == ("10.244.1.0/24",)
    pod = Pod.from_json({"metadata": {"name": "p"}, "spec": {"hostNetwork": True}, "status": {"phase": "Running",
                                                                                              "podIP": "1.1.1.1"}})
    assert not pod.actionable




def test_start_barrier_waits_for_the_previous_roles_initial_sync(make_agent, recorder):  # noqa: F811
    """As kube-router: routing's host setup (its first sync) is done before network policy starts, so the
    policy jumps end up above routing's FORWARD accepts."""
    import time

    class SlowRouting:
        info = PluginInfo(name="routing", role="pod-routing", version="1")

        @hookimpl
        def start(self, ctx):
            recorder.add("routing", "start", None)

        @hookimpl
        def sync(self, reason):
            time.sleep(0.3)
            recorder.add("routing", "sync", reason)

    agent, _ = make_agent(SlowRouting, recording_plugin("netpol", "network-policy", recorder))
    agent.start()
    order = [(p, h) for p, h, _ in recorder.calls if h in ("start", "sync")]
    assert order[:3] == [("routing", "start"), ("routing", "sync"), ("netpol", "start")]
