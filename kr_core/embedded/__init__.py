"""The embedded control plane: a small Kubernetes-API-compatible server (see DESIGN.md).

``ApiServer`` serves namespaces, pods (+status, +binding), services (+status), nodes (+status),
discovery.k8s.io/v1 endpointslices and networking.k8s.io/v1 networkpolicies over the Kubernetes REST
API, well enough for the official Python client and kubectl 1.32; stores them in SQLite; allocates
ClusterIPs, NodePorts and node pod CIDRs; and runs an EndpointSlice controller::

    srv = ApiServer(data_path=None, host="127.0.0.1", port=0, history=10000, bookmark_interval=1.0, token=None)
    srv.start()
    srv.write_kubeconfig(path)   # for kubectl / kubernetes.config.new_client_from_config
    ...
    srv.stop()

Modules, one job each: ``store`` (SQLite + event history), ``registry`` (verbs and their semantics),
``server`` (HTTP routing, ``ApiServer``), ``watch`` (watch streams), ``selectors``, ``patch``,
``defaults``, ``validation``, ``alloc``, ``endpointslices``, ``resources`` (discovery), ``discovery``
(OpenAPI stubs for kubectl), ``tables`` (kubectl's server-side printing), ``protobuf`` (the request
bodies kubectl's typed generators send), ``cli`` (``kr apiserver``).

Known departures from kube-apiserver, on purpose:

- Objects are deleted at once unless they carry ``metadata.finalizers`` (then ``deletionTimestamp`` is
  set and the object goes when the last finalizer is removed); there is no graceful pod deletion.
- ``status`` given at create time is kept (kube-apiserver drops it for pods and services); afterwards
  status changes only through the ``/status`` subresource, as in kube-apiserver.
- Pod specs are not immutable (the lab scheduler patches ``spec.nodeName``); ``pods/binding`` works too.
- No server-side apply, no managedFields, no ``kubernetes`` Service, no aggregated discovery.
- A ``continue`` token resumes after the last key returned, against current data (no snapshot).
"""

from kr_core.embedded.server import ApiServer

__all__ = ["ApiServer"]
