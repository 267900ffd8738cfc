"""The netpol_iptables plugin (NetworkPolicy with iptables + ipset).

A registered skeleton: it declares its role and what it watches, and does nothing yet. Its own issue fills
it in.
"""

from __future__ import annotations

from kr_core import PluginInfo, Resource, Role

__version__ = "0.1.0"


class Plugin:
    info = PluginInfo(
        name="netpol_iptables",
        role=Role.NETWORK_POLICY,
        version=__version__,
        resources=frozenset({Resource.POD, Resource.NAMESPACE, Resource.NETWORKPOLICY, Resource.NODE}),
        description="NetworkPolicy with iptables + ipset",
        implemented=False,
    )
