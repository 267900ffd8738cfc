"""sysctls by dotted name, read and written through ``/proc/sys`` of a network namespace.

``/proc/sys/net`` shows the namespace of the thread that opens the file, so ``netns=`` runs the access
inside that namespace on the current thread (:func:`kr_core.net.netns.in_netns`).

Names follow sysctl(8): ``net.ipv4.conf.all.rp_filter``. An interface name that contains dots (a VLAN
such as ``eth0.100``) needs the slash form, ``net/ipv4/conf/eth0.100/rp_filter``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .netns import in_netns

log = logging.getLogger(__name__)

PROC_SYS = Path("/proc/sys")


def path_of(name: str) -> Path:
    """``net.ipv4.ip_forward`` -> ``/proc/sys/net/ipv4/ip_forward`` (slash form taken as is)."""
    rel = name.strip("/") if "/" in name else name.replace(".", "/")
    if not rel or ".." in rel.split("/"):
        raise ValueError(f"invalid sysctl name {name!r}")
    return PROC_SYS / rel


def get(name: str, *, netns: str | None = None) -> str:
    """The value as the kernel prints it, whitespace-normalised (``"4096\\t131072"`` -> ``"4096 131072"``)."""
    with in_netns(netns):
        return " ".join(path_of(name).read_text().split())


def _norm(value: str | int) -> str:
    return " ".join(str(value).split())


def set(name: str, value: str | int, *, netns: str | None = None) -> bool:  # noqa: A001 - mirrors sysctl -w
    """Write ``value`` unless the current value is already equal; True when it was written."""
    want = _norm(value)
    with in_netns(netns):
        p = path_of(name)
        old = " ".join(p.read_text().split())
        if old == want:
            return False
        p.write_text(want + "\n")
    log.info("sysctl %s: %s -> %s%s", name, old, want, f" (netns {netns})" if netns else "")
    return True


def change_from(name: str, old: str | int, new: str | int, *, netns: str | None = None) -> bool:
    """Set ``name`` to ``new`` only when it currently holds ``old`` (kube-router: rp_filter 1 -> 2, never
    from 0). True when written."""
    with in_netns(netns):
        current = get(name)
        if current != _norm(old):
            log.debug("sysctl %s: is %s, not %s: left alone", name, current, _norm(old))
            return False
        return set(name, new)
