"""The EndpointSlice controller: selection, readiness, named targetPorts, zones, splitting, cleanup."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from kr_core.embedded import ApiServer

from .conftest import pod, service

MANAGED = "endpointslice.kubernetes.io/managed-by=endpointslice-controller.k8s.io"


def run_pod(core: client.CoreV1Api, name: str, ip: str, labels: dict[str, str], ready: bool = True,
            node: str | None = None, ports: list[dict[str, Any]] | None = None, ns: str = "default") -> None:
    core.create_namespaced_pod(ns, pod(name, labels, ns=ns, node=node, ports=ports))
    core.patch_namespaced_pod_status(name, ns, {"status": {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}})


def slices(server: ApiServer, disc: client.DiscoveryV1Api, svc: str) -> list[Any]:
    assert server.controller.wait_idle(10)
    return disc.list_namespaced_endpoint_slice("default", label_selector=f"kubernetes.io/service-name={svc}").items


def endpoints(sl: list[Any]) -> dict[str, tuple[bool, bool, bool]]:
    return {e.target_ref.name: (e.conditions.ready, e.conditions.serving, e.conditions.terminating)
            for s in sl for e in s.endpoints or []}


def test_slices_follow_pods_and_service(server: ApiServer, core: client.CoreV1Api, disc: client.DiscoveryV1Api) -> None:
    core.create_node({"metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "zone-a"}}})
    core.create_namespaced_service("default", service("web", {"app": "web"}, ports=[
        {"name": "http", "port": 80, "targetPort": "http"}, {"name": "dns", "port": 53, "protocol": "UDP"}]))
    sl = slices(server, disc, "web")
    assert len(sl) == 1 and sl[0].endpoints is None or sl[0].endpoints == []
    ports = [{"name": "http", "containerPort": 8080}]
    run_pod(core, "a", "10.244.0.10", {"app": "web"}, node="n1", ports=ports)
    run_pod(core, "b", "10.244.0.11", {"app": "web"}, ready=False, node="n1", ports=ports)
    run_pod(core, "other", "10.244.0.12", {"app": "db"}, ports=ports)
    core.create_namespaced_pod("default", pod("noip", {"app": "web"}))
    sl = slices(server, disc, "web")
    assert len(sl) == 1
    s = sl[0]
    assert s.metadata.name.startswith("web-") and s.address_type == "IPv4"
    assert s.metadata.labels["endpointslice.kubernetes.io/managed-by"] == "endpointslice-controller.k8s.io"
    assert s.metadata.owner_references[0].kind == "Service"
    assert sorted((p.name, p.port, p.protocol) for p in s.ports) == [("dns", 53, "UDP"), ("http", 8080, "TCP")]
    assert endpoints(sl) == {"a": (True, True, False), "b": (False, False, False)}
    ep = next(e for e in s.endpoints if e.target_ref.name == "a")
    assert ep.addresses == ["10.244.0.10"] and ep.node_name == "n1" and ep.zone == "zone-a"
    # readiness change, label change, and terminating (a finalizer holds the deleted pod)
    core.patch_namespaced_pod_status("b", "default", {"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    core.patch_namespaced_pod("a", "default", {"metadata": {"finalizers": ["example.com/hold"]}})
    core.delete_namespaced_pod("a", "default")
    assert endpoints(slices(server, disc, "web")) == {"a": (False, True, True), "b": (True, True, False)}
    core.patch_namespaced_pod("b", "default", {"metadata": {"labels": {"app": "gone"}}})
    core.patch_namespaced_pod("a", "default", {"metadata": {"finalizers": None}})
    assert endpoints(slices(server, disc, "web")) == {}
    # publishNotReadyAddresses: not-ready pods count as ready
    core.patch_namespaced_service("web", "default", {"spec": {"publishNotReadyAddresses": True}})
    run_pod(core, "c", "10.244.0.13", {"app": "web"}, ready=False, ports=ports)
    assert endpoints(slices(server, disc, "web")) == {"c": (True, True, False)}
    # slices are deleted with the service; a hand-edited managed slice is repaired
    core.delete_namespaced_service("web", "default")
    assert slices(server, disc, "web") == []


def test_named_port_resolution_per_pod(server: ApiServer, core: client.CoreV1Api,
                                       disc: client.DiscoveryV1Api) -> None:
    core.create_namespaced_service("default", service("api", {"app": "api"}, ports=[{"port": 80,
                                                                                       "targetPort": "web"}]))
    run_pod(core, "old", "10.244.1.1", {"app": "api"}, ports=[{"name": "web", "containerPort": 8080}])
    run_pod(core, "new", "10.244.1.2", {"app": "api"}, ports=[{"name": "web", "containerPort": 9090}])
    sl = slices(server, disc, "api")
    got = sorted((s.ports[0].port, [e.target_ref.name for e in s.endpoints]) for s in sl)
    assert got == [(8080, ["old"]), (9090, ["new"])]


def test_split_at_100_and_repair(server: ApiServer, core: client.CoreV1Api, disc: client.DiscoveryV1Api) -> None:
    core.create_namespaced_service("default", service("big", {"app": "big"}))
    for i in range(230):
        core.create_namespaced_pod("default", pod(f"p{i:03d}", {"app": "big"}))
        core.patch_namespaced_pod_status(f"p{i:03d}", "default", {"status": {
            "podIP": f"10.244.{i // 200}.{i % 200 + 1}", "conditions": [{"type": "Ready", "status": "True"}]}})
    sl = slices(server, disc, "big")
    sizes = sorted(len(s.endpoints) for s in sl)
    assert sizes == [30, 100, 100]
    assert sum(sizes) == len(endpoints(sl)) == 230
    # someone edits a managed slice: the controller puts it back
    victim = sl[0].metadata.name
    disc.patch_namespaced_endpoint_slice(victim, "default", {"endpoints": []})
    sl = slices(server, disc, "big")
    assert sorted(len(s.endpoints) for s in sl) == [30, 100, 100]
    core.delete_collection_namespaced_pod("default", label_selector="app=big")
    sl = slices(server, disc, "big")
    assert len(sl) == 1 and not sl[0].endpoints


def test_dual_stack_slices(make_server: Any, tmp_path: Any) -> None:
    from .conftest import api_client

    srv = make_server(service_cluster_ip_range="10.96.0.0/12,fd00:96::/108")
    c = api_client(srv, tmp_path / "kc")
    core, disc = client.CoreV1Api(c), client.DiscoveryV1Api(c)
    core.create_namespaced_service("default", service("d", {"app": "d"}, ipFamilyPolicy="RequireDualStack"))
    core.create_namespaced_pod("default", pod("p", {"app": "d"}))
    core.patch_namespaced_pod_status("p", "default", {"status": {
        "podIP": "10.244.0.5", "podIPs": [{"ip": "10.244.0.5"}, {"ip": "fd00:244::5"}],
        "conditions": [{"type": "Ready", "status": "True"}]}})
    sl = slices(srv, disc, "d")
    assert sorted((s.address_type, s.endpoints[0].addresses[0]) for s in sl) == [
        ("IPv4", "10.244.0.5"), ("IPv6", "fd00:244::5")]
    c.close()
