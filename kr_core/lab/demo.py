"""``kr demo``: a 2-node lab with every installed plugin, a small app, and what kr does with it.

Steps (each prints what it does and what it saw):

1. plugins: what is installed, which role each plays, which are still skeletons;
2. lab: ``kr lab up --nodes 2`` with the default plugin selection (inside a User-Mode Linux VM when the
   service proxy is implemented and the host kernel has no IPVS);
3. app: namespace ``demo``, pods ``web-1`` (node-1), ``web-2`` (node-2), ``client`` and ``other`` (node-1)
   answering on port 80, and Service ``web`` in front of the two ``web`` pods; the reachability table;
4. pod routing (role pod-routing, ``bgp_routing``): each node's routes to the other node's pod CIDR, and
   ``client`` reaching ``web-2`` across nodes;
5. service proxy (role service-proxy, ``ipvs_proxy``): ``client`` -> ClusterIP of ``web``, six times, both
   backends must answer (only ``web-1`` while pod routing is not implemented);
6. network policy (role network-policy): a policy lets only ``client`` reach the ``web`` pods; ``other``
   must lose its access to ``web-1`` (same node), ``client`` must keep it;
7. tear down.

A step whose plugin is not implemented yet is skipped with one line saying so; once the plugin reports
``implemented=True`` the step runs and must pass (exit 1 otherwise). Exit 2: a prerequisite is missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kr_core.lab.state import LabState

DEMO_NS = "demo"
WEB = ["web-1", "web-2"]


@dataclass
class PluginView:
    name: str
    role: str
    enabled: bool
    implemented: bool


@dataclass
class Demo:
    name: str
    out: Callable[[str], None]
    plugins: list[PluginView] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    st: LabState | None = None

    # -- output ----------------------------------------------------------------------------------------

    def step(self, title: str) -> None:
        self.out(f"\n== {title}")

    def say(self, msg: str) -> None:
        self.out(f"   {msg}")

    def check(self, ok: bool, what: str) -> bool:
        self.say(("OK    " if ok else "FAILED ") + what)
        if not ok:
            self.failures.append(what)
        return ok

    # -- plugins ---------------------------------------------------------------------------------------

    def role(self, role: str) -> PluginView | None:
        """The enabled plugin of ``role``."""
        return next((p for p in self.plugins if p.role == role and p.enabled), None)

    def ready(self, role: str, what: str, skipping: str) -> PluginView | None:
        """The role's plugin if it is enabled and implemented; otherwise say in one line why the step is skipped."""
        p = self.role(role)
        if p is None:
            self.say(f"SKIP  {what}: no {role} plugin is enabled — {skipping}")
            return None
        if not p.implemented:
            self.say(f"SKIP  {what}: {p.name} is a skeleton (not implemented yet) — {skipping}")
            return None
        if role == "service-proxy" and p.name == "ipvs_proxy" and not host_has_ipvs():
            self.say(f"SKIP  {what}: this kernel has no IPVS (`kr demo --vm auto` runs the demo in a VM) — "
                     f"{skipping}")
            return None
        return p


def load_plugins() -> list[PluginView]:
    from kr_core.config import parse_config
    from kr_core.plugins import discover, select

    installed = discover()
    cfg = parse_config({}, {d.name for d in installed})
    from kr_core.config import merge

    choices = select(installed, cfg.selection, merge(cfg.flags, {}))
    out = []
    for c in choices:
        info = c.plugin.info
        out.append(PluginView(c.plugin.name, info.role if info else "?", c.enabled, bool(info and info.implemented)))
    return out


def host_has_ipvs() -> bool:
    if os.path.exists("/proc/net/ip_vs"):
        return True
    rc = os.system("modprobe -q ip_vs >/dev/null 2>&1")
    return rc == 0 and os.path.exists("/proc/net/ip_vs")


# ----------------------------------------------------------------------------------------------- steps


def pod(name: str, node: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": DEMO_NS, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "app", "image": "kr-lab/responder",
                                                       "ports": [{"containerPort": 80, "protocol": "TCP"}]}]}}


