"""iptables: backend (legacy/nft) detection, a restore-based runner, and a pure restore renderer.

Bulk changes always go through ``<bin>-restore --noflush -w`` fed on stdin: one process per change,
never one per rule. With ``--noflush`` only the chains named in the payload are touched, so rules other
tools keep in the same tables survive (kube-router #1248 came from round-tripping the whole table).

What a ``:CHAIN - [0:0]`` line does under ``--noflush`` (both backends, iptables 1.8.9): it creates the
chain if missing and **empties it if present**. The renderer therefore declares exactly the chains whose
whole content it writes, plus chains to delete (declared so they exist and are empty, then ``-X``).
Built-in chains (INPUT, FORWARD, ...) are never declared; their few jump rules are kept at position 1 by
:meth:`Iptables.ensure_jump`, identified by their comment.

A restore is one transaction per table (legacy: one table blob swap per ``COMMIT``; nft: one netlink
batch), so a payload with a bad rule or a ``-X`` of a chain still referenced changes nothing.

python-iptables (``iptc``) only speaks legacy x_tables and is slow to build rules (10k rules: 8.7 s vs
0.22 s restore), so it is offered only to read kr's own chains on legacy hosts: :func:`iptc_read_chains`.
"""

from __future__ import annotations

import enum
import functools
import logging
import re
import shlex
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import netns as _netns

log = logging.getLogger(__name__)

BUILTIN_CHAINS = frozenset({"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"})
TABLES = ("filter", "nat", "mangle", "raw", "security")
#: Chain-name prefixes that mark kube/kr state when deciding which backend is in use.
KUBE_CHAIN_PREFIXES = ("KUBE-", "KR-")
#: kubelet's marker chains (iptables-wrapper looks for these first).
HINT_CHAINS = ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY")
COMMENT_MAX = 120  # kube-router clamps comments to 120 chars (nftables' limit is 128)

Rule = Sequence[str] | str
"""One rule: its arguments after ``-A CHAIN`` (``["-s", "10.0.0.0/8", "-j", "ACCEPT"]``), or that text."""


class Mode(enum.StrEnum):
    LEGACY = "legacy"
    NFT = "nft"


class Family(enum.StrEnum):
    V4 = "ipv4"
    V6 = "ipv6"


class IptablesError(RuntimeError):
    """An iptables tool failed; ``stderr`` has its message (for restore: the failing line number)."""

    def __init__(self, message: str, *, stderr: str = "", returncode: int | None = None) -> None:
        super().__init__(message)
        self.stderr = stderr
        self.returncode = returncode


def binary(mode: Mode | str, family: Family | str = Family.V4, tool: str = "") -> str:
    """The tool name: ``binary("nft", "ipv6", "restore") == "ip6tables-nft-restore"``."""
    base = "ip6tables" if Family(family) is Family.V6 else "iptables"
    return f"{base}-{Mode(mode)}" + (f"-{tool}" if tool else "")


# ------------------------------------------------------------------------------------ rendering (pure)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def clean_comment(text: str) -> str:
    """A comment as kube-router writes it: control characters stripped, clamped to 120 characters."""
    return _CONTROL.sub("", text)[:COMMENT_MAX]


_NEEDS_QUOTES = re.compile(r'[\s"\\\']')


