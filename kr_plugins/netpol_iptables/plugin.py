"""The netpol_iptables plugin: NetworkPolicy with iptables + ipset, kube-router's semantics and layout.

Flow: the caches -> :class:`kr_core.net.netpol.Desired` (compiled policies, sets and members, local pods)
-> :func:`.render.render` per family (pure) -> :class:`.dataplane.Dataplane` (only the difference: one
ipset restore, one iptables-restore --noflush per family).

* ``sync``: rebuild everything from the caches and apply the difference; a periodic sync first checks the
  kernel for drift (one save per family: chains of ours missing, emptied or stray; sets gone) and the
  top-of-chain jumps, and rewrites what drifted.
* ``on_pod``: only if phase, IPs, hostIP, labels or node changed (AC-N9). The pod's set memberships move;
  when no rule text changed (any remote pod, a local pod whose policies stayed the same) that is one
  ``ipset restore`` of add/del lines and no iptables call at all. Otherwise the rules are re-rendered and
  only changed chains rewritten.
* ``on_policy``: only that policy is recompiled and only its memberships move; only its chains (and the pod
  chains jumping to it) are rewritten.
* ``on_namespace``: only a label change matters (its pods are re-matched against namespace selectors);
  ``on_node``: this node's pod CIDRs (``--netpol-default-deny``).

A local pod appearing or going writes its own pod chain and splices its jumps into the top-level chains
(``-I``/``-D`` of single rules), so the cost does not grow with the number of local pods. ``state()`` (``kr
state``) lists each local pod with its chain and the policies isolating it per direction.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import pydantic
from prometheus_client import Counter

from kr_core import Event, EventType, HealthReport, PluginContext, PluginInfo, Resource, Role, hookimpl
from kr_core.net.iptables import Mode
from kr_core.net.netpol import Desired, naming
from kr_core.net.netpol.backend import BackendMetrics, ProblemLog, pod_changed, remove_nft_state

from .dataplane import Dataplane
from .render import Options, Ruleset, render

__version__ = "0.1.0"


class Config(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    iptables_mode: Literal["auto", "legacy", "nft"] = "auto"
    """Which iptables backend to program; ``auto`` detects it like kube-proxy's iptables-wrapper."""
    nflog: bool = True
    """Log rejected packets to NFLOG group 100 (rate 10/minute, burst 10)."""
    remove_nft_state: bool = True
    """After the first successful sync, remove what the nftables backend (nft_netpol, or kube-router's
    experimental one) left, so switching backends leaves no stale rules."""


