"""The embedded control plane: a small Kubernetes-API-compatible server (see DESIGN.md).

``ApiServer`` serves namespaces, pods, services, nodes, endpointslices and networkpolicies over
the Kubernetes REST API, stores them in SQLite and runs an EndpointSlice controller.
"""

from kr_core.embedded.server import ApiServer

__all__ = ["ApiServer"]
