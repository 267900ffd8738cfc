"""Config file + kube-router-compatible flags -> validated settings.

The config file is YAML with three kinds of top-level keys::

    # any kube-router flag, same name and meaning as on the command line (the command line wins)
    ipvs-sync-period: 1m
    service-cluster-ip-range: [10.96.0.0/12]
    # which plugins run (default: every installed plugin)
    plugins:
      enabled: [ipvs_proxy, netpol_iptables]     # or: disabled: [bgp_routing]
    # one section per plugin, validated by that plugin's schema
    netpol_iptables:
      iptables_mode: auto

Every error names the key path (``ipvs_proxy.scheduler``, ``service-node-port-range``) and makes the
command exit with status 2.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kr_core.flags import FLAGS, FLAGS_BY_NAME, Flag, parse_value


class ConfigError(Exception):
    """An invalid configuration. ``path`` is the key path of the offending value ('' for the whole file)."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class Settings:
    """The kube-router flags, resolved: defaults < config file < command line.

    Read a flag as an attribute with underscores (``settings.ipvs_sync_period``, durations in seconds) or by
    its flag name (``settings["ipvs-sync-period"]``). ``explicit`` holds the names that were set by the user.
    """

    def __init__(self, values: dict[str, Any] | None = None, explicit: set[str] | None = None) -> None:
        self._values: dict[str, Any] = {f.name: f.default for f in FLAGS}
        if values:
            for k, v in values.items():
                if k not in FLAGS_BY_NAME:
                    raise ConfigError(k, "unknown kube-router flag")
                self._values[k] = v
        self.explicit: frozenset[str] = frozenset(explicit if explicit is not None else (values or {}))

    def __getattr__(self, attr: str) -> Any:
        try:
            return self._values[attr.replace("_", "-")]
        except KeyError:
            raise AttributeError(attr) from None

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    # ------------------------------------------------------------- derived values shared by plugins
    @property
    def node_port_range(self) -> tuple[int, int]:
        return parse_node_port_range(self._values["service-node-port-range"])

    @property
    def families(self) -> tuple[int, ...]:
        """Enabled IP families as (4,), (6,) or (4, 6)."""
        return tuple(f for f, on in ((4, self.enable_ipv4), (6, self.enable_ipv6)) if on)


@dataclass
class Selection:
    """The ``plugins:`` section."""

    enabled: list[str] | None = None
    disabled: list[str] = field(default_factory=list)


@dataclass
class ConfigFile:
    """A parsed config file, before the command line is merged in."""

    flags: dict[str, Any] = field(default_factory=dict)
    selection: Selection = field(default_factory=Selection)
    sections: dict[str, Any] = field(default_factory=dict)
    path: str = ""


def parse_node_port_range(text: str) -> tuple[int, int]:
    """kube-router's NodePort range parser: 'a-b' or 'a:b' (AC-N8)."""
    import re

    m = re.fullmatch(r"\s*(\S+?)\s*[-:]\s*(\S+)\s*", str(text))
    if not m or "," in text:
        raise ValueError(f"failed to parse node port range {text!r}: use 'a-b' or 'a:b'")
    try:
        a, b = int(m.group(1)), int(m.group(2))
    except ValueError:
        raise ValueError(f"failed to parse node port range {text!r}: ports must be integers") from None
    if not 0 < a < 65536:
        raise ValueError(f"invalid node port range {text!r}: port 1 {a} is not a valid port")
    if not 0 < b < 65536:
        raise ValueError(f"invalid node port range {text!r}: port 2 {b} is not a valid port")
    if a >= b:
        raise ValueError(f"invalid node port range {text!r}: port 1 {a} >= port 2 {b}")
    return a, b


