"""Kernel modules a dataplane needs, loaded before first use (some are not autoloaded by the commands or
netlink requests that use them: ``ip fou add`` does not load ``fou``)."""

from __future__ import annotations

import logging
import os
import subprocess

log = logging.getLogger("kr.net.kmod")


def load_modules(*mods: str) -> bool:
    """Load the modules of ``mods`` that are not loaded yet with one ``modprobe -a`` (a process launch from the
    agent is the expensive part; none when all are there). Modules are global to the kernel, so this holds for
    every network namespace. True when all were there or modprobe succeeded; a failure is logged."""
    missing = [m for m in mods if not os.path.isdir(f"/sys/module/{m}")]
    if not missing:
        return True
    try:
        r = subprocess.run(["modprobe", "-a", *missing], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("modprobe %s: %s", " ".join(missing), exc)
        return False
    if r.returncode != 0:
        log.warning("modprobe %s: %s", " ".join(missing), r.stderr.strip())
    return r.returncode == 0
