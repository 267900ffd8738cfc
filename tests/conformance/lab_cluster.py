"""The conformance harness on the lab (``kr lab``): real API server, real agents, pods on two nodes.

:class:`LabCluster` offers the interface the scenario runner uses (see :mod:`tests.conformance.runner`):
objects go through the lab's API server (the agents see them through their watches, as in production),
and probes are real connections between pod namespaces (:func:`kr_core.lab.probe.probe_one`).
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kr_core.lab.kube import Kube
from kr_core.lab.probe import Resolver, Target, probe_one
from kr_core.lab.state import LabState
from kr_core.model import Namespace, NetworkPolicy, Pod

REPO = Path(__file__).resolve().parents[2]


def kr_lab(*args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-m", "kr_core.lab.cli", *args], capture_output=True, text=True,
                       timeout=timeout, cwd=REPO)
    if check and p.returncode != 0:
        raise AssertionError(f"kr lab {' '.join(args)}: exit {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def pod_manifest(ns: str, name: str, node: str, labels: dict[str, str],
                 protocols: Iterable[str] = ("TCP", "UDP")) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": node, "containers": [
                {"name": f"cont-{p}-{proto.lower()}", "image": "lab",
                 "ports": [{"containerPort": p, "protocol": proto, "name": f"serve-{p}-{proto.lower()}"}]}
                for p in (80, 81) for proto in protocols]}}


def service_manifest(ns: str, pod: str, protocols: Iterable[str] = ("TCP", "UDP")) -> dict[str, Any]:
    """Upstream's per-pod Service ``s-<ns>-<pod>``: ClusterIP, selector ``pod=<pod>``, ports 80 and 81."""
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"s-{ns}-{pod}", "namespace": ns},
            "spec": {"type": "ClusterIP", "selector": {"pod": pod}, "ports": [
                {"name": f"service-port-{proto.lower()}-{p}", "protocol": proto, "port": p, "targetPort": p}
                for p in (80, 81) for proto in protocols]}}


