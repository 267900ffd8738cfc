"""Bulk route changes through real gobgpd and BIRD into a node's kernel: bursts of thousands of paths
(thousands of stream messages, many per read), announce-and-withdraw within one burst, and gobgpd killed in
the middle of a burst (new watch, table read, sweep). The kernel must end up exactly as BIRD announces,
nothing stale."""

from __future__ import annotations

import os
import signal
import subprocess

from .netlab import EXT_IP, LabNode, NetLab, prefixes_24, wait_for


def _kernel(node: LabNode) -> set[str]:
    out = subprocess.run(["ip", "-n", node.ns, "route", "show", "proto", "17"], capture_output=True,
                         text=True).stdout
    return {line.split()[0] for line in out.splitlines() if f"via {EXT_IP}" in line}


def _lab(netlab_factory, n: int) -> tuple[NetLab, LabNode, list[str]]:  # type: ignore[no-untyped-def]
    lab = netlab_factory(1)
    node = lab.nodes[0]
    prefixes = prefixes_24(n)
    lab.peer_with_bird_announcing(node, prefixes)
    return lab, node, prefixes


def test_bursts(netlab_factory) -> None:  # type: ignore[no-untyped-def]
    lab, node, prefixes = _lab(netlab_factory, 4000)
    injector = node.plugin().injector
    assert injector is not None
    for _ in range(2):
        lab.birdc("enable", "announced")
        wait_for(lambda: _kernel(node) == set(prefixes), 60, "all announced prefixes in the kernel", interval=0.1)
        lab.birdc("disable", "announced")
        wait_for(lambda: not _kernel(node), 60, "all withdrawn", interval=0.1)
    # announced and withdrawn again within one burst: nothing may stay behind
    lab.birdc("enable", "announced")
    lab.birdc("disable", "announced")
    wait_for(lambda: not _kernel(node) and not injector.routes and injector._q.empty(), 60, "nothing left",
             interval=0.1)
    assert not injector.stats.errors


def test_gobgpd_killed_mid_burst(netlab_factory) -> None:  # type: ignore[no-untyped-def]
    lab, node, prefixes = _lab(netlab_factory, 3000)
    plugin = node.plugin()
    old_pid = plugin.daemon.pid
    assert old_pid is not None
    lab.birdc("enable", "announced")
    wait_for(lambda: len(_kernel(node)) > 0, 30, "the burst reaching the kernel", interval=0.005)
    os.kill(old_pid, signal.SIGKILL)
    wait_for(lambda: plugin.daemon.pid != old_pid and plugin.daemon.alive(), 15, "gobgpd restarted")
    wait_for(lambda: _kernel(node) == set(prefixes), 90, "all prefixes after the restart", interval=0.1)
    lab.birdc("disable", "announced")
    wait_for(lambda: not _kernel(node), 60, "all withdrawn after the restart", interval=0.1)
