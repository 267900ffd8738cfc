"""Informer benchmark: cold start to cache-synced, against the embedded API server.

Loads N Services, N EndpointSlices (10 endpoints each) and N Pods (default N=10,000) into an
:class:`~kr_core.embedded.ApiServer` on 127.0.0.1, then measures, each in a fresh child process (so peak RSS
is the client's alone, not the server's):

- ``informer``: :class:`~kr_core.watch.informer.InformerSource` for the three resources, from start until
  ``caches.wait_synced`` returns (paginated raw-JSON lists into kr's model views);
- ``generated models``: the same three paginated lists through the official client's generated API
  (``list_service_for_all_namespaces``, ``list_endpoint_slice_for_all_namespaces``,
  ``list_pod_for_all_namespaces``), keeping the model objects as a cache would, one thread per resource
  like the informers.

Reported per variant: wall seconds, the child's CPU seconds (the client's own cost, without the server's),
the server's CPU seconds while the child ran (the parent process's), peak RSS (the child's ``VmHWM``), RSS
retained once synced minus the RSS after imports (from ``/proc/self/statm``); and the generated/informer
ratios. Both variants pay the same server time, so the time ratio understates the client-side difference.

Peak RSS is read from ``/proc/self/status`` (``VmHWM``), not ``getrusage().ru_maxrss``: the child is
started by ``subprocess`` (vfork + exec) from the server's process, and Linux carries the parent's RSS
high-water mark into the child's ``ru_maxrss`` across exec, so ``ru_maxrss`` reported the server's peak
(250-350 MB with the loaded objects) rather than the client's.

The embedded server's EndpointSlice controller is not started unless ``--with-controller``: the bench's
Services have no selector, so it has nothing to do, but its start-up resync (one reconcile per Service, each
scanning every EndpointSlice: O(Services x EndpointSlices), minutes at N=10,000) would run, holding the
store lock and the GIL, during the measurement.

Run: ``python -m tests.bench.bench_informer [--n N] [--page-size P] [--page-sizes P1,P2,..] [--data FILE]``
or through ``python -m tests.bench informer``. ``--data`` keeps the loaded objects in a SQLite file for the
next run; ``--page-sizes`` adds an informer row per extra page size (0: unpaginated).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
NS = "bench"
ENDPOINTS_PER_SLICE = 10


# ----------------------------------------------------------------------------------------------- objects


def _service(i: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": f"svc-{i}", "namespace": NS, "labels": {"app": f"app-{i % 100}"}},
            "spec": {"type": "ClusterIP", "ports": [{"name": "http", "port": 80, "targetPort": 8080,
                                                     "protocol": "TCP"}]}}


def _ip(k: int) -> str:
    return f"10.{128 + k // 65536 % 64}.{k // 256 % 256}.{k % 256}"


def _slice(i: int) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"svc-{i}-abcde", "namespace": NS,
                         "labels": {"kubernetes.io/service-name": f"svc-{i}",
                                    "endpointslice.kubernetes.io/managed-by": "bench"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [_ip(i * ENDPOINTS_PER_SLICE + j)],
                           "conditions": {"ready": True, "serving": True, "terminating": False},
                           "nodeName": f"node-{j % 50}",
                           "targetRef": {"kind": "Pod", "namespace": NS, "name": f"pod-{i}-{j}"}}
                          for j in range(ENDPOINTS_PER_SLICE)],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}


def _pod(i: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"pod-{i}", "namespace": NS, "labels": {"app": f"pod-app-{i % 100}"}},
            "spec": {"nodeName": f"node-{i % 50}",
                     "containers": [{"name": "app", "image": "registry.invalid/app:1",
                                     "ports": [{"containerPort": 8080, "protocol": "TCP"}]}]}}


# ----------------------------------------------------------------------------------------------- loading


def _count(srv: Any, kind: str) -> int:
    store = getattr(srv, "store", None)
    if store is not None and hasattr(store, "iter_raw"):
        return sum(1 for o in store.iter_raw(kind) if o.get("metadata", {}).get("namespace") == NS)
    return -1


def _load(srv: Any, n: int) -> float:
    """Create the objects (skipping those a reused ``--data`` file already has); return seconds spent.

    Goes through the server's registry in-process when it has one (same defaults and validation as over
    HTTP, minus the HTTP round trips), else over HTTP."""
    t0 = time.monotonic()
    registry = getattr(srv, "registry", None)
    try:
        from kr_core.embedded.resources import BY_KIND
    except ImportError:  # pragma: no cover - a server without the registry API
        registry = None

    if registry is not None:
        def create(kind: str, body: dict[str, Any]) -> None:
            try:
                registry.create(BY_KIND[kind], body["metadata"].get("namespace"), body)
            except Exception as e:  # noqa: BLE001 - AlreadyExists on a reused data file
                if "already exists" not in str(e).lower():
                    raise
    else:
        import urllib3

        http = urllib3.PoolManager(maxsize=8)
        paths = {"Namespace": "/api/v1/namespaces", "Service": f"/api/v1/namespaces/{NS}/services",
                 "Pod": f"/api/v1/namespaces/{NS}/pods",
                 "EndpointSlice": f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"}

        def create(kind: str, body: dict[str, Any]) -> None:
            r = http.request("POST", srv.url + paths[kind], body=json.dumps(body).encode(),
                             headers={"Content-Type": "application/json"})
            if r.status not in (200, 201, 409):
                raise RuntimeError(f"create {kind}: HTTP {r.status}: {r.data[:200]!r}")

    create("Namespace", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    for kind, make in (("Service", _service), ("EndpointSlice", _slice), ("Pod", _pod)):
        have = _count(srv, kind)
        if have >= n:
            continue
        for i in range(max(0, have), n):
            create(kind, make(i))
    return time.monotonic() - t0


# ----------------------------------------------------------------------------------------------- children


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _peak_rss_mb() -> float:
    """This process's own RSS high-water mark (``VmHWM``). Not ``ru_maxrss``, which after fork/vfork + exec
    keeps the parent's (here: the loaded server's) high-water mark when it is higher."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:  # pragma: no cover - not Linux
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _child_informer(url: str, page_size: int) -> dict[str, Any]:
    from kubernetes.client import ApiClient, Configuration

    from kr_core.model import Resource
    from kr_core.watch.cache import Caches
    from kr_core.watch.informer import InformerSource

    if os.environ.get("KR_BENCH_JSON") == "json":  # --json-parser json: measure the stdlib fallback
        from kr_core.watch import informer as _inf

        if hasattr(_inf, "_stdlib_loads"):
            _inf.loads = _inf._stdlib_loads
    res = [Resource.SERVICE, Resource.ENDPOINTSLICE, Resource.POD]
    client = ApiClient(Configuration(host=url))
    base = _rss_mb()
    caches = Caches(res)
    src = InformerSource(client, timeout_seconds=60, page_size=page_size)
    cpu0, t0 = _cpu_s(), time.monotonic()
    src.start(caches, lambda e: None)
    unsynced = caches.wait_synced(900)
    secs, cpu = time.monotonic() - t0, _cpu_s() - cpu0
    counts = {r.value: len(caches[r]) for r in res}
    src.stop()
    client.close()
    from kr_core.watch import informer

    stdlib = getattr(informer, "_stdlib_loads", None)
    parser = "orjson" if stdlib is not None and getattr(informer, "loads", stdlib) is not stdlib else "json"
    return {"seconds": secs, "cpu_s": cpu, "unsynced": [r.value for r in unsynced], "counts": counts,
            "rss_base_mb": base, "rss_retained_mb": _rss_mb() - base, "peak_rss_mb": _peak_rss_mb(),
            "parser": parser}


