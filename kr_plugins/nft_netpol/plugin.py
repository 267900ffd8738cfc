"""The nft_netpol plugin: NetworkPolicy on native nftables, the same semantics as netpol_iptables.

Flow: the caches -> :class:`kr_core.net.netpol.Desired` (compiled policies, sets and members, local pods)
-> :class:`.render.Renderer` (pure; one ``inet`` table for both families) -> :class:`.dataplane.Dataplane`
(only the difference, one libnftables transaction, in-process).

* ``sync``: rebuild everything from the caches and apply the difference. The initial sync replaces the
  table a previous run left (atomically), then removes the iptables backend's chains and ipsets (switching
  backends); a periodic sync replaces the table too, which repairs any drift in one transaction.
* ``on_pod``: only if phase, IPs, hostIP, labels or node changed (AC-N9). When no rule changed (a remote
  pod, or a local pod whose policies stayed the same) it is one transaction of element additions and
  removals; otherwise the structure is re-rendered (cached per policy and pod) and only changed chains,
  map elements and sets are sent, with the pod's element moves, in one transaction.
* ``on_policy``, ``on_namespace`` (labels only): rebuild and apply the difference; ``on_node``: this node's
  pod CIDRs (``--netpol-default-deny``).
* A failed transaction leaves the kernel and the committed state as they were; the plugin then asks for a
  full sync, and the next event or sync converges from the committed state.
"""

from __future__ import annotations

import time
from typing import Any

import pydantic
from prometheus_client import Counter, Histogram

from kr_core import Event, EventType, HealthReport, PluginContext, PluginInfo, Resource, Role, hookimpl
from kr_core.net.netpol import Desired
from kr_core.net.netpol.backend import (
    BackendMetrics,
    Options,
    ProblemLog,
    options_from,
    pod_changed,
    remove_iptables_state,
    remove_nft_state,
)
from kr_core.net.nft import Nft

from . import render
from .dataplane import Dataplane, Plan
from .render import Renderer, Ruleset

__version__ = "0.2.0"