class Plugin:
    info = PluginInfo(
        name="netpol_iptables",
        role=Role.NETWORK_POLICY,
        version=__version__,
        resources=frozenset({Resource.POD, Resource.NAMESPACE, Resource.NETWORKPOLICY, Resource.NODE}),
        config_model=Config,
        description="NetworkPolicy with iptables + ipset",
        implemented=True,
    )

    def __init__(self) -> None:
        self.dp: Dataplane | None = None
        self.desired: Desired | None = None
        self.error = ""
        self.last_sync = 0.0
        self.last_apply: Any = None
        self.switched = False

    # ---------------------------------------------------------------------------------- lifecycle
    @hookimpl
    def configure(self, ctx: PluginContext) -> None:
        self.ctx = ctx
        self.cfg: Config = ctx.config or Config()
        self.log = ctx.log
        self.families = tuple(ctx.settings.families)
        reg = ctx.metrics
        m = BackendMetrics(reg, "netpol_iptables")
        self.m_sync, self.m_chains, self.m_sets, self.m_problems = m.sync, m.chains, m.sets, m.problems
        self._problem = ProblemLog(self.log, self.m_problems)
        self.m_members = Counter("kr_netpol_iptables_member_updates_total",
                                 "Set-membership-only updates (no iptables call)", registry=reg)

    @hookimpl
    def start(self, ctx: PluginContext) -> None:
        modes = {f: (Mode(self.cfg.iptables_mode) if self.cfg.iptables_mode != "auto" else "auto")
                 for f in self.families}
        self.dp = Dataplane(self.families, modes=modes)
        self.dp.adopt()
        self.desired = Desired(ctx.node_name, self.families, on_problem=self._problem)
        self.log.info("network policy with iptables (%s) + ipset for families %s on node %s",
                      ", ".join(f"IPv{f}: {m}" for f, m in self.dp.modes.items()), self.families, ctx.node_name)

    @hookimpl
    def sync(self, reason: str) -> None:
        assert self.dp is not None
        if reason != "initial":
            self.dp.verify()  # someone flushed or deleted our chains or sets: rewrite them
        self._rebuild(f"full sync ({reason})")
        assert self.dp is not None
        self.dp.ensure_jumps()  # also repairs a jump someone moved or deleted
        self.last_sync = time.time()
        if not self.switched and self.cfg.remove_nft_state:
            n = remove_nft_state()
            if n:
                self.log.info("switched backends: removed %d nftables table(s) the nftables backend left", n)
        self.switched = True

    def _rebuild(self, why: str) -> None:
        assert self.desired is not None
        c = self.ctx.caches
        t0 = time.monotonic()
        self.desired.build(c.policies.list(), c.pods.list(), c.namespaces.list())
        self._apply(why)
        self.m_sync.observe(time.monotonic() - t0)

    @hookimpl
    def on_pod(self, event: Event) -> None:
        assert self.desired is not None and self.dp is not None
        if event.type is EventType.MODIFIED and not pod_changed(event.old, event.new):
            return
        pod = event.new if event.type is not EventType.DELETED else None
        key = event.obj.key
        delta = self.desired.update_pod(key, pod)
        if delta.rules_changed:
            why = "local pod" if delta.local_changed else f"named ports of {sorted(delta.groups_changed)}"
            self._apply(f"pod {key} {event.type.value}: {why} changed")
            return
        if delta.added or delta.removed:
            n = self.dp.update_members([(m.set_name, m.family, m.ip) for m in delta.added],
                                       [(m.set_name, m.family, m.ip) for m in delta.removed])
            if n:
                self.m_members.inc()
                self.log.info("pod %s %s: %d set member(s) changed, no rule changed", key, event.type.value, n)

    @hookimpl
    def on_policy(self, event: Event) -> None:
        assert self.desired is not None
        t0 = time.monotonic()
        self.desired.update_policy(event.obj.key, event.new if event.type is not EventType.DELETED else None)
        self._apply(f"policy {event.obj.key} {event.type.value}")
        self.m_sync.observe(time.monotonic() - t0)

    @hookimpl
    def on_namespace(self, event: Event) -> None:
        old = event.old.meta.labels if event.old is not None else None
        new = event.new.meta.labels if event.new is not None else None
        if old == new:
            return
        assert self.desired is not None and self.dp is not None
        delta = self.desired.update_namespace(event.obj.name, event.new)
        why = f"namespace {event.obj.name} labels changed"
        if delta.rules_changed:
            self._apply(why)
        elif delta.added or delta.removed:
            n = self.dp.update_members([(m.set_name, m.family, m.ip) for m in delta.added],
                                       [(m.set_name, m.family, m.ip) for m in delta.removed])
            self.log.info("%s: %d set member(s) changed, no rule changed", why, n)

    @hookimpl
    def on_node(self, event: Event) -> None:
        if event.obj.name != self.ctx.node_name:
            return
        old = event.old.pod_cidrs if event.old is not None else None
        new = event.new.pod_cidrs if event.new is not None else None
        if old != new:
            self._apply(f"node {event.obj.name} pod CIDRs {old} -> {new}")

    @hookimpl
    def health(self) -> HealthReport:
        return HealthReport(healthy=not self.error, message=self.error or "ok")

    @hookimpl
    def state(self) -> dict[str, Any]:
        d = self.desired
        if d is None or self.dp is None:
            return {"summary": {}, "items": []}
        items = [{"pod": lp.key, "ips": list(lp.ips), "chain": naming.pod_chain(lp.namespace, lp.name),
                  "ingress_policies": list(lp.ingress), "egress_policies": list(lp.egress)}
                 for lp in sorted(d.local.values(), key=lambda p: p.key)]
        return {"summary": {"policies": len(d.policies), "policies_on_node": len(d.needed_policies()),
                            "local_pods": len(d.local),
                            "chains": sum(len(c) for c in self.dp.chains.values()), "sets": len(self.dp.sets),
                            "mode": {f"ipv{f}": str(m) for f, m in self.dp.modes.items()},
                            "iptables_restores": self.dp.iptables_restores,
                            "ipset_restores": self.dp.ipset_restores},
                "items": items}

    @hookimpl
    def cleanup(self) -> None:
        Dataplane(self.families, modes=dict.fromkeys(self.families, Mode.NFT)).cleanup()

    @hookimpl
    def stop(self) -> None:
        """The dataplane stays: the next agent adopts it. Only the netlink socket is closed."""
        if self.dp is not None:
            self.dp.close()

    # ----------------------------------------------------------------------------------- internals
    def options(self) -> Options:
        s = self.ctx.settings
        node = self.ctx.caches.nodes.get(self.ctx.node_name)
        cidrs = node.pod_cidrs if node is not None else ()
        deny = bool(s["netpol-default-deny"])
        if deny and not cidrs:
            self.log.warning("--netpol-default-deny needs this node's pod CIDRs (node %s has none): disabled",
                             self.ctx.node_name)
            deny = False
        return Options(families=self.families, default_deny=deny, pod_cidrs=tuple(cidrs),
                       cluster_ranges=tuple(s.service_cluster_ip_range),
                       external_ranges=tuple(s.service_external_ip_range) + tuple(s.loadbalancer_ip_range),
                       node_port_range=s.node_port_range, nflog=self.cfg.nflog)

    def _apply(self, why: str) -> None:
        assert self.desired is not None and self.dp is not None
        opts = self.options()
        rulesets: dict[int, Ruleset] = {f: render(self.desired, f, opts) for f in self.families}
        try:
            res = self.dp.apply(rulesets)
        except Exception as exc:
            self.error = f"{why}: apply failed: {exc}"
            raise
        self.error = ""
        self.last_apply = res
        self.m_chains.set(sum(len(c) for c in self.dp.chains.values()))
        self.m_sets.set(len(self.dp.sets))
        if res.changed:
            self.log.info("%s: %s", why, res.summary())
        else:
            self.log.debug("%s: nothing to change", why)

