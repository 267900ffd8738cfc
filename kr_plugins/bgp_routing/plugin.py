"""The bgp_routing plugin (pod networking by BGP with GoBGP).

A registered skeleton: it declares its role and what it watches, and does nothing yet. Its own issue fills
it in.
"""

from __future__ import annotations

from kr_core import PluginInfo, Resource, Role

__version__ = "0.1.0"


class Plugin:
    info = PluginInfo(
        name="bgp_routing",
        role=Role.POD_ROUTING,
        version=__version__,
        resources=frozenset({Resource.NODE, Resource.SERVICE, Resource.ENDPOINTSLICE}),
        description="pod networking by BGP with GoBGP",
        implemented=False,
    )
