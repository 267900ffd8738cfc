"""The ``hostsfile`` plugin: every Service's cluster IPs, written as a hosts(5) file.

A small but complete kr plugin, written the way a third party would write one: it imports only the public
names of ``kr_core`` and ships as its own distribution (``kr-plugin-hostsfile``). It takes a new role,
``service-hosts``, watches Services and nothing else, and keeps one file in sync with them::

    # Kubernetes Services, written by the kr plugin hostsfile. Do not edit: changes are overwritten.
    10.96.0.1\tkubernetes.default.svc.cluster.local kubernetes.default.svc kubernetes.default
    10.96.0.10\tkube-dns.kube-system.svc.cluster.local kube-dns.kube-system.svc kube-dns.kube-system

Point dnsmasq's ``addn-hosts`` (or anything else that reads hosts files) at it to resolve Service names on a
node without cluster DNS.

How it follows the plugin contract:

* level-based: it keeps the entries it computed per Service in memory (the committed state) and renders the
  whole file from them; an event only recomputes its own Service, ``sync`` recomputes all of them from the
  caches;
* atomic: the file is written to a temporary file in the same directory and renamed over the old one, and
  only when the content changed, so a reader never sees half a file and an unchanged sync touches nothing;
* bad input (an address that is not an IP) is logged against its Service, counted and skipped; the other
  entries are still written;
* a restart adopts the file it finds and rewrites it only if the Services say otherwise;
* it owns exactly one file (plus its own temporary files) and ``cleanup`` removes exactly that.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from kr_core import (
    Event,
    EventType,
    HealthReport,
    PluginConfigError,
    PluginContext,
    PluginInfo,
    Resource,
    hookimpl,
)

if TYPE_CHECKING:
    from kr_core.model import Service

__version__ = "0.1.0"

log = logging.getLogger("kr.hostsfile")

ROLE = "service-hosts"
HEADER = "# Kubernetes Services, written by the kr plugin hostsfile. Do not edit: changes are overwritten.\n"

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


# ------------------------------------------------------------------------------------------------ config


class Config(BaseModel):
    """The ``hostsfile:`` section of the kr config file.

    Unknown keys are refused (``extra="forbid"``), so a typo such as ``cluster-domain`` is reported as
    ``hostsfile.cluster-domain: Extra inputs are not permitted`` instead of being silently ignored.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the hosts file to write (absolute; its directory is created if missing)
    path: str = "/run/kr/services.hosts"
    #: the cluster's DNS domain, as kubelet's ``--cluster-domain``
    cluster_domain: str = "cluster.local"
    #: also map each Service's names to its ``spec.externalIPs``
    include_external_ips: bool = False

    @field_validator("path")
    @classmethod
    def _absolute_file(cls, v: str) -> str:
        if not v or not os.path.isabs(v):
            raise ValueError(f"must be an absolute path, not {v!r}")
        if v.endswith("/"):
            raise ValueError(f"must name a file, not a directory: {v!r}")
        return v

    @field_validator("cluster_domain")
    @classmethod
    def _dns_domain(cls, v: str) -> str:
        d = v.strip().rstrip(".").lower()
        if not d or len(d) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in d.split(".")):
            raise ValueError(f"must be a DNS domain such as 'cluster.local', not {v!r}")
        return d


# ------------------------------------------------------------------------------------------------ rendering