@functools.lru_cache(maxsize=65536)
def quote_arg(arg: str) -> str:
    """Quote one argument for iptables-restore's tokenizer (double quotes; ``\\`` escapes ``"`` and ``\\``).
    Memoized: a full sync quotes the same few thousand arguments tens of thousands of times."""
    if arg and not _NEEDS_QUOTES.search(arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_rule(rule: Rule) -> str:
    """The argument text of one rule (after ``-A CHAIN``). A line break would inject a restore line: refused."""
    text = rule.strip() if isinstance(rule, str) else " ".join(quote_arg(a) for a in rule)
    if any(c in text for c in "\n\r\0"):
        raise ValueError(f"rule contains a line break or NUL: {text!r}")
    return text


def render_restore(rules: Mapping[str, Mapping[str, Sequence[Rule]]], *,
                   create: Mapping[str, Iterable[str]] | None = None,
                   flush: Mapping[str, Iterable[str]] | None = None,
                   delete: Mapping[str, Iterable[str]] | None = None) -> str:
    """Render an ``iptables-restore --noflush`` payload.

    ``rules`` is ``{table: {chain: [rule, ...]}}``: each listed chain is declared (created, or emptied when
    it exists) and gets exactly these rules, in order. ``create`` and ``flush`` name chains to declare
    without rules: under ``--noflush`` creating and flushing are the same line (``:CHAIN - [0:0]``), so
    either way the chain exists and is empty afterwards (there is no create-without-flush in a restore). ``delete`` names chains to
    remove: they are declared (so a chain already gone is not an error), then ``-X``'d after all rules are
    written, so the jumps to them from rewritten chains are gone by then. Tables come out in the order
    given; within a table chains are declared in order rules, create, flush, delete. Built-in chains are refused
    (declaring one would reset its policy and counters; use :meth:`Iptables.ensure_jump`).
    """
    create = create or {}
    flush = flush or {}
    delete = delete or {}
    out: list[str] = []
    for table in dict.fromkeys([*rules, *create, *flush, *delete]):
        chains = rules.get(table, {})
        declared = dict.fromkeys([*chains, *create.get(table, ()), *flush.get(table, ()), *delete.get(table, ())])
        for chain in declared:
            if chain in BUILTIN_CHAINS:
                raise ValueError(f"table {table}: built-in chain {chain} cannot be rewritten by a restore")
            if not chain or len(chain) > 28 or any(c.isspace() for c in chain):
                raise ValueError(f"table {table}: invalid chain name {chain!r}")
        gone = set(delete.get(table, ()))
        if clash := gone & set(chains):
            raise ValueError(f"table {table}: chains both written and deleted: {sorted(clash)}")
        out.append(f"*{table}")
        out.extend(f":{chain} - [0:0]" for chain in declared)
        for chain, chain_rules in chains.items():
            out.extend(f"-A {chain} {render_rule(r)}" for r in chain_rules)
        out.extend(f"-X {chain}" for chain in delete.get(table, ()))
        out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""


# -------------------------------------------------------------------------------- mode detection (pure)

@dataclass(frozen=True)
class SaveStats:
    """What one ``*-save`` output holds: rule lines, and kube/kr chains (and kubelet's hint chains)."""

    rules: int
    kube_chains: int
    hint_chains: int


def save_stats(save_text: str, prefixes: Sequence[str] = KUBE_CHAIN_PREFIXES) -> SaveStats:
    rules = kube = hint = 0
    for line in save_text.splitlines():
        if line.startswith("-"):
            rules += 1
        elif line.startswith(":"):
            name = line[1:].split(" ", 1)[0]
            if name.startswith(tuple(prefixes)):
                kube += 1
            if name in HINT_CHAINS:
                hint += 1
    return SaveStats(rules, kube, hint)


def choose_mode(legacy: SaveStats, nft: SaveStats, *, nft_works: bool = True) -> Mode:
    """Pick the backend the way kube-proxy's iptables-wrapper does, extended to kr's own chains.

    1. kubelet's hint chains (KUBE-IPTABLES-HINT / KUBE-KUBELET-CANARY) in nft, else in legacy;
    2. kube/kr chains (KUBE-*, KR-*) in exactly one backend, or in both: the one with more;
    3. more rule lines in legacy than in nft: legacy;
    4. otherwise nft, if the nft tools work, else legacy.
    """
    if nft.hint_chains:
        return Mode.NFT
    if legacy.hint_chains:
        return Mode.LEGACY
    if legacy.kube_chains or nft.kube_chains:
        return Mode.LEGACY if legacy.kube_chains > nft.kube_chains else Mode.NFT
    if legacy.rules > nft.rules:
        return Mode.LEGACY
    return Mode.NFT if nft_works else Mode.LEGACY


def detect_mode(family: Family | str = Family.V4, *, netns: str | None = None, launcher: Any = None) -> Mode:
    """Detect the backend in use for ``family`` by reading both backends' ``*-save`` output."""
    texts: dict[Mode, str] = {}
    nft_works = True
    for mode in Mode:
        proc = _netns.run(netns, [binary(mode, family, "save")], check=False, timeout=10, launcher=launcher)
        if proc.returncode != 0:
            log.debug("%s: exit %s: %s", binary(mode, family, "save"), proc.returncode, proc.stderr.strip())
            if mode is Mode.NFT:
                nft_works = False
        texts[mode] = proc.stdout if proc.returncode == 0 else ""
    legacy, nft = save_stats(texts[Mode.LEGACY]), save_stats(texts[Mode.NFT])
    mode = choose_mode(legacy, nft, nft_works=nft_works)
    log.info("iptables mode for %s: %s (legacy %s, nft %s%s)", Family(family), mode, legacy, nft,
             "" if nft_works else ", nft tools fail")
    return mode


# ----------------------------------------------------------------------------------------- the runner

def parse_rules(save_or_s_text: str, chain: str) -> list[str]:
    """The ``-A CHAIN ...`` lines of ``chain`` in ``iptables -S``/``iptables-save`` output, in order."""
    head = f"-A {chain} "
    return [line for line in save_or_s_text.splitlines() if line.startswith(head)]


def chain_names(save_text: str, prefixes: Sequence[str] = ()) -> list[str]:
    """Chains declared in ``*-save`` output (``:NAME ...``), optionally only those with a prefix."""
    names = [line[1:].split(" ", 1)[0] for line in save_text.splitlines() if line.startswith(":")]
    return [n for n in names if not prefixes or n.startswith(tuple(prefixes))]


class Iptables:
    """Runs the iptables tools of one (mode, family), optionally inside a named netns.

    Thread-safe (it only starts processes). ``-w`` makes every tool wait for the xtables lock.
    """

    def __init__(self, mode: Mode | str, family: Family | str = Family.V4, *, netns: str | None = None,
                 wait: int = 10, launcher: Any = None) -> None:
        self.mode = Mode(mode)
        self.family = Family(family)
        self.netns = netns
        self.wait = wait
        self.launcher = launcher  # a kr_core.net.launcher.Launcher: tools started from its small helper

    def __repr__(self) -> str:
        return f"Iptables({self.mode}, {self.family}{f', netns={self.netns}' if self.netns else ''})"

    def _run(self, tool: str, args: Sequence[str], stdin: str | None = None) -> str:
        argv = [binary(self.mode, self.family, tool), *args]
        try:
            proc = _netns.run(self.netns, argv, input=stdin, check=False, timeout=max(60, self.wait * 2),
                              launcher=self.launcher)
        except subprocess.TimeoutExpired as exc:
            raise IptablesError(f"{argv[0]}: timed out") from exc
        if proc.returncode != 0:
            raise IptablesError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}",
                                stderr=proc.stderr, returncode=proc.returncode)
        return proc.stdout

    def restore(self, text: str, *, noflush: bool = True, counters: bool = False) -> None:
        """Apply a payload with one ``*-restore`` process (``--noflush -w`` by default)."""
        if not text.strip():
            return
        args = ["-w", str(self.wait)]
        if noflush:
            args.append("--noflush")
        if counters:
            args.append("--counters")
        self._run("restore", args, stdin=text)
        log.debug("%s: restored %d lines (tables %s)", self, text.count("\n"),
                 ",".join(line[1:] for line in text.splitlines() if line.startswith("*")))

    def apply(self, rules: Mapping[str, Mapping[str, Sequence[Rule]]], *,
              create: Mapping[str, Iterable[str]] | None = None,
              flush: Mapping[str, Iterable[str]] | None = None,
              delete: Mapping[str, Iterable[str]] | None = None) -> str:
        """:func:`render_restore` + :meth:`restore`; returns the payload that was applied."""
        text = render_restore(rules, create=create, flush=flush, delete=delete)
        self.restore(text)
        return text

    def save(self, table: str | None = None) -> str:
        """``*-save`` output of one table (or all)."""
        return self._run("save", ["-t", table] if table else [])

    def list_rules(self, table: str, chain: str) -> list[str]:
        """``-S CHAIN`` lines of a chain (``-A CHAIN ...``), without the ``-N``/``-P`` line."""
        return parse_rules(self._run("", ["-w", str(self.wait), "-t", table, "-S", chain]), chain)

    def chains(self, table: str, prefixes: Sequence[str] = ()) -> list[str]:
        return chain_names(self.save(table), prefixes)

    def chain_exists(self, table: str, chain: str) -> bool:
        try:
            self._run("", ["-w", str(self.wait), "-t", table, "-S", chain])
            return True
        except IptablesError:
            return False

    def exists(self, table: str, chain: str, rule: Rule) -> bool:
        """``-C``: is this exact rule in the chain?"""
        args = shlex.split(rule) if isinstance(rule, str) else list(rule)
        argv = [binary(self.mode, self.family), "-w", str(self.wait), "-t", table, "-C", chain, *args]
        return _netns.run(self.netns, argv, check=False, launcher=self.launcher).returncode == 0

    def delete(self, table: str, chain: str, rule: Rule) -> bool:
        """Delete one rule (every copy of it); False when it was not there."""
        args = shlex.split(rule) if isinstance(rule, str) else list(rule)
        removed = False
        while self.exists(table, chain, args):
            self._run("", ["-w", str(self.wait), "-t", table, "-D", chain, *args])
            removed = True
        if removed:
            log.info("%s: rule removed from %s/%s: %s", self, table, chain, render_rule(args))
        return removed

    def ensure_jump(self, table: str, chain: str, rule: Sequence[str], comment: str) -> bool:
        """Keep ``rule`` (with ``-m comment --comment COMMENT`` added) as the only rule carrying that
        comment in ``chain``, at position 1. Returns True when something changed (see :meth:`ensure_jumps`)."""
        return self.ensure_jumps(table, [(chain, rule, comment)])

    def ensure_jumps(self, table: str, jumps: Sequence[tuple[str, Sequence[str], str]]) -> bool:
        """:meth:`ensure_jump` for several (chain, rule, comment) at once: one save of ``table``, and one
        restore for everything that must change (none when every jump is already first and identical).

        The comment is the rule's identity: stale copies (other match, other position) are deleted and the
        rule is inserted at the top (see :func:`jump_fixes`). A restore refused because a chain changed under
        us (deletes are by spec, so a rule another tool inserts meanwhile is never hit) is retried once.
        """
        for attempt in (1, 2):
            lines = jump_fixes(self.save(table), jumps)
            if not lines:
                return False
            try:
                self.restore("\n".join([f"*{table}", *lines, "COMMIT"]) + "\n")
            except IptablesError:
                if attempt == 2:
                    raise
                continue  # a chain changed between the save and the restore: read it again
            log.info("%s: jumps placed first in %s: %s", self, table, "; ".join(lines))
            return True
        raise AssertionError("unreachable")

    def remove_jump(self, table: str, chain: str, comment: str) -> int:
        """Delete every rule in ``chain`` carrying ``comment`` (by spec, in one restore); returns how many."""
        current = self.list_rules(table, chain)
        tagged = _tagged(current, clean_comment(comment))
        if tagged:
            body = "".join(f"-D {current[i - 1][3:]}\n" for i in tagged)
            self.restore(f"*{table}\n{body}COMMIT\n")
            log.info("%s: %d rule(s) %r removed from %s/%s", self, len(tagged), comment, table, chain)
        return len(tagged)


