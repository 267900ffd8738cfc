"""nftables through libnftables JSON, in throwaway namespaces: transactions, traffic, failures."""

from __future__ import annotations

import pytest

from kr_core.net import netns
from kr_core.net.nft import Nft, NftError, list_tables

from .conftest import A_IP

pytestmark = pytest.mark.root

TABLE = {"family": "inet", "name": "kube-router-filter"}


def _content(blocked: list[str]) -> list[dict]:
    """A set of blocked sources, an input base chain and a reject rule matching the set."""
    table = TABLE["name"]
    return [
        {"add": {"set": {"family": "inet", "table": table, "name": "blocked", "type": "ipv4_addr"}}},
        *([{"add": {"element": {"family": "inet", "table": table, "name": "blocked", "elem": blocked}}}]
          if blocked else []),
        {"add": {"chain": {"family": "inet", "table": table, "name": "KUBE-ROUTER-INPUT", "type": "filter",
                           "hook": "input", "prio": 0, "policy": "accept"}}},
        {"add": {"rule": {"family": "inet", "table": table, "chain": "KUBE-ROUTER-INPUT", "comment": "kr test",
                          "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                                              "right": "@blocked"}},
                                   {"counter": None}, {"reject": None}]}}},
    ]


def _ruleset(nft: Nft) -> list[dict]:
    """The ruleset without handles and counter values (for before/after comparisons)."""
    def strip(obj):
        if isinstance(obj, dict):
            return {k: (None if k == "counter" else strip(v)) for k, v in obj.items() if k != "handle"}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj
    return strip(nft.list("ruleset"))


def test_transaction_blocks_traffic(pair) -> None:
    nft = Nft(netns=pair.b)
    port, stop = pair.listen()
    try:
        nft.run([{"add": {"table": TABLE}}, *_content([A_IP])], what="initial")
        assert not pair.ping() and not pair.tcp(port)
        assert nft.table_exists("inet", "kube-router-filter")
        nft.replace_table("inet", "kube-router-filter", _content([]))
        assert pair.ping() and pair.tcp(port)
        nft.replace_table("inet", "kube-router-filter", _content([A_IP, "192.0.2.1"]))
        assert not pair.ping()
        assert nft.delete_table("inet", "kube-router-filter") and not nft.delete_table("inet", "kube-router-filter")
        assert pair.ping()
    finally:
        stop()


def test_invalid_transaction_leaves_ruleset(pair) -> None:
    nft = Nft(netns=pair.b)
    nft.replace_table("inet", "kube-router-filter", _content([A_IP]))
    before = _ruleset(nft)
    bad = [*_content([]),  # would unblock a ...
           {"add": {"rule": {"family": "inet", "table": "kube-router-filter", "chain": "KUBE-ROUTER-INPUT",
                             "expr": [{"jump": {"target": "NO-SUCH-CHAIN"}}]}}}]
    with pytest.raises(NftError) as err:
        nft.replace_table("inet", "kube-router-filter", bad)
    assert "NO-SUCH-CHAIN" in str(err.value) or "No such file" in str(err.value)
    assert _ruleset(nft) == before
    assert not pair.ping()  # the old rule is still in force
    with pytest.raises(NftError):
        nft.run_text("add rule inet kube-router-filter KUBE-ROUTER-INPUT ip saddr @nosuchset drop")
    assert _ruleset(nft) == before


def test_text_and_netns_isolation(make_ns) -> None:
    a, b = make_ns(), make_ns()
    na = Nft(netns=a)
    na.run_text("add table inet kr-text\nadd chain inet kr-text fwd-chain { type filter hook forward priority 0; }\n")
    assert na.table_exists("inet", "kr-text")
    assert not Nft(netns=b).table_exists("inet", "kr-text")
    out = netns.run(a, ["nft", "list", "table", "inet", "kr-text"]).stdout
    assert "fwd-chain" in out
    # a context made in netns a keeps talking to a even from a thread that sits in b
    netns.call_in(b, lambda: na.run_text("add table inet kr-second"))
    assert na.table_exists("inet", "kr-second") and not Nft(netns=b).table_exists("inet", "kr-second")


def test_list_tables_by_raw_dump(make_ns) -> None:
    """The raw GETTABLE dump sees exactly the tables nft lists, per namespace and family."""
    a, b = make_ns(), make_ns()
    assert list_tables(a) == set()
    Nft(netns=a).run_text("add table inet kr-a\nadd table ip kube-router-filter-ipv4\nadd table ip6 six\n"
                          "add table bridge br\n")
    assert list_tables(a) == {("inet", "kr-a"), ("ip", "kube-router-filter-ipv4"), ("ip6", "six"), ("bridge", "br")}
    assert list_tables(b) == set()
    # many tables: the dump spans several netlink reads
    Nft(netns=b).run_text("".join(f"add table inet t{i}\n" for i in range(300)))
    assert list_tables(b) == {("inet", f"t{i}") for i in range(300)}
