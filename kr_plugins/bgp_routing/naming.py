"""Small naming/formatting helpers kube-router shares across its routing code (AC-R6)."""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import struct

TUNNEL_PREFIX = "tun-"


def tunnel_name(next_hop: str) -> str:
    """kube-router's overlay tunnel name: ``tun-`` + the first 11 hex digits of sha256(next hop without '.'/':').

    Always at most 15 characters (IFNAMSIZ - 1).
    """
    digest = hashlib.sha256(next_hop.replace(".", "").replace(":", "").encode()).hexdigest()
    return TUNNEL_PREFIX + digest[:11]


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def grpc_listen_addrs(address: str, port: int) -> list[str]:
    """GoBGP admin listen addresses for ``--gobgp-admin-address``/``--gobgp-admin-port``.

    "" or an invalid address gives only loopback; a loopback or unspecified address gives only itself;
    any other address gives itself and 127.0.0.1.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return [_join("127.0.0.1", port)]
    if ip.is_loopback or ip.is_unspecified:
        return [_join(str(ip), port)]
    return [_join(str(ip), port), _join("127.0.0.1", port)]


def generate_router_id(primary_ip: str) -> str:
    """``--router-id=generate``: FNV-1 32-bit hash of the packed primary IP, rendered as an IPv4 address."""
    data = ipaddress.ip_address(primary_ip).packed
    h = 0x811C9DC5
    for b in data:
        h = (h * 0x01000193) & 0xFFFFFFFF
        h ^= b
    return socket.inet_ntoa(struct.pack("!I", h))
