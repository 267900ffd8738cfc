"""A two-node test topology in network namespaces (inside the VM), with pods that answer, and the proxy
plugin running in-process for node-1.

    ext 192.168.50.100 ─┐                       (lan bridge in its own netns)
    node-1 192.168.50.1 ┼── kube-bridge 10.244.1.1/24 ── pod a 10.244.1.10, pod b 10.244.1.11
    node-2 192.168.50.2 ┘── kube-bridge 10.244.2.1/24 ── pod c 10.244.2.10

Routes: node-1 <-> node-2 pod CIDRs via each other; ext reaches service VIPs (203.0.113.0/24,
10.255.0.0/24) through node-1. Pods answer every line on TCP 8080 with ``<pod> <client ip>:<port>`` and
every UDP datagram on 5353 the same way (one thread per listener, sockets made inside the pod netns).
Every namespace name carries a per-run suffix; :meth:`Topology.close` removes them all.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import uuid
from typing import Any

from prometheus_client import CollectorRegistry

from kr_core import PluginContext
from kr_core.config import Settings
from kr_core.net import netns
from kr_core.plugins import PluginHost, from_classes, validate_plugin_config
from kr_core.watch import Caches, FeedSource
from kr_plugins.ipvs_proxy.plugin import Plugin

PODS = {"a": ("node-1", "10.244.1.10"), "b": ("node-1", "10.244.1.11"), "c": ("node-2", "10.244.2.10")}
NODE_IPS = {"node-1": "192.168.50.1", "node-2": "192.168.50.2"}
EXT_IP = "192.168.50.100"
TCP_PORT, UDP_PORT = 8080, 5353


def sh(ns: str | None, cmd: str, check: bool = True) -> str:
    argv = ["ip", "netns", "exec", ns, "sh", "-c", cmd] if ns else ["sh", "-c", cmd]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd!r} in {ns}: exit {p.returncode}: {p.stderr.strip()}")
    return p.stdout


class Responder:
    """TCP line echo + UDP echo in one pod namespace, answering ``<name> <peer ip>:<peer port>``."""

    def __init__(self, name: str, ns: str) -> None:
        self.name, self.ns = name, ns
        self.closed = False
        self.socks: list[socket.socket] = []

        def make() -> tuple[socket.socket, socket.socket]:
            t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            t.bind(("0.0.0.0", TCP_PORT))
            t.listen(64)
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.bind(("0.0.0.0", UDP_PORT))
            return t, u

        self.tcp, self.udp = netns.call_in(ns, make)
        self.socks += [self.tcp, self.udp]
        threading.Thread(target=self._accept, daemon=True).start()
        threading.Thread(target=self._udp, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                c, peer = self.tcp.accept()
            except OSError:
                return
            self.socks.append(c)
            threading.Thread(target=self._serve, args=(c, peer), daemon=True).start()

    def _serve(self, c: socket.socket, peer: Any) -> None:
        with contextlib.suppress(OSError):
            f = c.makefile("rb")
            for _line in f:
                c.sendall(f"{self.name} {peer[0]}:{peer[1]}\n".encode())
        with contextlib.suppress(OSError):
            c.close()

    def _udp(self) -> None:
        while not self.closed:
            try:
                _data, peer = self.udp.recvfrom(2048)
                if peer is None or self.closed:
                    return
                self.udp.sendto(f"{self.name} {peer[0]}:{peer[1]}\n".encode(), peer)
            except OSError:
                return

    def close(self) -> None:
        self.closed = True
        for s in self.socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()


class Topology:
    def __init__(self) -> None:
        sfx = uuid.uuid4().hex[:5]
        self.ns = {n: f"krp-{n}-{sfx}" for n in ("lan", "node-1", "node-2", "ext", *PODS)}
        self.responders: list[Responder] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        for m in ("ip_vs", "br_netfilter"):
            subprocess.run(["modprobe", m], check=False, capture_output=True)
        for name in self.ns.values():
            netns.create(name)
        lan = self.ns["lan"]
        sh(lan, "ip link add lan type bridge && ip link set lan up")
        hosts = {"node-1": NODE_IPS["node-1"], "node-2": NODE_IPS["node-2"], "ext": EXT_IP}
        for i, (h, ip) in enumerate(hosts.items()):
            ns = self.ns[h]
            sh(None, f"ip link add kl{i} netns {lan} type veth peer name eth0 netns {ns}")
            sh(lan, f"ip link set kl{i} master lan up")
            sh(ns, f"ip addr add {ip}/24 dev eth0 && ip link set eth0 up")
        for node, cidr_i in (("node-1", 1), ("node-2", 2)):
            ns = self.ns[node]
            sh(ns, f"ip link add kube-bridge type bridge && ip addr add 10.244.{cidr_i}.1/24 dev kube-bridge"
                   " && ip link set kube-bridge up && sysctl -qw net.ipv4.ip_forward=1")
            sh(ns, "sysctl -qw net.bridge.bridge-nf-call-iptables=1", check=False)
        sh(self.ns["node-1"], f"ip route add 10.244.2.0/24 via {NODE_IPS['node-2']}")
        sh(self.ns["node-2"], f"ip route add 10.244.1.0/24 via {NODE_IPS['node-1']}")
        sh(self.ns["ext"], f"ip route add 203.0.113.0/24 via {NODE_IPS['node-1']} && "
                           f"ip route add 10.255.0.0/24 via {NODE_IPS['node-1']} && "
                           f"ip route add 10.244.0.0/16 via {NODE_IPS['node-1']}")
        for i, (pod, (node, ip)) in enumerate(PODS.items()):
            ns, nns = self.ns[pod], self.ns[node]
            gw = ip.rsplit(".", 1)[0] + ".1"
            sh(None, f"ip link add vp{i} netns {nns} type veth peer name eth0 netns {ns}")
            sh(nns, f"ip link set vp{i} master kube-bridge up && bridge link set dev vp{i} hairpin on")
            sh(ns, f"ip addr add {ip}/24 dev eth0 && ip link set eth0 up && ip route add default via {gw}")
            self.responders.append(Responder(pod, ns))

    def close(self) -> None:
        for r in self.responders:
            r.close()
        for name in self.ns.values():
            with contextlib.suppress(Exception):
                netns.delete(name)

    # ------------------------------------------------------------------------------ traffic
    def connect(self, src: str, ip: str, port: int = TCP_PORT, timeout: float = 3.0) -> socket.socket:
        return netns.call_in(self.ns[src], socket.create_connection, (ip, port), timeout=timeout)

    def ask(self, src: str, ip: str, port: int = TCP_PORT, timeout: float = 3.0) -> str:
        """One TCP connection: send a line, return the answer ("" on failure: refused, timeout)."""
        try:
            s = self.connect(src, ip, port, timeout)
        except OSError:
            return ""
        try:
            return converse(s)
        finally:
            s.close()

    def ask_udp(self, src: str, ip: str, port: int = UDP_PORT, timeout: float = 3.0) -> str:
        def go() -> str:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(timeout)
                s.sendto(b"hi\n", (ip, port))
                return s.recv(2048).decode().strip()
        try:
            return netns.call_in(self.ns[src], go)
        except OSError:
            return ""


def converse(s: socket.socket) -> str:
    try:
        s.sendall(b"hi\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(256)
            if not chunk:
                break
            data += chunk
        return data.decode().strip()
    except OSError:
        return ""


class Proxy:
    """The plugin for node-1, fed by a FeedSource, running inside node-1's namespace (calls go through
    :meth:`call`, which enters the namespace on the calling thread)."""

    def __init__(self, node_ns: str, state_dir: str, initial: list[Any], flags: dict[str, Any] | None = None,
                 section: dict[str, Any] | None = None) -> None:
        self.ns = node_ns
        self.host = PluginHost(from_classes([Plugin]))
        self.caller = self.host.get("ipvs_proxy")
        self.plugin: Plugin = self.caller.instance  # type: ignore[assignment]
        self.caches = Caches(self.host.resources)
        self.registry = CollectorRegistry()
        self.syncs: list[str] = []
        settings = Settings({"strict-external-ip-validation": False, **(flags or {})})
        self.ctx = PluginContext(name="ipvs_proxy", settings=settings, node_name="node-1", metrics=self.registry,
                                 config=validate_plugin_config(Plugin.info, section or {}),
                                 caches=self.caches.view(Plugin.info.resources), state_dir=state_dir,
                                 request_sync=self.syncs.append)
        self.feed = FeedSource(initial)

    def call(self, fn: Any, *args: Any) -> Any:
        with netns.in_netns(self.ns):
            return fn(*args)

    def start(self) -> None:
        self.call(self.caller.configure, self.ctx)
        self.feed.start(self.caches, lambda ev: self.call(self.caller.deliver, ev))
        self.call(self.caller.start, self.ctx)
        self.call(self.caller.sync, "initial")

    def sync(self, reason: str = "periodic") -> None:
        self.call(self.caller.sync, reason)

    def state(self) -> dict[str, Any]:
        return self.call(self.caller.state)

    def stop(self) -> None:
        self.call(self.caller.stop)
