"""Python-client round trips for every verb, errors as Status objects, validation and allocation."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from kr_core.embedded import ApiServer

from .conftest import api_client, pod, service


def raw(srv: ApiServer, path: str, token: str | None = None, scheme: str = "Bearer") -> tuple[int, Any]:
    req = urllib.request.Request(srv.url + path)
    if token:
        req.add_header("Authorization", f"{scheme} {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def status_of(e: ApiException) -> dict[str, Any]:
    return json.loads(e.body)


def test_discovery(server: ApiServer) -> None:
    assert raw(server, "/version")[1]["major"] == "1"
    assert raw(server, "/api")[1]["versions"] == ["v1"]
    groups = {g["name"] for g in raw(server, "/apis")[1]["groups"]}
    assert groups == {"discovery.k8s.io", "networking.k8s.io"}
    core = {r["name"]: r for r in raw(server, "/api/v1")[1]["resources"]}
    assert core["services"]["shortNames"] == ["svc"] and core["services"]["namespaced"]
    assert not core["nodes"]["namespaced"] and "pods/status" in core
    netpol = raw(server, "/apis/networking.k8s.io/v1")[1]["resources"]
    assert netpol[0]["kind"] == "NetworkPolicy" and "watch" in netpol[0]["verbs"]
    code, body = raw(server, "/api/v1/nope")
    assert code == 404 and body["kind"] == "Status"


def test_create_get_generate_name_and_conflict(core: client.CoreV1Api) -> None:
    p = core.create_namespaced_pod("default", pod("p1", {"app": "a"}))
    assert p.metadata.uid and p.metadata.creation_timestamp and int(p.metadata.resource_version) > 0
    assert p.spec.containers[0].termination_message_path == "/dev/termination-log"
    got = core.read_namespaced_pod("p1", "default")
    assert got.metadata.uid == p.metadata.uid
    gen = core.create_namespaced_pod("default", {"metadata": {"generateName": "web-"}, "spec": pod("x")["spec"]})
    assert gen.metadata.name.startswith("web-") and len(gen.metadata.name) == 9
    with pytest.raises(ApiException) as e:
        core.create_namespaced_pod("default", pod("p1"))
    st = status_of(e.value)
    assert e.value.status == 409 and st["reason"] == "AlreadyExists" and st["details"]["name"] == "p1"
    with pytest.raises(ApiException) as e:
        core.read_namespaced_pod("nope", "default")
    assert e.value.status == 404 and status_of(e.value)["reason"] == "NotFound"
    with pytest.raises(ApiException) as e:
        core.create_namespaced_pod("missing-ns", pod("p1", ns="missing-ns"))
    assert e.value.status == 404


def test_list_selectors_and_pagination(core: client.CoreV1Api) -> None:
    core.create_namespace({"metadata": {"name": "other"}})
    for i in range(7):
        labels = {"app": "a" if i % 2 else "b", "i": str(i)}
        if i < 3:
            labels["edge"] = "yes"
        core.create_namespaced_pod("default", pod(f"p{i}", labels, node="n1" if i < 4 else "n2"))
    core.create_namespaced_pod("other", pod("q", {"app": "a"}, ns="other"))

    def names(**kw: Any) -> list[str]:
        return [p.metadata.name for p in core.list_namespaced_pod("default", **kw).items]

    assert names(label_selector="app=a") == ["p1", "p3", "p5"]
    assert names(label_selector="app!=a") == ["p0", "p2", "p4", "p6"]
    assert names(label_selector="i in (1,2,9)") == ["p1", "p2"]
    assert names(label_selector="i notin (1,2),app=b") == ["p0", "p4", "p6"]
    assert names(label_selector="edge") == ["p0", "p1", "p2"]
    assert names(label_selector="!edge,app==a") == ["p3", "p5"]
    assert names(field_selector="spec.nodeName=n2") == ["p4", "p5", "p6"]
    assert names(field_selector="metadata.name=p3") == ["p3"]
    assert names(field_selector="metadata.name!=p3,spec.nodeName=n1") == ["p0", "p1", "p2"]
    allns = core.list_pod_for_all_namespaces(label_selector="app=a")
    assert [(p.metadata.namespace, p.metadata.name) for p in allns.items][-1] == ("other", "q")
    assert int(allns.metadata.resource_version) >= 9
    seen: list[str] = []
    page = core.list_namespaced_pod("default", limit=3)
    assert page.metadata.remaining_item_count == 4
    while True:
        seen += [p.metadata.name for p in page.items]
        if not page.metadata._continue:
            break
        page = core.list_namespaced_pod("default", limit=3, _continue=page.metadata._continue)
    assert seen == [f"p{i}" for i in range(7)]
    with pytest.raises(ApiException) as e:
        core.list_namespaced_pod("default", field_selector="spec.bogus=1")
    assert e.value.status == 400


def test_update_conflict_and_status_subresource(core: client.CoreV1Api) -> None:
    p = core.create_namespaced_pod("default", pod("p1"))
    p.metadata.labels = {"v": "2"}
    p2 = core.replace_namespaced_pod("p1", "default", p)
    assert p2.metadata.labels == {"v": "2"}
    assert int(p2.metadata.resource_version) > int(p.metadata.resource_version)
    with pytest.raises(ApiException) as e:
        core.replace_namespaced_pod("p1", "default", p)  # stale resourceVersion
    assert e.value.status == 409 and status_of(e.value)["reason"] == "Conflict"
    # status changes through the main resource are ignored; through /status they land
    p2.status.pod_ip = "10.244.0.9"
    p3 = core.replace_namespaced_pod("p1", "default", p2)
    assert p3.status.pod_ip is None
    p4 = core.patch_namespaced_pod_status("p1", "default", {"status": {"podIP": "10.244.0.9"}})
    assert p4.status.pod_ip == "10.244.0.9" and p4.metadata.labels == {"v": "2"}
    # an update that changes nothing does not bump the resourceVersion
    same = core.patch_namespaced_pod("p1", "default", {"metadata": {"labels": {"v": "2"}}})
    assert same.metadata.resource_version == p4.metadata.resource_version


def test_patch_kinds(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("p1", {"a": "1", "b": "2"}, ports=[{"containerPort": 80}]))
    # strategic merge (the client's default for dicts): containers merged by name, ports by containerPort
    p = core.patch_namespaced_pod("p1", "default", {"metadata": {"labels": {"b": None, "c": "3"}}, "spec": {
        "containers": [{"name": "c", "ports": [{"containerPort": 81, "name": "alt"}]}]}})
    assert p.metadata.labels == {"a": "1", "c": "3"}
    assert [pt.container_port for pt in p.spec.containers[0].ports] == [80, 81]
    assert p.spec.containers[0].image == "busybox"
    # JSON patch
    p = core.patch_namespaced_pod("p1", "default", [{"op": "replace", "path": "/metadata/labels/a", "value": "9"},
                                                    {"op": "remove", "path": "/metadata/labels/c"}])
    assert p.metadata.labels == {"a": "9"}
    # JSON merge patch replaces lists wholesale
    p = core.patch_namespaced_pod("p1", "default", {"spec": {"containers": [{"name": "c", "image": "nginx"}]}},
                                  _content_type="application/merge-patch+json")
    assert p.spec.containers[0].image == "nginx" and p.spec.containers[0].ports is None


def test_merge_patch_over_http(server: ApiServer, core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("p1", ports=[{"containerPort": 80}]))
    req = urllib.request.Request(server.url + "/api/v1/namespaces/default/pods/p1", method="PATCH",
                                 data=json.dumps({"spec": {"containers": [{"name": "c", "image": "nginx"}]}}).encode(),
                                 headers={"Content-Type": "application/merge-patch+json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        body = json.loads(r.read())
    # JSON merge patch replaces lists wholesale (then defaulting fills the container in again)
    assert body["spec"]["containers"][0]["image"] == "nginx" and "ports" not in body["spec"]["containers"][0]
    req = urllib.request.Request(server.url + "/api/v1/namespaces/default/pods/p1", method="PATCH",
                                 data=b"{}", headers={"Content-Type": "text/plain"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 415


def test_delete_and_delete_collection(core: client.CoreV1Api, net: client.NetworkingV1Api) -> None:
    for i in range(4):
        core.create_namespaced_pod("default", pod(f"p{i}", {"grp": "x" if i < 3 else "y"}))
    deleted = core.delete_namespaced_pod("p3", "default")
    assert deleted.metadata.name == "p3"
    core.delete_collection_namespaced_pod("default", label_selector="grp=x")
    assert core.list_namespaced_pod("default").items == []
    net.create_namespaced_network_policy("default", {"metadata": {"name": "np"}, "spec": {"podSelector": {}}})
    st = net.delete_namespaced_network_policy("np", "default")
    assert st["status"] == "Success" and st["details"]["name"] == "np"
    with pytest.raises(ApiException) as e:
        net.delete_namespaced_network_policy("np", "default")
    assert e.value.status == 404


def test_finalizers_make_deletion_graceful(core: client.CoreV1Api) -> None:
    p = pod("p1")
    p["metadata"]["finalizers"] = ["example.com/hold"]
    core.create_namespaced_pod("default", p)
    core.delete_namespaced_pod("p1", "default")
    held = core.read_namespaced_pod("p1", "default")
    assert held.metadata.deletion_timestamp is not None
    core.patch_namespaced_pod("p1", "default", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException):
        core.read_namespaced_pod("p1", "default")


def test_namespace_defaults_and_cascade(core: client.CoreV1Api) -> None:
    ns = core.create_namespace({"metadata": {"name": "team"}})
    assert ns.metadata.labels == {"kubernetes.io/metadata.name": "team"} and ns.status.phase == "Active"
    core.create_namespaced_pod("team", pod("p", ns="team"))
    core.delete_namespace("team")
    assert core.list_namespaced_pod("team").items == []
    assert "team" not in [n.metadata.name for n in core.list_namespace().items]


def test_restart_persistence(make_server: Any, tmp_path: Path) -> None:
    data = str(tmp_path / "state.db")
    srv = make_server(data_path=data)
    c = api_client(srv, tmp_path / "kc1")
    core = client.CoreV1Api(c)
    svc = core.create_namespaced_service("default", service("web", {"app": "web"}, type="NodePort"))
    last = int(core.list_namespaced_service("default").metadata.resource_version)
    c.close()
    srv.stop()
    srv2 = make_server(data_path=data)
    c2 = api_client(srv2, tmp_path / "kc2")
    core2 = client.CoreV1Api(c2)
    again = core2.read_namespaced_service("web", "default")
    assert again.metadata.uid == svc.metadata.uid and again.spec.cluster_ip == svc.spec.cluster_ip
    # the allocations survive: a new service gets different IP and node port
    other = core2.create_namespaced_service("default", service("other", type="NodePort"))
    assert other.spec.cluster_ip != svc.spec.cluster_ip
    assert other.spec.ports[0].node_port != svc.spec.ports[0].node_port
    assert int(other.metadata.resource_version) > last
    c2.close()


def test_token_required(make_server: Any, tmp_path: Path) -> None:
    srv = make_server(token="s3cret")
    assert raw(srv, "/api/v1/namespaces")[0] == 401
    assert raw(srv, "/api/v1/namespaces", token="wrong")[0] == 401
    assert raw(srv, "/api/v1/namespaces", token="s3cret")[0] == 200
    assert raw(srv, "/api/v1/namespaces", token="s3cret", scheme="bearer")[0] == 200  # in-cluster loader's spelling
    assert raw(srv, "/api/v1/namespaces", token="s3cret", scheme="Basic")[0] == 401
    c = api_client(srv, tmp_path / "kc")
    assert len(client.CoreV1Api(c).list_namespace().items) == 4
    c.close()
    with pytest.raises(ValueError):
        ApiServer(host="0.0.0.0")


def test_invalid_network_policy(net: client.NetworkingV1Api) -> None:
    bad = {"metadata": {"name": "bad"}, "spec": {"podSelector": {}, "ingress": [
        {"from": [{"ipBlock": {"cidr": "10.0.0.0/33", "except": ["10.1.0.0/16"]}}],
         "ports": [{"port": 70000}, {"port": "http", "endPort": 90}, {"protocol": "ICMP", "port": 80, "endPort": 79}]}]}}
    with pytest.raises(ApiException) as e:
        net.create_namespaced_network_policy("default", bad)
    st = status_of(e.value)
    assert e.value.status == 422 and st["reason"] == "Invalid" and st["details"]["kind"] == "NetworkPolicy"
    fields = {c["field"] for c in st["details"]["causes"]}
    assert fields == {"spec.ingress[0].from[0].ipBlock.cidr", "spec.ingress[0].ports[0].port",
                      "spec.ingress[0].ports[1].endPort", "spec.ingress[0].ports[2].protocol",
                      "spec.ingress[0].ports[2].endPort"}
    bad_except = {"metadata": {"name": "bad2"}, "spec": {"podSelector": {}, "egress": [
        {"to": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}}]}]}}
    with pytest.raises(ApiException) as e:
        net.create_namespaced_network_policy("default", bad_except)
    assert status_of(e.value)["details"]["causes"][0]["field"] == "spec.egress[0].to[0].ipBlock.except[0]"


def test_network_policy_defaults(net: client.NetworkingV1Api) -> None:
    np = net.create_namespaced_network_policy("default", {"metadata": {"name": "np"}, "spec": {
        "podSelector": {}, "egress": [{"ports": [{"port": 53}]}]}})
    assert np.spec.policy_types == ["Ingress", "Egress"]
    assert np.spec.egress[0].ports[0].protocol == "TCP"
    np2 = net.create_namespaced_network_policy("default", {"metadata": {"name": "np2"}, "spec": {"podSelector": {}}})
    assert np2.spec.policy_types == ["Ingress"] and np2.metadata.generation == 1


def test_invalid_service(core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as e:
        core.create_namespaced_service("default", service("bad", ports=[{"port": 0}]))
    st = status_of(e.value)
    assert e.value.status == 422 and st["details"]["causes"][0]["field"] == "spec.ports[0].port"
    with pytest.raises(ApiException) as e:
        core.create_namespaced_service("default", service("bad", ports=[{"port": 80}, {"port": 81, "protocol": "XX"}]))
    fields = {c["field"] for c in status_of(e.value)["details"]["causes"]}
    assert fields == {"spec.ports[0].name", "spec.ports[1].name", "spec.ports[1].protocol"}
    with pytest.raises(ApiException) as e:
        core.create_namespaced_service("default", service("bad", clusterIP="10.96.0.300"))
    assert status_of(e.value)["details"]["causes"][0]["field"] == "spec.clusterIPs[0]"


def test_service_defaults_and_allocation(core: client.CoreV1Api) -> None:
    s = core.create_namespaced_service("default", service("a", {"app": "a"}))
    assert s.spec.type == "ClusterIP" and s.spec.session_affinity == "None"
    assert s.spec.internal_traffic_policy == "Cluster" and s.spec.external_traffic_policy is None
    assert s.spec.ip_families == ["IPv4"] and s.spec.ip_family_policy == "SingleStack"
    assert s.spec.ports[0].target_port == 80 and s.spec.ports[0].protocol == "TCP"
    assert s.spec.cluster_ip.startswith("10.") and s.spec.cluster_ips == [s.spec.cluster_ip]
    np = core.create_namespaced_service("default", service("b", type="NodePort", ports=[
        {"name": "x", "port": 80}, {"name": "y", "port": 81, "nodePort": 31000}]))
    assert np.spec.external_traffic_policy == "Cluster"
    ports = [p.node_port for p in np.spec.ports]
    assert 30000 <= ports[0] <= 32767 and ports[1] == 31000
    lb = core.create_namespaced_service("default", service("c", type="LoadBalancer", externalTrafficPolicy="Local"))
    assert lb.spec.health_check_node_port and lb.spec.health_check_node_port not in ports
    with pytest.raises(ApiException) as e:
        core.create_namespaced_service("default", service("d", type="NodePort", ports=[{"port": 80, "nodePort": 31000}]))
    assert status_of(e.value)["details"]["causes"][0]["field"] == "spec.ports[0].nodePort"
    with pytest.raises(ApiException) as e:
        core.create_namespaced_service("default", service("d", clusterIP=s.spec.cluster_ip))
    assert e.value.status == 422
    fixed = core.create_namespaced_service("default", service("e", clusterIP="10.96.100.100"))
    assert fixed.spec.cluster_ip == "10.96.100.100"
    headless = core.create_namespaced_service("default", service("h", {"app": "a"}, clusterIP="None"))
    assert headless.spec.cluster_ips == ["None"]
    # release on delete: the fixed IP and node port can be taken again
    core.delete_namespaced_service("e", "default")
    core.delete_namespaced_service("b", "default")
    again = core.create_namespaced_service("default", service("f", type="NodePort", clusterIP="10.96.100.100",
                                                              ports=[{"port": 80, "nodePort": 31000}]))
    assert again.spec.ports[0].node_port == 31000
    # updates keep the allocation, clusterIP is immutable
    s.spec.cluster_ip = None
    s.spec.cluster_ips = None
    s.metadata.resource_version = None
    kept = core.replace_namespaced_service("a", "default", s)
    assert kept.spec.cluster_ip == again.spec.cluster_ip or kept.spec.cluster_ip.startswith("10.")
    with pytest.raises(ApiException) as e:
        core.patch_namespaced_service("a", "default", {"spec": {"clusterIP": "10.96.5.5", "clusterIPs": ["10.96.5.5"]}})
    assert e.value.status == 422


def test_dual_stack(make_server: Any, tmp_path: Path) -> None:
    srv = make_server(service_cluster_ip_range="10.96.0.0/12,fd00:96::/108", cluster_cidr="10.244.0.0/16,fd00:244::/56")
    c = api_client(srv, tmp_path / "kc")
    core = client.CoreV1Api(c)
    single = core.create_namespaced_service("default", service("s"))
    assert single.spec.ip_families == ["IPv4"] and len(single.spec.cluster_ips) == 1
    dual = core.create_namespaced_service("default", service("d", ipFamilyPolicy="PreferDualStack"))
    assert dual.spec.ip_families == ["IPv4", "IPv6"] and ":" in dual.spec.cluster_ips[1]
    v6 = core.create_namespaced_service("default", service("v6", ipFamilies=["IPv6"]))
    assert ":" in v6.spec.cluster_ip and v6.spec.ip_family_policy == "SingleStack"
    node = core.create_node({"metadata": {"name": "n1"}})
    assert node.spec.pod_cidrs == ["10.244.0.0/24", "fd00:244::/64"]
    c.close()


def test_node_pod_cidrs(core: client.CoreV1Api) -> None:
    a = core.create_node({"metadata": {"name": "a"}})
    b = core.create_node({"metadata": {"name": "b"}})
    own = core.create_node({"metadata": {"name": "own"}, "spec": {"podCIDR": "10.244.1.0/24"}})
    c = core.create_node({"metadata": {"name": "c"}})
    assert (a.spec.pod_cidr, b.spec.pod_cidr, own.spec.pod_cidrs) == ("10.244.0.0/24", "10.244.1.0/24",
                                                                       ["10.244.1.0/24"]) or \
        a.spec.pod_cidr != b.spec.pod_cidr
    assert len({a.spec.pod_cidr, b.spec.pod_cidr, c.spec.pod_cidr}) == 3
    assert c.spec.pod_cidr not in (a.spec.pod_cidr, b.spec.pod_cidr)
    core.delete_node("a")
    d = core.create_node({"metadata": {"name": "d"}})
    assert d.spec.pod_cidr == "10.244.0.0/24"
    st = core.patch_node_status("d", {"status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.4"}]}})
    assert st.status.addresses[0].address == "192.168.0.4" and st.spec.pod_cidr == "10.244.0.0/24"


def test_pod_binding(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("p1"))
    body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p1"},
            "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"}}
    req = urllib.request.Request(core.api_client.configuration.host + "/api/v1/namespaces/default/pods/p1/binding",
                                 method="POST", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 201
    assert core.read_namespaced_pod("p1", "default").spec.node_name == "n1"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(urllib.request.Request(req.full_url, method="POST", data=json.dumps(body).encode(),
                                                      headers={"Content-Type": "application/json"}), timeout=5)
    assert e.value.code == 409


def test_node_pod_cidr_is_immutable(core: client.CoreV1Api) -> None:
    n = core.create_node({"metadata": {"name": "n"}})
    with pytest.raises(ApiException) as e:
        core.patch_node("n", {"spec": {"podCIDR": "10.244.9.0/24", "podCIDRs": ["10.244.9.0/24"]}})
    assert e.value.status == 422 and status_of(e.value)["details"]["causes"][0]["field"] == "spec.podCIDRs"
    n.metadata.resource_version = None
    n.spec.pod_cidr = None
    n.spec.pod_cidrs = None
    assert core.replace_node("n", n).spec.pod_cidr == "10.244.0.0/24"


def test_invalid_network_policy_selectors(net: client.NetworkingV1Api) -> None:
    bad = {"metadata": {"name": "bad"}, "spec": {
        "podSelector": {"matchExpressions": [{"key": "a", "operator": "Maybe"}]},
        "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "b", "operator": "In"}]},
                               "podSelector": {"matchExpressions": [{"key": "c", "operator": "Exists",
                                                                     "values": ["x"]}]}},
                              {"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]}}
    with pytest.raises(ApiException) as e:
        net.create_namespaced_network_policy("default", bad)
    fields = {c["field"] for c in status_of(e.value)["details"]["causes"]}
    assert fields == {"spec.podSelector.matchExpressions[0].operator",
                      "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values",
                      "spec.ingress[0].from[0].podSelector.matchExpressions[0].values",
                      "spec.ingress[0].from[1]"}


def test_service_type_changes(core: client.CoreV1Api) -> None:
    lb = core.create_namespaced_service("default", service("s", type="LoadBalancer", externalTrafficPolicy="Local"))
    ports = {lb.spec.ports[0].node_port, lb.spec.health_check_node_port}
    cip = core.patch_namespaced_service("s", "default", {"spec": {"type": "ClusterIP"}})
    assert cip.spec.external_traffic_policy is None and cip.spec.health_check_node_port is None
    assert cip.spec.ports[0].node_port is None and cip.spec.cluster_ip == lb.spec.cluster_ip
    np = core.create_namespaced_service("default", service("t", type="NodePort", ports=[
        {"port": 80, "nodePort": min(ports)}, ]))
    assert np.spec.ports[0].node_port == min(ports)  # released by the type change
    back = core.patch_namespaced_service("s", "default", {"spec": {"type": "NodePort"}})
    assert back.spec.external_traffic_policy == "Cluster" and back.spec.ports[0].node_port not in (None, min(ports))