def load_config_file(path: str | Path, plugin_names: set[str] | None = None) -> ConfigFile:
    """Read and structurally check a config file. Plugin sections are validated later, by their plugin."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError("", f"cannot read config file {p}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError("", f"{p} is not valid YAML: {e}") from None
    return parse_config(data, plugin_names, str(p))


def parse_config(data: Any, plugin_names: set[str] | None = None, path: str = "") -> ConfigFile:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("", f"the config must be a mapping, not {type(data).__name__}")
    cfg = ConfigFile(path=path)
    for key, value in data.items():
        key = str(key)
        if key == "plugins":
            cfg.selection = _parse_selection(value)
        elif key in FLAGS_BY_NAME:
            cfg.flags[key] = _parse_flag(FLAGS_BY_NAME[key], value, key)
        elif key.replace("_", "-") in FLAGS_BY_NAME and "_" in key:
            raise ConfigError(key, f"kube-router flags are spelt with hyphens: use {key.replace('_', '-')!r}")
        elif plugin_names is None or key in plugin_names:
            if value is not None and not isinstance(value, dict):
                raise ConfigError(key, f"a plugin section must be a mapping, not {type(value).__name__}")
            cfg.sections[key] = value or {}
        else:
            raise ConfigError(
                key,
                "unknown key: not a kube-router flag, not 'plugins', and no installed plugin has this name"
                + (f" (installed: {', '.join(sorted(plugin_names))})" if plugin_names else ""),
            )
    return cfg


def _parse_selection(value: Any) -> Selection:
    if value is None:
        return Selection()
    if not isinstance(value, dict):
        raise ConfigError("plugins", "must be a mapping with 'enabled' or 'disabled'")
    unknown = set(value) - {"enabled", "disabled"}
    if unknown:
        raise ConfigError(f"plugins.{sorted(unknown)[0]}", "unknown key (use 'enabled' or 'disabled')")
    sel = Selection()
    for k in ("enabled", "disabled"):
        if k in value:
            v = value[k]
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise ConfigError(f"plugins.{k}", "must be a list of plugin names")
            setattr(sel, k, list(v))
    if sel.enabled is not None and sel.disabled:
        raise ConfigError("plugins", "give either 'enabled' or 'disabled', not both")
    return sel


def _parse_flag(flag: Flag, value: Any, path: str) -> Any:
    try:
        return parse_value(flag, value)
    except (ValueError, TypeError) as e:
        raise ConfigError(path, str(e)) from None


def _cidrs(values: list[str], path: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    out = []
    for i, v in enumerate(values):
        try:
            out.append(ipaddress.ip_network(v, strict=False))
        except ValueError:
            raise ConfigError(f"{path}[{i}]", f"invalid CIDR {v!r}") from None
        if "/" not in v:
            raise ConfigError(f"{path}[{i}]", f"invalid CIDR {v!r}: a bare IP is not a CIDR")
    return out


def validate_settings(s: Settings) -> None:
    """kube-router's own start-up checks on the flags (the cross-field rules)."""
    if not s.enable_ipv4 and not s.enable_ipv6:
        raise ConfigError("enable-ipv4", "at least one of --enable-ipv4 and --enable-ipv6 must be true")
    try:
        parse_node_port_range(s["service-node-port-range"])
    except ValueError as e:
        raise ConfigError("service-node-port-range", str(e)) from None
    cluster = _cidrs(s.service_cluster_ip_range, "service-cluster-ip-range")
    if len(cluster) > 2:
        raise ConfigError("service-cluster-ip-range", "too many CIDRs: at most 2 (one per family)")
    if len(cluster) == 2 and cluster[0].version == cluster[1].version:
        raise ConfigError("service-cluster-ip-range", "two CIDRs must be of different families")
    for name in ("service-cluster-ip-range", "service-external-ip-range", "loadbalancer-ip-range", "excluded-cidrs"):
        for i, net in enumerate(_cidrs(s[name], name)):
            if net.version == 6 and not s.enable_ipv6:
                raise ConfigError(f"{name}[{i}]", f"IPv6 CIDR {net} given while --enable-ipv6 is false")
            if net.version == 4 and not s.enable_ipv4:
                raise ConfigError(f"{name}[{i}]", f"IPv4 CIDR {net} given while --enable-ipv4 is false")
    for name in ("ipvs-sync-period", "iptables-sync-period", "routes-sync-period", "injected-routes-sync-period",
                 "cache-sync-timeout", "loadbalancer-sync-period"):
        if s[name] <= 0:
            raise ConfigError(name, "must be greater than 0")
    if not 0 < s.bgp_graceful_restart_time <= 4095:
        raise ConfigError("bgp-graceful-restart-time", "must be > 0 and at most 4095s")
    if not 0 < s.bgp_graceful_restart_deferral_time <= 18 * 3600:
        raise ConfigError("bgp-graceful-restart-deferral-time", "must be > 0 and at most 18h")
    if s.service_vip_mode not in ("address", "route"):  # kr's own flag
        raise ConfigError("service-vip-mode", f"{s.service_vip_mode!r} is not one of: address, route")
    if s.overlay_type not in ("subnet", "full"):
        raise ConfigError("overlay-type", f"{s.overlay_type!r} is not one of: subnet, full")
    if s.overlay_encap not in ("ipip", "fou", "vxlan"):  # vxlan: a kr extension (kernels without ipip/fou)
        raise ConfigError("overlay-encap", f"{s.overlay_encap!r} is not one of: ipip, fou, vxlan")
    if s.overlay_encap == "fou" and not 1024 <= s.overlay_encap_port <= 65535:
        raise ConfigError("overlay-encap-port", "must be between 1024 and 65535")
    if not 3 <= s.bgp_holdtime <= 65536:
        raise ConfigError("bgp-holdtime", "must be between 3s and 18h12m16s")
    if s.cluster_asn and not (64512 <= s.cluster_asn <= 65535 or 4200000000 <= s.cluster_asn <= 4294967294):
        raise ConfigError("cluster-asn", f"{s.cluster_asn} is not a private ASN (64512-65535, 4200000000-4294967294)")
    if not 1 <= s.bfd_detection_multiplier <= 255:
        raise ConfigError("bfd-detection-multiplier", "must be between 1 and 255")
    for name in ("health-port", "metrics-port", "bgp-port", "gobgp-admin-port"):
        if not 0 <= s[name] <= 65535:
            raise ConfigError(name, f"{s[name]} is not a valid port")


def merge(file_flags: dict[str, Any], cli_flags: dict[str, Any]) -> Settings:
    """defaults < config file < command line."""
    values = dict(file_flags)
    values.update(cli_flags)
    st = Settings(values, explicit=set(values))
    validate_settings(st)
    return st