@dataclass(frozen=True)
class HostEntry:
    """One line of the hosts file: an address and the names that resolve to it.

    ``service`` is the Service's ``namespace/name``; ``source`` says which field the address came from
    (``clusterIP`` or ``externalIP``).
    """

    ip: str
    names: tuple[str, ...]
    service: str
    source: str = "clusterIP"

    @property
    def sort_key(self) -> tuple[int, int, tuple[str, ...], str]:
        """Addresses in numeric order (IPv4 before IPv6), then names."""
        a = ipaddress.ip_address(self.ip)
        return (a.version, int(a), self.names, self.service)

    def line(self) -> str:
        """The entry as a hosts(5) line: ``<ip>\\t<name> <name>...``."""
        return f"{self.ip}\t{' '.join(self.names)}"

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form, for ``kr state``."""
        return {"service": self.service, "ip": self.ip, "names": list(self.names), "source": self.source}


def host_names(name: str, namespace: str, cluster_domain: str) -> tuple[str, ...]:
    """The names of Service ``namespace/name``, most qualified first."""
    return (f"{name}.{namespace}.svc.{cluster_domain}", f"{name}.{namespace}.svc", f"{name}.{namespace}")


def service_entries(
    svc: Service,
    cluster_domain: str = "cluster.local",
    include_external_ips: bool = False,
    invalid: list[tuple[str, str]] | None = None,
) -> tuple[HostEntry, ...]:
    """The hosts entries of one Service, one per address (a pure function).

    Headless Services (``clusterIP: None``) and ExternalName Services have no cluster IP and give no entry.
    An address that is not an IP is skipped; when ``invalid`` is given, ``(field, value)`` is appended to it
    so the caller can report it against the Service.
    """
    addrs: list[tuple[str, str]] = []
    if not svc.headless:
        addrs += [("clusterIP", ip) for ip in svc.cluster_ips]
    if include_external_ips:
        addrs += [("externalIP", ip) for ip in svc.external_ips]
    names = host_names(svc.meta.name, svc.meta.namespace, cluster_domain)
    out: dict[str, HostEntry] = {}
    for source, raw in addrs:
        try:
            ip = str(ipaddress.ip_address(raw.strip()))
        except ValueError:
            if invalid is not None:
                invalid.append((source, raw))
            continue
        out.setdefault(ip, HostEntry(ip, names, svc.meta.key, source))  # an address listed twice: first wins
    return tuple(sorted(out.values(), key=lambda e: e.sort_key))


def render(entries: Iterable[HostEntry]) -> str:
    """The whole hosts file for ``entries`` (a pure function): the header, then one line per entry, sorted."""
    lines = [e.line() for e in sorted(entries, key=lambda e: e.sort_key)]
    return HEADER + "".join(line + "\n" for line in lines)


def render_services(
    services: Iterable[Service], cluster_domain: str = "cluster.local", include_external_ips: bool = False
) -> str:
    """:func:`render` of every entry of ``services``."""
    return render(e for s in services for e in service_entries(s, cluster_domain, include_external_ips))


def write_atomic(path: Path, content: str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``content`` atomically: a temporary file in the same directory, then a rename.

    Readers see the old file or the new one, never a partial one. On failure the old file is left in place and
    the temporary file is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _ips(entries: Iterable[HostEntry]) -> str:
    return ", ".join(e.ip for e in entries) or "none"


def _plural(n: int) -> str:
    return f"{n} entry" if n == 1 else f"{n} entries"


# ------------------------------------------------------------------------------------------------ the plugin


class HostsFile:
    """Keeps a hosts file listing every Service's cluster IPs (role ``service-hosts``)."""

    info = PluginInfo(
        name="hostsfile",
        role=ROLE,
        version=__version__,
        resources=frozenset({Resource.SERVICE}),
        config_model=Config,
        description="writes every Service's cluster IPs to a hosts(5) file",
    )

    def __init__(self) -> None:
        self.ctx: PluginContext | None = None
        self.config = Config()
        self.path = Path(self.config.path)
        #: the committed state: Service key -> its entries (Services without entries are not kept)
        self.entries: dict[str, tuple[HostEntry, ...]] = {}
        #: the content known to be in the file (``None``: no file, or not read yet)
        self.written: str | None = None
        #: why the last write failed, until a write succeeds
        self.last_error: str | None = None
        self._metrics: dict[str, Any] = {}

    # ------------------------------------------------------------------------------ lifecycle

    @hookimpl
    def configure(self, ctx: PluginContext) -> None:
        """Take the validated ``hostsfile:`` section and register the metrics. Touches no file."""
        cfg = ctx.config
        if not isinstance(cfg, Config):  # an embedder handing the raw section: validate it here
            try:
                cfg = Config.model_validate(cfg or {})
            except ValidationError as e:
                err = e.errors()[0]
                path = ".".join(str(p) for p in err["loc"])
                raise PluginConfigError(err["msg"], path) from None
        self.ctx, self.config, self.path = ctx, cfg, Path(cfg.path)
        if ctx.metrics is not None:
            self._register_metrics(ctx.metrics)
        log.info(
            "configured: path=%s cluster_domain=%s include_external_ips=%s",
            cfg.path,
            cfg.cluster_domain,
            cfg.include_external_ips,
        )

    @hookimpl
    def start(self, ctx: PluginContext) -> None:
        """Adopt the file a previous run left: the initial sync rewrites it only if it is out of date."""
        self.written = self._read()
        if self.written is None:
            log.info("no %s yet: the initial sync creates it", self.path)
        else:
            log.info("adopted %s (%d lines); the initial sync checks it", self.path, self.written.count("\n"))

    @hookimpl
    def sync(self, reason: str) -> None:
        """Rebuild every entry from ``ctx.caches.services`` and rewrite the file if it differs.

        Re-reads the file first, so a file edited or removed behind kr's back is repaired (drift).
        """
        assert self.ctx is not None, "sync before configure"
        new: dict[str, tuple[HostEntry, ...]] = {}
        for svc in self.ctx.caches.services.list():
            entries = self._service_entries(svc)
            if entries:
                new[svc.meta.key] = entries
        old = self.entries
        added = sorted(new.keys() - old.keys())
        removed = sorted(old.keys() - new.keys())
        changed = sorted(k for k in new.keys() & old.keys() if new[k] != old[k])
        for k in added:
            log.debug("sync: Service %s: %s (%s)", k, _plural(len(new[k])), _ips(new[k]))
        for k in removed:
            log.debug("sync: Service %s: gone or without cluster IP, dropping %s", k, _plural(len(old[k])))
        for k in changed:
            log.debug("sync: Service %s: %s -> %s", k, _ips(old[k]), _ips(new[k]))
        self.entries = new

        on_disk = self._read()
        if on_disk != self.written and self.written is not None:
            log.warning("%s was changed or removed outside kr: rewriting it", self.path)
        self.written = on_disk
        wrote = self._write(f"sync ({reason})")
        log.info(
            "sync (%s): %d services, %s (+%d -%d ~%d services); %s %s",
            reason,
            len(new),
            _plural(self.entry_count),
            len(added),
            len(removed),
            len(changed),
            "wrote" if wrote else "unchanged:",
            self.path,
        )

    @hookimpl
    def health(self) -> HealthReport | None:
        """Unhealthy while the last write of the file failed."""
        if self.last_error is not None:
            return HealthReport(healthy=False, message=self.last_error)
        return None

    @hookimpl
    def state(self) -> dict[str, Any]:
        """What is in the file: ``{"summary": {"services": n, "entries": m}, "items": [one per line]}``."""
        items = sorted((e for es in self.entries.values() for e in es), key=lambda e: e.sort_key)
        return {
            "summary": {"services": len(self.entries), "entries": len(items)},
            "items": [e.as_dict() for e in items],
        }

    @hookimpl
    def cleanup(self) -> None:
        """Remove the hosts file and any temporary file of ours next to it. Succeeds when there is none."""
        removed = []
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
            removed.append(str(self.path))
        with contextlib.suppress(OSError):
            for tmp in self.path.parent.glob(f".{self.path.name}.*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                    removed.append(str(tmp))
        self.entries, self.written, self.last_error = {}, None, None
        if removed:
            log.info("cleanup: removed %s", ", ".join(removed))
        else:
            log.info("cleanup: %s does not exist, nothing to remove", self.path)

    @hookimpl
    def stop(self) -> None:
        """Nothing runs in the background; the file stays, so names keep resolving until the next agent."""
        log.info("stopping: leaving %s in place (%s)", self.path, _plural(self.entry_count))

    # ------------------------------------------------------------------------------ events

    @hookimpl
    def on_service(self, event: Event[Service]) -> None:
        """Recompute the entries of this one Service, then rewrite the file if it changed."""
        key = event.obj.meta.key
        before = self.entries.get(key, ())
        after = () if event.type is EventType.DELETED or event.new is None else self._service_entries(event.new)
        if after:
            self.entries[key] = after
        else:
            self.entries.pop(key, None)

        if before == after:
            log.debug("Service %s %s: hosts entries unchanged (%s)", key, event.type.value, _ips(after))
            if self.last_error is None:
                return
        elif not before:
            log.info("Service %s %s: adding %s (%s)", key, event.type.value, _plural(len(after)), _ips(after))
        elif not after:
            why = "deleted" if event.type is EventType.DELETED else "no cluster IP any more"
            log.info(
                "Service %s %s: removing %s (%s): %s", key, event.type.value, _plural(len(before)), _ips(before), why
            )
        else:
            log.info("Service %s %s: entries %s -> %s", key, event.type.value, _ips(before), _ips(after))
        self._write(f"Service {key} {event.type.value}")

    # ------------------------------------------------------------------------------ helpers

    @property
    def entry_count(self) -> int:
        """How many lines (besides the header) the file has."""
        return sum(len(es) for es in self.entries.values())

    def _service_entries(self, svc: Service) -> tuple[HostEntry, ...]:
        invalid: list[tuple[str, str]] = []
        entries = service_entries(svc, self.config.cluster_domain, self.config.include_external_ips, invalid)
        for field, value in invalid:
            log.warning("Service %s: skipping %s %r: not an IP address", svc.meta.key, field, value)
            if "invalid" in self._metrics:
                self._metrics["invalid"].inc()
        return entries

    def _read(self) -> str | None:
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            log.warning("cannot read %s (%s): it will be rewritten", self.path, e)
            return None

    def _write(self, why: str) -> bool:
        """Write the file if its content changed. Returns whether it wrote; raises ``OSError`` if that failed.

        The exception reaches kr, which logs it, counts it and retries the hook with backoff; until a write
        succeeds, :meth:`health` reports the error.
        """
        content = render(e for es in self.entries.values() for e in es)
        if "entries" in self._metrics:
            self._metrics["entries"].set(self.entry_count)
        if content == self.written and self.last_error is None:
            return False
        try:
            write_atomic(self.path, content)
        except OSError as e:
            self.last_error = f"writing {self.path} failed ({why}): {e}"
            if "failures" in self._metrics:
                self._metrics["failures"].inc()
            log.error("%s", self.last_error)
            raise
        self.written, self.last_error = content, None
        if "writes" in self._metrics:
            self._metrics["writes"].inc()
        log.debug("wrote %s: %s (%s)", self.path, _plural(self.entry_count), why)
        return True

    def _register_metrics(self, registry: Any) -> None:
        """Register this plugin's metrics. kube-router has no equivalent, so they are named ``kr_hostsfile_*``."""
        from prometheus_client import Counter, Gauge

        self._metrics = {
            "entries": Gauge("kr_hostsfile_entries", "Lines in the Service hosts file", registry=registry),
            "writes": Counter("kr_hostsfile_writes", "Times the Service hosts file was rewritten", registry=registry),
            "failures": Counter(
                "kr_hostsfile_write_failures", "Failed writes of the Service hosts file", registry=registry
            ),
            "invalid": Counter(
                "kr_hostsfile_invalid_addresses",
                "Service addresses skipped because they are not IP addresses",
                registry=registry,
            ),
        }
