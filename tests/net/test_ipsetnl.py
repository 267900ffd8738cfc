"""ipset over netfilter netlink (kr_core.net.ipsetnl) against a real kernel, checked with the ipset tool."""

from __future__ import annotations

import pytest

from kr_core.net import netns
from kr_core.net.ipset import IpSet, IpsetRunner, temp_name
from kr_core.net.ipsetnl import IpsetNl, add_members, encode_entry

from .conftest import need_tools

pytestmark = pytest.mark.root


@pytest.fixture
def runner(ns: str) -> IpsetRunner:
    need_tools("ipset")
    return IpsetRunner(netns=ns)


def test_encode_refuses_what_it_cannot_encode() -> None:
    assert len(encode_entry("hash:ip", "inet", "10.0.0.1")) == 4 + 12  # data nest + ip nest
    assert len(encode_entry("hash:ip,port", "inet6", "fd00::1,udp:53")) == 4 + 24 + 8 + 8
    for set_type, family, entry in [("hash:ip", "inet", "10.0.0.0/24"), ("hash:ip", "inet", "fd00::1"),
                                    ("hash:ip", "inet6", "10.0.0.1"), ("hash:ip,port", "inet", "10.0.0.1,icmp:0"),
                                    ("hash:ip,port", "inet", "10.0.0.1,tcp:70000"), ("hash:net", "inet", "10.0.0.0/33"),
                                    ("hash:ip,port,ip", "inet", "10.0.0.1,tcp:80,10.0.0.2"), ("hash:ip", "inet", "10.1")]:
        with pytest.raises(ValueError):
            encode_entry(set_type, family, entry)
    with pytest.raises(ValueError):
        encode_entry("hash:ip", "inet", "10.0.0.1", nomatch=True)


def test_sync_creates_fills_and_swaps(ns: str, runner: IpsetRunner) -> None:
    many = [f"10.97.{i >> 8}.{i & 255}" for i in range(3000)]
    sets = [IpSet("kr-test-ip", entries=many, hashsize=4096),
            IpSet("kr-test-prt", "hash:ip,port", entries=["10.96.0.1,tcp:80", "10.96.0.1,udp:53", "10.96.0.2,sctp:9"]),
            IpSet("kr-test-net", "hash:net", "inet6", entries=["fd00::/8"], nomatch=["fd00:1::/32"]),
            IpSet("kr-test-ip", family="inet6", entries=["fd00::1", "fd00::2"], timeout=None)]
    with netns.in_netns(ns), IpsetNl() as nl:
        res = nl.sync(sets)
        assert res.failed == [] and sorted(res.synced) == ["inet6:kr-test-ip", "inet6:kr-test-net", "kr-test-ip", "kr-test-prt"]
        # batched: 3000 adds went in a few sends, not one round trip each
        assert nl.nl.sent_batches <= 8
    assert sorted(runner.members("kr-test-ip")) == sorted(many)
    assert sorted(runner.members("kr-test-prt")) == ["10.96.0.1,tcp:80", "10.96.0.1,udp:53", "10.96.0.2,sctp:9"]
    assert runner.test("inet6:kr-test-net", "fd00:2::1") and not runner.test("inet6:kr-test-net", "fd00:1::1")
    assert not [n for n in runner.list_names() if n.startswith("TMP-")]
    header = runner._run(["list", "-t", "kr-test-ip"]).stdout
    assert "hashsize 4096" in header and "timeout 0" in header, header
    assert "timeout" not in runner._run(["list", "-t", "inet6:kr-test-ip"]).stdout

    # a second sync replaces the content; a set the ipset tool made is swapped the same way
    runner.sync([IpSet("kr-test-tool", entries=["10.1.1.1"])])
    with netns.in_netns(ns), IpsetNl() as nl:
        res = nl.sync([IpSet("kr-test-ip", entries=["10.0.0.9"]), IpSet("kr-test-tool", entries=["10.1.1.2"])])
        assert res.failed == []
    assert runner.members("kr-test-ip") == ["10.0.0.9"]
    assert runner.members("kr-test-tool") == ["10.1.1.2"]


def test_sync_failures_leave_the_live_set_alone(ns: str, runner: IpsetRunner) -> None:
    runner.sync([IpSet("kr-test-a", entries=["10.0.0.1"]), IpSet("kr-test-b", "hash:net", entries=["10.0.0.0/8"])])
    with netns.in_netns(ns), IpsetNl() as nl:
        res = nl.sync([
            IpSet("kr-test-a", entries=["10.0.0.2", "not-an-ip"]),  # cannot be encoded
            IpSet("kr-test-b", "hash:ip", entries=["10.0.0.3"]),  # live set has another type: refused
            IpSet("kr-test-c", entries=[f"10.9.0.{i}" for i in range(20)], maxelem=8),  # kernel refuses adds
            IpSet("kr-test-d", "list:set", entries=["kr-test-a"]),  # type not encoded here
            IpSet("kr-test-e", entries=["10.0.0.5"]),
        ])
    failed = {s.name: why for s, why in res.failed}
    assert set(failed) == {"kr-test-a", "kr-test-b", "kr-test-c", "kr-test-d"}, failed
    assert "create" in failed["kr-test-b"] and "add" in failed["kr-test-c"], failed
    assert res.synced == ["kr-test-e"]
    assert runner.members("kr-test-a") == ["10.0.0.1"]
    assert runner.members("kr-test-b") == ["10.0.0.0/8"]
    assert "kr-test-c" not in runner.list_names()
    assert not [n for n in runner.list_names() if n.startswith("TMP-")]
    assert temp_name("kr-test-c") not in runner.list_names()


def test_member_updates(ns: str, runner: IpsetRunner) -> None:
    runner.sync([IpSet("kr-test-m", "hash:ip,port", entries=["10.0.0.1,tcp:80"])])
    types = {"kr-test-m": ("hash:ip,port", "inet")}
    with netns.in_netns(ns), IpsetNl() as nl:
        # like restore -exist: adding a present member and deleting a missing one are fine
        assert nl.update_members(types, add=[("kr-test-m", "10.0.0.2,udp:53"), ("kr-test-m", "10.0.0.1,tcp:80")],
                                 delete=[("kr-test-m", "10.0.0.1,tcp:80"), ("kr-test-m", "10.0.0.7,tcp:1")]) == {}
        errs = nl.update_members({**types, "kr-test-missing": ("hash:ip", "inet")}, add=[("kr-test-missing", "10.0.0.1")])
        assert list(errs) == [("add", "kr-test-missing", "10.0.0.1")]
    assert sorted(runner.members("kr-test-m")) == ["10.0.0.1,tcp:80", "10.0.0.2,udp:53"]
    with netns.in_netns(ns):
        assert add_members("kr-test-m", "hash:ip,port", 4, ["10.0.0.3,tcp:443"]) == {}
    assert "10.0.0.3,tcp:443" in runner.members("kr-test-m")