def jump_fixes(saved: str, jumps: Sequence[tuple[str, Sequence[str], str]]) -> list[str]:
    """Restore lines (``-D``/``-I``, no table header) that make each (chain, rule, comment) of ``jumps`` the
    only rule carrying that comment in ``chain`` and its first rule, given ``saved`` (``*-save`` or ``-S``
    text of the table). Empty when every jump is already in place."""
    lines: list[str] = []
    for chain, rule, comment in jumps:
        comment = clean_comment(comment)
        rule = list(rule)
        cut = next((i for i, a in enumerate(rule) if a in ("-j", "-g", "--jump", "--goto")), len(rule))
        full = [*rule[:cut], "-m", "comment", "--comment", comment, *rule[cut:]]  # where -S prints it
        current = parse_rules(saved, chain)
        tagged = _tagged(current, comment)
        if tagged == [1] and _same_rule(current[0], f"-A {chain} {render_rule(_canonical(full))}"):
            continue
        lines += [*(f"-D {current[i - 1][3:]}" for i in tagged), f"-I {chain} 1 {render_rule(full)}"]
    return lines


def _tagged(lines: Sequence[str], comment: str) -> list[int]:
    """1-based positions of the rules whose comment is exactly ``comment``."""
    tag = re.compile(r"--comment " + re.escape(quote_arg(comment)) + r"(\s|$)")
    return [i for i, line in enumerate(lines, start=1) if tag.search(line)]


