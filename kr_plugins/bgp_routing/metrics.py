"""kube-router's routing metrics (section 5 of the reference), registered in the agent's registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.peer_info = Gauge("kube_router_bgp_peer_info", "BGP peer information (=1)",
                               ["address", "type", "asn", "state"], registry=r)
        self.peers = Gauge("kube_router_controller_bgp_peers", "Number of BGP peers of the instance", registry=r)
        self.adv_received = Counter("kube_router_controller_bgp_advertisements_received",
                                    "BGP advertisements received", registry=r)
        self.adv_sent = Counter("kube_router_controller_bgp_advertisements_sent", "BGP advertisements sent",
                                ["type"], registry=r)
        self.internal_peers_sync = Histogram("kube_router_controller_bgp_internal_peers_sync_time",
                                             "Time it took to sync internal bgp peers", registry=r)
        self.routes_sync = Histogram("kube_router_controller_routes_sync_time",
                                     "Time it took for controller to sync routes", registry=r)
        self.host_routes_sync = Histogram("kube_router_host_routes_sync_time",
                                          "Time it took for the bgp syncer to sync host routes", registry=r)
        self.host_routes_synced = Gauge("kube_router_host_routes_synced", "Count of host routes currently synced",
                                        registry=r)
        self.host_routes_added = Counter("kube_router_host_routes_added", "Host routes added", registry=r)
        self.host_routes_removed = Counter("kube_router_host_routes_removed", "Host routes removed", registry=r)
        self.bad_input = Counter("kr_bgp_routing_bad_input_total", "Annotations/flags skipped as invalid",
                                 ["object"], registry=r)
        self.bfd_session_up = Gauge("kr_bgp_bfd_session_up", "BFD session with an external BGP peer is Up (1) or not (0)",
                                    ["peer"], registry=r)
        self.bfd_transitions = Counter("kr_bgp_bfd_transitions_total", "BFD session state changes",
                                       ["peer", "state"], registry=r)
        self.gobgpd_restarts = Counter("kr_bgp_routing_gobgpd_restarts_total", "gobgpd restarts after it died",
                                       registry=r)

    def injector_stat(self, kind: str, value: float) -> None:
        """Callback of the route injector (called from its thread; prometheus_client is thread-safe)."""
        if kind == "received":
            self.adv_received.inc(value)
        elif kind == "added" and value:
            self.host_routes_added.inc(value)
        elif kind == "removed" and value:
            self.host_routes_removed.inc(value)
        elif kind == "synced":
            self.host_routes_synced.set(value)
        elif kind == "sync_time":
            self.host_routes_sync.observe(value)