def deploy(d: Demo, kube: Any) -> None:
    from kr_core.lab.kube import ApiError

    d.step("app: namespace demo, pods web-1 (node-1), web-2 (node-2), client and other (node-1), Service web")
    try:
        kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": DEMO_NS}})
    except ApiError as e:
        if e.code != 409:
            raise
    for obj in (pod("web-1", "node-1", {"app": "web"}), pod("web-2", "node-2", {"app": "web"}),
                pod("client", "node-1", {"app": "client"}), pod("other", "node-1", {"app": "other"})):
        kube.create(f"/api/v1/namespaces/{DEMO_NS}/pods", obj)
    svc = kube.create(f"/api/v1/namespaces/{DEMO_NS}/services", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": DEMO_NS},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 80, "protocol": "TCP"}]}})
    deadline = time.monotonic() + 30
    pods: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        pods = kube.get(f"/api/v1/namespaces/{DEMO_NS}/pods").get("items") or []
        if len(pods) == 4 and all((p.get("status") or {}).get("phase") == "Running" for p in pods):
            break
        time.sleep(0.2)
    for p in sorted(pods, key=lambda p: p["metadata"]["name"]):
        s = p.get("status") or {}
        d.say(f"pod {DEMO_NS}/{p['metadata']['name']:7} {s.get('phase', 'Pending'):8} {s.get('podIP') or '-':12} "
              f"on {p['spec'].get('nodeName')}")
    d.say(f"service {DEMO_NS}/web ClusterIP {svc['spec'].get('clusterIP')} port 80 -> pods app=web")
    d.check(len(pods) == 4 and all((p.get("status") or {}).get("phase") == "Running" for p in pods),
            "the lab kubelets started all four pods")


def show_matrix(d: Demo, kube: Any, title: str) -> dict[str, dict[str, bool]]:
    from kr_core.lab.probe import format_matrix, matrix

    assert d.st is not None
    m = matrix(d.st, kube, [DEMO_NS], 80, "TCP", "pod", timeout=1.0)
    d.say(title)
    for line in format_matrix(m).splitlines()[1:]:
        if line.strip():
            d.say("  " + line)
    return m["reachable"]


def routing(d: Demo, kube: Any) -> None:
    from kr_core.lab.netns import ip
    from kr_core.lab.probe import probe

    d.step("pod routing: each node learns the other node's pod CIDR")
    if d.ready("pod-routing", "pod routing", "pods on different nodes cannot reach each other yet") is None:
        return
    assert d.st is not None
    deadline = time.monotonic() + 30
    routes: dict[str, str] = {}
    while time.monotonic() < deadline:
        routes = {}
        for n in d.st.nodes:
            other = next(o for o in d.st.nodes if o.name != n.name)
            routes[n.name] = ip("route", "show", other.pod_cidrs[0], ns=n.netns, check=False).stdout.strip()
        if all(routes.values()):
            break
        time.sleep(0.5)
    for node, r in routes.items():
        d.say(f"{node}: {r or '(no route)'}")
    d.check(all(routes.values()), "every node has a route to the other node's pods")
    r = probe(d.st, kube, f"{DEMO_NS}/client", f"{DEMO_NS}/web-2", 80, timeout=10)
    d.check(r.connected, f"client (node-1) reaches web-2 (node-2) across nodes: {r.answer or r.error}")


def service(d: Demo, kube: Any) -> None:
    from kr_core.lab.probe import probe

    d.step("service proxy: client -> ClusterIP of demo/web, six requests")
    if d.ready("service-proxy", "service proxy", "skipping the ClusterIP step") is None:
        return
    assert d.st is not None
    answers = []
    for _ in range(6):
        r = probe(d.st, kube, f"{DEMO_NS}/client", f"svc/{DEMO_NS}/web", 80, timeout=10)
        answers.append(r.answer if r.connected else f"({r.error})")
        time.sleep(0.05)
    d.say(f"answers: {', '.join(str(a) for a in answers)}")
    got = {a for a in answers if a in (f"{DEMO_NS}/{w}" for w in WEB)}
    routed = d.role("pod-routing")
    if routed is not None and routed.implemented:
        d.check(got == {f"{DEMO_NS}/{w}" for w in WEB}, "both backends answered through the ClusterIP, taking turns")
    else:
        d.check(f"{DEMO_NS}/web-1" in got, "the same-node backend web-1 answered through the ClusterIP "
                "(web-2 on node-2 needs pod routing)")


def policy(d: Demo, kube: Any) -> None:
    d.step("network policy: only demo/client may reach the web pods")
    if d.ready("network-policy", "network policy", "the reachability table would not change") is None:
        return
    w1, c, o = (f"{DEMO_NS}/{x}" for x in ("web-1", "client", "other"))
    before = _quiet_matrix(d, kube)
    kube.create(f"/apis/networking.k8s.io/v1/namespaces/{DEMO_NS}/networkpolicies", {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "web-from-client", "namespace": DEMO_NS},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                              "ports": [{"port": 80, "protocol": "TCP"}]}]}})
    d.say("created NetworkPolicy demo/web-from-client (ingress to app=web only from app=client, TCP 80)")
    deadline = time.monotonic() + 30
    after = before
    while time.monotonic() < deadline:
        after = _quiet_matrix(d, kube)
        if not after[o][w1]:
            break
        time.sleep(0.5)
    show_matrix(d, kube, "reachability after the policy:")
    d.check(before[o][w1] and not after[o][w1], "other (node-1) reached web-1 before the policy and is blocked now")
    d.check(after[c][w1], "client still reaches web-1")
    d.check(after[w1][o], "pods the policy does not select are still reachable (web-1 -> other)")


