"""The kernel step: apply a rendered :class:`.render.Ruleset` as one nft transaction, only the difference.

:class:`Dataplane` keeps what it committed (chains -> rules, sets -> elements, maps -> elements) in memory and
never lists the ruleset on the hot path. :meth:`Dataplane.plan` turns a wanted ruleset (+ optional member
moves) into the commands of one transaction, in an order the kernel accepts: new sets, maps and (empty)
chains; set elements added; changed chains flushed and rewritten; map elements moved; then chains, set
elements and sets no longer wanted removed. :meth:`Dataplane.apply` sends them as one transaction: as a
raw nfnetlink batch (:mod:`.nfnl`) when every command is one it encodes (elements, plain sets, pod and
policy chains: everything a pod event produces), else through libnftables in-process
(:class:`kr_core.net.nft.Nft`) in text syntax (:mod:`.text`). libnftables lists every set and chain before
each command and parses JSON slowly; the raw path does neither. The committed state changes only when the
kernel accepted the transaction, so a failure leaves the previous rules in place and the next attempt
computes the same difference again.

The first apply after start replaces the table atomically (add, delete, add table + everything in one
transaction): whatever a previous run left is adopted without a moment of no enforcement.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kr_core.net.nft import Nft

from . import render
from .nfnl import ElementWriter, ops_from_json
from .render import Rule, Ruleset, SetSpec
from .text import Unsupported, to_text

log = logging.getLogger("kr.nft_netpol")

Member = tuple[str, str]  # (set name, element)


@dataclass
class Plan:
    commands: list[dict[str, Any]] = field(default_factory=list)
    chains_written: list[str] = field(default_factory=list)
    chains_deleted: list[str] = field(default_factory=list)
    sets_created: list[str] = field(default_factory=list)
    sets_deleted: list[str] = field(default_factory=list)
    elements_added: int = 0
    elements_removed: int = 0
    map_changes: int = 0
    replace: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.commands)

    def summary(self) -> str:
        head = "table replaced, " if self.replace else ""
        return (f"{head}{len(self.chains_written)} chain(s) written, {len(self.chains_deleted)} deleted, "
                f"{len(self.sets_created)} set(s) created, {len(self.sets_deleted)} deleted, "
                f"{self.elements_added} element(s) added, {self.elements_removed} removed, "
                f"{self.map_changes} map element(s) changed; {len(self.commands)} command(s) in one transaction")


class Dataplane:
    """kr's ``inet kube-router-netpol`` table in the namespace ``nft`` is bound to."""

    def __init__(self, nft: Nft | None = None, *, fast_elements: bool = True, text: bool = True) -> None:
        self.nft = nft if nft is not None else Nft()
        self.text = text
        self.writer: ElementWriter | None = None
        if fast_elements:
            try:
                self.writer = ElementWriter(render.FAMILY, render.TABLE)
            except OSError as exc:  # no netfilter netlink here: libnftables does it all
                log.warning("element changes through libnftables only: %s", exc)
        self.known = False  # False: the table's content is unknown (first apply replaces it)
        self.chains: dict[str, tuple[Rule, ...]] = {}
        self.sets: dict[str, SetSpec] = {}
        self.elements: dict[str, set[str]] = {}
        self.maps: dict[str, dict[str, str]] = {}
        self.transactions = 0
        self.fast_transactions = 0  # of which sent as raw nfnetlink element batches
        self.last_apply_s = 0.0
        self.last_commands = 0

    # ------------------------------------------------------------------------------------------ plan
    def plan(self, want: Ruleset, add: Iterable[Member] = (), remove: Iterable[Member] = ()) -> Plan:
        """Commands taking the committed state to ``want``; ``add``/``remove`` move elements of sets whose
        ``want.elements`` entry is ``None`` (the caller tracks those members itself)."""
        p = Plan()
        if not self.known:
            return self._plan_replace(want, add, remove)
        cmds = p.commands
        late: list[dict[str, Any]] = []
        # sets: new, element diff
        for name, spec in want.sets.items():
            old = self.sets.get(name)
            elems = want.elements.get(name)
            if old is spec and elems is None:
                continue
            if old is None or old != spec:
                if old is not None:  # type changed (names carry the family, so not expected): recreate
                    cmds.append({"delete": render._obj("set", name)})
                cmds.append({"add": render.set_cmd(spec)})
                p.sets_created.append(name)
                full = elems if elems is not None else frozenset()
                if full:
                    cmds.append({"add": render.elements_cmd(name, full)})
                    p.elements_added += len(full)
                continue
            if elems is None:
                continue
            have = self.elements.get(name, set())
            if have is elems or have == elems:
                continue
            if spec.interval:
                cmds.append({"flush": render._obj("set", name)})
                if elems:
                    cmds.append({"add": render.elements_cmd(name, elems)})
                p.elements_added += len(elems)
                p.elements_removed += len(have)
                continue
            plus, minus = elems - have, have - elems
            if plus:
                cmds.append({"add": render.elements_cmd(name, plus)})
                p.elements_added += len(plus)
            if minus:
                late.append({"delete": render.elements_cmd(name, minus)})
                p.elements_removed += len(minus)
        # member moves for sets tracked by the caller
        adds, dels = self._member_moves(want, add, remove)
        for name, elems in adds.items():
            cmds.append({"add": render.elements_cmd(name, elems)})
            p.elements_added += len(elems)
        for name, elems in dels.items():
            late.append({"delete": render.elements_cmd(name, elems)})
            p.elements_removed += len(elems)
        # chains: create new ones empty, then (re)write rules
        new = [c for c in want.chains if c not in self.chains]
        cmds += [{"add": render.chain_cmd(c)} for c in render._chain_order(_only(want, new))]
        for name in want.maps:
            if name not in self.maps:
                cmds.append({"add": render.map_cmd(name)})
        have = self.chains
        changed = {c: r for c, r in want.chains.items() if (o := have.get(c)) is not r and o != r}
        for c in render._chain_order(_only(want, list(changed))):
            rules = changed[c]
            old_rules = have.get(c)
            if old_rules:
                cmds.append({"flush": render._obj("chain", c)})
            cmds += [{"add": render.rule_cmd(c, r)} for r in rules]
            p.chains_written.append(c)
        # maps: delete moved/gone keys, add new/moved ones
        for name, items in want.maps.items():
            have_m = self.maps.get(name, {})
            if have_m == items:
                continue
            gone = [k for k, v in have_m.items() if items.get(k) != v]
            came = [(k, v) for k, v in items.items() if have_m.get(k) != v]
            if gone:
                cmds.append({"delete": render.map_keys_cmd(name, gone)})
            if came:
                cmds.append({"add": render.map_elements_cmd(name, came)})
            p.map_changes += len(gone) + len(came)
        for name in self.maps:
            if name not in want.maps:
                late.append({"delete": render._obj("map", name)})
        cmds += late
        # what is no longer wanted: chains (now unreferenced), then sets
        stale = [c for c in self.chains if c not in want.chains]
        for c in stale:
            cmds.append({"flush": render._obj("chain", c)})
        for c in stale:
            cmds.append({"delete": render._obj("chain", c)})
        p.chains_deleted = stale
        for name in self.sets:
            if name not in want.sets:
                cmds.append({"delete": render._obj("set", name)})
                p.sets_deleted.append(name)
        return p

    def _plan_replace(self, want: Ruleset, add: Iterable[Member], remove: Iterable[Member]) -> Plan:
        p = Plan(replace=True)
        t = {"table": {"family": render.FAMILY, "name": render.TABLE}}
        full = self._full_elements(want, add, remove)
        rs = Ruleset(want.chains, want.sets, full, want.maps, want.families)  # type: ignore[arg-type]
        p.commands = [{"add": t}, {"delete": t}, *render.create_commands(rs)]
        p.chains_written = list(want.chains)
        p.sets_created = list(want.sets)
        p.elements_added = sum(len(e) for e in full.values())
        p.map_changes = sum(len(m) for m in want.maps.values())
        return p

    def _full_elements(self, want: Ruleset, add: Iterable[Member], remove: Iterable[Member]) -> dict[str, frozenset[str]]:
        full: dict[str, frozenset[str]] = {}
        adds, dels = _group(add), _group(remove)
        for name in want.sets:
            e = want.elements.get(name)
            if e is None:
                e = frozenset((self.elements.get(name, set()) | adds.get(name, set())) - dels.get(name, set()))
            full[name] = e
        return full

    def _member_moves(self, want: Ruleset, add: Iterable[Member],
                      remove: Iterable[Member]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
        adds: dict[str, set[str]] = {}
        dels: dict[str, set[str]] = {}
        for name, e in add:
            if name in self.sets and name in want.sets and want.elements.get(name) is None \
                    and e not in self.elements.get(name, ()):
                adds.setdefault(name, set()).add(e)
        for name, e in remove:
            if name in self.sets and name in want.sets and want.elements.get(name) is None \
                    and e in self.elements.get(name, ()):
                dels.setdefault(name, set()).add(e)
        return adds, dels

    # ----------------------------------------------------------------------------------------- apply
    def apply(self, want: Ruleset, add: Iterable[Member] = (), remove: Iterable[Member] = (), *,
              what: str = "") -> Plan:
        """Plan and send one transaction; commit to memory only when the kernel accepted it."""
        add, remove = list(add), list(remove)
        p = self.plan(want, add, remove)
        if not p.commands:
            return p
        t0 = time.perf_counter()
        self._send(p.commands, what or "network policy")
        self.last_apply_s = time.perf_counter() - t0
        self.last_commands = len(p.commands)
        self.transactions += 1
        self._commit(want, add, remove, p)
        return p

    def _commit(self, want: Ruleset, add: list[Member], remove: list[Member], p: Plan) -> None:
        if p.replace:
            full = self._full_elements(want, add, remove)
            self.elements = {n: set(e) for n, e in full.items()}
        else:
            adds, dels = self._member_moves(want, add, remove)
            for name in list(self.elements):
                if name not in want.sets:
                    del self.elements[name]
            for name, spec in want.sets.items():
                e = want.elements.get(name)
                if e is not None:
                    if self.elements.get(name) != e:
                        self.elements[name] = set(e)
                elif self.sets.get(name) != spec:
                    self.elements[name] = set()
            for name, es in adds.items():
                self.elements.setdefault(name, set()).update(es)
            for name, es in dels.items():
                self.elements.get(name, set()).difference_update(es)
        self.sets = dict(want.sets)
        self.chains = dict(want.chains)
        self.maps = {n: dict(m) for n, m in want.maps.items()}
        self.known = True

    def move_members(self, add: Iterable[Member], remove: Iterable[Member], *, what: str = "") -> int:
        """Element additions/removals only, in sets already programmed (a pod that changes no rule).
        One transaction; returns the number of elements moved."""
        if not self.known:
            return 0
        adds: dict[str, set[str]] = {}
        dels: dict[str, set[str]] = {}
        for name, e in add:
            if name in self.sets and not self.sets[name].interval and e not in self.elements[name]:
                adds.setdefault(name, set()).add(e)
        for name, e in remove:
            if name in self.sets and not self.sets[name].interval and e in self.elements[name]:
                dels.setdefault(name, set()).add(e)
        cmds = [{"add": render.elements_cmd(n, es)} for n, es in sorted(adds.items())]
        cmds += [{"delete": render.elements_cmd(n, es)} for n, es in sorted(dels.items())]
        if not cmds:
            return 0
        t0 = time.perf_counter()
        self._send(cmds, what or "set members")
        self.last_apply_s = time.perf_counter() - t0
        self.last_commands = len(cmds)
        self.transactions += 1
        for n, es in adds.items():
            self.elements[n].update(es)
        for n, es in dels.items():
            self.elements[n].difference_update(es)
        return sum(map(len, adds.values())) + sum(map(len, dels.values()))

    def _send(self, cmds: list[dict[str, Any]], what: str) -> None:
        """One transaction: raw nfnetlink when it is only elements of plain sets and maps and pod chains
        (no libnftables cache to fill: :mod:`.nfnl`), else libnftables, in text syntax (parsed 2.5x faster
        than the same JSON: :mod:`.text`)."""
        ops = None
        if self.writer is not None and not any("table" in next(iter(c.values())) for c in cmds):
            ops = ops_from_json(cmds, render.TABLE, self._plain_sets())
        if ops is not None and self.writer is not None:
            self.writer.apply(ops, what=what)
            self.fast_transactions += 1
            return
        try:
            script = to_text(cmds) if self.text else None
        except Unsupported:
            script = None
        if script is None:
            self.nft.run(cmds, what=what)
        else:
            self.nft.run_text(script, what=what)

    def _plain_sets(self) -> list[str]:
        """Sets and maps programmed whose elements the raw path may move (not interval sets)."""
        return [n for n, s in self.sets.items() if not s.interval] + list(self.maps)

    # ------------------------------------------------------------------------------------ lifecycle
    def adopt(self) -> bool:
        """Whether a previous run left the table (its content is taken as unknown: the first apply replaces
        it atomically). One ``list tables``, at start only."""
        present = self.nft.table_exists(render.FAMILY, render.TABLE)
        self.known = False
        return present

    def close(self) -> None:
        """Close the raw netlink socket (the table stays)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def delete(self) -> bool:
        """Remove the table (cleanup)."""
        gone = self.nft.delete_table(render.FAMILY, render.TABLE)
        self.known = False
        self.chains, self.sets, self.elements, self.maps = {}, {}, {}, {}
        return gone


def _only(rs: Ruleset, chains: list[str]) -> Ruleset:
    return Ruleset(chains={c: rs.chains[c] for c in chains})


def _group(members: Iterable[Member]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for n, e in members:
        out.setdefault(n, set()).add(e)
    return out
