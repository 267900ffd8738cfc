"""iptables against a real kernel, in throwaway namespaces, for both backends (legacy and nft)."""

from __future__ import annotations

import pytest

from kr_core.net import netns
from kr_core.net.ipset import IpSet, IpsetRunner
from kr_core.net.iptables import Iptables, IptablesError, Mode, detect_mode, iptc_read_chains, render_restore

from .conftest import A_IP, GOLDEN, need_tools
from .test_render import NETPOL_MODEL

pytestmark = pytest.mark.root

MODES = [Mode.LEGACY, Mode.NFT]


@pytest.fixture(params=MODES, ids=str)
def ipt(request: pytest.FixtureRequest, ns: str) -> Iptables:
    need_tools(f"iptables-{request.param}-restore")
    return Iptables(request.param, netns=ns)


def _foreign(ipt: Iptables) -> None:
    """Rules another tool owns, written with plain ``iptables -A`` in the namespace."""
    tool = f"iptables-{ipt.mode}"
    for args in (["-N", "FOREIGN"], ["-A", "FOREIGN", "-s", "192.0.2.7/32", "-j", "DROP"],
                 ["-A", "INPUT", "-s", "198.51.100.0/24", "-j", "FOREIGN"],
                 ["-t", "nat", "-A", "POSTROUTING", "-s", "203.0.113.0/24", "-j", "MASQUERADE"]):
        netns.run(ipt.netns, [tool, "-w", *args])


def _foreign_lines(save: str) -> list[str]:
    return [line for line in save.splitlines() if "FOREIGN" in line or "MASQUERADE" in line]


def test_detect_mode(make_ns) -> None:
    legacy_ns, nft_ns, empty_ns, plain_ns = make_ns(), make_ns(), make_ns(), make_ns()
    netns.run(legacy_ns, ["iptables-legacy", "-w", "-N", "KUBE-ROUTER-INPUT"])
    netns.run(nft_ns, ["iptables-nft", "-w", "-N", "KUBE-ROUTER-INPUT"])
    netns.run(nft_ns, ["iptables-legacy", "-w", "-A", "INPUT", "-s", "192.0.2.1", "-j", "ACCEPT"])  # noise
    netns.run(plain_ns, ["iptables-legacy", "-w", "-A", "INPUT", "-s", "192.0.2.1", "-j", "ACCEPT"])
    assert detect_mode(netns=legacy_ns) is Mode.LEGACY
    assert detect_mode(netns=nft_ns) is Mode.NFT
    assert detect_mode(netns=empty_ns) is Mode.NFT
    assert detect_mode(netns=plain_ns) is Mode.LEGACY  # only legacy has rules
    assert detect_mode("ipv6", netns=legacy_ns) is Mode.NFT  # per family: nothing in ip6tables


def test_golden_payload_applies(ipt: Iptables) -> None:
    IpsetRunner(netns=ipt.netns).sync([IpSet("KUBE-DST-QWERTYUIOPASDFGH")])
    text = (GOLDEN / "iptables_restore.txt").read_text()
    ipt.restore(text)
    assert ipt.chains("filter", ["KUBE-"]) == ["KUBE-NWPLCY-COMMON", "KUBE-NWPLCY-DEFAULT",
                                               "KUBE-POD-FW-ABCDEFGHIJKLMNOP", "KUBE-ROUTER-INPUT"]
    rules = ipt.list_rules("filter", "KUBE-POD-FW-ABCDEFGHIJKLMNOP")
    # the comment's quote, backslash and tab survive the restore tokenizer exactly
    assert rules[0] == ('-A KUBE-POD-FW-ABCDEFGHIJKLMNOP -m comment --comment "rule to \\"quote\\" \\\\ and\tcontrol" '
                        "-j KUBE-NWPLCY-COMMON")
    assert len(ipt.list_rules("filter", "KUBE-ROUTER-INPUT")) == 3
    assert ipt.list_rules("nat", "KUBE-ROUTER-HAIRPIN")
    ipt.restore(text)  # again: same content, no duplicates
    assert len(ipt.list_rules("filter", "KUBE-ROUTER-INPUT")) == 3