def _quiet_matrix(d: Demo, kube: Any) -> dict[str, dict[str, bool]]:
    from kr_core.lab.probe import matrix

    assert d.st is not None
    return matrix(d.st, kube, [DEMO_NS], 80, "TCP", "pod", timeout=1.0)["reachable"]


# ----------------------------------------------------------------------------------------------- main


def run(d: Demo, keep: bool) -> int:
    from kr_core.lab import lab
    from kr_core.lab.kube import Kube

    d.step("plugins")
    for p in d.plugins:
        state = "enabled" if p.enabled else "disabled"
        impl = "implemented" if p.implemented else "skeleton (does nothing yet)"
        d.say(f"{p.name:16} {p.role:15} {state:9} {impl}")

    d.step(f"lab: 2 nodes (kr lab up --name {d.name} --nodes 2)")
    t0 = time.monotonic()
    try:
        d.st = lab.up(d.name, 2, say=d.say)
        kube = Kube.from_kubeconfig(str(d.st.kubeconfig))
        deploy(d, kube)
        before = show_matrix(d, kube, "pod-to-pod reachability on port 80:")
        same = before[f"{DEMO_NS}/client"][f"{DEMO_NS}/web-1"]
        d.check(same, "client reaches web-1 on the same node (kube-bridge)")
        routing(d, kube)
        service(d, kube)
        policy(d, kube)
    except lab.LabError as e:
        d.out(f"kr demo: {e}")
        d.failures.append("lab")
    finally:
        if keep and d.st is not None:
            d.step(f"kept: the lab stays up (kr lab status --name {d.name}; kr lab down --name {d.name})")
        else:
            d.step("tear down")
            lab.down(d.name, say=d.say)
    d.out(f"\nkr demo: {'done' if not d.failures else 'FAILED: ' + '; '.join(d.failures)} "
          f"in {time.monotonic() - t0:.0f}s")
    return 1 if d.failures else 0


def missing_prerequisite() -> str | None:
    from kr_core.lab.lab import prerequisites

    return prerequisites()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="kr demo", description="A 2-node lab, a small app, and what kr does with it.")
    p.add_argument("--name", default="demo", help="lab name (default %(default)s)")
    p.add_argument("--keep", action="store_true", help="leave the lab up at the end")
    p.add_argument("--vm", choices=["auto", "always", "never"], default="auto",
                   help="run inside a User-Mode Linux VM: auto = when the service proxy needs IPVS the host lacks")
    args = p.parse_args(argv)

    def out(msg: str) -> None:
        try:
            print(msg, flush=True)
        except BrokenPipeError:  # the reader went away: keep going, the lab must still be torn down
            pass

    why = missing_prerequisite()
    if why:
        print(f"kr demo: {why}", file=sys.stderr)
        return 2
    plugins = load_plugins()
    d = Demo(args.name, out, plugins)
    proxy = d.role("service-proxy")
    in_vm = os.environ.get("KR_IN_VM") == "1"
    want_vm = args.vm == "always" or (args.vm == "auto" and proxy is not None and proxy.implemented
                                      and not host_has_ipvs())
    if want_vm and not in_vm:
        from kr_core.lab.vm import vm_available

        why_not = vm_available("uml")
        if why_not is None:
            out("kr demo: the host kernel has no IPVS: running the demo inside a User-Mode Linux VM")
            from kr_core.lab.vm import run_in_vm

            cmd = [sys.executable, "-m", "kr_core.lab.demo", "--name", args.name, "--vm", "never"]
            return run_in_vm(cmd, timeout=900)
        out(f"kr demo: the host kernel has no IPVS and no VM is available ({why_not}): "
            "the service proxy step will fail")
    if shutil.which("ip") is None:
        print("kr demo: `ip` (iproute2) is not installed", file=sys.stderr)
        return 2
    return run(d, args.keep)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
