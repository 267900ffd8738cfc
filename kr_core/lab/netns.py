"""Network-namespace plumbing for the lab: run ``ip``/commands in a named netns, and create sockets in one.

Named namespaces are the ``ip netns`` kind (a bind mount under ``/run/netns``). :func:`in_netns` switches
only the *calling thread* (``setns(2)`` is per thread), so a socket created inside the ``with`` block belongs
to that namespace for its whole life while the rest of the process stays where it was. The lab uses it for
pod responders (one kubelet process serves every pod of its node) and for probes (no process per probe).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import subprocess
from collections.abc import Iterator, Sequence

log = logging.getLogger("kr.lab.netns")

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class CommandError(RuntimeError):
    """A command failed; the message carries the command and its stderr."""


def setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the block with the calling thread in netns ``name`` (None: stay where we are)."""
    if name is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY)
        try:
            setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            setns(own)
    finally:
        os.close(own)


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    input: str | None = None,  # noqa: A002
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output; raise :class:`CommandError` with stderr when ``check``."""
    p = subprocess.run(list(argv), capture_output=True, text=True, input=input, timeout=timeout)
    if check and p.returncode != 0:
        raise CommandError(f"{' '.join(argv)}: exit {p.returncode}: {(p.stderr or p.stdout).strip()}")
    return p


def ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``ip [-n ns] args...``."""
    return run(["ip", *(["-n", ns] if ns else []), *args], check=check)


def ip_batch(lines: Sequence[str], *, ns: str | None = None) -> None:
    """Several ``ip`` commands in one process (``ip -batch -``)."""
    if lines:
        run(["ip", *(["-n", ns] if ns else []), "-batch", "-"], input="\n".join(lines) + "\n")


def exec_argv(ns: str, argv: Sequence[str]) -> list[str]:
    """The command line that runs ``argv`` inside netns ``ns``."""
    return ["ip", "netns", "exec", ns, *argv]


def sysctl(ns: str, values: dict[str, str]) -> None:
    """Set sysctls inside ``ns`` (one ``sysctl`` process)."""
    run(exec_argv(ns, ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in values.items())]))


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, name))


def add(name: str) -> None:
    if not exists(name):
        ip("netns", "add", name)
        log.info("created netns %s", name)


def pids(name: str) -> list[int]:
    """Processes whose network namespace is ``name``."""
    p = ip("netns", "pids", name, check=False)
    return [int(x) for x in p.stdout.split() if x.isdigit()]


def delete(name: str) -> bool:
    """Delete netns ``name`` (its interfaces go with it). True if it existed."""
    if not exists(name):
        return False
    p = ip("netns", "del", name, check=False)
    if p.returncode != 0 and exists(name):
        # a stale mount point without a namespace behind it, or a busy unmount: try the pieces
        path = os.path.join(NETNS_DIR, name)
        run(["umount", "-l", path], check=False)
        with contextlib.suppress(OSError):
            os.unlink(path)
    log.info("deleted netns %s", name)
    return True
