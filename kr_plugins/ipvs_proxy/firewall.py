"""Applies the proxy's chains, jumps and ipsets through ``kr_core.net``, writing only what changed.

Per family: the iptables backend (legacy or nft) is detected once (:func:`kr_core.net.detect_mode`) unless
the config forces one. :meth:`Firewall.sync_iptables` reads the family's ruleset with one ``*-save`` and
writes every change (chains rewritten whole when their content differs from what this process wrote or
their rule count in the save drifted, the jumps in INPUT/POSTROUTING, chain deletions) with at most one
``*-restore --noflush``: process launches are what costs (~0.4 s each in User-Mode Linux once the agent
holds 10k Services). Sets go over netfilter netlink (:mod:`kr_core.net.ipsetnl`): a temp+swap sync when
the content differs (start, periodic checks), single member adds/deletes for an event; ``ipset restore``
only as the fallback.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from collections.abc import Iterable, Mapping, Sequence

from kr_core.net.ipset import IpSet, IpsetError, IpsetRunner
from kr_core.net.ipsetnl import IpsetNl
from kr_core.net.iptables import Family, Iptables, IptablesError, Mode, clean_comment, detect_mode, render_rule
from kr_core.net.launcher import Launcher

from . import rules as R

log = logging.getLogger("kr.ipvs_proxy.firewall")


def run_tool(argv: list[str], launcher: Launcher | None = None) -> str:
    p = launcher.run(argv, timeout=120) if launcher else subprocess.run(argv, capture_output=True, text=True,
                                                                         timeout=120, check=False)
    if p.returncode != 0:
        raise IpsetError(f"{' '.join(argv)}: exit {p.returncode}: {p.stderr.strip()}", stderr=p.stderr)
    return p.stdout

ChainKey = tuple[int, str, str]  # (family, table, chain)
#: a built-in chain's wanted jumps, in order, as (rule, comment), and every comment kr owns there
JumpSpec = tuple[Sequence[tuple[Sequence[str], str]], Sequence[str]]
FAMILY = {4: Family.V4, 6: Family.V6}


class Firewall:
    def __init__(self, families: Sequence[int], mode: str = "auto") -> None:
        """Made in the network namespace it is for: its command launcher (:class:`kr_core.net.launcher.Launcher`,
        so the iptables/ipset tools start from a small helper, not from the large agent) lives there."""
        self.families = tuple(families)
        self.launcher = Launcher()
        self.launcher.start()
        self._nl_lock = threading.Lock()
        self._nl: IpsetNl | None = None
        try:
            self._nl = IpsetNl()  # one netfilter netlink socket for all set writes, opened in this namespace
        except OSError as exc:
            log.warning("ipset netlink unavailable (%s): using ipset restore", exc)
        self.ipt: dict[int, Iptables] = {}
        for f in self.families:
            m = Mode(mode) if mode != "auto" else detect_mode(FAMILY[f], launcher=self.launcher)
            self.ipt[f] = Iptables(m, FAMILY[f], launcher=self.launcher)
        self.ipset = IpsetRunner(launcher=self.launcher)
        self.chains: dict[ChainKey, list[list[str]]] = {}
        self.sets: dict[str, set[str]] = {}
        self.set_types: dict[str, tuple[str, str]] = {}  # kernel name -> (type, family), from the last sync
        self.absent: set[ChainKey] = set()
        self.writes = 0

    def close(self) -> None:
        """Stop the command launcher's helper process, close the netlink socket."""
        self.launcher.close()
        with self._nl_lock:
            if self._nl is not None:
                self._nl.close()
                self._nl = None

    @property
    def modes(self) -> dict[int, str]:
        return {f: str(i.mode) for f, i in self.ipt.items()}

    # ---------------------------------------------------------------------------------- ipsets
    def _ours(self) -> set[str]:
        return {R.kernel_set(base, f) for f in self.families for base in R.OWNED_SETS}

    def read_sets(self) -> None:
        """Adopt the members of our sets as the kernel has them: one ``ipset save`` (at start)."""
        ours = self._ours()
        out = run_tool(["ipset", "save"], self.launcher)
        self.sets = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] in ours:
                if parts[0] == "create":
                    self.sets.setdefault(parts[1], set())
                elif parts[0] == "add":
                    self.sets.setdefault(parts[1], set()).add(parts[2])

    def check_sets(self) -> None:
        """Periodic drift check without reading members: ``ipset list -t`` gives each set's entry count;
        a set that is missing or whose count differs from what was written is re-read."""
        ours = self._ours()
        counts: dict[str, int] = {}
        name = ""
        for line in run_tool(["ipset", "list", "-t"], self.launcher).splitlines():
            if line.startswith("Name: "):
                name = line[6:].strip()
            elif line.startswith("Number of entries: ") and name in ours:
                counts[name] = int(line.split(":", 1)[1])
        drifted = [n for n, members in self.sets.items() if counts.get(n) != len(members)]
        if drifted:
            log.warning("ipsets %s drifted (entry counts differ): re-reading", ", ".join(sorted(drifted)))
            self.read_sets()

    def sync_sets(self, sets: Iterable[IpSet]) -> bool:
        """Make the sets hold exactly these entries (temporary set + swap) for every set that differs.

        Over netfilter netlink (:class:`kr_core.net.ipsetnl.IpsetNl`: no process, 1,000 commands per
        ``sendmsg``); a set the netlink path cannot encode or that the kernel refused goes through one
        ``ipset restore`` (:func:`kr_core.net.ipset.render_sync`), which also reports the tool's error."""
        sets = list(sets)
        want: dict[str, set[str]] = {}
        for s in sets:
            self.set_types[s.kernel_name] = (s.type, s.family)
            want[s.kernel_name] = set(s.entries)  # made once: compared, then kept as what the kernel has
        changed = [s for s in sets if self.sets.get(s.kernel_name) != want[s.kernel_name]]
        if not changed:
            return False
        fallback = changed
        with self._nl_lock:
            if self._nl is not None:
                try:
                    res = self._nl.sync(changed)
                    fallback = [s for s, _ in res.failed]
                    for s, why in res.failed:
                        log.warning("ipset %s: netlink sync failed (%s): using ipset restore", s.kernel_name, why)
                except OSError as exc:
                    log.warning("ipset netlink sync failed (%s): using ipset restore", exc)
        if fallback:
            self.ipset.sync(fallback)
        self.writes += 1
        for s in changed:
            self.sets[s.kernel_name] = want[s.kernel_name]
        return True

    def update_members(self, add: Iterable[tuple[str, str]], delete: Iterable[tuple[str, str]]) -> bool:
        """Hot path: single members, over netlink (one batch); ``ipset restore -exist`` if that fails."""
        add = [(n, e) for n, e in add if e not in self.sets.get(n, set())]
        delete = [(n, e) for n, e in delete if e in self.sets.get(n, set())]
        if not add and not delete:
            return False
        errs: dict[tuple[str, str, str], int] | None = None
        with self._nl_lock:
            if self._nl is not None and all(n in self.set_types for n, _ in (*add, *delete)):
                try:
                    errs = self._nl.update_members(self.set_types, add, delete)
                except (OSError, ValueError) as exc:
                    log.warning("ipset member update over netlink failed (%s): using ipset restore", exc)
        if errs is None or errs:
            if errs:
                (op, n, e), code = next(iter(errs.items()))
                log.warning("ipset %s %s %s refused over netlink (%s): using ipset restore", op, n, e, os.strerror(code))
            self.ipset.update_members(add, delete)
        self.writes += 1
        for n, e in add:
            self.sets.setdefault(n, set()).add(e)
        for n, e in delete:
            self.sets.get(n, set()).discard(e)
        return True

    # ---------------------------------------------------------------------------------- chains
    def sync_chains(self, desired: Mapping[ChainKey, list[list[str]]], remove: Iterable[ChainKey] = ()) -> bool:
        """Rewrite the chains whose rules differ (one restore per family), delete those in ``remove``."""
        changed = False
        for f in self.families:
            per_table: dict[str, dict[str, list[list[str]]]] = {}
            gone: dict[str, list[str]] = {}
            for (fam, table, chain), rules in desired.items():
                if fam == f and self.chains.get((fam, table, chain)) != rules:
                    per_table.setdefault(table, {})[chain] = rules
            for key in remove:
                if key[0] == f and key not in desired and (key in self.chains or self._exists(key)):
                    gone.setdefault(key[1], []).append(key[2])
            if not per_table and not gone:
                continue
            self.ipt[f].apply(per_table, delete=gone)
            self.writes += 1
            changed = True
            for table, chains in per_table.items():
                for chain, rules in chains.items():
                    self.chains[(f, table, chain)] = rules
                    self.absent.discard((f, table, chain))
            for table, chains in gone.items():
                for chain in chains:
                    self.chains.pop((f, table, chain), None)
                    self.absent.add((f, table, chain))
        return changed

    def sync_iptables(self, desired: Mapping[ChainKey, list[list[str]]], remove: Iterable[ChainKey],
                      jumps: Mapping[ChainKey, JumpSpec]) -> bool:
        """Chains, the jumps into them and chain deletions, per family in one ``*-save`` (read) and at most
        one ``*-restore`` (write, all tables): two process launches instead of one per chain and jump.

        A chain is rewritten when its rules differ from what this process wrote or when its rule count in
        the save differs (drift); ``jumps`` keeps the listed (rule, comment) first in a built-in chain,
        in order (see :func:`plan_jumps`); chains in ``remove`` are deleted when the save has them. If the
        restore fails (the ruleset changed between save and restore), it is re-planned once."""
        remove = list(remove)
        changed = False
        for f in self.families:
            want = {(t, c): r for (fam, t, c), r in desired.items() if fam == f}
            known = {(t, c): r for (fam, t, c), r in self.chains.items() if fam == f}
            gone = [(t, c) for fam, t, c in remove if fam == f and (f, t, c) not in desired]
            jf = {(t, c): spec for (fam, t, c), spec in jumps.items() if fam == f}
            for attempt in (1, 2):
                tables = parse_save(self.ipt[f].save())
                plan = plan_iptables(tables, want, known, gone, jf)
                if not plan.text:
                    break
                try:
                    self.ipt[f].restore(plan.text)
                except IptablesError:
                    if attempt == 2:
                        raise
                    log.warning("%s: restore failed, ruleset changed meanwhile: re-reading", self.ipt[f])
                    continue
                self.writes += 1
                changed = True
                for t, c in plan.written:
                    self.chains[(f, t, c)] = want[(t, c)]
                    self.absent.discard((f, t, c))
                for t, c in plan.deleted:
                    self.chains.pop((f, t, c), None)
                    self.absent.add((f, t, c))
                if plan.jumps:
                    log.info("%s: jumps set in %s", self.ipt[f], ", ".join(plan.jumps))
                break
            for t, c in gone:  # not in the save: absent, nothing to delete
                self.chains.pop((f, t, c), None)
        return changed

    def jumps(self, family: int, hairpin: bool) -> dict[ChainKey, JumpSpec]:
        """INPUT starts with the firewall jump; POSTROUTING with [hairpin jump (when needed), SNAT jump]."""
        post = ([(R.hairpin_jump(), R.JUMP_HAIRPIN_COMMENT)] if hairpin else []) + [(R.snat_jump(), R.JUMP_SNAT_COMMENT)]
        return {(family, "filter", "INPUT"): ([(R.input_jump(family), R.JUMP_INPUT_COMMENT)], (R.JUMP_INPUT_COMMENT,)),
                (family, "nat", "POSTROUTING"): (post, (R.JUMP_HAIRPIN_COMMENT, R.JUMP_SNAT_COMMENT))}

    def _exists(self, key: ChainKey) -> bool:
        """Is a chain we did not write in this process there anyway (left by a previous run)? Checked once
        per chain and process: afterwards the answer is remembered as "absent"."""
        if key in self.absent:
            return False
        f, table, chain = key
        there = self.ipt[f].chain_exists(table, chain)
        if not there:
            self.absent.add(key)
        return there

    def check_drift(self) -> None:
        """Forget chains whose rule count in the kernel differs from what was written (rewritten next)."""
        for (f, table, chain), rules in list(self.chains.items()):
            try:
                n = len(self.ipt[f].list_rules(table, chain))
            except IptablesError:
                n = -1
            if n != len(rules):
                log.warning("chain %s/%s (ipv%d) drifted (%d rules, want %d): rewriting", table, chain, f, n, len(rules))
                del self.chains[(f, table, chain)]

    # ---------------------------------------------------------------------------------- jumps
    def ensure_input_jump(self, family: int) -> None:
        if self.ipt[family].ensure_jump("filter", "INPUT", R.input_jump(family), R.JUMP_INPUT_COMMENT):
            self.writes += 1

    def remove_input_jump(self, family: int) -> None:
        self.ipt[family].remove_jump("filter", "INPUT", R.JUMP_INPUT_COMMENT)

    def ensure_postrouting(self, family: int, hairpin: bool) -> None:
        """POSTROUTING starts with [hairpin jump (when needed), SNAT jump], in that order."""
        want = ([(R.hairpin_jump(), R.JUMP_HAIRPIN_COMMENT)] if hairpin else []) + [(R.snat_jump(), R.JUMP_SNAT_COMMENT)]
        if ensure_ordered_jumps(self.ipt[family], "nat", "POSTROUTING", want,
                                all_comments=(R.JUMP_HAIRPIN_COMMENT, R.JUMP_SNAT_COMMENT)):
            self.writes += 1

    # ---------------------------------------------------------------------------------- cleanup
    def cleanup(self) -> None:
        for f in self.families:
            ipt = self.ipt[f]
            for table, chain, comment in (("filter", "INPUT", R.JUMP_INPUT_COMMENT),
                                          ("nat", "POSTROUTING", R.JUMP_HAIRPIN_COMMENT),
                                          ("nat", "POSTROUTING", R.JUMP_SNAT_COMMENT)):
                try:
                    ipt.remove_jump(table, chain, comment)
                except IptablesError as exc:
                    log.debug("cleanup %s: %s", comment, exc)
            gone = {"filter": [c for c in (R.CHAIN_SERVICES,) if ipt.chain_exists("filter", c)],
                    "nat": [c for c in (R.CHAIN_HAIRPIN, R.CHAIN_SNAT) if ipt.chain_exists("nat", c)]}
            gone = {t: cs for t, cs in gone.items() if cs}
            if gone:
                ipt.apply({}, delete=gone)
        for name in self.ipset.list_names(R.OWNED_SETS):
            self.ipset.destroy(name)
        self.chains.clear()
        self.sets.clear()