def _child_models(url: str, page_size: int) -> dict[str, Any]:
    from kubernetes.client import ApiClient, Configuration, CoreV1Api, DiscoveryV1Api

    client = ApiClient(Configuration(host=url))
    core, disc = CoreV1Api(client), DiscoveryV1Api(client)
    base = _rss_mb()

    def paged(fn: Any) -> list[Any]:
        items: list[Any] = []
        cont = None
        while True:
            kw: dict[str, Any] = {"limit": page_size} if page_size else {}
            if cont:
                kw["_continue"] = cont
            page = fn(**kw)
            items.extend(page.items)
            cont = page.metadata._continue if page.metadata else None
            if not cont:
                return items

    fns = {"Service": core.list_service_for_all_namespaces,
           "EndpointSlice": disc.list_endpoint_slice_for_all_namespaces,
           "Pod": core.list_pod_for_all_namespaces}
    cpu0, t0 = _cpu_s(), time.monotonic()
    with ThreadPoolExecutor(len(fns)) as ex:
        futs = {k: ex.submit(paged, f) for k, f in fns.items()}
        caches = {k: f.result() for k, f in futs.items()}
    secs, cpu = time.monotonic() - t0, _cpu_s() - cpu0
    counts = {k: len(v) for k, v in caches.items()}
    retained = _rss_mb() - base
    client.close()
    return {"seconds": secs, "cpu_s": cpu, "unsynced": [], "counts": counts, "rss_base_mb": base, "rss_retained_mb": retained,
            "peak_rss_mb": _peak_rss_mb()}


def _run_child(mode: str, url: str, page_size: int) -> dict[str, Any]:
    """Run one measurement in a fresh child; add the server's (this process's) CPU seconds meanwhile."""
    cpu0 = _cpu_s()
    res = _run_child_only(mode, url, page_size)
    res["server_cpu_s"] = _cpu_s() - cpu0
    return res


