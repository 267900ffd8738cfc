"""Allocation of Service ClusterIPs and NodePorts, and of Node pod CIDRs.

The allocator keeps in-memory sets of what is in use; it is rebuilt from the stored objects at start
and must be called under the store lock (it is not locked itself).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from kr_core.embedded.validation import Cause, invalid, parse_ip

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
NODE_PORT_RANGE = (30000, 32767)


class AllocationError(Exception):
    def __init__(self, causes: list[Cause]) -> None:
        super().__init__("; ".join(c[2] for c in causes))
        self.causes = causes


def _family(net: Network) -> str:
    return "IPv4" if net.version == 4 else "IPv6"


def parse_ranges(text: str | Iterable[str]) -> list[Network]:
    parts = text.split(",") if isinstance(text, str) else list(text)
    nets = [ipaddress.ip_network(p.strip(), strict=False) for p in parts if p.strip()]
    if len(nets) > 2 or (len(nets) == 2 and nets[0].version == nets[1].version):
        raise ValueError(f"expected at most one IPv4 and one IPv6 CIDR, got {text!r}")
    return nets


class IPRange:
    """Hands out addresses of one CIDR (skipping the network address and the first host, which the
    real apiserver reserves for the ``kubernetes`` Service)."""

    def __init__(self, net: Network) -> None:
        self.net = net
        self.used: set[int] = set()
        self._base = int(net.network_address)
        self._size = min(net.num_addresses, 1 << 24)
        self._next = 2

    def contains(self, ip: str) -> bool:
        a = parse_ip(ip)
        return a is not None and a.version == self.net.version and a in self.net

    def reserve(self, ip: str) -> bool:
        off = int(ipaddress.ip_address(ip)) - self._base
        if off in self.used:
            return False
        self.used.add(off)
        return True

    def release(self, ip: str) -> None:
        a = parse_ip(ip)
        if a is not None and a.version == self.net.version:
            self.used.discard(int(a) - self._base)

    def allocate(self) -> str | None:
        last = self._size - 1 if self.net.version == 4 else self._size
        for i in range(last - 2):
            off = 2 + (self._next - 2 + i) % (last - 2)
            if off not in self.used:
                self.used.add(off)
                self._next = off + 1
                return str(ipaddress.ip_address(self._base + off))
        return None


class Allocator:
    def __init__(self, service_ranges: list[Network], cluster_cidrs: list[Network],
                 node_mask_v4: int = 24, node_mask_v6: int = 64) -> None:
        self.ranges = {_family(n): IPRange(n) for n in service_ranges}
        self.primary = _family(service_ranges[0])
        self.node_ports: set[int] = set()
        self.cluster_cidrs = cluster_cidrs
        self.node_masks = {4: node_mask_v4, 6: node_mask_v6}
        self.pod_cidrs: set[str] = set()

    # -- services --------------------------------------------------------------------------

    def load(self, services: Iterable[dict[str, Any]], nodes: Iterable[dict[str, Any]]) -> None:
        for svc in services:
            spec = svc.get("spec") or {}
            for ip in spec.get("clusterIPs") or []:
                for r in self.ranges.values():
                    if r.contains(ip):
                        r.reserve(ip)
            for p in spec.get("ports") or []:
                if p.get("nodePort"):
                    self.node_ports.add(p["nodePort"])
            if spec.get("healthCheckNodePort"):
                self.node_ports.add(spec["healthCheckNodePort"])
        for node in nodes:
            for c in (node.get("spec") or {}).get("podCIDRs") or []:
                self.pod_cidrs.add(str(ipaddress.ip_network(c, strict=False)))

    def _families(self, spec: dict[str, Any]) -> list[str]:
        causes: list[Cause] = []
        cips = [ip for ip in spec.get("clusterIPs") or [] if ip and ip != "None"]
        fams = list(spec.get("ipFamilies") or [])
        if not fams and cips:
            fams = ["IPv4" if ipaddress.ip_address(ip).version == 4 else "IPv6" for ip in cips]
        policy = spec.get("ipFamilyPolicy")
        if not policy:
            policy = "RequireDualStack" if len(fams) > 1 else "SingleStack"
        if not fams:
            fams = [self.primary]
        for i, f in enumerate(fams):
            if f not in self.ranges:
                causes.append(invalid(f"spec.ipFamilies[{i}]", f, "not configured on this cluster"))
        if len(fams) == 2 and fams[0] == fams[1]:
            causes.append(("spec.ipFamilies[1]", "FieldValueDuplicate", f'Duplicate value: "{fams[1]}"'))
        if policy == "SingleStack" and len(fams) > 1:
            causes.append(invalid("spec.ipFamilyPolicy", policy, "when multiple IP families are specified, "
                                  "must be 'PreferDualStack' or 'RequireDualStack'"))
        if policy == "RequireDualStack" and len(self.ranges) < 2:
            causes.append(invalid("spec.ipFamilyPolicy", policy, "this cluster is not configured for dual-stack services"))
        if causes:
            raise AllocationError(causes)
        if policy in ("PreferDualStack", "RequireDualStack") and len(fams) == 1 and len(self.ranges) == 2:
            fams.append("IPv6" if fams[0] == "IPv4" else "IPv4")
        spec["ipFamilyPolicy"] = policy
        spec["ipFamilies"] = fams
        return fams

    def allocate_service(self, svc: dict[str, Any], old: dict[str, Any] | None) -> None:
        """Fill in clusterIP(s), ipFamilies/ipFamilyPolicy and nodePorts; raises AllocationError."""
        spec = svc.setdefault("spec", {})
        ospec = (old or {}).get("spec") or {}
        typ = spec.get("type", "ClusterIP")
        if typ == "ExternalName":
            for k in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
                spec.pop(k, None)
            self._release_ips(ospec.get("clusterIPs") or [])
            self._sync_node_ports(spec, ospec, typ)
            return
        if old is not None and ospec.get("clusterIPs") and ospec.get("type") != "ExternalName":
            # patchAllocatedValues: an update without IPs keeps the allocated ones.
            if not spec.get("clusterIP") and not spec.get("clusterIPs"):
                spec["clusterIP"] = ospec.get("clusterIP")
                spec["clusterIPs"] = list(ospec["clusterIPs"])
            for f in ("ipFamilies", "ipFamilyPolicy"):
                if not spec.get(f) and ospec.get(f):
                    spec[f] = ospec[f]
            new_ips = spec.get("clusterIPs") or [spec.get("clusterIP")]
            if new_ips[0] != ospec["clusterIPs"][0]:
                raise AllocationError([invalid("spec.clusterIPs[0]", new_ips[0], "may not change once set")])
            spec["clusterIP"] = new_ips[0]
            spec["clusterIPs"] = new_ips
            self._families(spec)
            self._sync_node_ports(spec, ospec, typ)
            return
        if spec.get("clusterIP") and not spec.get("clusterIPs"):
            spec["clusterIPs"] = [spec["clusterIP"]]
        fams = self._families(spec)
        requested = list(spec.get("clusterIPs") or [])
        if requested and requested[0] == "None":
            spec["clusterIP"] = "None"
            spec["clusterIPs"] = ["None"]
            self._sync_node_ports(spec, ospec, typ)
            return
        got: list[str] = []
        try:
            for i, fam in enumerate(fams):
                rng = self.ranges[fam]
                want = requested[i] if i < len(requested) else None
                if want:
                    if not rng.contains(want):
                        raise AllocationError([invalid(f"spec.clusterIPs[{i}]", requested, f"failed to allocate IP {want}: "
                                                       f"the provided IP ({want}) is not in the valid range. The range "
                                                       f"of valid IPs is {rng.net}")])
                    if not rng.reserve(want):
                        raise AllocationError([invalid(f"spec.clusterIPs[{i}]", requested, f"failed to allocate IP {want}: "
                                                       "provided IP is already allocated")])
                    got.append(want)
                else:
                    ip = rng.allocate()
                    if ip is None:
                        raise AllocationError([("spec.clusterIPs", "InternalError", f"range {rng.net} is full")])
                    got.append(ip)
            self._sync_node_ports(spec, ospec, typ)
        except AllocationError:
            self._release_ips(got)
            raise
        spec["clusterIP"] = got[0]
        spec["clusterIPs"] = got

    def _release_ips(self, ips: Iterable[str]) -> None:
        for ip in ips:
            for r in self.ranges.values():
                r.release(ip)

    def _take_port(self, path: str, want: int | None) -> int:
        lo, hi = NODE_PORT_RANGE
        if want:
            if not lo <= want <= hi:
                raise AllocationError([invalid(path, want, f"provided port is not in the valid range. The range of "
                                               f"valid ports is {lo}-{hi}")])
            if want in self.node_ports:
                raise AllocationError([invalid(path, want, "provided port is already allocated")])
            self.node_ports.add(want)
            return want
        for port in range(lo, hi + 1):
            if port not in self.node_ports:
                self.node_ports.add(port)
                return port
        raise AllocationError([(path, "InternalError", "node port range is full")])

    def _sync_node_ports(self, spec: dict[str, Any], ospec: dict[str, Any], typ: str) -> None:
        """Allocate nodePorts (and healthCheckNodePort) for ``spec``; release those of ``ospec`` it no
        longer uses. All-or-nothing."""
        old_ports = {p.get("nodePort") for p in ospec.get("ports") or [] if p.get("nodePort")}
        if ospec.get("healthCheckNodePort"):
            old_ports.add(ospec["healthCheckNodePort"])
        old_by_key = {(p.get("port"), p.get("protocol", "TCP")): p.get("nodePort")
                      for p in ospec.get("ports") or [] if p.get("nodePort")}
        wants_ports = typ == "NodePort" or (typ == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts", True))
        taken: list[int] = []
        keep: set[int] = set()
        try:
            for i, p in enumerate(spec.get("ports") or []):
                np = p.get("nodePort")
                if typ not in ("NodePort", "LoadBalancer"):
                    p.pop("nodePort", None)
                    continue
                if not np and not wants_ports:
                    continue
                if not np:
                    np = old_by_key.get((p.get("port"), p.get("protocol", "TCP")))
                if np and np in old_ports:
                    keep.add(np)
                    p["nodePort"] = np
                    continue
                p["nodePort"] = self._take_port(f"spec.ports[{i}].nodePort", np)
                taken.append(p["nodePort"])
            if typ == "LoadBalancer" and spec.get("externalTrafficPolicy") == "Local":
                hc = spec.get("healthCheckNodePort") or ospec.get("healthCheckNodePort")
                if hc and hc in old_ports:
                    keep.add(hc)
                    spec["healthCheckNodePort"] = hc
                else:
                    spec["healthCheckNodePort"] = self._take_port("spec.healthCheckNodePort", hc)
                    taken.append(spec["healthCheckNodePort"])
            else:
                spec.pop("healthCheckNodePort", None)
        except AllocationError:
            self.node_ports.difference_update(taken)
            raise
        self.node_ports.difference_update(old_ports - keep)

    def release_service(self, svc: dict[str, Any]) -> None:
        spec = svc.get("spec") or {}
        self._release_ips(ip for ip in spec.get("clusterIPs") or [] if ip != "None")
        for p in spec.get("ports") or []:
            self.node_ports.discard(p.get("nodePort"))
        self.node_ports.discard(spec.get("healthCheckNodePort"))

    # -- nodes -----------------------------------------------------------------------------

    def allocate_node(self, node: dict[str, Any], old: dict[str, Any] | None) -> None:
        spec = node.setdefault("spec", {})
        ospec = (old or {}).get("spec") or {}
        if not spec.get("podCIDRs") and not spec.get("podCIDR") and ospec.get("podCIDRs"):
            spec["podCIDR"], spec["podCIDRs"] = ospec.get("podCIDR"), list(ospec["podCIDRs"])
            return
        if spec.get("podCIDR") and not spec.get("podCIDRs"):
            spec["podCIDRs"] = [spec["podCIDR"]]
        if ospec.get("podCIDRs") and spec.get("podCIDRs") != ospec["podCIDRs"]:
            raise AllocationError([("spec.podCIDRs", "FieldValueForbidden", "Forbidden: node updates may not change "
                                    "podCIDR except from \"\" to valid")])
        if spec.get("podCIDRs"):
            spec["podCIDR"] = spec["podCIDRs"][0]
            for c in spec["podCIDRs"]:
                self.pod_cidrs.add(str(ipaddress.ip_network(c, strict=False)))
            return
        got: list[str] = []
        for net in self.cluster_cidrs:
            mask = self.node_masks[net.version]
            if mask < net.prefixlen:
                continue
            for sub in net.subnets(new_prefix=mask):
                s = str(sub)
                if s not in self.pod_cidrs:
                    self.pod_cidrs.add(s)
                    got.append(s)
                    break
        if got:
            spec["podCIDR"] = got[0]
            spec["podCIDRs"] = got

    def release_node(self, node: dict[str, Any]) -> None:
        for c in (node.get("spec") or {}).get("podCIDRs") or []:
            self.pod_cidrs.discard(str(ipaddress.ip_network(c, strict=False)))
