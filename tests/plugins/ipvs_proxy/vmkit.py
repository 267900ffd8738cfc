"""A two-node test topology in network namespaces (inside the VM), with pods that answer, and the proxy
plugin running in-process for node-1.

    ext 192.168.50.100 ─┐                       (lan bridge in its own netns)
    node-1 192.168.50.1 ┼── kube-bridge 10.244.1.1/24 ── pod a 10.244.1.10, pod b 10.244.1.11
    node-2 192.168.50.2 ┘── kube-bridge 10.244.2.1/24 ── pod c 10.244.2.10

Routes: node-1 <-> node-2 pod CIDRs via each other; ext reaches service VIPs (203.0.113.0/24,
10.255.0.0/24) through node-1. Pods answer every line on TCP 8080 with ``<pod> <client ip>:<port>`` and
every UDP datagram on 5353 the same way (one thread per listener, sockets made inside the pod netns).
Every namespace name carries a per-run suffix; :meth:`Topology.close` removes them all.

``Topology(ipv6=True)`` adds the same plan in IPv6 (:data:`NODE_IPS6`, :data:`PODS6`, :data:`EXT_IP6`, pod
CIDRs fd00:244:N::/64, ext routes to fd00:96::/64 and the pod CIDRs via node-1, no DAD anywhere); the pods
then answer on IPv6 sockets too, with the same lines (the client address unbracketed).
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
from kr_core.net.launcher import Launcher
from kr_core.plugins import PluginHost, from_classes, validate_plugin_config
from kr_core.watch import Caches, FeedSource
from kr_plugins.ipvs_proxy.plugin import Plugin

PODS = {"a": ("node-1", "10.244.1.10"), "b": ("node-1", "10.244.1.11"), "c": ("node-2", "10.244.2.10")}
NODE_IPS = {"node-1": "192.168.50.1", "node-2": "192.168.50.2"}
EXT_IP = "192.168.50.100"
PODS6 = {"a": "fd00:244:1::10", "b": "fd00:244:1::11", "c": "fd00:244:2::10"}
NODE_IPS6 = {"node-1": "fd00:50::1", "node-2": "fd00:50::2"}
EXT_IP6 = "fd00:50::100"
POD_CIDRS6 = {"node-1": "fd00:244:1::/64", "node-2": "fd00:244:2::/64"}
TCP_PORT, UDP_PORT = 8080, 5353


# While a Topology lives, sh() starts its commands from a small helper process: an exec from the test
# process (the plugin and its imports loaded) costs ~0.45 s in UML, ~0.03 s from the helper.
_launcher: Launcher | None = None


def sh(ns: str | None, cmd: str, check: bool = True) -> str:
    argv = ["ip", "netns", "exec", ns, "sh", "-c", cmd] if ns else ["sh", "-c", cmd]
    if _launcher is not None:
        p = _launcher.run(argv, timeout=120)
    else:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd!r} in {ns}: exit {p.returncode}: {p.stderr.strip()}")
    return p.stdout


class Responder:
    """TCP line echo + UDP echo in one pod namespace, answering ``<name> <peer ip>:<peer port>``."""

    def __init__(self, name: str, ns: str, ipv6: bool = False) -> None:
        self.name, self.ns = name, ns
        self.closed = False
        self.socks: list[socket.socket] = []

        def make(af: socket.AddressFamily, any_ip: str) -> tuple[socket.socket, socket.socket]:
            t = socket.socket(af, socket.SOCK_STREAM)
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            u = socket.socket(af, socket.SOCK_DGRAM)
            if af == socket.AF_INET6:
                for s in (t, u):
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            t.bind((any_ip, TCP_PORT))
            t.listen(64)
            u.bind((any_ip, UDP_PORT))
            return t, u

        families = [(socket.AF_INET, "0.0.0.0")] + ([(socket.AF_INET6, "::")] if ipv6 else [])
        for af, any_ip in families:
            tcp, udp = netns.call_in(ns, make, af, any_ip)
            self.socks += [tcp, udp]
            threading.Thread(target=self._accept, args=(tcp,), daemon=True).start()
            threading.Thread(target=self._udp, args=(udp,), daemon=True).start()

    def _accept(self, tcp: socket.socket) -> None:
        while not self.closed:
            try:
                c, peer = tcp.accept()
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

    def _udp(self, udp: socket.socket) -> None:
        while not self.closed:
            try:
                _data, peer = udp.recvfrom(2048)
                if peer is None or self.closed:
                    return
                udp.sendto(f"{self.name} {peer[0]}:{peer[1]}\n".encode(), peer)
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
    def __init__(self, ipv6: bool = False) -> None:
        self.ipv6 = ipv6
        sfx = uuid.uuid4().hex[:5]
        self.ns = {n: f"krp-{n}-{sfx}" for n in ("lan", "node-1", "node-2", "ext", *PODS)}
        self.responders: list[Responder] = []
        global _launcher
        if _launcher is None:  # started here, in the root namespace (sh enters the others itself)
            _launcher = self.launcher = Launcher()
            _launcher.start()
        else:
            self.launcher = None
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        """One shell script for the whole plan (one launch, not one per step), then the responders."""
        script: list[str] = []

        def run(ns: str | None, cmd: str, optional: bool = False) -> None:
            line = f'ip netns exec {ns} sh -c "{cmd}"' if ns else cmd
            script.append(f"{line} || true" if optional else line)

        mods = ["ip_vs", "br_netfilter"] + (["ipv6"] if self.ipv6 else [])  # ipv6 is a module in UML
        run(None, f"modprobe -a {' '.join(mods)}", optional=True)
        for name in self.ns.values():
            run(None, f"ip netns add {name} && ip -n {name} link set lo up")
            if self.ipv6:  # links made from here on do no DAD: addresses usable at once
                run(name, "sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0")
        lan = self.ns["lan"]
        run(lan, "ip link add lan type bridge && ip link set lan up")
        hosts = {"node-1": NODE_IPS["node-1"], "node-2": NODE_IPS["node-2"], "ext": EXT_IP}
        for i, (h, ip) in enumerate(hosts.items()):
            ns = self.ns[h]
            run(None, f"ip link add kl{i} netns {lan} type veth peer name eth0 netns {ns}")
            run(lan, f"ip link set kl{i} master lan up")
            run(ns, f"ip addr add {ip}/24 dev eth0 && ip link set eth0 up")
            if self.ipv6:
                run(ns, f"ip addr add {({**NODE_IPS6, 'ext': EXT_IP6})[h]}/64 dev eth0 nodad")
        for node, cidr_i in (("node-1", 1), ("node-2", 2)):
            ns = self.ns[node]
            run(ns, f"ip link add kube-bridge type bridge && ip addr add 10.244.{cidr_i}.1/24 dev kube-bridge"
                    " && ip link set kube-bridge up && sysctl -qw net.ipv4.ip_forward=1")
            run(ns, "sysctl -qw net.bridge.bridge-nf-call-iptables=1", optional=True)
            if self.ipv6:
                run(ns, f"ip addr add fd00:244:{cidr_i}::1/64 dev kube-bridge nodad && "
                        "sysctl -qw net.ipv6.conf.all.forwarding=1")
                run(ns, "sysctl -qw net.bridge.bridge-nf-call-ip6tables=1", optional=True)
        run(self.ns["node-1"], f"ip route add 10.244.2.0/24 via {NODE_IPS['node-2']}")
        run(self.ns["node-2"], f"ip route add 10.244.1.0/24 via {NODE_IPS['node-1']}")
        run(self.ns["ext"], f"ip route add 203.0.113.0/24 via {NODE_IPS['node-1']} && "
                            f"ip route add 10.255.0.0/24 via {NODE_IPS['node-1']} && "
                            f"ip route add 10.244.0.0/16 via {NODE_IPS['node-1']}")
        if self.ipv6:
            run(self.ns["node-1"], f"ip -6 route add {POD_CIDRS6['node-2']} via {NODE_IPS6['node-2']}")
            run(self.ns["node-2"], f"ip -6 route add {POD_CIDRS6['node-1']} via {NODE_IPS6['node-1']}")
            run(self.ns["ext"], f"ip -6 route add fd00:96::/64 via {NODE_IPS6['node-1']} && "
                                f"ip -6 route add fd00:244::/48 via {NODE_IPS6['node-1']}")
        for i, (pod, (node, ip)) in enumerate(PODS.items()):
            ns, nns = self.ns[pod], self.ns[node]
            gw = ip.rsplit(".", 1)[0] + ".1"
            run(None, f"ip link add vp{i} netns {nns} type veth peer name eth0 netns {ns}")
            run(nns, f"ip link set vp{i} master kube-bridge up && bridge link set dev vp{i} hairpin on")
            run(ns, f"ip addr add {ip}/24 dev eth0 && ip link set eth0 up && ip route add default via {gw}")
            if self.ipv6:
                ip6 = PODS6[pod]
                run(ns, f"ip addr add {ip6}/64 dev eth0 nodad && "
                        f"ip -6 route add default via {ip6.rsplit(':', 2)[0]}::1")
        sh(None, "set -e\n" + "\n".join(script))
        for pod in PODS:
            self.responders.append(Responder(pod, self.ns[pod], self.ipv6))

    def close(self) -> None:
        for r in self.responders:
            r.close()
        sh(None, " ; ".join(f"ip netns del {n} 2>/dev/null" for n in self.ns.values()), check=False)
        global _launcher
        if self.launcher is not None:
            self.launcher.close()
            _launcher = self.launcher = None

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
            with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM) as s:
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


class UdpClient:
    """A UDP socket in ``ns`` bound to one fixed source port, kept for many datagrams (a client that never
    changes its 5-tuple, like a DNS resolver with a fixed port or a syslog sender)."""

    def __init__(self, ns: str, family: int, port: int) -> None:
        def make() -> socket.socket:
            s = socket.socket(socket.AF_INET6 if family == 6 else socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("::" if family == 6 else "0.0.0.0", port))
            return s

        self.sock: socket.socket = netns.call_in(ns, make)
        self.port = port

    def ask(self, ip: str, port: int = UDP_PORT, timeout: float = 1.0) -> str:
        """One datagram out, the answer back ("" when none came within ``timeout``; stale answers to
        earlier unanswered datagrams are dropped first)."""
        self.sock.setblocking(False)
        with contextlib.suppress(OSError):
            while True:
                self.sock.recv(2048)
        self.sock.settimeout(timeout)
        try:
            self.sock.sendto(b"hi\n", (ip, port))
            return self.sock.recv(2048).decode().strip()
        except OSError:
            return ""

    def close(self) -> None:
        self.sock.close()
