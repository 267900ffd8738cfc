"""In-process nftables through libnftables' JSON API (``import nftables``, PyPI ``pip-nftables``).

``Nft().run([...])`` sends one ``{"nftables": [...]}`` document: libnftables applies all its commands as
**one** netlink transaction, so either everything lands or nothing does. A failure raises
:class:`NftError` with nft's own message.

Namespace: a libnftables context opens its netlink socket when it is created (nftables 1.0.6), in the
namespace of the creating thread, and keeps using it from any thread. ``Nft(netns=X)`` therefore creates
its context inside ``X``, and also enters ``X`` around every call (two ``setns`` calls, microseconds) in
case libnftables reopens its socket. One context is not safe for concurrent use, so
calls are serialised with a lock.

Gotchas (from the probe): ``add rule`` is not idempotent, so a full sync sends ``add table``,
``delete table``, ``add table`` and the whole content in one transaction (:func:`replace_table`); ``fwd`` and
other keywords work as chain names in JSON but need quoting in text syntax.
"""

from __future__ import annotations

import json
import logging
import struct
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from .netns import in_netns

log = logging.getLogger(__name__)


class NftError(RuntimeError):
    """libnftables refused a command; ``message`` is nft's error text, ``rc`` its return code."""

    def __init__(self, message: str, *, rc: int, what: str = "") -> None:
        super().__init__(f"nft{f' ({what})' if what else ''}: {message.strip() or f'rc {rc}'}")
        self.message = message
        self.rc = rc


_NFPROTO_NAMES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}


def list_tables(netns: str | None = None) -> set[tuple[str, str]]:
    """The (family, name) of every nftables table, by one raw ``NFT_MSG_GETTABLE`` dump.

    libnftables' ``list tables`` first fills its cache with the whole ruleset (every iptables-nft rule
    included), tens of milliseconds on a busy node; this reads only table headers. An unavailable
    nf_tables subsystem gives an empty set."""
    from .netlink import NetlinkError, NetlinkSocket, iter_attrs

    def parse(p: memoryview) -> tuple[str, str] | None:  # nfgenmsg (family, version, res_id), attributes
        for kind, value in iter_attrs(p, 4):
            if kind == 1:  # NFTA_TABLE_NAME
                return _NFPROTO_NAMES.get(p[0], str(p[0])), bytes(value).rstrip(b"\0").decode()
        return None

    try:
        with in_netns(netns):
            nl = NetlinkSocket(12)  # NETLINK_NETFILTER
    except OSError:
        return set()
    try:
        # NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETTABLE; nfgenmsg for every family
        return set(nl.dump((10 << 8) | 1, struct.pack("=BBH", 0, 0, 0), parse))
    except (NetlinkError, OSError) as exc:
        log.debug("nft table dump failed: %s", exc)
        return set()
    finally:
        nl.close()


def _load_lib() -> Any:
    try:
        import nftables
    except ImportError as exc:  # pragma: no cover - environment problem
        raise ImportError("kr_core.net.nft needs the Python 'nftables' module (PyPI pip-nftables) and "
                          "libnftables.so.1 (Debian libnftables1)") from exc
    return nftables


class Nft:
    """One libnftables context, bound to ``netns`` (None: the creating thread's namespace)."""

    def __init__(self, netns: str | None = None) -> None:
        lib = _load_lib()
        self.netns = netns
        self._lock = threading.Lock()
        with in_netns(netns):
            self._nft = lib.Nftables()
            self._nft.cmd("list tables")  # make sure the socket is opened here, in this namespace
        self._nft.set_handle_output(True)

    def __repr__(self) -> str:
        return f"Nft({f'netns={self.netns}' if self.netns else ''})"

    def run(self, commands: Sequence[dict[str, Any]], *, what: str = "") -> list[dict[str, Any]]:
        """Apply ``commands`` (the items of an ``{"nftables": [...]}`` document) as one transaction.

        Returns the output objects (for ``list`` commands; empty for changes). ``what`` names the change
        in the log and error messages.
        """
        doc = {"nftables": list(commands)}
        with self._lock, in_netns(self.netns):
            rc, out, err = self._nft.json_cmd(doc)
        if rc != 0:
            raise NftError(err, rc=rc, what=what)
        log.debug("%s: %d command(s) applied%s", self, len(doc["nftables"]), f" ({what})" if what else "")
        return list(out.get("nftables", [])) if isinstance(out, dict) else []

    def run_text(self, text: str, *, what: str = "", json_output: bool = False) -> str:
        """Run nft text syntax (``nft -f`` content); the whole buffer is one transaction. Returns stdout."""
        with self._lock, in_netns(self.netns):
            old = self._nft.set_json_output(json_output)
            try:
                rc, out, err = self._nft.cmd(text)
            finally:
                self._nft.set_json_output(old)
        if rc != 0:
            raise NftError(err, rc=rc, what=what)
        return out

    def list(self, what: str) -> list[dict[str, Any]]:
        """``nft -j list <what>`` parsed, without the metainfo object (``list("table inet kr")``)."""
        out = self.run_text(f"list {what}", json_output=True)
        items = json.loads(out).get("nftables", []) if out.strip() else []
        return [i for i in items if "metainfo" not in i]

    def table_exists(self, family: str, name: str) -> bool:
        return any(t["table"]["name"] == name and t["table"]["family"] == family
                   for t in self.list("tables") if "table" in t)

    def replace_table(self, family: str, name: str, content: Iterable[dict[str, Any]]) -> None:
        """Atomically replace a whole table: add (so the delete cannot fail), delete, add, then ``content``
        (the ``add`` commands for its sets, chains, rules...). The old table stays if anything fails."""
        table = {"table": {"family": family, "name": name}}
        cmds = [{"add": table}, {"delete": table}, {"add": table}, *content]
        self.run(cmds, what=f"replace table {family} {name}")
        log.info("%s: table %s %s replaced (%d commands)", self, family, name, len(cmds))

    def delete_table(self, family: str, name: str) -> bool:
        """Delete a table if present; True when it was there."""
        if not self.table_exists(family, name):
            return False
        self.run([{"delete": {"table": {"family": family, "name": name}}}], what=f"delete table {family} {name}")
        log.info("%s: table %s %s deleted", self, family, name)
        return True