def _with_comment(rule: Sequence[str], comment: str) -> list[str]:
    rule = list(rule)
    cut = next((i for i, a in enumerate(rule) if a in ("-j", "-g")), len(rule))
    return [*rule[:cut], "-m", "comment", "--comment", clean_comment(comment), *rule[cut:]]


def ensure_ordered_jumps(ipt: Iptables, table: str, chain: str, want: Sequence[tuple[Sequence[str], str]],
                         all_comments: Sequence[str]) -> bool:
    """Keep exactly ``want`` (rule, comment) as the first rules of a built-in chain, in that order, and no
    other rule carrying one of ``all_comments``. One ``-S`` read; one restore only when something differs."""
    current = ipt.list_rules(table, chain)
    expect = [f"-A {chain} {render_rule(_with_comment(r, c))}" for r, c in want]
    tags = [f'--comment {render_rule([clean_comment(c)])}' for c in all_comments]
    tagged = [i for i, line in enumerate(current) if any(t + " " in line + " " for t in tags)]
    if [current[i].split() for i in tagged] == [e.split() for e in expect] and tagged == list(range(len(expect))):
        return False
    lines = [f"*{table}", *(f"-D {current[i][3:]}" for i in tagged)]
    lines += [f"-I {chain} {n} {render_rule(_with_comment(r, c))}" for n, (r, c) in enumerate(want, start=1)]
    ipt.restore("\n".join([*lines, "COMMIT"]) + "\n")
    log.info("%s: %s/%s jumps set: %s", ipt, table, chain, ", ".join(c for _, c in want))
    return True