def _canonical(args: Sequence[str]) -> list[str]:
    """Rough canonical form of a rule as ``-S`` prints it (``-m proto`` after ``-p``)."""
    out: list[str] = []
    it = iter(range(len(args)))
    for i in it:
        out.append(args[i])
        if args[i] == "-p" and i + 1 < len(args):
            proto = args[i + 1]
            out.append(proto)
            next(it, None)
            if proto in ("tcp", "udp", "sctp") and not (i + 3 < len(args) and args[i + 2] == "-m"
                                                         and args[i + 3] == proto):
                if any(a in ("--dport", "--sport", "--dports", "--sports") for a in args):
                    out += ["-m", proto]
    return out


def _same_rule(have: str, want: str) -> bool:
    return have.split() == want.split()


# ------------------------------------------------------------------------- python-iptables (legacy)

def iptc_read_chains(table: str = "filter", prefixes: Sequence[str] = KUBE_CHAIN_PREFIXES, *,
                     family: Family | str = Family.V4, netns: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Read kr's chains from the **legacy** backend through python-iptables (no process, no full save).

    Returns ``{chain: [rule as iptc.easy dict, ...]}`` for chains whose name starts with a prefix. For
    start-up adoption on legacy hosts; runs in a dedicated thread inside ``netns`` (libiptc binds to the
    calling thread's namespace when the table handle is made, so the handle is refreshed there).
    """

    def read() -> dict[str, list[dict[str, Any]]]:
        import iptc  # imported lazily: needs libxtables and the xtables extension modules

        v6 = Family(family) is Family.V6
        tbl = iptc.Table6(table) if v6 else iptc.Table(table)
        tbl.refresh()
        try:
            out: dict[str, list[dict[str, Any]]] = {}
            for chain in tbl.chains:
                if chain.name.startswith(tuple(prefixes)):
                    out[chain.name] = [iptc.easy.decode_iptc_rule(r, ipv6=v6) for r in chain.rules]
            return out
        finally:
            tbl.close()

    return _netns.call_in(netns, read) if netns else read()
