"""kube-router's proxy metrics (section 5 of the reference), registered in the agent's registry.

Per-VIP IPVS counters are read from the kernel at scrape time (one service dump, stats included) by a
collector, and labelled from the plugin's map of which Service owns which virtual server (handed over
after each apply; only looked up, never iterated, by the scrape).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from .model import PROTO_NAMES, VKey

log = logging.getLogger("kr.ipvs_proxy.metrics")

LABELS = ("svc_namespace", "service_name", "service_vip", "protocol", "port")
# (metric name, help, type, stats field)
SERVICE_METRICS = (
    ("kube_router_service_total_connections", "Total incoming connections made", "counter", "conns"),
    ("kube_router_service_packets_in", "Total incoming packets", "counter", "inpkts"),
    ("kube_router_service_packets_out", "Total outgoing packets", "counter", "outpkts"),
    ("kube_router_service_bytes_in", "Total incoming bytes", "counter", "inbytes"),
    ("kube_router_service_bytes_out", "Total outgoing bytes", "counter", "outbytes"),
    ("kube_router_service_pps_in", "Incoming packets per second", "gauge", "inpps"),
    ("kube_router_service_pps_out", "Outgoing packets per second", "gauge", "outpps"),
    ("kube_router_service_cps", "Service connections per second", "gauge", "cps"),
    ("kube_router_service_bps_in", "Incoming bytes per second", "gauge", "inbps"),
    ("kube_router_service_bps_out", "Outgoing bytes per second", "gauge", "outbps"),
)


class ServiceStatsCollector(Collector):
    def __init__(self, export_time: Histogram) -> None:
        self.owners: dict[VKey, str] = {}  # virtual server -> "namespace/name" of its Service
        self.export_time = export_time

    def collect(self) -> Iterator[Metric]:
        from .ipvs import Ipvs, IpvsError

        t0 = time.perf_counter()
        metrics = {name: Metric(name, doc, typ) for name, doc, typ, _ in SERVICE_METRICS}
        owners = self.owners
        if owners:
            try:
                ipvs = Ipvs()
            except (IpvsError, OSError) as exc:
                log.debug("metrics: IPVS unavailable: %s", exc)
                ipvs = None
            if ipvs is not None:
                try:
                    for ks in ipvs.services():
                        owner = owners.get(ks.key)
                        if owner is None or ks.key.fwmark:
                            continue
                        ns, _, name = owner.partition("/")
                        labels = dict(zip(LABELS, (ns, name, ks.key.addr,
                                                   PROTO_NAMES.get(ks.key.proto, str(ks.key.proto)), str(ks.key.port)),
                                          strict=True))
                        for name, _doc, _typ, field in SERVICE_METRICS:
                            metrics[name].add_sample(name, labels, float(ks.stats.get(field, 0)))
                finally:
                    ipvs.close()
        self.export_time.observe(time.perf_counter() - t0)
        yield from metrics.values()


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.services = Gauge("kube_router_controller_ipvs_services", "Number of ipvs services in the instance",
                              registry=registry)
        self.sync_time = Histogram("kube_router_controller_ipvs_services_sync_time",
                                   "Time it took for controller to sync ipvs services", registry=registry)
        self.export_time = Histogram("kube_router_controller_ipvs_metrics_export_time",
                                     "Time it took to export metrics", registry=registry)
        self.problems = Counter("kr_ipvs_proxy_input_problems", "Bad input found in Services/EndpointSlices "
                                "(logged against the object and skipped)", ("kind",), registry=registry)
        self.netlink_messages = Counter("kr_ipvs_proxy_netlink_messages", "IPVS netlink messages sent",
                                        registry=registry)
        self.apply_failures = Counter("kr_ipvs_proxy_apply_failures", "IPVS operations the kernel refused",
                                      registry=registry)
        self.stats = ServiceStatsCollector(self.export_time)
        registry.register(self.stats)

    def owners(self, owners: dict[VKey, str]) -> None:
        """Which Service ("namespace/name") owns each virtual server: the plugin's own map, read (never
        copied: 10k entries per sync) by the collector at scrape time."""
        self.stats.owners = owners
