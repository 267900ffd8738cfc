"""The desired BGP configuration of this node, computed from the Node objects and the flags (AC-R3).

Pure: the plugin diffs these frozen specs against what it committed to gobgpd.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from kr_core.model import Node

from .nodeinfo import NodeBgp, node_bgp
from .peers import PeerConfig

DEFAULT_CLUSTER_ASN = 64512


@dataclass(frozen=True)
class GlobalSpec:
    asn: int
    router_id: str
    port: int = 179
    listen_addresses: tuple[str, ...] = ()
    graceful_restart: bool = False
    gr_time: int = 90
    gr_deferral: int = 360


@dataclass(frozen=True)
class PeerSpec:
    address: str
    asn: int
    kind: str  # internal | external
    port: int = 179
    password: str = ""
    local_address: str = ""
    multihop_ttl: int = 0
    hold_time: int = 90
    connect_retry: int = 5
    rr_client: bool = False
    rr_cluster_id: str = ""
    graceful_restart: bool = False
    gr_time: int = 90
    gr_deferral: int = 360
    families: tuple[int, ...] = (4,)
    description: str = ""


def family(ip: str) -> int:
    return ipaddress.ip_address(ip).version


@dataclass(frozen=True)
class Options:
    """The flags that shape peering (a subset of ``ctx.settings``)."""

    cluster_asn: int = 0
    full_mesh: bool = True
    enable_ibgp: bool = True
    bgp_port: int = 179
    hold_time: int = 90
    multihop_ttl: int = 0
    graceful_restart: bool = False
    gr_time: int = 90
    gr_deferral: int = 360
    families: tuple[int, ...] = (4,)


def local_asn(me: NodeBgp, opts: Options) -> int | None:
    """Our AS: the cluster ASN in full mesh; the node's ``node.asn`` otherwise (None: not configured)."""
    if opts.full_mesh:
        return opts.cluster_asn or DEFAULT_CLUSTER_ASN
    return me.asn


def internal_peers(me: Node, nodes: Iterable[Node], opts: Options) -> list[PeerSpec]:
    """kube-router's ``syncInternalPeers``: the other nodes we peer with over iBGP."""
    if not opts.enable_ibgp or not me.primary_ip:
        return []
    mine = node_bgp(me.meta.annotations)
    asn = local_asn(mine, opts)
    if asn is None:
        return []
    my_family = family(me.primary_ip)
    out = []
    for n in nodes:
        if n.name == me.name or not n.primary_ip:
            continue
        try:
            if family(n.primary_ip) != my_family:
                continue
        except ValueError:
            continue
        other = node_bgp(n.meta.annotations)
        if mine.rr_client and not other.rr_server:
            continue
        if not opts.full_mesh and other.asn != mine.asn:
            continue
        rr_client = bool(mine.rr_server and other.rr_client)
        out.append(PeerSpec(
            address=n.primary_ip, asn=asn, kind="internal", port=opts.bgp_port, local_address=me.primary_ip,
            rr_client=rr_client, rr_cluster_id=mine.rr_server if rr_client else "",
            graceful_restart=opts.graceful_restart, gr_time=opts.gr_time, gr_deferral=opts.gr_deferral,
            families=tuple(f for f in opts.families), description=f"node {n.name}",
        ))
    return out


def external_peers(me: Node, configs: Iterable[PeerConfig], opts: Options) -> tuple[list[PeerSpec], list[str]]:
    """External peers (flags or this node's annotations), skipping those of another family than their local IP."""
    out, problems = [], []
    for c in configs:
        local = c.local_ip or me.primary_ip
        if local and family(local) != c.family:
            problems.append(f"peer {c.address}: local address {local} is of another family; skipped")
            continue
        out.append(PeerSpec(
            address=c.address, asn=c.asn, kind="external", port=c.port, password=c.password, local_address=local,
            multihop_ttl=opts.multihop_ttl, hold_time=opts.hold_time,
            graceful_restart=opts.graceful_restart, gr_time=opts.gr_time, gr_deferral=opts.gr_deferral,
            families=tuple(opts.families), description="external peer",
        ))
    return out, problems