# ------------------------------------------------------------------------------- save -> restore (pure)

def parse_save(text: str) -> dict[str, dict[str, list[str]]]:
    """``{table: {chain: ["-A CHAIN ...", ...]}}`` of ``*-save`` output (every declared chain listed)."""
    tables: dict[str, dict[str, list[str]]] = {}
    cur: dict[str, list[str]] | None = None
    for line in text.splitlines():
        if line.startswith("*"):
            cur = tables.setdefault(line[1:].strip(), {})
        elif cur is None:
            continue
        elif line.startswith(":"):
            cur.setdefault(line[1:].split(" ", 1)[0], [])
        elif line.startswith("-A "):
            cur.setdefault(line[3:].split(" ", 1)[0], []).append(line)
    return tables


def plan_jumps(chain: str, current: Sequence[str], want: Sequence[tuple[Sequence[str], str]],
               all_comments: Sequence[str]) -> list[str]:
    """Restore lines that make ``want`` the first rules of built-in ``chain``, in order, and remove every
    other rule carrying one of ``all_comments`` (stale copies); ``[]`` when ``current`` (its ``-A`` lines)
    is already right. Deletes are by spec, so a rule another tool inserted meanwhile is never hit."""
    expect = [f"-A {chain} {render_rule(_with_comment(r, c))}" for r, c in want]
    tags = [f"--comment {render_rule([clean_comment(c)])}" for c in all_comments]
    tagged = [i for i, line in enumerate(current) if any(t + " " in line + " " for t in tags)]
    if [current[i].split() for i in tagged] == [e.split() for e in expect] and tagged == list(range(len(expect))):
        return []
    lines = [f"-D {current[i][3:]}" for i in tagged]
    lines += [f"-I {chain} {n} {render_rule(_with_comment(r, c))}" for n, (r, c) in enumerate(want, start=1)]
    return lines


