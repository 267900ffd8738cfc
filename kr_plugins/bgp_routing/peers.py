"""BGP peers: kube-router's external peers from flags and node annotations, ASN checks (AC-R5).

Everything here is pure: parsing returns configs plus a list of problems, so the caller logs them against
the node and configures every peer that did parse.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

ANN_PEERS = "kube-router.io/peers"
ANN_PEER_IPS = "kube-router.io/peer.ips"
ANN_PEER_ASNS = "kube-router.io/peer.asns"
ANN_PEER_PASSWORDS = "kube-router.io/peer.passwords"
ANN_PEER_LOCALIPS = "kube-router.io/peer.localips"
ANN_PEER_PORTS = "kube-router.io/peer.ports"

DEFAULT_PORT = 179


class PeerError(ValueError):
    """A peer definition that cannot be used; the message says which one and why."""


@dataclass(frozen=True)
class BfdConfig:
    """BFD for one external peer (``--enable-bfd``/``--bfd-*`` or the ``bfd`` of a ``peers`` entry);
    intervals in milliseconds."""

    enabled: bool = False
    port: int = 3784
    detection_multiplier: int = 3
    required_min_rx_interval: int = 1000
    desired_min_tx_interval: int = 1000


#: interval bounds (ms): BFD carries microseconds in 32 bits
BFD_MAX_INTERVAL_MS = 4294967
_BFD_KEYS = {"enabled", "port", "detection_multiplier", "required_min_rx_interval", "desired_min_tx_interval"}


def bfd_problem(c: BfdConfig) -> str | None:
    """Why ``c`` cannot be used (None: valid)."""
    if not 0 < c.port < 65536:
        return f"BFD port {c.port} out of range (1-65535)"
    if not 1 <= c.detection_multiplier <= 255:
        return f"BFD detection multiplier {c.detection_multiplier} out of range (1-255)"
    for name, v in (("required min RX", c.required_min_rx_interval), ("desired min TX", c.desired_min_tx_interval)):
        if not 1 <= v <= BFD_MAX_INTERVAL_MS:
            return f"BFD {name} interval {v} ms out of range (1-{BFD_MAX_INTERVAL_MS})"
    return None


def bfd_from_yaml(raw: Any, where: str) -> BfdConfig:
    """The ``bfd`` mapping of a ``peers`` entry; raises :class:`PeerError` on any invalid value."""
    if not isinstance(raw, dict):
        raise PeerError(f"{where}: bfd must be a mapping, not {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in _BFD_KEYS)
    if unknown:
        raise PeerError(f"{where}: bfd: unknown key(s) {', '.join(unknown)}")
    enabled = raw.get("enabled", False)
    if not isinstance(enabled, bool):
        raise PeerError(f"{where}: bfd.enabled must be true or false, not {enabled!r}")
    values: dict[str, int] = {}
    for key, default in (("port", 3784), ("detection_multiplier", 3), ("required_min_rx_interval", 1000),
                         ("desired_min_tx_interval", 1000)):
        v = raw.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise PeerError(f"{where}: bfd.{key} {v!r} is not a number")
        try:
            values[key] = int(str(v).strip())
        except ValueError:
            raise PeerError(f"{where}: bfd.{key} {v!r} is not a number") from None
    c = BfdConfig(enabled=enabled, **values)
    problem = bfd_problem(c)
    if problem:
        raise PeerError(f"{where}: {problem}")
    return c


@dataclass(frozen=True)
class PeerConfig:
    """One external BGP peer as configured (before it becomes a GoBGP ``Peer``)."""

    address: str
    asn: int
    port: int = DEFAULT_PORT
    password: str = ""  # decoded (the flags and annotations carry base64)
    local_ip: str = ""
    bfd: BfdConfig = field(default_factory=BfdConfig)

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.address).version


def reserved_asn(asn: int) -> bool:
    """kube-router refuses these remote ASNs: 0, 23456, 64000-64511, 65535-131071, 4294967295 (and out of range)."""
    return (asn <= 0 or asn == 23456 or 64000 <= asn <= 64511 or 65535 <= asn <= 131071
            or asn >= 4294967295)


def valid_cluster_asn(asn: int) -> bool:
    """The iBGP (cluster or node) ASN must be private: 64512-65535 or 4200000000-4294967294."""
    return 64512 <= asn <= 65535 or 4200000000 <= asn <= 4294967294


def decode_password(value: str, where: str) -> str:
    if not value:
        return ""
    try:
        return base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise PeerError(f"{where}: password is not valid base64") from None


def _ip(value: Any, where: str) -> str:
    try:
        return str(ipaddress.ip_address(str(value).strip()))
    except ValueError:
        raise PeerError(f"{where}: {value!r} is not an IP address") from None


def _asn(value: Any, where: str) -> int:
    try:
        asn = int(str(value).strip())
    except ValueError:
        raise PeerError(f"{where}: ASN {value!r} is not a number") from None
    if reserved_asn(asn):
        raise PeerError(f"{where}: ASN {asn} is reserved or out of range (1-4294967294 without 23456, "
                        "64000-64511, 65535-131071)")
    return asn


def _port(value: Any, where: str) -> int:
    if value in (None, ""):
        return DEFAULT_PORT
    try:
        port = int(str(value).strip())
    except ValueError:
        raise PeerError(f"{where}: port {value!r} is not a number") from None
    if not 0 < port < 65536:
        raise PeerError(f"{where}: port {port} out of range")
    return port


def peers_from_lists(ips: Sequence[str], asns: Sequence[Any], passwords: Sequence[str] = (),
                     ports: Sequence[Any] = (), local_ips: Sequence[str] = (),
                     what: str = "peer") -> tuple[list[PeerConfig], list[str]]:
    """Positional lists (``--peer-router-*`` flags or the legacy ``peer.*`` annotations) -> peers, problems.

    Count mismatches make the whole list unusable (as in kube-router); a bad single entry skips only that peer.
    """
    if len(ips) != len(asns):
        return [], [f"{what}: {len(ips)} IPs but {len(asns)} ASNs: every peer needs exactly one ASN"]
    for name, lst in (("passwords", passwords), ("ports", ports), ("local IPs", local_ips)):
        if lst and len(lst) != len(ips):
            return [], [f"{what}: {len(lst)} {name} for {len(ips)} peers: give none or one per peer"]
    out: list[PeerConfig] = []
    problems: list[str] = []
    for i, raw_ip in enumerate(ips):
        where = f"{what} {i} ({raw_ip})"
        try:
            out.append(PeerConfig(
                address=_ip(raw_ip, where), asn=_asn(asns[i], where),
                port=_port(ports[i] if ports else None, where),
                password=decode_password(passwords[i].strip() if passwords else "", where),
                local_ip=_ip(local_ips[i], where) if local_ips and str(local_ips[i]).strip() else "",
            ))
        except PeerError as e:
            problems.append(str(e))
    return out, problems


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",")] if value.strip() else []


def peers_from_yaml(text: str) -> tuple[list[PeerConfig], list[str]]:
    """The ``kube-router.io/peers`` annotation: a YAML list of {remoteip, remoteasn, password, port, localip, bfd}."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        return [], [f"{ANN_PEERS}: not valid YAML: {str(e).splitlines()[0]}"]
    if data is None:
        return [], []
    if not isinstance(data, list):
        return [], [f"{ANN_PEERS}: must be a YAML list of peers, not {type(data).__name__}"]
    out: list[PeerConfig] = []
    problems: list[str] = []
    for i, item in enumerate(data):
        where = f"{ANN_PEERS}[{i}]"
        try:
            if not isinstance(item, dict):
                raise PeerError(f"{where}: must be a mapping")
            if item.get("remoteip") in (None, ""):
                raise PeerError(f"{where}: remoteip is required")
            if item.get("remoteasn") in (None, ""):
                raise PeerError(f"{where}: remoteasn is required")
            where = f"{where} ({item['remoteip']})"
            bfd = BfdConfig()
            if item.get("bfd") is not None:
                try:
                    bfd = bfd_from_yaml(item["bfd"], where)
                except PeerError as e:
                    problems.append(f"{e}; this peer runs without BFD")
            out.append(PeerConfig(
                address=_ip(item["remoteip"], where), asn=_asn(item["remoteasn"], where),
                port=_port(item.get("port"), where),
                password=decode_password(str(item.get("password") or ""), where),
                local_ip=_ip(item["localip"], where) if item.get("localip") else "", bfd=bfd,
            ))
        except (PeerError, ValueError, TypeError) as e:
            problems.append(str(e))
    return out, problems


