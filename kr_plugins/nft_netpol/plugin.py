"""The nft_netpol plugin (NetworkPolicy on native nftables).

A registered skeleton: it declares its role and what it watches, and does nothing yet. Its own issue fills
it in.
"""

from __future__ import annotations

from kr_core import PluginInfo, Resource, Role

__version__ = "0.1.0"


class Plugin:
    info = PluginInfo(
        name="nft_netpol",
        role=Role.NETWORK_POLICY,
        version=__version__,
        resources=frozenset({Resource.POD, Resource.NAMESPACE, Resource.NETWORKPOLICY, Resource.NODE}),
        description="NetworkPolicy on native nftables",
        implemented=False,
        default_enabled=False,
    )
