"""Helpers every dataplane plugin shares: namespaces, iptables, ipset, nftables, sysctls, links/routes,
a batched raw netlink socket (``netlink``), ipset over netlink (``ipsetnl``) and a small helper process
that starts tools for a large agent (``launcher``).

Each module has one job; the pure renderers (:func:`render_restore`, :func:`render_sync`,
:func:`render_members`, :func:`encode_route`) are separate from the thin parts that talk to the kernel.
"""

from . import ipset, ipsetnl, iptables, launcher, links, netlink, netns, nft, sysctl
from .ipset import IpSet, IpsetError, IpsetNetlink, IpsetRunner, render_members, render_sync, set_name, temp_name
from .iptables import (
    Family,
    Iptables,
    IptablesError,
    Mode,
    choose_mode,
    clean_comment,
    detect_mode,
    iptc_read_chains,
    render_restore,
    save_stats,
)
from .links import BatchResult, LinkError, Route, apply_routes, encode_route, ensure_bridge, ensure_veth
from .netns import call_in, in_netns
from .nft import Nft, NftError

__all__ = [
    "BatchResult", "Family", "IpSet", "IpsetError", "IpsetNetlink", "IpsetRunner", "Iptables", "IptablesError", "LinkError",
    "Mode", "Nft", "NftError", "Route", "apply_routes", "call_in", "choose_mode", "clean_comment",
    "detect_mode", "encode_route", "ensure_bridge", "ensure_veth", "in_netns", "iptc_read_chains", "ipset",
    "ipsetnl", "iptables", "launcher", "links", "netlink", "netns", "nft", "render_members", "render_restore", "render_sync", "save_stats",
    "set_name", "sysctl", "temp_name",
]
