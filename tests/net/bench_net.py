"""Measure the numbers quoted in kr_core.net docstrings (routes batch, ipset hot path), in throwaway netns.

Run as root: ``python -m tests.net.bench_net [N]``. Not collected by pytest.
"""

from __future__ import annotations

import statistics
import sys
import time

from kr_core.net import netns
from kr_core.net.ipset import IpSet, IpsetRunner
from kr_core.net.links import Route, apply_routes


def _t(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_routes(n: int) -> None:
    from pyroute2 import IPRoute

    routes = [Route(f"10.{i // 256 % 256}.{i % 256}.0/24" if n <= 65536 else f"10.{i // 65536}.{i // 256 % 256}."
                    f"{i % 256}/32", gateway="192.168.5.2") for i in range(n)]
    with netns.temporary("krb") as ns:
        for cmd in (["ip", "link", "add", "br0", "type", "bridge"], ["ip", "addr", "add", "192.168.5.1/24", "dev", "br0"],
                    ["ip", "link", "set", "br0", "up"]):
            netns.run(ns, cmd)
        print(f"routes n={n}")
        print(f"  apply_routes replace   {_t(lambda: apply_routes(replace=routes, netns=ns)):.3f} s")
        print(f"  apply_routes re-replace {_t(lambda: apply_routes(replace=routes, netns=ns)):.3f} s")
        print(f"  apply_routes delete    {_t(lambda: apply_routes(delete=routes, netns=ns)):.3f} s")
        add = "".join(f"route replace {r.dst} via 192.168.5.2 proto 17\n" for r in routes)
        dele = "".join(f"route del {r.dst} via 192.168.5.2 proto 17\n" for r in routes)
        print(f"  ip -batch replace      {_t(lambda: netns.run(ns, ['ip', '-batch', '-'], input=add)):.3f} s")
        print(f"  ip -batch delete       {_t(lambda: netns.run(ns, ['ip', '-batch', '-'], input=dele)):.3f} s")
        if n <= 10000:
            def per_call() -> tuple[float, float]:
                with IPRoute() as ipr:
                    a = _t(lambda: [ipr.route("replace", dst=r.dst, gateway=r.gateway, proto=17) for r in routes])
                    d = _t(lambda: [ipr.route("del", dst=r.dst, gateway=r.gateway, proto=17) for r in routes])
                return a, d
            a, d = netns.call_in(ns, per_call)
            print(f"  IPRoute.route per call replace {a:.3f} s, delete {d:.3f} s")


def bench_ipset(calls: int = 200, size: int = 10000) -> None:
    with netns.temporary("krb") as ns:
        run = IpsetRunner(netns=ns)
        members = [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(size)]
        print(f"ipset, set of {size}")
        print(f"  sync (tmp+swap) {_t(lambda: run.sync([IpSet('KUBE-DST-BENCH', entries=members)])):.3f} s")
        times = [_t(lambda: run.update_members(add=[("KUBE-DST-BENCH", "10.200.0.1")],
                                               delete=[("KUBE-DST-BENCH", "10.200.0.1")])) for _ in range(calls)]
        print(f"  restore add+del per call: median {statistics.median(times) * 1e3:.2f} ms")

        def pyroute() -> tuple[float, float]:
            from pyroute2.ipset import IPSet

            with IPSet() as ips:
                per = []
                for _ in range(calls):
                    t = time.perf_counter()
                    ips.add("KUBE-DST-BENCH", "10.201.0.1", etype="ip")
                    ips.delete("KUBE-DST-BENCH", "10.201.0.1", etype="ip")
                    per.append(time.perf_counter() - t)
                ips.create("KUBE-DST-PYR", stype="hash:ip", maxelem=65536)
                bulk = _t(lambda: [ips.add("KUBE-DST-PYR", m, etype="ip") for m in members])
                return statistics.median(per), bulk
        per, bulk = netns.call_in(ns, pyroute)
        print(f"  pyroute2 IPSet add+del per call: median {per * 1e3:.2f} ms; {size} single adds {bulk:.2f} s")
        script = "".join(f"add KUBE-DST-PYR {m} -exist\n" for m in members)
        print(f"  ipset restore of {size} adds: {_t(lambda: run.restore(script)):.3f} s")


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    bench_routes(n)
    bench_ipset()