def test_noflush_keeps_foreign_rules(ipt: Iptables) -> None:
    _foreign(ipt)
    before = _foreign_lines(ipt.save())
    assert len(before) == 4
    ipt.apply({"filter": {"KUBE-ROUTER-INPUT": [["-s", "10.0.0.1/32", "-j", "ACCEPT"]],
                          "KUBE-POD-FW-AAAA": [["-j", "RETURN"]]},
               "nat": {"KUBE-ROUTER-HAIRPIN": [["-j", "RETURN"]]}})
    ipt.apply({"filter": {"KUBE-ROUTER-INPUT": [["-s", "10.0.0.2/32", "-j", "ACCEPT"]]}},
              delete={"filter": ["KUBE-POD-FW-AAAA"], "nat": ["KUBE-ROUTER-HAIRPIN"]})
    save = ipt.save()
    assert _foreign_lines(save) == before
    assert ipt.list_rules("filter", "KUBE-ROUTER-INPUT") == ["-A KUBE-ROUTER-INPUT -s 10.0.0.2/32 -j ACCEPT"]
    assert "KUBE-POD-FW-AAAA" not in save and "KUBE-ROUTER-HAIRPIN" not in save


def test_failed_restore_changes_nothing(ipt: Iptables) -> None:
    _foreign(ipt)
    ipt.apply({"filter": {"KUBE-ROUTER-INPUT": [["-j", "KUBE-POD-FW-AAAA"]], "KUBE-POD-FW-AAAA": [["-j", "RETURN"]]}})
    before = ipt.save("filter")
    bad_rule = {"filter": {"KUBE-ROUTER-INPUT": [["-s", "10.0.0.9/32", "-j", "ACCEPT"]],
                           "KUBE-POD-FW-BBBB": [["-m", "nosuchmatch", "-j", "ACCEPT"]]}}
    with pytest.raises(IptablesError) as err:
        ipt.apply(bad_rule)
    assert err.value.stderr
    # deleting a chain that is still referenced fails too, and takes the other changes with it
    with pytest.raises(IptablesError):
        ipt.apply({"filter": {"KUBE-ROUTER-OTHER": [["-j", "RETURN"]]}}, delete={"filter": ["KUBE-POD-FW-AAAA"]})
    after = ipt.save("filter")
    strip = lambda t: [x for x in t.splitlines() if not x.startswith("#")]  # noqa: E731 - save timestamps
    assert strip(after) == strip(before)


def test_ensure_jump_stays_first(ipt: Iptables) -> None:
    ipt.apply({}, create={"filter": ["KUBE-ROUTER-INPUT"]})
    assert ipt.ensure_jump("filter", "INPUT", ["-j", "KUBE-ROUTER-INPUT"], "kube-router netpol - ABCDEFGH")
    assert not ipt.ensure_jump("filter", "INPUT", ["-j", "KUBE-ROUTER-INPUT"], "kube-router netpol - ABCDEFGH")
    netns.run(ipt.netns, [f"iptables-{ipt.mode}", "-w", "-I", "INPUT", "1", "-s", "192.0.2.1", "-j", "ACCEPT"])
    netns.run(ipt.netns, [f"iptables-{ipt.mode}", "-w", "-A", "INPUT", "-m", "comment", "--comment",
                          "kube-router netpol - ABCDEFGH", "-j", "KUBE-ROUTER-INPUT"])  # a stale copy
    assert ipt.ensure_jump("filter", "INPUT", ["-j", "KUBE-ROUTER-INPUT"], "kube-router netpol - ABCDEFGH")
    rules = ipt.list_rules("filter", "INPUT")
    assert rules[0] == '-A INPUT -m comment --comment "kube-router netpol - ABCDEFGH" -j KUBE-ROUTER-INPUT'
    assert len(rules) == 2 and "192.0.2.1" in rules[1]
    assert ipt.exists("filter", "INPUT", ["-s", "192.0.2.1/32", "-j", "ACCEPT"])
    assert ipt.remove_jump("filter", "INPUT", "kube-router netpol - ABCDEFGH") == 1
    assert ipt.delete("filter", "INPUT", ["-s", "192.0.2.1/32", "-j", "ACCEPT"])
    assert not ipt.delete("filter", "INPUT", ["-s", "192.0.2.1/32", "-j", "ACCEPT"])
    assert ipt.list_rules("filter", "INPUT") == []


