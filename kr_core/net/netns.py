"""Named network namespaces (``ip netns``) for tests and the lab.

A namespace made here is an ``ip netns add`` namespace, a bind mount under ``/run/netns``, so every tool
(``ip netns exec``, pyroute2, ``nsenter --net=``) finds it by name.

Three ways to act inside one:

* :func:`run` runs a command through ``ip netns exec`` (it also remounts ``/sys`` for that netns);
* :func:`in_netns` moves the *current thread* into it for the ``with`` block and back afterwards. ``setns(2)``
  is per thread, so other threads are untouched; subprocesses started from inside the block, netlink
  sockets, libnftables, libiptc and ``/proc/sys/net`` opened there all belong to the namespace;
* :func:`call_in` runs a callable in a dedicated short-lived thread that entered the namespace, so the
  caller's thread never changes namespace at all.

Python 3.11 has no ``os.setns``, so ``setns(2)`` is called through libc.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

NETNS_RUN_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000

T = TypeVar("T")

_libc: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    global _libc
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, CLONE_NEWNET)
        return
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWNET): {os.strerror(err)}")


def path(name: str) -> Path:
    """The bind-mount file of the named namespace."""
    return NETNS_RUN_DIR / name


def exists(name: str) -> bool:
    return path(name).exists()


def list_names() -> list[str]:
    """Names of the namespaces under /run/netns, sorted."""
    try:
        return sorted(p.name for p in NETNS_RUN_DIR.iterdir())
    except FileNotFoundError:
        return []


def create(name: str, *, exist_ok: bool = False, loopback: bool = True) -> None:
    """``ip netns add NAME``; brings ``lo`` up unless ``loopback=False``."""
    if exists(name):
        if not exist_ok:
            raise FileExistsError(f"network namespace {name!r} already exists")
        log.debug("netns %s: already exists", name)
    else:
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, text=True)
        log.info("netns %s: created", name)
    if loopback:
        loopback_up(name)


def delete(name: str, *, missing_ok: bool = True) -> None:
    """``ip netns del NAME``: the namespace goes away once no process or open fd holds it."""
    if not exists(name):
        if missing_ok:
            return
        raise FileNotFoundError(f"network namespace {name!r} does not exist")
    subprocess.run(["ip", "netns", "del", name], check=True, capture_output=True, text=True)
    log.info("netns %s: deleted", name)


def loopback_up(name: str) -> None:
    """Bring ``lo`` up inside the namespace."""
    run(name, ["ip", "link", "set", "lo", "up"])


def run(name: str | None, argv: Sequence[str], *, input: str | bytes | None = None, check: bool = True,
        timeout: float | None = 60, text: bool = True, launcher: Any = None) -> subprocess.CompletedProcess[Any]:
    """Run ``argv`` inside namespace ``name`` (``ip netns exec``), or in the current one when ``name`` is None.

    Output is captured. With ``check`` a non-zero exit raises :class:`subprocess.CalledProcessError`, whose
    ``stderr`` holds the tool's message. ``launcher`` (a :class:`kr_core.net.launcher.Launcher`, used only
    when ``name`` is None) starts the command from its small helper process instead of from this one.
    """
    if launcher is not None and name is None:
        return launcher.run(argv, input=input, check=check, timeout=timeout, text=text)  # type: ignore[no-any-return]
    cmd = list(argv) if name is None else ["ip", "netns", "exec", name, *argv]
    return subprocess.run(cmd, input=input, capture_output=True, check=check, timeout=timeout, text=text)


@contextlib.contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Move the current thread into namespace ``name`` for the block, then back (None: no change)."""
    if name is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(path(name), os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


def call_in(name: str | None, fn: Callable[..., T], *args: Any, timeout: float | None = None, **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` in a dedicated thread inside namespace ``name`` and return its result.

    Exceptions propagate to the caller. The thread is discarded afterwards, so per-thread state that
    remembers the namespace (a pyroute2 socket, a libiptc handle) must not outlive the call.
    """
    if name is None:
        return fn(*args, **kwargs)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            with in_netns(name):
                box["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    t = threading.Thread(target=target, name=f"netns-{name}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"call in netns {name!r} did not finish within {timeout} s")
    if "error" in box:
        raise box["error"]
    return box["result"]


@contextlib.contextmanager
def temporary(prefix: str = "krt", *, loopback: bool = True) -> Iterator[str]:
    """A throwaway namespace ``<prefix>-<8 hex>``, deleted on exit even when the block raises."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    create(name, loopback=loopback)
    try:
        yield name
    finally:
        delete(name)
