"""IPVS proxy benchmark (runs inside the UML VM; from the host it boots one VM and runs itself there).

All numbers are measured in the same VM run, each load in a fresh network namespace (so the kernel's
dest trash of one phase cannot slow the next), and reported as ratios to the floor of
``../shared/tools/ipvs_floor.py`` on the same objects (N Services x 10 endpoints = 11 N IPVS objects):

* cold sync: the plugin's ``sync("initial")`` from filled caches to the kernel (models, IPVS, VIPs on
  kube-dummy-if + local routes, ipsets, chains) vs ``ipvs_floor.py load N noack 1000``; each phase on its
  own too (the table), the floor being the faster of a load at the start and one at the end of the run.
  Goal: <= 4x the floor. Alongside, the kernel's own cost of the N VIP addresses + local routes on
  kube-dummy-if (prebuilt messages, 1,000 per send), which no sync can go below (adding an address walks
  the link's address list twice: quadratic in N, ~0.9 s of kernel time at 10k), and the total without it.
  Before each measurement the guest CPU is let settle (:func:`settle`): a namespace deleted by the
  previous phase is torn down in the background. ``ipvsadm-restore`` of the same objects alongside. Kernel
  modules are loaded beforehand (the floor's and the proxy's), so neither side pays first-use autoloading.
* the same cold sync with ``--service-vip-mode=route`` (``route_*`` keys, "route mode" rows): VIPs made
  local by their local-table routes alone, no address on kube-dummy-if, so the kernel's VIP cost is
  linear in N; its kernel-only floor (the routes alone) alongside; then a periodic sync and a restart's
  adoption there, which must send nothing.
* one endpoint change with N Services present: event-to-kernel p50/p99 (the hook call, which applies
  synchronously) and the netlink messages each change sent (a replaced endpoint = 1 del + 1 add).
  Goal: p99 <= 5 ms, exactly the messages needed.
* periodic sync with nothing changed: messages sent (goal 0) and its duration.
* adoption: a second plugin instance's ``start`` (dump + parse of all virtual servers and destinations)
  vs ``ipvs_floor.py dump``; then its initial sync must send nothing. Agent RSS at that scale (goal
  <= 300 MB).

Usage: ``python -m tests.bench ipvs [--n N]`` (default N = 10,000; ``--n 1000`` for a quick run).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FLOOR = "/work/shared/tools/ipvs_floor.py"
DEFAULT_N = 10_000
EPS = 10
NETFILTER_MODULES = ("ip_tables", "iptable_filter", "iptable_nat", "xt_set", "xt_ipvs", "xt_comment", "xt_nat",
                     "ipt_REJECT", "ip_set_hash_ip", "ip_set_hash_ipport")


def _in_vm() -> bool:
    return os.environ.get("KR_IN_VM") == "1"


def run(args: argparse.Namespace | None = None) -> dict[str, Any]:
    n = getattr(args, "n", None) or DEFAULT_N
    if _in_vm():
        return measure(n)
    from kr_core.lab.vm import run_in_vm
    from kr_core.lab.vmtest import repo_root

    with tempfile.TemporaryDirectory(prefix="kr-bench-ipvs.") as out:
        res = Path(out) / "result.json"
        rc = run_in_vm([sys.executable, "-m", "tests.bench.bench_ipvs", "--n", str(n), "--json", str(res)],
                       cwd=repo_root(), out_dir=out, timeout=1800, stream=sys.stderr)
        if rc != 0 or not res.exists():
            raise RuntimeError(f"benchmark in the VM failed (exit {rc})")
        return json.loads(res.read_text())


# ------------------------------------------------------------------------------------------ in the VM

def sh(cmd: str) -> str:
    return subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True).stdout


def floor(ns: str, *args: str) -> float:
    out = sh(f"ip netns exec {ns} {sys.executable} {FLOOR} {' '.join(args)}")
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT"))
    return float(line.split()[2])


def vip(i: int) -> str:
    return f"10.96.{(i >> 8) & 255}.{i & 255}"


def rip(k: int) -> str:
    k += 1
    return f"10.{128 + (k >> 16)}.{(k >> 8) & 255}.{k & 255}"


def objects(n: int) -> list[Any]:
    """The floor's objects as Kubernetes objects: N ClusterIP Services 10.96.x.y:80/TCP, each with one
    EndpointSlice of 10 ready endpoints 10.128+.x.y:8080 on other nodes."""
    from kr_core.model import Node, Service

    out: list[Any] = [Node.from_json({"metadata": {"name": "node-1"}, "spec": {"podCIDR": "10.244.1.0/24"},
                                      "status": {"addresses": [{"type": "InternalIP", "address": "192.168.60.1"}]}})]
    for i in range(n):
        name = f"s{i}"
        out.append(Service.from_json({"metadata": {"name": name, "namespace": "bench"},
                                      "spec": {"clusterIP": vip(i), "ports": [{"name": "p", "port": 80, "protocol": "TCP"}]}}))
        out.append(slice_(name, [rip(i * EPS + j) for j in range(EPS)]))
    return out


def slice_(name: str, addrs: list[str]) -> Any:
    from kr_core.model import EndpointSlice

    return EndpointSlice.from_json({
        "metadata": {"name": f"{name}-x", "namespace": "bench", "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4", "endpoints": [{"addresses": [a], "nodeName": "node-2"} for a in addrs],
        "ports": [{"name": "p", "port": 8080, "protocol": "TCP"}]})


def ipvsadm_input(n: int) -> str:
    lines = []
    for i in range(n):
        lines.append(f"-A -t {vip(i)}:80 -s rr")
        lines += [f"-a -t {vip(i)}:80 -r {rip(i * EPS + j)}:8080 -m -w 1" for j in range(EPS)]
    return "\n".join(lines) + "\n"


def vip_floor(n: int, addresses: bool = True) -> float:
    """Seconds the kernel takes to add N /32 addresses to a dummy link and replace their local routes
    (source = node IP), from prebuilt messages sent 1,000 per ``sendmsg``: the floor of the sync's VIP
    phase (adding an address walks the link's address list, so it grows with the count). Without
    ``addresses``: the routes alone (``--service-vip-mode=route``)."""
    import socket as so
    import struct

    from kr_core.net import netns
    from kr_core.net.links import encode_route
    from kr_core.net.netlink import NetlinkSocket
    from kr_plugins.ipvs_proxy.host import Host, encode_addr

    with netns.temporary("kr-vipfloor") as ns, netns.in_netns(ns):
        sh(f"ip -n {ns} link add eth0 type dummy && ip -n {ns} addr add 192.168.60.1/24 dev eth0 && "
           f"ip -n {ns} link set eth0 up")
        host = Host()
        idx = host.ensure_dummy()
        host.close()
        vips = [(4, vip(i)) for i in range(n)]
        routes = Host().vip_routes(vips, {4: "192.168.60.1"}, idx)
        nl = NetlinkSocket(so.NETLINK_ROUTE)
        try:
            batches = []
            work: list[tuple[Any, list[Any]]] = [(lambda x, seq, ack: encode_route(x, "replace", seq, ack=ack), routes)]
            if addresses:
                work.insert(0, (lambda x, seq, ack: encode_addr("add", 4, x[1], idx, seq, ack), vips))
            for build, items in work:
                base = nl.next_seq(len(items))
                for b in range(0, len(items), 1000):
                    chunk = items[b:b + 1000]
                    batches.append((b"".join(build(x, base + b + j, j == len(chunk) - 1) for j, x in enumerate(chunk)),
                                    base + b + len(chunk) - 1))
            t0 = time.perf_counter()
            for data, last in batches:
                nl.sock.send(data)
                done = False
                while not done:
                    for typ, _fl, seq, p in nl._recv():
                        if typ == 2:
                            assert struct.unpack_from("=i", p)[0] == 0, "VIP floor: the kernel refused a message"
                            done = done or seq == last
            return round(time.perf_counter() - t0, 4)
        finally:
            nl.close()


def _cpu() -> tuple[int, int]:
    """(total, idle + iowait) jiffies of the (guest) CPU."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v), v[3] + v[4]


def settle(window: float = 0.25, idle: float = 0.9, timeout: float = 30.0) -> float:
    """Wait until the guest CPU was at least ``idle`` idle over ``window`` seconds; returns the wait.

    A namespace deleted by the previous phase is torn down by the kernel in the background (the 110k
    objects of the ipvsadm-restore load, 10k addresses of a VIP phase: seconds of kernel work on the one
    vCPU), which otherwise runs during the next measurement."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        a, ai = _cpu()
        time.sleep(window)
        b, bi = _cpu()
        if b > a and (bi - ai) / (b - a) >= idle:
            break
    return round(time.monotonic() - t0, 2)


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def started_proxy(ns: str, state: str, objs: list[Any], flags: dict[str, Any] | None = None) -> Any:
    """The plugin in ``ns`` (given a node link with its address), configured, fed ``objs`` and started: ready
    for its initial sync."""
    from tests.plugins.ipvs_proxy.vmkit import Proxy

    sh(f"ip -n {ns} link add eth0 type dummy && ip -n {ns} addr add 192.168.60.1/24 dev eth0 && "
       f"ip -n {ns} link set eth0 up")
    p = Proxy(ns, state, objs, flags=flags)
    p.call(p.caller.configure, p.ctx)
    p.feed.start(p.caches, lambda ev: p.call(p.caller.deliver, ev))
    p.call(p.caller.start, p.ctx)
    return p


def measure(n: int) -> dict[str, Any]:
    from kr_core.events import EventType
    from kr_core.model import Resource
    from kr_core.net import netns
    from tests.plugins.ipvs_proxy.vmkit import Proxy

    # Kernel modules are loaded before anything is measured, the floor's (ip_vs) and those the proxy's
    # iptables rules and sets use: autoloading them on first use cost ~0.6 s once per boot in the VM, which
    # is neither the floor's work nor the sync's.
    subprocess.run(["modprobe", "-a", "ip_vs", "ip_vs_rr", *NETFILTER_MODULES], check=True)
    r: dict[str, Any] = {"n_services": n, "ipvs_objects": n * (EPS + 1)}
    waits: dict[str, float] = {}  # seconds waited for the CPU to settle before each measurement

    # -------------------------------------------------------------- floor (load + dump), own namespace
    with netns.temporary("kr-floor") as ns:
        waits["floor_first"] = settle()
        floor_first = floor(ns, "load", str(n), "noack", "1000")
        r["floor_dump_s"] = floor(ns, "dump")
        floor(ns, "flush")

    # -------------------------------------------------------------- ipvsadm-restore, own namespace
    with netns.temporary("kr-ipvsadm") as ns, tempfile.NamedTemporaryFile("w", suffix=".ipvs") as f:
        f.write(ipvsadm_input(n))
        f.flush()
        t0 = time.perf_counter()
        sh(f"ip netns exec {ns} sh -c 'ipvsadm-restore < {f.name}'")
        r["ipvsadm_restore_s"] = round(time.perf_counter() - t0, 3)

    # -------------------------------------------------------------- the plugin
    objs = objects(n)
    r["rss_mb_objects_built"] = round(rss_mb(), 1)
    state = tempfile.mkdtemp(prefix="kr-bench-state.")
    with netns.temporary("kr-bench") as ns:
        p = started_proxy(ns, state, objs)
        waits["cold_sync"] = settle()
        t0 = time.perf_counter()
        p.sync("initial")
        r["cold_sync_s"] = round(time.perf_counter() - t0, 3)
        st = p.state()["summary"]
        r["cold_sync_phases_s"] = st["last_sync_seconds"]
        r["cold_sync_netlink_messages"] = st["netlink_messages"]
        r["cold_sync_netlink_batches"] = st["netlink_batches"]
        assert st["virtual_servers"] == n and st["destinations"] == n * EPS, st
        r["rss_mb_after_cold_sync"] = round(rss_mb(), 1)

        # one endpoint change, N Services present
        lat: list[float] = []
        msgs: list[int] = []
        plugin = p.plugin
        deliver = p.caller.deliver
        with netns.in_netns(ns):
            for rep in range(200):
                i = (rep * 7919) % n
                addrs = [rip(i * EPS + j) for j in range(EPS)]
                addrs[rep % EPS] = f"10.250.{rep >> 8}.{rep & 255}"
                before = plugin.counters["netlink_messages"]
                store = p.caches.stores[Resource.ENDPOINTSLICE]
                t0 = time.perf_counter()
                ev = store.apply(EventType.MODIFIED, slice_(f"s{i}", addrs))
                deliver(ev)
                lat.append(time.perf_counter() - t0)
                msgs.append(plugin.counters["netlink_messages"] - before)
                # put it back (not timed)
                ev = store.apply(EventType.MODIFIED, slice_(f"s{i}", [rip(i * EPS + j) for j in range(EPS)]))
                deliver(ev)
        lat.sort()
        r["endpoint_change_p50_ms"] = round(statistics.median(lat) * 1e3, 3)
        r["endpoint_change_p99_ms"] = round(lat[int(len(lat) * 0.99) - 1] * 1e3, 3)
        r["endpoint_change_max_ms"] = round(lat[-1] * 1e3, 3)
        r["endpoint_change_messages"] = sorted(set(msgs))

        # periodic sync, nothing changed
        before = plugin.counters["netlink_messages"]
        t0 = time.perf_counter()
        p.sync("periodic")
        r["periodic_sync_s"] = round(time.perf_counter() - t0, 3)
        r["periodic_sync_messages"] = plugin.counters["netlink_messages"] - before
        p.stop()
        del p, plugin, deliver, store, ev
        gc.collect()

        # adoption by a new instance (restart)
        p2 = Proxy(ns, state, objs)
        p2.call(p2.caller.configure, p2.ctx)
        p2.feed.start(p2.caches, lambda ev, p2=p2: p2.call(p2.caller.deliver, ev))
        t0 = time.perf_counter()
        p2.call(p2.caller.start, p2.ctx)
        r["adopt_start_s"] = round(time.perf_counter() - t0, 3)
        r["adopt_s"] = p2.plugin.timings["adopt"]  # IPVS dump + parse, dummy addresses, ipsets
        r["adopt_ipvs_dump_s"] = p2.plugin.timings["adopt_ipvs_dump"]  # IPVS dump + parse only
        t0 = time.perf_counter()
        p2.sync("initial")
        r["adopt_initial_sync_s"] = round(time.perf_counter() - t0, 3)
        r["adopt_initial_sync_messages"] = p2.plugin.counters["netlink_messages"]
        r["rss_mb_agent_after_adoption"] = round(rss_mb(), 1)
        p2.call(p2.caller.cleanup)
        p2.stop()
    r["rss_mb_peak"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    route_mode(r, n, objs, waits)
    # the floor once more at the end (the first load after boot is often 2-3x slower, and other work on
    # the host shifts the VM's speed): the ratios use the faster of the two
    with netns.temporary("kr-floor2") as ns:
        waits["floor_last"] = settle()
        floor_last = floor(ns, "load", str(n), "noack", "1000")
        floor(ns, "flush")
    r["floor_load_runs_s"] = [floor_first, floor_last]
    r["floor_load_s"] = min(floor_first, floor_last)
    waits["vip_floor"] = settle()
    r["vip_kernel_floor_s"] = vip_floor(n)
    waits["route_vip_floor"] = settle()
    r["route_vip_kernel_floor_s"] = vip_floor(n, addresses=False)
    r["settle_waits_s"] = waits

    ipvs_s = r["cold_sync_phases_s"].get("ipvs", 0.0)
    r["ratio_cold_sync_vs_floor"] = round(r["cold_sync_s"] / r["floor_load_s"], 2)
    # what is left once the kernel's own cost of the VIP addresses (quadratic in their number on one link,
    # the same for any proxy that puts them there) is taken out: the proxy's part of the ratio
    r["ratio_cold_sync_minus_vip_kernel_vs_floor"] = round((r["cold_sync_s"] - r["vip_kernel_floor_s"]) / r["floor_load_s"], 2)
    r["ratio_cold_sync_ipvs_phase_vs_floor"] = round(ipvs_s / r["floor_load_s"], 2)
    r["ratio_ipvsadm_restore_vs_floor"] = round(r["ipvsadm_restore_s"] / r["floor_load_s"], 1)
    r["ratio_adopt_vs_floor_dump"] = round(r["adopt_ipvs_dump_s"] / r["floor_dump_s"], 2)
    r["ratio_route_cold_sync_vs_floor"] = round(r["route_cold_sync_s"] / r["floor_load_s"], 2)
    r["ratio_route_cold_sync_minus_vip_kernel_vs_floor"] = round(
        (r["route_cold_sync_s"] - r["route_vip_kernel_floor_s"]) / r["floor_load_s"], 2)
    floor_s = r["floor_load_s"]
    r["rows"] = [{"cold sync phase": k, "seconds": v, "x floor": round(v / floor_s, 2)}
                 for k, v in r["cold_sync_phases_s"].items()]
    r["rows"] += [{"cold sync phase": "TOTAL", "seconds": r["cold_sync_s"], "x floor": r["ratio_cold_sync_vs_floor"]},
                  {"cold sync phase": "(ipvsadm-restore)", "seconds": r["ipvsadm_restore_s"],
                   "x floor": r["ratio_ipvsadm_restore_vs_floor"]},
                  {"cold sync phase": "(kernel only: VIP addresses + routes)", "seconds": r["vip_kernel_floor_s"],
                   "x floor": round(r["vip_kernel_floor_s"] / floor_s, 2)},
                  {"cold sync phase": "(TOTAL minus the VIP kernel-only time)",
                   "seconds": round(r["cold_sync_s"] - r["vip_kernel_floor_s"], 3),
                   "x floor": r["ratio_cold_sync_minus_vip_kernel_vs_floor"]}]
    r["rows"] += [{"cold sync phase": f"route mode: {k}", "seconds": v, "x floor": round(v / floor_s, 2)}
                  for k, v in r["route_cold_sync_phases_s"].items()]
    r["rows"] += [{"cold sync phase": "route mode: TOTAL", "seconds": r["route_cold_sync_s"],
                   "x floor": r["ratio_route_cold_sync_vs_floor"]},
                  {"cold sync phase": "route mode: (kernel only: VIP routes)", "seconds": r["route_vip_kernel_floor_s"],
                   "x floor": round(r["route_vip_kernel_floor_s"] / floor_s, 2)},
                  {"cold sync phase": "route mode: (TOTAL minus the VIP kernel-only time)",
                   "seconds": round(r["route_cold_sync_s"] - r["route_vip_kernel_floor_s"], 3),
                   "x floor": r["ratio_route_cold_sync_minus_vip_kernel_vs_floor"]}]
    goals = {
        "cold_sync <= 4x floor": (r["ratio_cold_sync_vs_floor"], r["ratio_cold_sync_vs_floor"] <= 4),
        "endpoint change p99 <= 5 ms": (r["endpoint_change_p99_ms"], r["endpoint_change_p99_ms"] <= 5),
        "endpoint change sends exactly 2 messages": (r["endpoint_change_messages"], r["endpoint_change_messages"] == [2]),
        "periodic sync, nothing changed: 0 messages": (r["periodic_sync_messages"], r["periodic_sync_messages"] == 0),
        "restart: initial sync sends 0 messages": (r["adopt_initial_sync_messages"], r["adopt_initial_sync_messages"] == 0),
        "route mode: cold_sync <= 4x floor": (r["ratio_route_cold_sync_vs_floor"], r["ratio_route_cold_sync_vs_floor"] <= 4),
        "route mode: periodic sync and restart send 0 messages, no VIP address": (
            [r["route_periodic_sync_messages"], r["route_adopt_initial_sync_messages"], r["route_vip_addresses"]],
            r["route_periodic_sync_messages"] == r["route_adopt_initial_sync_messages"] == r["route_vip_addresses"] == 0),
        "RSS <= 300 MB": (r["rss_mb_peak"], r["rss_mb_peak"] <= 300),
    }
    r["goals"] = {g: {"measured": m, "met": ok} for g, (m, ok) in goals.items()}
    return r


def route_mode(r: dict[str, Any], n: int, objs: list[Any], waits: dict[str, float]) -> None:
    """The cold sync again with ``--service-vip-mode=route`` (the VIPs' local routes, no addresses), in a
    fresh namespace; then a periodic sync and a restart's adoption, which must send nothing."""
    from kr_core.net import netns
    from tests.plugins.ipvs_proxy.vmkit import Proxy

    gc.collect()
    state = tempfile.mkdtemp(prefix="kr-bench-state-route.")
    flags = {"service-vip-mode": "route"}
    with netns.temporary("kr-bench-route") as ns:
        p = started_proxy(ns, state, objs, flags)
        waits["route_cold_sync"] = settle()
        t0 = time.perf_counter()
        p.sync("initial")
        r["route_cold_sync_s"] = round(time.perf_counter() - t0, 3)
        st = p.state()["summary"]
        r["route_cold_sync_phases_s"] = st["last_sync_seconds"]
        assert st["virtual_servers"] == n and st["vips"] == n, st
        r["route_vip_addresses"] = int(sh(f"ip -n {ns} -o addr show dev kube-dummy-if | grep -c ' inet ' || true") or 0)
        before = p.plugin.counters["netlink_messages"]
        t0 = time.perf_counter()
        p.sync("periodic")
        r["route_periodic_sync_s"] = round(time.perf_counter() - t0, 3)
        r["route_periodic_sync_messages"] = p.plugin.counters["netlink_messages"] - before
        p.stop()
        del p
        gc.collect()
        p2 = Proxy(ns, state, objs, flags=flags)
        p2.call(p2.caller.configure, p2.ctx)
        p2.feed.start(p2.caches, lambda ev, p2=p2: p2.call(p2.caller.deliver, ev))
        p2.call(p2.caller.start, p2.ctx)
        r["route_adopt_s"] = p2.plugin.timings["adopt"]
        p2.sync("initial")
        r["route_adopt_initial_sync_messages"] = p2.plugin.counters["netlink_messages"]
        r["route_adopt_initial_sync_vip_s"] = p2.plugin.timings.get("vips", 0.0)
        p2.call(p2.caller.cleanup)
        p2.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=DEFAULT_N)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    res = run(a)
    text = json.dumps(res, indent=2)
    print(text, flush=True)
    if a.json:
        Path(a.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
