"""Network-policy benchmark (netpol_iptables, or any backend exposing ``last_apply`` payloads).

Scale (issue 6): 1,000 policies, 10,000 pods in 100 namespaces, 200 of them on this node. Everything runs
in a throwaway network namespace; the plugin is driven in-process (hooks called directly, no agent queue).

* full sync: the initial ``sync`` (model build + render + apply; kr sends the sets as netlink batches) vs
  the **floor**: a bare ``ipset restore``
  + ``iptables-restore --noflush`` of exactly the payloads kr generated, into a fresh namespace. Goal <= 1.3x.
  Also a second, no-change sync (the periodic repair pass).
* pod add that 50 policies select (a remote client pod): event-to-enforced p50/p99 (the hook's duration),
  iptables-restore calls (goal 0) and ipset lines per event. Goal p99 <= 20 ms. Also a local pod for
  comparison (it needs its own pod chain: one restore).
* ``--netpol-default-deny``: a new local pod to enforced (its chain written, its address in the local-pods
  set), p50/p99.

Like the agent, the caches are moved out of the cyclic GC (``gc.freeze``) once filled. The host is shared
and often loaded: compare ratios and percentiles of one run, and re-run before drawing conclusions.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import subprocess
import time
from typing import Any

from prometheus_client import CollectorRegistry

from kr_core import PluginContext
from kr_core.config import Settings
from kr_core.model import KubeObject, Namespace, NetworkPolicy, Node, Pod
from kr_core.net import netns
from kr_core.net.ipset import render_sync
from kr_core.plugins import PluginHost, from_classes, validate_plugin_config
from kr_core.watch import Caches, FeedSource

NODE = "node-1"
N_NS = 100


def _pod(ns: str, name: str, ip: str, node: str, labels: dict[str, str]) -> Pod:
    return Pod.from_json({"metadata": {"name": name, "namespace": ns, "labels": labels},
                          "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
                              {"containerPort": 8080, "name": "http"}]}]},
                          "status": {"phase": "Running", "podIP": ip}})


def world(n_pods: int, n_policies: int, n_local: int) -> list[KubeObject]:
    objs: list[KubeObject] = []
    per_ns = max(1, n_pods // N_NS)
    local_every = max(1, n_pods // max(1, n_local))
    for n in range(N_NS):
        objs.append(Namespace.from_json({"metadata": {"name": f"ns{n}", "labels": {
            "kubernetes.io/metadata.name": f"ns{n}", "team": f"t{n % 5}"}}}))
    r = 0
    local = 0
    for i in range(n_pods):
        n = i // per_ns % N_NS
        labels = {"app": f"app{i % 10}", "tier": ["web", "db", "cache"][i % 3]}
        if i % local_every == 0 and local < n_local:
            ip, node = f"10.244.0.{local + 2}", NODE
            local += 1
        else:
            r += 1
            ip, node = f"10.{245 + r // 65536}.{r // 256 % 256}.{r % 256}", f"node-{2 + r % 50}"
        objs.append(_pod(f"ns{n}", f"p{i}", ip, node, labels))
    per_ns_pol = max(1, n_policies // N_NS)
    for j in range(n_policies):
        n = j // per_ns_pol % N_NS
        k = j % 10
        spec: dict[str, Any] = {"podSelector": {"matchLabels": {"app": f"app{k}"}}, "policyTypes": ["Ingress"]}
        kind = j % 4
        if kind == 0:
            spec["ingress"] = [{"from": [{"podSelector": {"matchLabels": {"app": f"app{(k + 1) % 10}"}}}],
                                "ports": [{"port": 8080, "protocol": "TCP"}]}]
        elif kind == 1:
            spec["ingress"] = [{"from": [{"namespaceSelector": {"matchLabels": {"team": f"t{k % 5}"}},
                                          "podSelector": {"matchLabels": {"tier": "web"}}}],
                                "ports": [{"port": "http"}]}]
        elif kind == 2:
            spec["ingress"] = [{"from": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}]}]
            spec["policyTypes"] = ["Ingress", "Egress"]
            spec["egress"] = [{"to": [{"podSelector": {"matchLabels": {"tier": "db"}}}],
                               "ports": [{"port": 5432, "protocol": "TCP"}]}]
        else:
            spec["ingress"] = [{"from": [{"podSelector": {"matchLabels": {"tier": "cache"}}}],
                                "ports": [{"port": 6379, "endPort": 6380, "protocol": "TCP"}]}]
        objs.append(NetworkPolicy.from_json({"metadata": {"name": f"pol{j}", "namespace": f"ns{n}"}, "spec": spec}))
    # 50 policies that select the "bench-client" pods as peers (the pod-add measurement)
    for j in range(50):
        objs.append(NetworkPolicy.from_json({"metadata": {"name": f"client{j}", "namespace": f"ns{j}"}, "spec": {
            "podSelector": {"matchLabels": {"app": f"app{j % 10}"}}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "bench-client"}}}]}]}}))
    objs.append(Node.from_json({"metadata": {"name": NODE}, "spec": {"podCIDRs": ["10.244.0.0/24"]}}))
    return objs


class Driver:
    def __init__(self, node_ns: str, objs: list[KubeObject], flags: dict[str, Any] | None = None,
                 plugin: str = "netpol_iptables") -> None:
        from tests.conformance.netns_cluster import plugin_class

        cls = plugin_class(plugin)
        self.node_ns = node_ns
        host = PluginHost(from_classes([cls]))
        self.caller = host.get(plugin)
        caches = Caches(host.resources)
        info = cls.info  # type: ignore[attr-defined]
        self.ctx = PluginContext(name=plugin, settings=Settings(flags or {}), node_name=NODE,
                                 metrics=CollectorRegistry(), config=validate_plugin_config(info, {}),
                                 caches=caches.view(info.resources))
        self.feed = FeedSource(objs)
        self.call(self.caller.configure, self.ctx)
        self.feed.start(caches, self.caller.deliver)
        gc.collect()  # as the agent does once the caches synced (kr_core/agent.py)
        gc.freeze()
        self.call(self.caller.start, self.ctx)

    def call(self, fn: Any, *args: Any) -> Any:
        return netns.call_in(self.node_ns, fn, *args, timeout=600)

    @property
    def plugin(self) -> Any:
        return self.caller.instance


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _floor(payload_ipset: str, payloads: dict[int, str]) -> float:
    """The bare tools on exactly kr's payloads, started the way kr starts them (from a thread inside the
    namespace, no ``ip netns exec`` in between)."""
    def restore() -> float:
        t0 = time.perf_counter()
        subprocess.run(["ipset", "restore", "-exist"], input=payload_ipset, text=True, check=True,
                       capture_output=True)
        for f, text in payloads.items():
            subprocess.run([f"ip{'6' if f == 6 else ''}tables-nft-restore", "-w", "10", "--noflush"], input=text,
                           text=True, check=True, capture_output=True)
        return time.perf_counter() - t0

    with netns.temporary("krb") as ns:
        return netns.call_in(ns, restore)


def pod_adds(d: Driver, n: int, local: bool) -> dict[str, Any]:
    p = d.plugin
    lat: list[float] = []
    ips: list[str] = []
    ipt0, ips0, nl0 = p.dp.iptables_restores, p.dp.ipset_restores, p.dp.ipset_netlink
    for i in range(n):
        ip = f"10.244.0.{230 + i}" if local else f"10.250.{i // 256}.{i % 256}"
        ips.append(ip)
        pod = _pod(f"ns{i % 50}", f"new-{'l' if local else 'r'}{i}", ip, NODE if local else "node-9",
                   {"role": "bench-client", "app": "client"})
        t0 = time.perf_counter()
        d.call(d.feed.add, pod)
        lat.append((time.perf_counter() - t0) * 1000)
    return {"events": n, "p50_ms": round(_pct(lat, 0.5), 2), "p99_ms": round(_pct(lat, 0.99), 2),
            "iptables_restores_per_event": round((p.dp.iptables_restores - ipt0) / n, 2),
            "ipset_restores_per_event": round((p.dp.ipset_restores - ips0) / n, 2),
            "ipset_netlink_batches_per_event": round((p.dp.ipset_netlink - nl0) / n, 2),
            "set_members_per_event": sum(ip in s.entries for ip in ips
                                         for s in p.desired.sets.values()) // max(1, n)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    n_pods = getattr(args, "n", None) or 10_000
    n_pol = max(10, n_pods // 10)
    n_local = max(4, n_pods // 50)
    objs = world(n_pods, n_pol, n_local)
    res: dict[str, Any] = {"pods": n_pods, "policies": n_pol + 50, "namespaces": N_NS, "local_pods": n_local}
    with netns.temporary("krb") as node_ns:
        d = Driver(node_ns, objs)
        t0 = time.perf_counter()
        d.call(d.caller.sync, "initial")
        full = time.perf_counter() - t0
        la = d.plugin.last_apply
        ipset_script = render_sync(la.ipsets)  # kr sent these over netlink: the floor restores them as text
        floor = _floor(ipset_script, la.iptables_payloads)
        t0 = time.perf_counter()
        d.call(d.caller.sync, "periodic")
        again = time.perf_counter() - t0
        st = d.call(d.caller.state)["summary"]
        res["full_sync"] = {
            "kr_s": round(full, 3), "floor_s": round(floor, 3), "ratio": round(full / floor, 2),
            "goal_ratio": 1.3, "chains": st["chains"], "sets": st["sets"], "policies_on_node": st["policies_on_node"],
            "iptables_lines": sum(t.count("\n") for t in la.iptables_payloads.values()),
            "ipset_lines": ipset_script.count("\n"), "ipset_over_netlink": bool(la.ipset_netlink),
            "no_change_resync_s": round(again, 3),
        }
        res["pod_add_50_policies_remote"] = pod_adds(d, 100, local=False) | {"goal_p99_ms": 20}
        res["pod_add_50_policies_local"] = pod_adds(d, 20, local=True)
    with netns.temporary("krb") as node_ns:
        d = Driver(node_ns, objs, flags={"netpol-default-deny": True})
        d.call(d.caller.sync, "initial")
        res["default_deny_new_local_pod"] = pod_adds(d, 20, local=True)
    res["summary"] = (f"full sync {res['full_sync']['kr_s']} s vs floor {res['full_sync']['floor_s']} s "
                      f"= {res['full_sync']['ratio']}x; remote pod add p99 "
                      f"{res['pod_add_50_policies_remote']['p99_ms']} ms with "
                      f"{res['pod_add_50_policies_remote']['iptables_restores_per_event']} iptables-restore/event; "
                      f"default-deny local pod p99 {res['default_deny_new_local_pod']['p99_ms']} ms")
    _ = statistics  # (kept for ad-hoc analysis)
    return res


if __name__ == "__main__":
    import json
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=None)
    print(json.dumps(run(ap.parse_args()), indent=1))