class LabCluster:
    """``plugin``: the agents' plugins (a comma list, e.g. ``netpol_iptables,ipvs_proxy``). ``services``: every
    pod also gets upstream's ClusterIP Service (:func:`service_manifest`) and the runner probes each
    destination twice, at ``ns/pod`` (the pod IP) and ``svc/ns/pod`` (the Service's ClusterIP), expecting the
    same verdict. ``protocols``: the pods' (and Services') server protocols; ``probe_timeout``: seconds per
    probe (a slow machine such as the UML VM needs more than the default); ``workers``: probes in flight (a
    blocked probe waits its whole timeout, so a round of probes lasts about ``timeout * blocked / workers``);
    ``probe_retry=False``: one attempt per probe (the runner probes again until the matrix matches, and a
    refused attempt retried until the timeout only burns the CPU a slow machine needs for the agents)."""

    def __init__(self, name: str, plugin: str, pods: Iterable[tuple[str, str, dict[str, str]]],
                 namespaces: dict[str, dict[str, str]], nodes: int = 2, *, services: bool = False,
                 protocols: Iterable[str] = ("TCP", "UDP"), probe_timeout: float = 0.3, workers: int = 48,
                 probe_retry: bool = True, up_timeout: float = 180) -> None:
        self.name = name
        self.probe_services = services
        self.protocols = tuple(protocols)
        self.probe_timeout = probe_timeout
        self.workers = workers
        self.probe_retry = probe_retry
        self._targets: dict[str, Target] = {}
        kr_lab("down", "--name", name, check=False)
        kr_lab("up", "--name", name, "--nodes", str(nodes), "--static-routes", "--plugins", plugin,
               timeout=up_timeout)
        st = LabState.load(name)
        assert st is not None
        self.st = st
        self.kube = Kube.from_kubeconfig(str(st.kubeconfig))
        for node in st.nodes:  # REJECT answers with ICMP errors: unthrottled, so blocked probes fail fast
            subprocess.run(["ip", "netns", "exec", node.netns, "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0",
                            "net.ipv4.icmp_msgs_per_sec=100000", "net.ipv4.icmp_msgs_burst=100000"], check=False)
        for n, labels in namespaces.items():
            self.kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                    "metadata": {"name": n, "labels": labels}})
        keys = []
        for i, (ns, name_, labels) in enumerate(pods):
            node = st.nodes[i % len(st.nodes)].name
            self.kube.create(f"/api/v1/namespaces/{ns}/pods", pod_manifest(ns, name_, node, labels, self.protocols))
            if services:
                self.kube.create(f"/api/v1/namespaces/{ns}/services", service_manifest(ns, name_, self.protocols))
            keys.append(f"{ns}/{name_}")
        self._wait_running(keys)
        self.resolver = Resolver(st, self.kube)
        self._netns = {k: self.resolver.netns_of(k) for k in keys}

    def _wait_running(self, keys: list[str], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pods = self.pods
            if all(k in pods and pods[k].phase == "Running" and pods[k].pod_ips for k in keys):
                return
            time.sleep(0.3)
        raise AssertionError(f"pods not running: {keys}")

    # --------------------------------------------------------------------------------- objects
    @property
    def pods(self) -> dict[str, Pod]:
        return {p.key: p for p in (Pod.from_json(o) for o in self.kube.get("/api/v1/pods").get("items") or [])}

    @property
    def namespaces(self) -> dict[str, Namespace]:
        return {n.meta.name: n for n in (Namespace.from_json(o) for o in
                                         self.kube.get("/api/v1/namespaces").get("items") or [])}

    def policies(self) -> list[NetworkPolicy]:
        items = self.kube.get("/apis/networking.k8s.io/v1/networkpolicies").get("items") or []
        return [NetworkPolicy.from_json(o) for o in items]

    def apply_policy(self, pol: NetworkPolicy) -> None:
        body = pol_json(pol)
        path = f"/apis/networking.k8s.io/v1/namespaces/{pol.meta.namespace}/networkpolicies"
        if any(p.key == pol.key for p in self.policies()):
            self.kube.request("PUT", f"{path}/{pol.meta.name}", body)
        else:
            self.kube.create(path, body)

    def delete(self, obj: Any) -> None:
        self.kube.delete(f"/apis/networking.k8s.io/v1/namespaces/{obj.meta.namespace}/networkpolicies/{obj.meta.name}")

    def relabel_pod(self, key: str, labels: dict[str, str]) -> None:
        ns, name = key.split("/")
        old = self.pods[key].meta.labels
        patch = {k: None for k in old if k not in labels} | labels
        self.kube.patch(f"/api/v1/namespaces/{ns}/pods/{name}", {"metadata": {"labels": patch}})

    def relabel_namespace(self, name: str, labels: dict[str, str]) -> None:
        old = self.namespaces[name].meta.labels
        patch = {k: None for k in old if k not in labels and k != "kubernetes.io/metadata.name"} | labels
        self.kube.patch(f"/api/v1/namespaces/{name}", {"metadata": {"labels": patch}})

    # ---------------------------------------------------------------------------------- probing
    def matrix(self, ports: Iterable[int], protocols: Iterable[str],
               pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str, int, str], bool]:
        """Destinations are pod keys (probed at the pod IP) or ``svc/<pod key>`` (at the pod's Service's
        ClusterIP, which must answer with that pod's name)."""
        pairs = list(pairs)
        targets = {d: self.target(d) for _, d in pairs}
        jobs = [(s, d, p, proto) for p in ports for proto in protocols for s, d in pairs]
        t = self.probe_timeout
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(jobs)))) as ex:
            res = ex.map(lambda j: probe_one(self._netns[j[0]], j[0], targets[j[1]], j[2], j[3], timeout=t,
                                             attempt_timeout=t, retry=self.probe_retry).connected, jobs)
            return dict(zip(jobs, res, strict=True))

    def target(self, dst: str) -> Target:
        """Where ``dst`` (``ns/pod`` or ``svc/ns/pod``) is probed; looked up once (addresses never change here)."""
        if dst not in self._targets:
            if dst.startswith("svc/"):
                ns, _, pod = dst[4:].partition("/")
                t = self.resolver.target(f"svc/{ns}/s-{ns}-{pod}")
                self._targets[dst] = Target(dst, t.ip, [f"{ns}/{pod}"])
            else:
                self._targets[dst] = self.resolver.target(dst)
        return self._targets[dst]

    def close(self) -> None:
        kr_lab("down", "--name", self.name, check=False)


def pol_json(pol: NetworkPolicy) -> dict[str, Any]:
    """Back to API JSON (the builders keep the source JSON nowhere, so rebuild it from the view)."""
    def selector(s: Any) -> dict[str, Any] | None:
        if s is None:
            return None
        out: dict[str, Any] = {}
        if s.match_labels:
            out["matchLabels"] = dict(s.match_labels)
        if s.match_expressions:
            out["matchExpressions"] = [{"key": e.key, "operator": e.operator, **({"values": list(e.values)}
                                                                                  if e.values else {})}
                                       for e in s.match_expressions]
        return out

    def rules(rs: Any, key: str) -> list[dict[str, Any]]:
        out = []
        for r in rs:
            d: dict[str, Any] = {}
            if r.peers:
                peers = []
                for p in r.peers:
                    pd: dict[str, Any] = {}
                    if p.pod_selector is not None:
                        pd["podSelector"] = selector(p.pod_selector)
                    if p.namespace_selector is not None:
                        pd["namespaceSelector"] = selector(p.namespace_selector)
                    if p.ip_block is not None:
                        pd["ipBlock"] = {"cidr": p.ip_block.cidr, **({"except": list(p.ip_block.except_)}
                                                                      if p.ip_block.except_ else {})}
                    peers.append(pd)
                d[key] = peers
            if r.ports:
                d["ports"] = [{k: v for k, v in (("protocol", p.protocol), ("port", p.port), ("endPort", p.end_port))
                               if v is not None} for p in r.ports]
            out.append(d)
        return out

    spec: dict[str, Any] = {"podSelector": selector(pol.pod_selector), "policyTypes": list(pol.policy_types)}
    if "Ingress" in pol.policy_types:
        spec["ingress"] = rules(pol.ingress, "from")
    if "Egress" in pol.policy_types:
        spec["egress"] = rules(pol.egress, "to")
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": pol.meta.name, "namespace": pol.meta.namespace}, "spec": spec}


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)