def peers_from_annotations(annotations: Mapping[str, str]) -> tuple[list[PeerConfig], list[str]]:
    """A node's own external peers: ``peers`` (YAML) if present, else the legacy ``peer.*`` lists."""
    if annotations.get(ANN_PEERS, "").strip():
        return peers_from_yaml(annotations[ANN_PEERS])
    if ANN_PEER_IPS not in annotations and ANN_PEER_ASNS not in annotations:
        return [], []
    return peers_from_lists(
        _split(annotations.get(ANN_PEER_IPS, "")), _split(annotations.get(ANN_PEER_ASNS, "")),
        passwords=_split(annotations.get(ANN_PEER_PASSWORDS, "")), ports=_split(annotations.get(ANN_PEER_PORTS, "")),
        local_ips=_split(annotations.get(ANN_PEER_LOCALIPS, "")), what="kube-router.io/peer.*",
    )


def peers_from_flags(ips: Sequence[str], asns: Sequence[int], ports: Sequence[int] = (),
                     passwords: Sequence[str] = (), passwords_file: str = "") -> tuple[list[PeerConfig], list[str]]:
    """``--peer-router-ips/-asns/-ports/-passwords[-file]``; the passwords flag wins over the file."""
    problems: list[str] = []
    if not passwords and passwords_file:
        try:
            with open(passwords_file) as f:
                passwords = _split(f.read().strip())
        except OSError as e:
            problems.append(f"--peer-router-passwords-file {passwords_file}: {e.strerror}")
    peers, more = peers_from_lists(list(ips), list(asns), passwords=list(passwords), ports=list(ports),
                                   what="--peer-router-ips")
    return peers, problems + more
