"""The lab scheduler: binds every pod that names no node to the schedulable node with the fewest pods
(honouring ``spec.nodeSelector``), by setting ``spec.nodeName``.

Run as ``python -m kr_core.lab.scheduler --kubeconfig FILE``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from kr_core.lab.kube import ApiError, Kube, pod_key

log = logging.getLogger("kr.lab.scheduler")


def choose(pod: dict[str, Any], nodes: list[dict[str, Any]], load: dict[str, int]) -> str | None:
    """The node for ``pod``, or None if none fits."""
    selector = (pod.get("spec") or {}).get("nodeSelector") or {}
    fits = []
    for n in nodes:
        meta, spec = n["metadata"], n.get("spec") or {}
        if spec.get("unschedulable"):
            continue
        labels = meta.get("labels") or {}
        if any(labels.get(k) != v for k, v in selector.items()):
            continue
        fits.append(meta["name"])
    if not fits:
        return None
    return min(fits, key=lambda name: (load.get(name, 0), name))


class Scheduler:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.stop = threading.Event()
        self.bound: dict[str, str] = {}  # pod key -> node

    def load(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for node in self.bound.values():
            out[node] = out.get(node, 0) + 1
        return out

    def consider(self, pod: dict[str, Any]) -> None:
        key = pod_key(pod)
        spec = pod.get("spec") or {}
        if spec.get("nodeName"):
            self.bound[key] = spec["nodeName"]
            return
        if pod["metadata"].get("deletionTimestamp"):
            return
        nodes = self.kube.get("/api/v1/nodes").get("items") or []
        node = choose(pod, nodes, self.load())
        if node is None:
            log.warning("pod %s: no node fits (nodeSelector %s)", key, spec.get("nodeSelector"))
            return
        m = pod["metadata"]
        try:
            self.kube.patch(f"/api/v1/namespaces/{m['namespace']}/pods/{m['name']}", {"spec": {"nodeName": node}})
        except ApiError as e:
            log.warning("pod %s: binding to %s failed: %s", key, node, e)
            return
        self.bound[key] = node
        log.info("pod %s: bound to %s", key, node)

    def run(self) -> None:
        backoff = 0.2
        while not self.stop.is_set():
            try:
                lst = self.kube.get("/api/v1/pods")
                self.bound.clear()
                for pod in lst.get("items") or []:
                    self.consider(pod)
                rv = str(lst["metadata"].get("resourceVersion") or "0")
                backoff = 0.2
                while not self.stop.is_set():
                    for ev in self.kube.watch("/api/v1/pods", rv, timeout_seconds=120):
                        obj = ev.get("object") or {}
                        rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                        if ev["type"] == "DELETED":
                            self.bound.pop(pod_key(obj), None)
                        elif ev["type"] in ("ADDED", "MODIFIED"):
                            self.consider(obj)
            except ApiError as e:
                if e.code != 410:
                    log.warning("watch failed: %s; relisting", e)
            except (OSError, ValueError) as e:
                log.warning("API unavailable (%s); retrying in %.1fs", e, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kr-lab-scheduler")
    p.add_argument("--kubeconfig", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname).1s %(name)s: %(message)s",
                        stream=sys.stderr)
    s = Scheduler(Kube.from_kubeconfig(args.kubeconfig))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: s.stop.set())
    threading.Thread(target=s.run, daemon=True, name="scheduler").start()
    while not s.stop.is_set():
        s.stop.wait(1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
