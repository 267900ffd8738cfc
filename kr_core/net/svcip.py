"""Service IP ranges and validation (kube-router's ``svcip.Validator``), shared by the proxy and routing.

Which of a Service's external addresses a node may serve or advertise depends on three flag-given range
lists, each split per IP family:

* ``--service-cluster-ip-range`` (at most one CIDR per family): where ClusterIPs come from;
* ``--service-external-ip-range``: allowed ``spec.externalIPs``;
* ``--loadbalancer-ip-range``: allowed ``status.loadBalancer.ingress[].ip``.

With ``--strict-external-ip-validation`` (the default) an external IP must lie inside an external range
and a LoadBalancer IP inside a LoadBalancer range, and neither may lie inside a cluster range; with no range
configured for the kind, every address of that kind is refused (kube-router >= 2.8). Strict validation off
lets every syntactically valid address through. An address that does not parse is always refused.

Usage::

    v = Validator.from_settings(ctx.settings)
    ok, refused = v.filter_external_ips(svc.external_ips)     # refused: [(ip, reason), ...]
    if v.is_cluster_ip("10.96.0.10"): ...
    v.ranges(Kind.EXTERNAL, 6)                                 # the IPv6 external ranges

Everything here is pure (no kernel access) and immutable, so one validator can be shared across threads.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

__all__ = ["IPAddress", "IPNetwork", "Kind", "Validator", "family_of", "parse_cidrs", "parse_ip"]


class Kind(enum.StrEnum):
    """The kinds of Service address ranges."""

    CLUSTER = "cluster"
    EXTERNAL = "external"
    LOADBALANCER = "loadbalancer"


def parse_ip(text: str) -> IPAddress | None:
    """The address, or None when ``text`` is not a plain IP (no prefix, no zone, no surrounding spaces)."""
    if not isinstance(text, str) or not text or text != text.strip() or "/" in text or "%" in text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def family_of(text: str) -> int | None:
    """4, 6, or None when ``text`` is not an IP."""
    a = parse_ip(text)
    return a.version if a is not None else None


def parse_cidrs(values: Iterable[str], what: str = "CIDR") -> tuple[IPNetwork, ...]:
    """Parse CIDRs (host bits allowed, as the flags accept them); ValueError names the bad value."""
    out = []
    for v in values:
        try:
            out.append(ipaddress.ip_network(str(v).strip(), strict=False))
        except ValueError:
            raise ValueError(f"invalid {what} {v!r}") from None
    return tuple(out)


def _in(addr: IPAddress, nets: Iterable[IPNetwork]) -> bool:
    return any(addr.version == n.version and addr in n for n in nets)


@dataclass(frozen=True)
class Validator:
    """The configured ranges, and the strict-validation decision built on them."""

    cluster_ranges: tuple[IPNetwork, ...] = ()
    external_ranges: tuple[IPNetwork, ...] = ()
    loadbalancer_ranges: tuple[IPNetwork, ...] = ()
    strict: bool = True

    @classmethod
    def from_ranges(cls, *, cluster: Iterable[str] = (), external: Iterable[str] = (),
                    loadbalancer: Iterable[str] = (), strict: bool = True) -> Validator:
        return cls(parse_cidrs(cluster, "service cluster IP range"),
                   parse_cidrs(external, "service external IP range"),
                   parse_cidrs(loadbalancer, "loadbalancer IP range"), bool(strict))

    @classmethod
    def from_settings(cls, settings: Any) -> Validator:
        """From kr's :class:`kr_core.config.Settings` (or any mapping of kube-router flag names)."""
        get = settings.__getitem__ if not isinstance(settings, Mapping) else settings.get
        return cls.from_ranges(
            cluster=get("service-cluster-ip-range") or (),
            external=get("service-external-ip-range") or (),
            loadbalancer=get("loadbalancer-ip-range") or (),
            strict=get("strict-external-ip-validation"),
        )

    # ------------------------------------------------------------------------------------ queries
    def ranges(self, kind: Kind | str, family: int | None = None) -> tuple[IPNetwork, ...]:
        """The ranges of ``kind``, optionally only those of IP ``family`` (4 or 6)."""
        nets = {Kind.CLUSTER: self.cluster_ranges, Kind.EXTERNAL: self.external_ranges,
                Kind.LOADBALANCER: self.loadbalancer_ranges}[Kind(kind)]
        return nets if family is None else tuple(n for n in nets if n.version == family)

    def is_cluster_ip(self, ip: str) -> bool:
        """Is ``ip`` inside a service cluster IP range?"""
        a = parse_ip(ip)
        return a is not None and _in(a, self.cluster_ranges)

    def check(self, ip: str, kind: Kind | str) -> str | None:
        """None when ``ip`` may be used as an address of ``kind`` (external or loadbalancer), else why not."""
        kind = Kind(kind)
        if kind is Kind.CLUSTER:
            raise ValueError("check() validates external and loadbalancer addresses")
        a = parse_ip(ip)
        if a is None:
            return "not an IP address"
        if not self.strict:
            return None
        ranges = self.ranges(kind)
        label = "--service-external-ip-range" if kind is Kind.EXTERNAL else "--loadbalancer-ip-range"
        if not ranges:
            return f"strict validation and no {label} configured"
        if _in(a, self.cluster_ranges):
            return "inside the service cluster IP range"
        if not _in(a, ranges):
            return f"outside {label} ({', '.join(map(str, ranges))})"
        return None

    def external_ip_allowed(self, ip: str) -> bool:
        return self.check(ip, Kind.EXTERNAL) is None

    def loadbalancer_ip_allowed(self, ip: str) -> bool:
        return self.check(ip, Kind.LOADBALANCER) is None

    def filter(self, ips: Iterable[str], kind: Kind | str) -> tuple[list[str], list[tuple[str, str]]]:
        """Split ``ips`` into (allowed in their order, [(refused ip, reason), ...])."""
        ok: list[str] = []
        bad: list[tuple[str, str]] = []
        for ip in ips:
            why = self.check(ip, kind)
            if why is None:
                ok.append(ip)
            else:
                bad.append((ip, why))
        return ok, bad

    def filter_external_ips(self, ips: Iterable[str]) -> tuple[list[str], list[tuple[str, str]]]:
        return self.filter(ips, Kind.EXTERNAL)

    def filter_loadbalancer_ips(self, ips: Iterable[str]) -> tuple[list[str], list[tuple[str, str]]]:
        return self.filter(ips, Kind.LOADBALANCER)
