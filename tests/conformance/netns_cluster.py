"""A one-node cluster of network namespaces driven in-process, for real-packet network-policy tests.

Topology (all in namespaces created here, named ``krc-<hex>-*``, deleted by :meth:`NetnsCluster.close`):
a node namespace with ``kube-bridge`` (10.244.0.1/24) and one pod namespace per pod behind it on a veth,
each answering its ``namespace/name`` on TCP, UDP and SCTP ports 80 and 81 (:class:`kr_core.lab.responder.Responders`).
On a kernel without SCTP (this development host), SCTP is served and probed as raw INIT/INIT-ACK exchanges
(:mod:`kr_core.lab.rawsctp`), not associations: the first packet of each direction still crosses netfilter
and conntrack, which is what the network-policy backends decide on.

The network-policy plugin named by the test (any backend: it is loaded through its ``kr.plugins`` entry
point) runs in-process inside the node namespace: its hooks are called from a thread that entered that
namespace, so every iptables/ipset/nft process it starts lands there. Objects reach it through a
:class:`kr_core.watch.FeedSource`, as the watch layer would deliver them; no API server is involved.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import Any

from prometheus_client import CollectorRegistry

from kr_core import PluginContext
from kr_core.config import Settings
from kr_core.lab import rawsctp
from kr_core.model import KubeObject, Namespace, NetworkPolicy, Pod
from kr_core.net import netns
from kr_core.plugins import PluginHost, from_classes, validate_plugin_config
from kr_core.watch import Caches, FeedSource
from tests.conformance.builders import node, ns, pod

NODE = "node-1"
POD_CIDR = "10.244.0.0/24"
GATEWAY = "10.244.0.1"
POD_CIDR6 = "fd00:10:244::/64"
GATEWAY6 = "fd00:10:244::1"


def plugin_class(name: str) -> type:
    eps = entry_points(group="kr.plugins", name=name)
    if not eps:
        raise LookupError(f"no kr plugin {name!r} installed")
    return next(iter(eps)).load()  # type: ignore[no-any-return]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=20)


def probe(src_ns: str, ip: str, port: int, proto: str, timeout: float = 0.6, raw_sctp: bool = False) -> bool:
    """One connection attempt from ``src_ns``; True when the responder answered. ``raw_sctp``: SCTP is one
    raw INIT/INIT-ACK exchange (:mod:`kr_core.lab.rawsctp`, for kernels without SCTP), not an association."""
    if proto == "SCTP" and raw_sctp:
        try:
            return bool(rawsctp.exchange(src_ns, ip, port, timeout))
        except (TimeoutError, ConnectionRefusedError):
            return False  # nothing came back, or an ABORT / REJECT's port unreachable
        except OSError as e:
            if e.errno in (errno.EHOSTUNREACH, errno.ENOPROTOOPT, errno.EPROTO, errno.ENETUNREACH):
                return False  # REJECT's host unreachable or admin prohibited; protocol 132 taken by nobody
            raise
    with netns.in_netns(src_ns):
        kind = socket.SOCK_DGRAM if proto == "UDP" else socket.SOCK_STREAM
        fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
        s = socket.socket(fam, kind, socket.IPPROTO_SCTP if proto == "SCTP" else 0)
    try:
        s.settimeout(timeout)
        s.connect((ip, port))
        if proto == "UDP":
            s.send(b"probe\n")
        return bool(s.recv(256))
    except OSError as e:
        if e.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ECONNRESET, None) and \
                not isinstance(e, TimeoutError):
            raise
        return False
    finally:
        s.close()


class NetnsCluster:
    """Pods ``(namespace, name, labels)`` on one node, a network-policy plugin enforcing on it."""

    def __init__(self, plugin: str, pods: Iterable[tuple[str, str, dict[str, str]]], *,
                 namespaces: dict[str, dict[str, str]] | None = None, flags: dict[str, Any] | None = None,
                 config: dict[str, Any] | None = None, ipv6: bool = False,
                 ports: Iterable[tuple[str, int]] = tuple((proto, p) for proto in ("TCP", "UDP", "SCTP")
                                                          for p in (80, 81))) -> None:
        from kr_core.lab.responder import Responders

        self.prefix = f"krc-{os.urandom(3).hex()}"
        self.node_ns = f"{self.prefix}-node"
        self.made: list[str] = []
        self.responders = Responders()
        self.plugin_name = plugin
        self.pods: dict[str, Pod] = {}
        self.pod_ns: dict[str, str] = {}
        self.config = dict(config or {})
        self.ipv6 = ipv6
        self.family = 4
        self.ports = list(ports)
        self.n_pods = 0
        self._policies: list[NetworkPolicy] = []
        try:
            self._make_node()
            nss = dict(namespaces or {})
            for pns, _, _ in pods:
                nss.setdefault(pns, {})
            self.namespaces: dict[str, Namespace] = {n: ns(n, labels) for n, labels in nss.items()}
            for pns, name, labels in pods:
                self._make_pod(pns, name, labels)
            self._start_plugin(flags or {})
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------------------------- topology
    def _make_node(self) -> None:
        self.made.append(self.node_ns)
        netns.create(self.node_ns)
        n = self.node_ns
        _ip("-n", n, "link", "add", "kube-bridge", "type", "bridge")
        _ip("-n", n, "addr", "add", f"{GATEWAY}/24", "dev", "kube-bridge")
        _ip("-n", n, "link", "set", "kube-bridge", "up")
        if self.ipv6:
            _ip("-n", n, "addr", "add", f"{GATEWAY6}/64", "dev", "kube-bridge", "nodad")
            netns.run(n, ["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", "net.bridge.bridge-nf-call-ip6tables=1",
                          "net.ipv6.icmp.ratelimit=0"], check=False)
        # REJECT answers with ICMP errors: without the rate limit a blocked probe fails at once instead of timing out
        netns.run(n, ["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.bridge.bridge-nf-call-iptables=1",
                      "net.ipv4.icmp_ratelimit=0", "net.ipv4.icmp_msgs_per_sec=100000",
                      "net.ipv4.icmp_msgs_burst=100000"], check=False)

    def _make_pod(self, pns: str, name: str, labels: dict[str, str]) -> str:
        i = self.n_pods
        self.n_pods += 1
        pod_ns = f"{self.prefix}-p{i}"
        self.made.append(pod_ns)
        netns.create(pod_ns)
        ip = f"10.244.0.{10 + i}"
        _ip("-n", self.node_ns, "link", "add", f"veth{i}", "type", "veth", "peer", "name", "eth0", "netns", pod_ns)
        _ip("-n", self.node_ns, "link", "set", f"veth{i}", "master", "kube-bridge", "up")
        _ip("-n", pod_ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        _ip("-n", pod_ns, "link", "set", "eth0", "up")
        _ip("-n", pod_ns, "route", "add", "default", "via", GATEWAY)
        ips = [ip]
        if self.ipv6:
            ips.append(f"fd00:10:244::{10 + i:x}")
            _ip("-n", pod_ns, "addr", "add", f"{ips[1]}/64", "dev", "eth0", "nodad")
            _ip("-n", pod_ns, "-6", "route", "add", "default", "via", GATEWAY6)
        key = f"{pns}/{name}"
        self.pod_ns[key] = pod_ns
        self.pods[key] = pod(name, pns, ips, NODE, labels)
        problems = self.responders.add(key, pod_ns, self.ports, ipv6=self.ipv6)
        assert not problems, problems
        return key

    def add_pod(self, pns: str, name: str, labels: dict[str, str], *, feed: bool = True) -> str:
        """A new pod namespace with responders; ``feed=False``: the plugin is not told yet."""
        key = self._make_pod(pns, name, labels)
        if feed:
            self.add(self.pods[key])
        return key

    # ------------------------------------------------------------------------------------ plugin
    def _start_plugin(self, flags: dict[str, Any]) -> None:
        cls = plugin_class(self.plugin_name)
        self.host = PluginHost(from_classes([cls]))
        self.caller = self.host.get(self.plugin_name)
        self.caches = Caches(self.host.resources)
        info = cls.info  # type: ignore[attr-defined]
        self.ctx = PluginContext(name=self.plugin_name, settings=Settings(flags), node_name=NODE,
                                 metrics=CollectorRegistry(), config=validate_plugin_config(info, self.config),
                                 caches=self.caches.view(info.resources))
        cidrs = [POD_CIDR, POD_CIDR6] if self.ipv6 else [POD_CIDR]
        initial = [*self.namespaces.values(), *self.pods.values(), node(NODE, "10.0.0.1", cidrs),
                   *self._policies]
        self.feed = FeedSource(initial)
        self.in_node(self.caller.configure, self.ctx)
        self.feed.start(self.caches, self.caller.deliver)
        self.in_node(self.caller.start, self.ctx)
        self.in_node(self.caller.sync, "initial")
        self.started = True

    def in_node(self, fn: Callable[..., Any], *args: Any) -> Any:
        return netns.call_in(self.node_ns, fn, *args, timeout=120)

    def restart_plugin(self) -> None:
        """A new plugin instance (as after an agent restart) adopting what the first one left."""
        self.in_node(self.caller.stop)
        self._policies = self.policies()
        self._start_plugin({k: self.ctx.settings[k] for k in self.ctx.settings.explicit})

    # ------------------------------------------------------------------------------------- changes
    def add(self, obj: KubeObject) -> None:
        self.in_node(self.feed.add, obj)

    def update(self, obj: KubeObject) -> None:
        self.in_node(self.feed.update, obj)

    def delete(self, obj: KubeObject) -> None:
        self.in_node(self.feed.delete, obj)

    def apply_policy(self, pol: NetworkPolicy) -> None:
        if self.caches.stores[pol.kind].get(pol.key) is None:
            self.add(pol)
        else:
            self.update(pol)

    def policies(self) -> list[NetworkPolicy]:
        return list(self.ctx.caches.policies.list())

    def relabel_pod(self, key: str, labels: dict[str, str]) -> None:
        old = self.pods[key]
        new = pod(old.meta.name, old.meta.namespace, list(old.pod_ips), NODE, labels)
        self.pods[key] = new
        self.update(new)

    def relabel_namespace(self, name: str, labels: dict[str, str]) -> None:
        self.namespaces[name] = ns(name, labels)
        self.update(self.namespaces[name])

    def sync(self) -> None:
        self.in_node(self.caller.sync, "test")

    # ------------------------------------------------------------------------------------ probing
    def matrix(self, ports: Iterable[int] = (80,), protocols: Iterable[str] = ("TCP",),
               pairs: Iterable[tuple[str, str]] | None = None) -> dict[tuple[str, str, int, str], bool]:
        keys = list(self.pods)
        pairs = list(pairs) if pairs is not None else [(s, d) for s in keys for d in keys if s != d]
        jobs = [(s, d, p, proto) for p in ports for proto in protocols for s, d in pairs]
        with concurrent.futures.ThreadPoolExecutor(max_workers=32) as ex:
            got = ex.map(lambda j: probe(self.pod_ns[j[0]], self.ip_of(j[1]), j[2], j[3],
                                         raw_sctp=self.responders.raw_sctp), jobs)
            return dict(zip(jobs, got, strict=True))

    def ip_of(self, key: str) -> str:
        """The pod's address of the family probes use (``self.family``: 4 or 6)."""
        ips = self.pods[key].pod_ips
        return next((ip for ip in ips if (":" in ip) == (self.family == 6)), ips[0])

    def iptables_save(self, mode: str = "nft") -> str:
        return netns.run(self.node_ns, [f"iptables-{mode}-save", "-t", "filter"]).stdout

    def ipset(self, *args: str) -> str:
        return netns.run(self.node_ns, ["ipset", *args]).stdout

    def state(self) -> dict[str, Any]:
        return self.in_node(self.caller.state)  # type: ignore[no-any-return]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.responders.close()
        for name in reversed(self.made):
            with contextlib.suppress(Exception):
                netns.delete(name)
        self.made.clear()


def diff(expected: dict, observed: dict) -> list[str]:
    """Cells where the observation differs from the expectation, readably."""
    return [f"{s} -> {d} {p}/{proto}: expected {'allowed' if expected[k] else 'blocked'}, got "
            f"{'allowed' if observed.get(k) else 'blocked'}"
            for k in sorted(expected) for s, d, p, proto in [k] if expected[k] != observed.get(k)]


def wait_matrix(cluster: NetnsCluster, expected: dict, timeout: float = 5.0) -> list[str]:
    """Probe until the matrix equals ``expected`` or ``timeout`` passes; returns the remaining differences."""
    ports = sorted({k[2] for k in expected})
    protos = sorted({k[3] for k in expected})
    pairs = sorted({(k[0], k[1]) for k in expected})
    deadline = time.monotonic() + timeout
    while True:
        got = cluster.matrix(ports, protos, pairs)
        bad = diff(expected, {k: v for k, v in got.items() if k in expected})
        if not bad or time.monotonic() > deadline:
            return bad
        time.sleep(0.2)
