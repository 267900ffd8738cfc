"""The ipvs_proxy plugin (kube-router's IPVS service proxy).

A registered skeleton: it declares its role and what it watches, and does nothing yet. Its own issue fills
it in.
"""

from __future__ import annotations

from kr_core import PluginInfo, Resource, Role

__version__ = "0.1.0"


class Plugin:
    info = PluginInfo(
        name="ipvs_proxy",
        role=Role.SERVICE_PROXY,
        version=__version__,
        resources=frozenset({Resource.SERVICE, Resource.ENDPOINTSLICE, Resource.POD, Resource.NODE}),
        description="kube-router's IPVS service proxy",
        implemented=False,
    )
