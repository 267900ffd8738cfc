"""Applies the proxy's chains, jumps and ipsets through ``kr_core.net``, writing only what changed.

Per family: the iptables backend (legacy or nft) is detected once (:func:`kr_core.net.detect_mode`) unless
the config forces one. Chains are rewritten whole, in one ``iptables-restore --noflush``, when their
rendered content differs from what this process last wrote (drift: :meth:`Firewall.check_drift` compares
rule counts, cheap). Sets: a full temp+swap restore when the content differs (start, periodic checks),
single ``add``/``del`` lines in one ``ipset restore -exist`` for an event.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence

from kr_core.net.ipset import IpSet, IpsetError, IpsetRunner, temp_name
from kr_core.net.ipsetnl import add_members
from kr_core.net.iptables import Family, Iptables, IptablesError, Mode, clean_comment, detect_mode, render_rule

from . import rules as R

log = logging.getLogger("kr.ipvs_proxy.firewall")


def run_tool(argv: list[str]) -> str:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if p.returncode != 0:
        raise IpsetError(f"{' '.join(argv)}: exit {p.returncode}: {p.stderr.strip()}", stderr=p.stderr)
    return p.stdout

ChainKey = tuple[int, str, str]  # (family, table, chain)
FAMILY = {4: Family.V4, 6: Family.V6}
NETLINK_MIN_ENTRIES = 512  # below this a single ipset restore is cheaper than two restores + netlink


class Firewall:
    def __init__(self, families: Sequence[int], mode: str = "auto") -> None:
        self.families = tuple(families)
        self.ipt: dict[int, Iptables] = {}
        for f in self.families:
            m = Mode(mode) if mode != "auto" else detect_mode(FAMILY[f])
            self.ipt[f] = Iptables(m, FAMILY[f])
        self.ipset = IpsetRunner()
        self.chains: dict[ChainKey, list[list[str]]] = {}
        self.sets: dict[str, set[str]] = {}
        self.absent: set[ChainKey] = set()
        self.writes = 0

    @property
    def modes(self) -> dict[int, str]:
        return {f: str(i.mode) for f, i in self.ipt.items()}

    # ---------------------------------------------------------------------------------- ipsets
    def _ours(self) -> set[str]:
        return {R.kernel_set(base, f) for f in self.families for base in R.OWNED_SETS}

    def read_sets(self) -> None:
        """Adopt the members of our sets as the kernel has them: one ``ipset save`` (at start)."""
        ours = self._ours()
        out = run_tool(["ipset", "save"])
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
        for line in run_tool(["ipset", "list", "-t"]).splitlines():
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

        Small sets go through one ``ipset restore`` (:func:`kr_core.net.ipset.render_sync`). Large ones get
        their temporary set created by a restore, filled over netlink (:mod:`.ipsetnl`, ~10x faster in UML
        than a restore line per member) and swapped in by a second restore; any netlink refusal falls back to
        the plain restore for that set."""
        changed = [s for s in sets if self.sets.get(s.kernel_name) != set(s.entries)]
        if not changed:
            return False
        big = [s for s in changed if len(s.entries) >= NETLINK_MIN_ENTRIES]
        small = [s for s in changed if len(s.entries) < NETLINK_MIN_ENTRIES]
        if big:
            small += self._sync_big(big)
        if small:
            self.ipset.sync(small)
        self.writes += 1
        for s in changed:
            self.sets[s.kernel_name] = set(s.entries)
        return True

    def _sync_big(self, sets: list[IpSet]) -> list[IpSet]:
        """Netlink-filled temp+swap; returns the sets that must take the plain path instead."""
        pre = []
        for s in sets:
            tmp = temp_name(s.kernel_name)
            pre += [f"create {tmp} {s.create_options()} -exist", f"flush {tmp}"]
        self.ipset.restore("\n".join(pre) + "\n")
        done, fallback = [], []
        for s in sets:
            errs = add_members(temp_name(s.kernel_name), s.type, 4 if s.family == "inet" else 6, sorted(set(s.entries)))
            if errs:
                entry, e = next(iter(errs.items()))
                log.warning("ipset %s: netlink fill refused %d entries (first %s: %s): using ipset restore",
                            s.kernel_name, len(errs), entry, os.strerror(e))
                fallback.append(s)
            else:
                done.append(s)
        post = []
        for s in done:
            tmp = temp_name(s.kernel_name)
            post += [f"create {s.kernel_name} {s.create_options()} -exist", f"swap {tmp} {s.kernel_name}", f"destroy {tmp}"]
        post += [f"destroy {temp_name(s.kernel_name)}" for s in fallback]
        self.ipset.restore("\n".join(post) + "\n")
        return fallback

    def update_members(self, add: Iterable[tuple[str, str]], delete: Iterable[tuple[str, str]]) -> bool:
        """Hot path: single members, in one ``ipset restore -exist``."""
        add = [(n, e) for n, e in add if e not in self.sets.get(n, set())]
        delete = [(n, e) for n, e in delete if e in self.sets.get(n, set())]
        if not add and not delete:
            return False
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