def test_ensure_jump_with_matches_is_idempotent(ipt: Iptables) -> None:
    IpsetRunner(netns=ipt.netns).sync([IpSet("kube-router-svip")])
    ipt.apply({}, create={"filter": ["KUBE-ROUTER-SERVICES", "KUBE-ROUTER-TCP"]})
    jump = ["-m", "set", "--match-set", "kube-router-svip", "dst", "-j", "KUBE-ROUTER-SERVICES"]
    tcp = ["-p", "tcp", "--dport", "10250", "-j", "KUBE-ROUTER-TCP"]
    assert ipt.ensure_jump("filter", "INPUT", jump, "kube-router svc")
    assert ipt.ensure_jump("filter", "INPUT", tcp, "kube-router svc2")  # now first; "svc" second
    assert not ipt.ensure_jump("filter", "INPUT", tcp, "kube-router svc2")
    assert ipt.ensure_jump("filter", "INPUT", jump, "kube-router svc")  # moved back to the top
    assert not ipt.ensure_jump("filter", "INPUT", jump, "kube-router svc")
    assert len(ipt.list_rules("filter", "INPUT")) == 2  # a comment that prefixes another is not confused
    assert ipt.exists("filter", "INPUT", '-p tcp -m tcp --dport 10250 -m comment --comment "kube-router svc2" '
                                         "-j KUBE-ROUTER-TCP")


def test_ensure_jumps_in_one_save_and_restore(ipt: Iptables, monkeypatch: pytest.MonkeyPatch) -> None:
    ipt.apply({}, create={"filter": ["KUBE-ROUTER-INPUT", "KUBE-ROUTER-FORWARD", "KUBE-ROUTER-OUTPUT"]})
    jumps = [(b, ["-j", f"KUBE-ROUTER-{b}"], f"kr jump {b}") for b in ("INPUT", "FORWARD", "OUTPUT")]
    calls: list[str] = []
    real = ipt._run
    monkeypatch.setattr(ipt, "_run", lambda tool, *a, **k: (calls.append(tool), real(tool, *a, **k))[1])
    assert ipt.ensure_jumps("filter", jumps)
    assert calls == ["save", "restore"]
    calls.clear()
    assert not ipt.ensure_jumps("filter", jumps)
    assert calls == ["save"]  # all in place: nothing written
    netns.run(ipt.netns, [f"iptables-{ipt.mode}", "-w", "-I", "FORWARD", "1", "-j", "ACCEPT"])  # pushed down
    assert ipt.ensure_jumps("filter", jumps)
    for b in ("INPUT", "FORWARD", "OUTPUT"):
        rules = ipt.list_rules("filter", b)
        assert rules[0] == f'-A {b} -m comment --comment "kr jump {b}" -j KUBE-ROUTER-{b}'
        assert len(rules) == (2 if b == "FORWARD" else 1)


@pytest.mark.parametrize("mode", MODES, ids=str)
def test_ipv6_restore(ns: str, mode: Mode) -> None:
    need_tools(f"ip6tables-{mode}-restore")
    ipt = Iptables(mode, "ipv6", netns=ns)
    ipt.apply({"filter": {"KUBE-ROUTER-INPUT": [["-s", "fd00::/8", "-p", "ipv6-icmp", "-j", "ACCEPT"]]}})
    assert ipt.list_rules("filter", "KUBE-ROUTER-INPUT") == ["-A KUBE-ROUTER-INPUT -s fd00::/8 -p ipv6-icmp -j ACCEPT"]
    assert "KUBE-ROUTER-INPUT" not in Iptables(mode, netns=ns).save("filter")  # IPv4 untouched


