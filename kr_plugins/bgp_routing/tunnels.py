"""kube-router's overlay tunnels as ``ip`` commands: ipip / ip6ip6, the same with FoU (GUE) encapsulation, and vxlan.

Pure helpers for :class:`kr_plugins.bgp_routing.injector.Injector`, which runs them:

* :func:`tunnel_command` builds ``ip link add`` for the tunnel to a next hop (kube-router's commands:
  ``type ipip|ip6tnl ... ttl 225 [encap gue encap-sport auto encap-dport PORT] mode ipip|ip6ip6``);
* :func:`tunnel_matches` tells from ``ip -d -o link show`` whether an existing link is that tunnel, so a
  tunnel left with another encapsulation, port or end point (``--overlay-encap`` changed, a new node IP,
  a previous run with other flags) is recreated instead of reused;
* :func:`fou_port_command` is the receive side of FoU: ``ip [-6] fou add|del port PORT gue``, one UDP port
  per address family that decapsulates GUE into the ipip / ip6ip6 tunnels;
* :func:`load_fou_modules` loads ``fou`` and ``fou6`` as kube-router does at start: neither ``ip fou add``
  nor ``ip link add ... encap gue`` loads them, so on a kernel that has not loaded them both fail.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
from collections.abc import Sequence

from kr_core.net.kmod import load_modules

log = logging.getLogger("kr.bgp_routing.tunnels")

ENCAPS = ("ipip", "fou", "vxlan")
TUNNEL_TTL = "225"  # kube-router's
VXLAN_PORT = "4789"
FOU_MODULES = ("fou", "fou6")
DEFAULT_GUE_PORT = 5555  # --overlay-encap-port


def vxlan_vni(a: str, b: str) -> int:
    """The same VNI on both ends of a point-to-point vxlan tunnel (Linux refuses two devices with one VNI)."""
    return int(hashlib.sha256("|".join(sorted((a, b))).encode()).hexdigest()[:6], 16) or 1


def tunnel_command(name: str, remote: str, local: str, encap: str, port: int) -> list[str]:
    """The ``ip`` arguments that create tunnel ``name`` from ``local`` to ``remote`` (same address family).

    ``encap``: ``ipip`` (ipip, or ip6tnl mode ip6ip6 for IPv6), ``fou`` (the same with GUE on UDP ``port``)
    or ``vxlan`` (kr's addition).
    """
    if encap not in ENCAPS:
        raise ValueError(f"unknown overlay encapsulation {encap!r}")
    if encap == "vxlan":
        return ["link", "add", name, "type", "vxlan", "id", str(vxlan_vni(local, remote)), "remote", remote,
                "local", local, "dstport", VXLAN_PORT]
    v6 = ":" in remote
    cmd = ["link", "add", name, "type", "ip6tnl" if v6 else "ipip", "remote", remote, "local", local,
           "ttl", TUNNEL_TTL]
    if encap == "fou":
        cmd += ["encap", "gue", "encap-sport", "auto", "encap-dport", str(port)]
    return [*cmd, "mode", "ip6ip6" if v6 else "ipip"]


def _after(words: Sequence[str], key: str) -> str | None:
    try:
        return words[words.index(key) + 1]
    except (ValueError, IndexError):
        return None


def _same_ip(a: str | None, b: str) -> bool:
    if a is None:
        return False
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


def tunnel_matches(words: Sequence[str], remote: str, local: str, encap: str, port: int) -> bool:
    """Whether the link whose ``ip -d -o link show`` words are ``words`` is the tunnel :func:`tunnel_command`
    makes for these arguments (type, end points, encapsulation and its port)."""
    if not (_same_ip(_after(words, "remote"), remote) and _same_ip(_after(words, "local"), local)):
        return False
    if encap == "vxlan":
        return ("vxlan" in words and _after(words, "id") == str(vxlan_vni(local, remote))
                and _after(words, "dstport") == VXLAN_PORT)
    if ("ip6tnl" if ":" in remote else "ipip") not in words or "vxlan" in words:
        return False
    if encap == "fou":
        return _after(words, "encap") == "gue" and _after(words, "encap-dport") == str(port)
    return _after(words, "encap") in (None, "none")


def gue_port(words: Sequence[str]) -> int | None:
    """The GUE destination port of a tunnel link (its ``ip -d -o link show`` words), None without GUE."""
    port = _after(words, "encap-dport")
    return int(port) if _after(words, "encap") == "gue" and port and port.isdigit() else None


def fou_port_command(port: int, v6: bool, op: str = "add") -> list[str]:
    """``ip`` arguments that open (``add``) or close (``del``) the GUE receive port of one address family."""
    if op == "add":
        return [*(["-6"] if v6 else []), "fou", "add", "port", str(port), "gue"]
    return [*(["-6"] if v6 else []), "fou", "del", "port", str(port)]


def fou_port_open(show_output: str, port: int, v6: bool) -> bool:
    """Whether ``ip fou show`` lists the GUE receive port of that family (``port 5555 gue [-6]``).

    ``ip fou add`` of a port that is open already fails (EADDRINUSE), like one that another socket holds.
    """
    for line in show_output.splitlines():
        words = line.split()
        if words[:3] == ["port", str(port), "gue"] and (words[-1] == "-6") == v6:
            return True
    return False


@functools.cache
def load_fou_modules() -> bool:
    """``fou`` and ``fou6`` loaded, once per process; a failure is logged and not retried (the tunnel command
    then says more)."""
    return load_modules(*FOU_MODULES)
