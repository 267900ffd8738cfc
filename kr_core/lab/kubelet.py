"""The lab kubelet: one process per node, living in the node's netns.

It lists and watches the pods bound to its node (``fieldSelector=spec.nodeName=<node>``). For a new pod it
creates a pod netns behind ``kube-bridge`` with the next free address of each of the node's pod CIDRs,
starts a responder on every containerPort (``namespace/name\\n``; SCTP on a kernel without SCTP as raw
INIT/INIT-ACK exchanges, see :mod:`kr_core.lab.rawsctp`), and writes the status (phase Running, Ready,
podIP(s), hostIP(s)). ``hostNetwork: true`` pods get no netns: they answer from the node's own address.
Deleting the pod tears its netns down. On restart it adopts the pods whose netns still exists.

It runs in the root mount namespace and joins the node's netns itself (``--node-netns``).
Run as ``python -m kr_core.lab.kubelet --lab NAME --node node-1 --kubeconfig FILE --ready-file FILE``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kr_core.lab import netns, topology
from kr_core.lab.kube import ApiError, Kube, pod_key
from kr_core.lab.responder import Responders
from kr_core.lab.state import pod_netns

log = logging.getLogger("kr.lab.kubelet")


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def container_ports(pod: dict[str, Any]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for c in (pod.get("spec") or {}).get("containers") or []:
        for p in c.get("ports") or []:
            port = p.get("containerPort")
            if isinstance(port, int):
                pp = (str(p.get("protocol") or "TCP").upper(), port)
                if pp not in out:
                    out.append(pp)
    return out


@dataclass
class PodRun:
    key: str
    uid: str
    netns: str | None  # None: hostNetwork
    offset: int | None
    ips: list[str] = field(default_factory=list)


class Kubelet:
    def __init__(self, kube: Kube, lab: str, node: str, node_ns: str | None) -> None:
        self.kube, self.lab, self.node, self.node_ns = kube, lab, node, node_ns
        self.pods: dict[str, PodRun] = {}
        self.responders = Responders()
        self.cidrs: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.host_ips: list[str] = []
        self.stop = threading.Event()

    # -- node ------------------------------------------------------------------------------------------

    def load_node(self) -> None:
        node = self.kube.get(f"/api/v1/nodes/{self.node}")
        spec = node.get("spec") or {}
        self.cidrs = [ipaddress.ip_network(c) for c in spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])]
        self.host_ips = [a["address"] for a in (node.get("status") or {}).get("addresses") or []
                         if a.get("type") == "InternalIP"]
        if not self.cidrs:
            raise RuntimeError(f"node {self.node} has no pod CIDR")
        log.info("node %s: pod CIDRs %s, host IPs %s", self.node, ",".join(map(str, self.cidrs)), ",".join(self.host_ips))

    # -- IPAM ------------------------------------------------------------------------------------------

    def _used(self) -> set[int]:
        return {p.offset for p in self.pods.values() if p.offset is not None}

    def _offset_of(self, ip: str) -> int | None:
        a = ipaddress.ip_address(ip)
        for net in self.cidrs:
            if a.version == net.version and a in net:
                return int(a) - int(net.network_address)
        return None

    def _allocate(self) -> int:
        used = self._used()
        size = min(net.num_addresses for net in self.cidrs)
        for off in range(2, min(size - 1, 1 << 16)):
            if off not in used:
                return off
        raise RuntimeError(f"node {self.node}: pod CIDR exhausted")

    # -- pods ------------------------------------------------------------------------------------------

    def handle(self, etype: str, pod: dict[str, Any]) -> None:
        key = pod_key(pod)
        meta = pod["metadata"]
        if etype == "DELETED" or meta.get("deletionTimestamp"):
            self.teardown(key)
            if etype != "DELETED":
                # no graceful termination in the lab: the pod is gone once its netns is
                try:
                    self.kube.request("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                                      {"gracePeriodSeconds": 0})
                except ApiError as e:
                    if e.code != 404:
                        log.warning("pod %s: final delete failed: %s", key, e)
            return
        run = self.pods.get(key)
        if run is not None and run.uid == meta.get("uid"):
            return
        if run is not None:
            self.teardown(key)  # same name, new pod
        try:
            self.setup(pod)
        except Exception as e:  # noqa: BLE001 - one pod's failure must not stop the kubelet
            log.error("pod %s: setup failed: %s", key, e)
            self._status_failed(pod, str(e))

    def setup(self, pod: dict[str, Any]) -> None:
        key = pod_key(pod)
        meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
        host_network = bool(spec.get("hostNetwork"))
        ports = container_ports(pod)
        problems: list[str] = []
        if host_network:
            run = PodRun(key, meta["uid"], None, None, list(self.host_ips))
            listen_ns = None  # this process already lives in the node's netns
        else:
            ns = pod_netns(self.lab, f"{key}/{meta['uid']}")
            old_ips = [p["ip"] for p in status.get("podIPs") or []] or ([status["podIP"]] if status.get("podIP") else [])
            offset = self._offset_of(old_ips[0]) if old_ips and netns.exists(ns) else None
            if offset is None or offset in self._used():
                if netns.exists(ns):
                    topology.del_pod(self.node_ns or "", ns)
                offset = self._allocate()
                addrs = [(str(net.network_address + offset), net.prefixlen, topology.gateway(str(net)))
                         for net in self.cidrs]
                topology.add_pod(self.node_ns or "", ns, addrs)
                verb = "created"
            else:
                verb = "adopted"
            ips = [str(net.network_address + offset) for net in self.cidrs]
            run = PodRun(key, meta["uid"], ns, offset, ips)
            listen_ns = ns
            log.info("pod %s: %s netns %s, %s", key, verb, ns, ",".join(ips))
        self.pods[key] = run
        ipv6 = any(":" in a for a in run.ips)
        problems += self.responders.add(key, listen_ns, ports, ipv6=ipv6)
        for p in problems:
            log.warning("pod %s: port skipped: %s", key, p)
        log.info("pod %s: answering on %s", key, ", ".join(f"{p}/{n}" for p, n in ports) or "no ports")
        self._status_running(pod, run)

    def teardown(self, key: str) -> None:
        run = self.pods.pop(key, None)
        if run is None:
            return
        self.responders.remove(key)
        if run.netns is not None:
            topology.del_pod(self.node_ns or "", run.netns)
        log.info("pod %s: torn down%s", key, f" (netns {run.netns})" if run.netns else "")

    def _patch_status(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        m = pod["metadata"]
        try:
            self.kube.patch(f"/api/v1/namespaces/{m['namespace']}/pods/{m['name']}/status", {"status": status})
        except ApiError as e:
            if e.code != 404:
                log.warning("pod %s: status update failed: %s", pod_key(pod), e)

    def _status_running(self, pod: dict[str, Any], run: PodRun) -> None:
        t = now()
        conds = [{"type": c, "status": "True", "lastTransitionTime": t}
                 for c in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]
        containers = [{"name": c.get("name", "c"), "ready": True, "started": True, "restartCount": 0,
                       "image": c.get("image", ""), "imageID": "", "containerID": f"lab://{run.uid}/{c.get('name')}",
                       "state": {"running": {"startedAt": t}}}
                      for c in (pod.get("spec") or {}).get("containers") or []]
        self._patch_status(pod, {
            "phase": "Running", "podIP": run.ips[0] if run.ips else None,
            "podIPs": [{"ip": a} for a in run.ips], "hostIP": self.host_ips[0] if self.host_ips else None,
            "hostIPs": [{"ip": a} for a in self.host_ips], "startTime": t, "conditions": conds,
            "containerStatuses": containers,
        })

    def _status_failed(self, pod: dict[str, Any], why: str) -> None:
        self._patch_status(pod, {"phase": "Pending", "conditions": [
            {"type": "Ready", "status": "False", "reason": "LabSetupFailed", "message": why}]})

    # -- list + watch ----------------------------------------------------------------------------------

    def resync(self) -> str:
        lst = self.kube.get("/api/v1/pods", fieldSelector=f"spec.nodeName={self.node}")
        seen = set()
        for pod in lst.get("items") or []:
            seen.add(pod_key(pod))
            self.handle("ADDED", pod)
        for key in list(self.pods):
            if key not in seen:
                self.teardown(key)
        return str(lst["metadata"].get("resourceVersion") or "0")

    def run(self, ready_file: str | None = None) -> None:
        backoff = 0.2
        while not self.stop.is_set():
            try:
                if not self.cidrs:
                    self.load_node()
                rv = self.resync()
                if ready_file:
                    Path(ready_file).write_text(f"{len(self.pods)}\n")
                    ready_file = None
                    log.info("kubelet for %s ready (%d pods)", self.node, len(self.pods))
                backoff = 0.2
                while not self.stop.is_set():
                    for ev in self.kube.watch("/api/v1/pods", rv, {"fieldSelector": f"spec.nodeName={self.node}"},
                                              timeout_seconds=120):
                        obj = ev.get("object") or {}
                        rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                        if ev["type"] in ("ADDED", "MODIFIED", "DELETED"):
                            self.handle(ev["type"], obj)
            except ApiError as e:
                if e.code != 410:
                    log.warning("watch failed: %s; relisting", e)
            except (OSError, ValueError, RuntimeError) as e:
                log.warning("API unavailable (%s); retrying in %.1fs", e, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def shutdown(self) -> None:
        self.stop.set()
        self.responders.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kr-lab-kubelet")
    p.add_argument("--lab", required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--node-netns", required=True, help="the node's netns name (pod veths are created there)")
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--ready-file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname).1s %(name)s: %(message)s",
                        stream=sys.stderr)
    # Move into the node's netns here rather than through `ip netns exec`: that would give this process a
    # private mount namespace, and the pod netns mounts it creates would be invisible to everyone else.
    fd = os.open(os.path.join(netns.NETNS_DIR, args.node_netns), os.O_RDONLY)
    netns.setns(fd)  # before any thread exists, so every thread of the kubelet lives in the node's netns
    os.close(fd)
    kube = Kube.from_kubeconfig(args.kubeconfig)
    k = Kubelet(kube, args.lab, args.node, args.node_netns)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: k.stop.set())
    t = threading.Thread(target=k.run, args=(args.ready_file,), daemon=True, name="kubelet")
    t.start()
    while not k.stop.is_set():
        k.stop.wait(1.0)
    k.shutdown()
    log.info("kubelet for %s stopped (pod namespaces stay until `kr lab down`)", args.node)
    time.sleep(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
