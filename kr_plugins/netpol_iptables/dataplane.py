"""The kernel step: apply rendered rulesets with one ipset batch and one iptables-restore --noflush per family.

:class:`Dataplane` keeps what it committed (chain -> rule text, set -> content) and applies only the
difference: sets that are new or whose content changed (temp set + swap, as netlink batches through
:class:`kr_core.net.ipsetnl.IpsetNl`; ``ipset restore`` for what that path refuses, which also gives the tool's
error message),
then the chains whose text changed, plus ``-X`` of chains no longer wanted, in one ``iptables-restore
--noflush`` per family (kr's chains only; nothing else in the filter table is read or written), then the
destruction of sets no longer referenced. A failed restore raises and leaves the committed state as it
was, so the next attempt re-applies the same difference. Membership-only changes go through
:meth:`Dataplane.update_members`: one netlink batch of add/del messages (no process; ``ipset restore -exist``
as the fallback), no iptables at all.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from kr_core.net.ipset import IpSet, IpsetRunner, render_members, render_sync, set_name
from kr_core.net.ipsetnl import IpsetNl, SyncResult
from kr_core.net.iptables import Family, Iptables, Mode, chain_names, detect_mode, jump_fixes
from kr_core.net.netns import in_netns
from kr_core.net.netpol import naming
from kr_core.net.netpol.backend import IPTABLES_CHAIN_PREFIXES

from .render import Ruleset

log = logging.getLogger("kr.netpol_iptables")

# only this role's chains: the three top-level ones by name (other KUBE-ROUTER-* chains belong to other roles,
# e.g. the service proxy's KUBE-ROUTER-SERVICES), policy and pod chains by prefix
CHAIN_PREFIXES = IPTABLES_CHAIN_PREFIXES
SET_PREFIXES = (naming.SRC_SET_PREFIX, naming.DST_SET_PREFIX, naming.LOCAL_PODS_SET)
FAMILY = {4: Family.V4, 6: Family.V6}
_UNKNOWN: tuple[str, ...] = ("<adopted>",)


@dataclass
class ApplyResult:
    sets_synced: list[str] = field(default_factory=list)
    sets_destroyed: list[str] = field(default_factory=list)
    chains_written: dict[int, list[str]] = field(default_factory=dict)
    chains_deleted: dict[int, list[str]] = field(default_factory=dict)
    iptables_restores: int = 0
    ipset_restores: int = 0
    ipset_netlink: int = 0
    ipsets: list[IpSet] = field(default_factory=list)  # the sets synced (whole content)
    iptables_payloads: dict[int, str] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.sets_synced or self.sets_destroyed or any(self.chains_written.values())
                    or any(self.chains_deleted.values()))

    def summary(self) -> str:
        w = sum(len(v) for v in self.chains_written.values())
        d = sum(len(v) for v in self.chains_deleted.values())
        return (f"{w} chain(s) written, {d} deleted, {len(self.sets_synced)} set(s) synced, "
                f"{len(self.sets_destroyed)} destroyed ({self.iptables_restores} iptables-restore, "
                f"{self.ipset_restores} ipset restore)")


def splice(old: tuple[str, ...] | None, new: tuple[str, ...]) -> tuple[int, list[str], list[str]] | None:
    """How to turn ``old`` into ``new`` by deleting and inserting rules in the middle of a chain whose middle
    rules (one jump per local pod) may be in any order: (insert position, rules to delete, rules to insert).

    None when it cannot (unknown old content, duplicates, or the head/tail of the chain changed).
    """
    if old is None or old == _UNKNOWN or len(set(old)) != len(old) or len(set(new)) != len(new):
        return None
    p = 0
    while p < min(len(old), len(new)) and old[p] == new[p]:
        p += 1
    q = 0
    while q < min(len(old), len(new)) - p and old[-1 - q] == new[-1 - q]:
        q += 1
    a, b = old[p:len(old) - q], new[p:len(new) - q]
    if not all(r.startswith("-m comment --comment \"rule to jump traffic ") for r in (*a, *b)):
        return None  # only the per-pod jumps may move
    gone, came = set(a) - set(b), [r for r in b if r not in set(a)]
    return p + 1, [r for r in a if r in gone], came


def render_payload(full: Mapping[str, Sequence[str]], splices: Mapping[str, tuple[int, list[str], list[str]]],
                   delete: Sequence[str], jumps: Sequence[str] = ()) -> str:
    """One ``iptables-restore --noflush`` payload: chains rewritten whole, chains spliced (-D/-I of single
    rules), kr's jumps in the built-in chains (``jumps``: -D/-I lines), chains deleted (after the rules that
    jumped to them are gone)."""
    lines = ["*filter", *(f":{c} - [0:0]" for c in (*full, *delete))]
    for c, rules in full.items():
        lines += [f"-A {c} {r}" for r in rules]
    for c, (pos, dels, ins) in splices.items():
        lines += [f"-D {c} {r}" for r in dels]
        lines += [f"-I {c} {pos} {r}" for r in reversed(ins)]
    lines += jumps
    lines += [f"-X {c}" for c in delete]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


class Dataplane:
    """kr's network-policy chains and sets in one network namespace (``netns`` None: the current one)."""

    def __init__(self, families: Iterable[int], *, netns: str | None = None,
                 modes: Mapping[int, Mode | str] | None = None) -> None:
        self.families = tuple(families)
        self.netns = netns
        modes = dict(modes or {})
        for f in self.families:
            if f not in modes or modes[f] in (None, "auto"):
                modes[f] = detect_mode(FAMILY[f], netns=netns)
        self.modes = {f: Mode(modes[f]) for f in self.families}
        self.ipt = {f: Iptables(self.modes[f], FAMILY[f], netns=netns) for f in self.families}
        self.ipset = IpsetRunner(netns=netns)
        self.chains: dict[int, dict[str, tuple[str, ...]]] = {f: {} for f in self.families}
        self.sets: dict[str, IpSet | None] = {}  # kernel name -> content (None: adopted, content unknown)
        self.iptables_restores = 0
        self.ipset_restores = 0
        self.ipset_netlink = 0  # member updates and set syncs sent as netlink batches
        self._nl: IpsetNl | None = None
        self._nl_broken = False
        # the last ``*-save -t filter`` per family (adopt/verify), until a restore changes the table: the
        # next apply places kr's top-level jumps from it in the same restore instead of saving again
        self.saved: dict[int, str | None] = dict.fromkeys(self.families)
        self.jumps_checked = False

    # ------------------------------------------------------------------------------------- adoption
    def adopt(self) -> None:
        """Learn which of kr's chains and sets exist (one ``*-save -t filter`` per family, one ``ipset list -n``).

        Their content is taken as unknown, so the first apply rewrites each chain once (atomically, in
        place: traffic is never interrupted) and deletes those no longer wanted.
        """
        for f in self.families:
            self.saved[f] = save = self.ipt[f].save("filter")
            names = chain_names(save, CHAIN_PREFIXES)
            self.chains[f] = dict.fromkeys(names, _UNKNOWN)
        self.sets = dict.fromkeys(self.ipset.list_names(SET_PREFIXES), None)
        log.info("adopted %s chain(s) and %d set(s) left by a previous run",
                 {f: len(c) for f, c in self.chains.items()}, len(self.sets))

    def verify(self) -> list[str]:
        """Drift check for periodic syncs (one ``*-save -t filter`` per family, one ``ipset list -n``): a chain of
        ours that is missing or holds another number of rules than we wrote, or a set that is gone, is marked
        unknown so the next :meth:`apply` rewrites it. Returns what drifted."""
        drifted: list[str] = []
        for f in self.families:
            self.saved[f] = save = self.ipt[f].save("filter")
            counts: dict[str, int] = dict.fromkeys(chain_names(save, CHAIN_PREFIXES), 0)
            for line in save.splitlines():
                if line.startswith("-A "):
                    c = line.split(" ", 2)[1]
                    if c in counts:
                        counts[c] += 1
            for c, rules in self.chains[f].items():
                if rules != _UNKNOWN and counts.get(c) != len(rules):
                    drifted.append(f"IPv{f} chain {c}")
                    self.chains[f][c] = _UNKNOWN
            for c in counts:  # ours by name, but not in our state: adopt, so apply deletes it
                if c not in self.chains[f]:
                    drifted.append(f"IPv{f} chain {c} (stray)")
                    self.chains[f][c] = _UNKNOWN
        present = set(self.ipset.list_names(SET_PREFIXES))
        for n in list(self.sets):
            if n not in present:
                drifted.append(f"set {n}")
                del self.sets[n]
        for n in present - set(self.sets):
            drifted.append(f"set {n} (stray)")
            self.sets[n] = None
        if drifted:
            log.warning("drift repaired on the next apply: %s", ", ".join(drifted[:20]))
        return drifted

    # ---------------------------------------------------------------------------------------- apply
    def apply(self, rulesets: Mapping[int, Ruleset]) -> ApplyResult:
        res = ApplyResult()
        want_sets: dict[str, IpSet] = {}
        for rs in rulesets.values():
            for s in rs.sets.values():
                want_sets[s.kernel_name] = s
        sync = [s for name, s in want_sets.items() if self.sets.get(name) != s]
        stale_sets = [n for n in self.sets if n not in want_sets]
        if sync:
            res.ipsets = sync
            left = sync
            nl = self._netlink()
            if nl is not None:
                try:
                    got = nl.sync(sync)
                except OSError as exc:
                    log.warning("ipset sync over netlink failed (%s): using ipset restore", exc)
                    got = SyncResult([], [(s, str(exc)) for s in sync])
                self.ipset_netlink += 1
                res.ipset_netlink += 1
                left = [s for s, _why in got.failed]
                for s, why in got.failed:
                    log.warning("ipset %s over netlink: %s: retried with ipset restore", s.kernel_name, why)
            if left:
                self.ipset.restore(render_sync(left))
                self.ipset_restores += 1
                res.ipset_restores += 1
            for s in sync:
                self.sets[s.kernel_name] = s
            res.sets_synced = [s.kernel_name for s in sync]
        self.jumps_checked = all(self.saved.get(f) is not None for f in rulesets)
        for f, rs in rulesets.items():
            have = self.chains[f]
            write = {c: tuple(r) for c, r in rs.chains.items() if have.get(c) != tuple(r)}
            delete = [c for c in have if c not in rs.chains]
            saved = self.saved.get(f)
            jumps = jump_fixes(saved, self.top_jumps(rs.chains)) if saved is not None else []
            if not write and not delete and not jumps:
                continue
            splices = {c: sp for c, r in write.items() if c in naming.TOP_CHAINS.values()
                       and (sp := splice(have.get(c), r)) is not None}
            full = {c: r for c, r in write.items() if c not in splices}
            payload = render_payload(full, splices, delete, jumps)
            self.saved[f] = None  # the table changes now
            self.ipt[f].restore(payload)
            self.iptables_restores += 1
            res.iptables_restores += 1
            res.iptables_payloads[f] = payload
            have.update(write)
            for c in delete:
                del have[c]
            res.chains_written[f] = list(write)
            res.chains_deleted[f] = delete
        if stale_sets:
            self.ipset.restore("".join(f"destroy {n}\n" for n in stale_sets))
            self.ipset_restores += 1
            res.ipset_restores += 1
            for n in stale_sets:
                del self.sets[n]
            res.sets_destroyed = stale_sets
        return res

    def update_members(self, add: Iterable[tuple[str, int, str]], delete: Iterable[tuple[str, int, str]]) -> int:
        """Add/remove (set name, family, address) in sets already programmed: one netlink batch (an ``ipset
        restore`` if that is refused or unavailable). Returns how many members moved."""
        fam = {4: "inet", 6: "inet6"}
        adds = [(set_name(n, fam[f]), ip) for n, f, ip in add if set_name(n, fam[f]) in self.sets]
        dels = [(set_name(n, fam[f]), ip) for n, f, ip in delete if set_name(n, fam[f]) in self.sets]
        if not adds and not dels:
            return 0
        nl = self._netlink()
        kinds = {n: (s.type, s.family) for n, _ in (*adds, *dels) if (s := self.sets.get(n)) is not None}
        errs: dict | None = None
        if nl is not None and len(kinds) == len({n for n, _ in (*adds, *dels)}):
            try:
                errs = nl.update_members(kinds, adds, dels)
            except (OSError, ValueError) as exc:
                errs = {("update", "", str(exc)): 0}
            self.ipset_netlink += 1
            if errs:
                log.warning("ipset member update over netlink refused %s: retried with ipset restore",
                            ", ".join(f"{op} {n} {e}" for op, n, e in list(errs)[:5]))
        if errs is None or errs:
            self.ipset.restore(render_members(adds, dels))
            self.ipset_restores += 1
        for name, ip in adds:
            self._patch(name, add=ip)
        for name, ip in dels:
            self._patch(name, remove=ip)
        return len(adds) + len(dels)

    def close(self) -> None:
        """Close the netlink socket (the rules and sets stay)."""
        if self._nl is not None:
            self._nl.close()
            self._nl = None

    def _netlink(self) -> IpsetNl | None:
        """The netlink ipset socket (in this dataplane's namespace), or None where it cannot be opened."""
        if self._nl is None and not self._nl_broken:
            try:
                with in_netns(self.netns):
                    self._nl = IpsetNl()
            except OSError as exc:
                self._nl_broken = True
                log.warning("ipset over netlink unavailable (%s): using ipset restore", exc)
        return self._nl

    def _patch(self, name: str, add: str | None = None, remove: str | None = None) -> None:
        s = self.sets.get(name)
        if s is None:
            return
        entries = set(s.entries)
        if add:
            entries.add(add)
        if remove:
            entries.discard(remove)
        self.sets[name] = IpSet(s.name, s.type, s.family, tuple(sorted(entries)), s.nomatch, s.hashsize,
                                s.maxelem, s.timeout, s.comment)

    @staticmethod
    def top_jumps(chains: Iterable[str]) -> list[tuple[str, list[str], str]]:
        """(built-in chain, rule, comment) of kr's jumps to those of its top-level chains in ``chains``."""
        return [(builtin, ["-j", chain], naming.jump_comment(chain))
                for builtin, chain in naming.TOP_CHAINS.items() if chain in chains]

    def ensure_jumps(self) -> bool:
        """kr's jumps at position 1 of INPUT/FORWARD/OUTPUT (identified by comment; re-placed if moved).
        Nothing to do when the last :meth:`apply` placed them from a save taken in this sync."""
        if self.jumps_checked:
            self.jumps_checked = False
            return False
        changed = False
        for f in self.families:
            jumps = self.top_jumps(self.chains[f])
            if jumps:
                changed |= self.ipt[f].ensure_jumps("filter", jumps)
        return changed

    # -------------------------------------------------------------------------------------- cleanup
    def cleanup(self) -> None:
        """Remove every chain, jump and set kr's network policy created (found by name), in every backend."""
        for f in self.families:
            for mode in Mode:
                ipt = Iptables(mode, FAMILY[f], netns=self.netns)
                try:
                    names = chain_names(ipt.save("filter"), CHAIN_PREFIXES)
                except Exception as exc:  # noqa: BLE001 - a backend whose tools fail has nothing of ours
                    log.debug("%s: save failed: %s", ipt, exc)
                    continue
                for builtin, chain in naming.TOP_CHAINS.items():
                    ipt.remove_jump("filter", builtin, naming.jump_comment(chain))
                if names:
                    ipt.apply({}, delete={"filter": names})
                    log.info("%s: deleted %d chain(s)", ipt, len(names))
            self.chains[f] = {}
        names = self.ipset.list_names(SET_PREFIXES)
        if names:
            self.ipset.restore("".join(f"destroy {n}\n" for n in names))
            log.info("destroyed %d set(s)", len(names))
        self.sets = {}