def _run_child_only(mode: str, url: str, page_size: int) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    out = subprocess.run(
        [sys.executable, "-m", "tests.bench.bench_informer", "--child", mode, "--url", url,
         "--page-size", str(page_size)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )
    if out.returncode != 0:  # (the environment carries KR_BENCH_JSON, set by run())
        raise RuntimeError(f"{mode} child failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------- run


def run(args: argparse.Namespace | None = None) -> dict[str, Any]:
    from kr_core.embedded import ApiServer

    n = getattr(args, "n", None) or 10_000
    page_size = getattr(args, "page_size", None)
    page_size = 500 if page_size is None else page_size
    data = getattr(args, "data", None)
    controller = bool(getattr(args, "with_controller", False))
    if getattr(args, "json_parser", "auto") == "json":
        os.environ["KR_BENCH_JSON"] = "json"
    sweep = [int(p) for p in str(getattr(args, "page_sizes", None) or "").split(",") if p.strip()]
    srv = ApiServer(data_path=data, host="127.0.0.1", port=0, bookmark_interval=30.0)
    if not controller:
        srv.controller.start = lambda: None  # type: ignore[method-assign]  # see the module docstring
    srv.start()
    extra: list[tuple[int, dict[str, Any]]] = []
    try:
        load_s = _load(srv, n)
        inf = _run_child("informer", srv.url, page_size)
        mod = _run_child("models", srv.url, page_size)
        for ps in sweep:
            if ps != page_size:
                extra.append((ps, _run_child("informer", srv.url, ps)))
    finally:
        srv.stop()
    want = {"Service": n, "EndpointSlice": n, "Pod": n}
    for label, r in (("informer", inf), ("generated models", mod), *((f"informer page {p}", r) for p, r in extra)):
        got = {k: v for k, v in r["counts"].items()}
        if r["unsynced"] or any(got.get(k, 0) < v for k, v in want.items()):
            raise RuntimeError(f"{label}: incomplete cache: {got} (unsynced {r['unsynced']})")
    rows = []
    variants = [("informer (raw JSON -> kr views)", inf), ("generated client models", mod)]
    variants += [(f"informer, page size {p or 'unpaginated'}", r) for p, r in extra]
    for label, r in variants:
        rows.append({
            "variant": label,
            "objects": sum(r["counts"].values()),
            "sync s": round(r["seconds"], 2),
            "objects/s": round(sum(r["counts"].values()) / r["seconds"]),
            "client CPU s": round(r["cpu_s"], 2),
            "server CPU s": round(r["server_cpu_s"], 2),
            "peak RSS MB": round(r["peak_rss_mb"], 1),
            "retained MB": round(r["rss_retained_mb"], 1),
        })
    time_ratio = mod["seconds"] / inf["seconds"]
    mem_ratio = mod["rss_retained_mb"] / max(inf["rss_retained_mb"], 0.1)
    return {
        "name": "informer",
        "n": n,
        "endpoints_per_slice": ENDPOINTS_PER_SLICE,
        "page_size": page_size,
        "json_parser": inf.get("parser", "json"),
        "endpointslice_controller": "on" if controller else "off",
        "load_s": round(load_s, 2),
        "rows": rows,
        "informer_sync_s": inf["seconds"],
        "informer_peak_rss_mb": inf["peak_rss_mb"],
        "informer_retained_mb": inf["rss_retained_mb"],
        "informer_cpu_s": inf["cpu_s"],
        "informer_server_cpu_s": inf["server_cpu_s"],
        "models_sync_s": mod["seconds"],
        "models_cpu_s": mod["cpu_s"],
        "models_peak_rss_mb": mod["peak_rss_mb"],
        "models_retained_mb": mod["rss_retained_mb"],
        "ratio_time_models_vs_informer": time_ratio,
        "ratio_cpu_models_vs_informer": mod["cpu_s"] / max(inf["cpu_s"], 1e-3),
        "ratio_retained_mem_models_vs_informer": mem_ratio,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.bench_informer")
    ap.add_argument("--n", type=int, default=10_000, help="objects of each kind (default 10000)")
    ap.add_argument("--page-size", type=int, default=500, help="list page size (0: no pagination)")
    ap.add_argument("--data", default=None, help="SQLite file to keep the loaded objects across runs")
    ap.add_argument("--page-sizes", default="", help="extra informer runs at these page sizes, e.g. 250,1000,0")
    ap.add_argument("--json-parser", choices=["auto", "json"], default="auto",
                    help="json: the informer uses the stdlib parser even when orjson is installed")
    ap.add_argument("--with-controller", action="store_true",
                    help="run the server's EndpointSlice controller during the measurement")
    ap.add_argument("--child", choices=["informer", "models"], help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        fn = _child_informer if args.child == "informer" else _child_models
        print(json.dumps(fn(args.url, args.page_size)))
        return
    res = run(args)
    from tests.bench.report import print_result

    print_result(res)


if __name__ == "__main__":
    main()