def test_iptc_reads_legacy_chains(make_ns) -> None:
    ns, other = make_ns(), make_ns()
    Iptables(Mode.LEGACY, netns=other).apply({"filter": {"KUBE-ROUTER-OTHER": []}})
    assert list(iptc_read_chains("filter", netns=other)) == ["KUBE-ROUTER-OTHER"]
    ipt = Iptables(Mode.LEGACY, netns=ns)
    ipt.apply({"filter": {"KUBE-ROUTER-INPUT": [["-s", "10.0.0.1/32", "-p", "tcp", "--dport", "80", "-j", "ACCEPT"]],
                          "OTHER": [["-j", "RETURN"]]}})
    chains = iptc_read_chains("filter", netns=ns)
    assert list(chains) == ["KUBE-ROUTER-INPUT"]
    (rule,) = chains["KUBE-ROUTER-INPUT"]
    assert rule["src"] == "10.0.0.1/32" and rule["tcp"] == {"dport": "80"} and rule["target"] == "ACCEPT"
    assert iptc_read_chains("filter", netns=ns) == chains  # the cached libiptc handle is refreshed each time


@pytest.mark.parametrize("mode", MODES, ids=str)
def test_reject_blocks_traffic(pair, mode: Mode) -> None:
    """A REJECT rendered by render_restore and applied in b blocks ping and TCP from a; removing it heals."""
    ipt = Iptables(mode, netns=pair.b)
    port, stop = pair.listen()
    try:
        assert pair.ping() and pair.tcp(port)
        ipt.apply({"filter": {"KUBE-ROUTER-INPUT": [["-s", f"{A_IP}/32", "-j", "REJECT"]]}})
        ipt.ensure_jump("filter", "INPUT", ["-j", "KUBE-ROUTER-INPUT"], "kr test")
        assert not pair.ping() and not pair.tcp(port)
        ipt.apply({"filter": {"KUBE-ROUTER-INPUT": []}})
        assert pair.ping() and pair.tcp(port)
    finally:
        stop()


@pytest.mark.parametrize("mode", MODES, ids=str)
def test_ipset_match_blocks_traffic(pair, mode: Mode) -> None:
    need_tools("ipset")
    ipt, sets = Iptables(mode, netns=pair.b), IpsetRunner(netns=pair.b)
    sets.sync([IpSet("kube-router-blocked")])
    ipt.apply({"filter": {"KUBE-ROUTER-INPUT": [["-m", "set", "--match-set", "kube-router-blocked", "src",
                                                 "-j", "REJECT"]]}})
    ipt.ensure_jump("filter", "INPUT", ["-j", "KUBE-ROUTER-INPUT"], "kr test")
    assert pair.ping()
    sets.sync([IpSet("kube-router-blocked", entries=[A_IP])])
    assert not pair.ping()
    sets.sync([IpSet("kube-router-blocked", type="hash:ip", entries=["192.0.2.1"])])
    assert pair.ping()


def test_restore_payload_model_round_trip(ns: str) -> None:
    """render_restore of the shared NETPOL model parses in both backends the same way."""
    IpsetRunner(netns=ns).sync([IpSet("KUBE-DST-QWERTYUIOPASDFGH")])
    outs = {}
    for mode in MODES:
        ipt = Iptables(mode, netns=ns)
        ipt.apply(NETPOL_MODEL)
        outs[mode] = [ipt.list_rules("filter", c) for c in NETPOL_MODEL["filter"]]
    assert outs[Mode.LEGACY] == outs[Mode.NFT]
    assert render_restore(NETPOL_MODEL).count("-A ") == 7