class Config(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    nflog: bool = True
    """Log rejected packets to NFLOG group 100 (``log group 100``, rate 10/minute, burst 10)."""
    remove_iptables_state: bool = True
    """After the first successful sync, remove the iptables backend's chains and ipsets (a backend switch)."""


class Plugin:
    info = PluginInfo(
        name="nft_netpol",
        role=Role.NETWORK_POLICY,
        version=__version__,
        resources=frozenset({Resource.POD, Resource.NAMESPACE, Resource.NETWORKPOLICY, Resource.NODE}),
        config_model=Config,
        description="NetworkPolicy on native nftables",
        implemented=True,
        default_enabled=False,
    )

    def __init__(self) -> None:
        self.dp: Dataplane | None = None
        self.desired: Desired | None = None
        self.renderer = Renderer()
        self.rendered: Ruleset | None = None  # the last ruleset the kernel accepted
        self.rendered_opts: Options | None = None
        self.error = ""
        self.dirty = False  # a transaction failed: the next hook does a full rebuild
        self.switched = False  # the other backend's state was removed
        self.last_sync = 0.0

    # ---------------------------------------------------------------------------------- lifecycle
    @hookimpl
    def configure(self, ctx: PluginContext) -> None:
        self.ctx = ctx
        self.cfg: Config = ctx.config or Config()
        self.log = ctx.log
        self.families = tuple(ctx.settings.families)
        reg = ctx.metrics
        m = BackendMetrics(reg, "nft_netpol")
        self.m_sync, self.m_chains, self.m_sets, self.m_problems = m.sync, m.chains, m.sets, m.problems
        self._problem = ProblemLog(self.log, self.m_problems)
        self.m_tx = Counter("kr_nft_netpol_transactions_total", "nft transactions sent", ["kind"], registry=reg)
        self.m_tx_size = Histogram("kr_nft_netpol_transaction_commands", "Commands per nft transaction",
                                   buckets=(1, 2, 5, 10, 20, 50, 100, 500, 1000, 10000, 100000), registry=reg)
        self.m_failures = Counter("kr_nft_netpol_transaction_failures_total", "nft transactions refused",
                                  registry=reg)

    @hookimpl
    def start(self, ctx: PluginContext) -> None:
        self.dp = Dataplane(Nft())
        found = self.dp.adopt()
        self.desired = Desired(ctx.node_name, self.families, on_problem=self._problem)
        self.log.info("network policy with nftables (table %s %s%s) for families %s on node %s",
                      render.FAMILY, render.TABLE, ", adopting the one a previous run left" if found else "",
                      self.families, ctx.node_name)

    @hookimpl
    def sync(self, reason: str) -> None:
        assert self.dp is not None
        if reason == "periodic":
            self.dp.known = False  # replace the whole table atomically: repairs drift
        self._rebuild(f"full sync ({reason})")
        self.last_sync = time.time()
        if not self.switched and self.cfg.remove_iptables_state:
            n = remove_iptables_state(self.families)
            if n:
                self.log.info("switched backends: removed %d chain(s)/set(s) the iptables backend left", n)
        self.switched = True

    @hookimpl
    def on_pod(self, event: Event) -> None:
        assert self.desired is not None and self.dp is not None
        if event.type is EventType.MODIFIED and not pod_changed(event.old, event.new):
            return
        key = event.obj.key
        what = f"pod {key} {event.type.value}"
        if self.dirty:
            self._rebuild(what)
            return
        pod = event.new if event.type is not EventType.DELETED else None
        before = self.desired.local.get(key)
        delta = self.desired.update_pod(key, pod)
        add = [(m.set_name, m.ip) for m in delta.added]
        remove = [(m.set_name, m.ip) for m in delta.removed]
        if delta.rules_changed:
            if delta.groups_changed:
                self._apply_structure(f"{what}: named ports of {sorted(delta.groups_changed)} changed", add, remove)
                return
            opts = self.options()
            if self.rendered is None or opts != self.rendered_opts:
                self._apply_structure(f"{what}: local pod changed", add, remove)
                return
            rs = self.renderer.update_pod(self.rendered, self.desired, before, self.desired.local.get(key), opts)
            self._send(f"{what}: local pod changed", rs, add, remove, opts)
            return
        if not add and not remove:
            return
        try:
            n = self.dp.move_members(add, remove, what=what)
        except Exception as exc:
            self._failed(what, exc)
            raise
        if n:
            self.m_tx.labels("members").inc()
            self.m_tx_size.observe(self.dp.last_commands)
            self.log.info("%s: %d set element(s) changed, no rule changed", what, n)

    @hookimpl
    def on_policy(self, event: Event) -> None:
        self._rebuild(f"policy {event.obj.key} {event.type.value}")

    @hookimpl
    def on_namespace(self, event: Event) -> None:
        old = event.old.meta.labels if event.old is not None else None
        new = event.new.meta.labels if event.new is not None else None
        if old != new:
            self._rebuild(f"namespace {event.obj.key} labels changed")

    @hookimpl
    def on_node(self, event: Event) -> None:
        if event.obj.name != self.ctx.node_name:
            return
        old = event.old.pod_cidrs if event.old is not None else None
        new = event.new.pod_cidrs if event.new is not None else None
        if old != new:
            self._apply_structure(f"node {event.obj.name} pod CIDRs {old} -> {new}", [], [])

    @hookimpl
    def health(self) -> HealthReport:
        return HealthReport(healthy=not self.error, message=self.error or "ok")

    @hookimpl
    def state(self) -> dict[str, Any]:
        d, dp = self.desired, self.dp
        if d is None or dp is None:
            return {"summary": {}, "items": []}
        items = []
        for lp in sorted(d.local.values(), key=lambda p: p.key):
            chains = [render.pod_chain(lp.namespace, lp.name, dr) for dr, pols in
                      (("ingress", lp.ingress), ("egress", lp.egress)) if pols]
            items.append({"pod": lp.key, "ips": list(lp.ips), "chains": chains,
                          "ingress_policies": list(lp.ingress), "egress_policies": list(lp.egress)})
        return {"summary": {"table": f"{render.FAMILY} {render.TABLE}", "policies": len(d.policies),
                            "policies_on_node": len(d.needed_policies()), "local_pods": len(d.local),
                            "chains": len(dp.chains), "sets": len(dp.sets),
                            "elements": sum(len(e) for e in dp.elements.values()),
                            "map_elements": sum(len(m) for m in dp.maps.values()),
                            "transactions": dp.transactions, "last_transaction_commands": dp.last_commands,
                            "last_transaction_ms": round(dp.last_apply_s * 1000, 3)},
                "items": items}

    @hookimpl
    def cleanup(self) -> None:
        n = remove_nft_state()
        self.log.info("nft_netpol cleanup: %d table(s) removed", n)

    @hookimpl
    def stop(self) -> None:
        """The table stays: the next agent adopts it. Only the raw netlink socket is closed."""
        if self.dp is not None:
            self.dp.close()

    # ----------------------------------------------------------------------------------- internals
    def options(self) -> Options:
        return options_from(self.ctx, nflog=self.cfg.nflog)

    def _rebuild(self, why: str) -> None:
        assert self.desired is not None and self.dp is not None
        c = self.ctx.caches
        t0 = time.monotonic()
        self.desired.build(c.policies.list(), c.pods.list(), c.namespaces.list())
        opts = self.options()
        rs = self.renderer.render(self.desired, opts)
        self._send(why, rs, [], [], opts)
        self.m_sync.observe(time.monotonic() - t0)

    def _apply_structure(self, why: str, add: list[tuple[str, str]], remove: list[tuple[str, str]]) -> None:
        """Re-render the structure only; elements of new sets come from the desired state, the others move
        by ``add``/``remove``."""
        assert self.desired is not None and self.dp is not None
        if self.dirty:
            self._rebuild(why)
            return
        opts = self.options()
        rs = self.renderer.render(self.desired, opts, elements=False)
        for name, spec in rs.sets.items():
            if rs.elements.get(name) is None and name not in self.dp.sets:
                rs.elements[name] = render.set_elements(spec, self.desired.sets.get(name))
        self._send(why, rs, add, remove, opts)

    def _send(self, why: str, rs: Ruleset, add: list[tuple[str, str]], remove: list[tuple[str, str]],
              opts: Options) -> None:
        assert self.dp is not None
        try:
            plan: Plan = self.dp.apply(rs, add, remove, what=why)
        except Exception as exc:
            self._failed(why, exc)
            raise
        self.rendered, self.rendered_opts = rs, opts
        self.error = ""
        self.dirty = False
        self.m_chains.set(len(self.dp.chains))
        self.m_sets.set(len(self.dp.sets))
        if plan.changed:
            self.m_tx.labels("replace" if plan.replace else "diff").inc()
            self.m_tx_size.observe(len(plan.commands))
            self.log.info("%s: %s", why, plan.summary())
        else:
            self.log.debug("%s: nothing to change", why)

    def _failed(self, why: str, exc: Exception) -> None:
        self.rendered = None
        self.renderer.forget()
        self.error = f"{why}: nft transaction failed (previous rules kept): {exc}"
        self.dirty = True
        self.m_failures.inc()
        self.log.error("%s", self.error)
        self.ctx.request_sync("nft transaction failed")