class IptablesPlan:
    """What :func:`plan_iptables` decided: the restore payload (empty: nothing to do) and what it does."""

    def __init__(self) -> None:
        self.text = ""
        self.written: list[tuple[str, str]] = []
        self.deleted: list[tuple[str, str]] = []
        self.jumps: list[str] = []


def plan_iptables(tables: Mapping[str, Mapping[str, Sequence[str]]], want: Mapping[tuple[str, str], list[list[str]]],
                  known: Mapping[tuple[str, str], list[list[str]]], remove: Iterable[tuple[str, str]],
                  jumps: Mapping[tuple[str, str], JumpSpec]) -> IptablesPlan:
    """One family's ``--noflush`` restore payload, all tables, from its save (:func:`parse_save`).

    Per table: chains to write are declared (created or emptied) and filled, chains to delete declared
    (emptied), then the jump lines, then the deletions (``-X``, after the jumps to them are gone)."""
    plan = IptablesPlan()
    per: dict[str, tuple[list[str], list[str], list[str], list[str]]] = {}  # decl, rules, jumps, deletes

    def table(t: str) -> tuple[list[str], list[str], list[str], list[str]]:
        return per.setdefault(t, ([], [], [], []))

    for (t, c), rules in want.items():
        have = tables.get(t, {}).get(c)
        if known.get((t, c)) == rules and have is not None and len(have) == len(rules):
            continue
        if known.get((t, c)) == rules:
            log.warning("chain %s/%s drifted (%s rules, want %d): rewriting", t, c,
                        "no chain" if have is None else len(have), len(rules))
        decl, body, _, _ = table(t)
        decl.append(f":{c} - [0:0]")
        body.extend(f"-A {c} {render_rule(r)}" for r in rules)
        plan.written.append((t, c))
    for t, c in remove:
        if (t, c) in want or c not in tables.get(t, {}):
            continue
        decl, _, _, dels = table(t)
        decl.append(f":{c} - [0:0]")
        dels.append(f"-X {c}")
        plan.deleted.append((t, c))
    for (t, c), (wanted, comments) in jumps.items():
        lines = plan_jumps(c, tables.get(t, {}).get(c, []), wanted, comments)
        if lines:
            table(t)[2].extend(lines)
            plan.jumps.append(f"{t}/{c}")
    out: list[str] = []
    for t, (decl, body, jl, dels) in per.items():
        out += [f"*{t}", *decl, *body, *jl, *dels, "COMMIT"]
    plan.text = "\n".join(out) + "\n" if out else ""
    return plan
