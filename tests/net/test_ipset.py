"""ipset against a real kernel: atomic swap, nomatch excepts, stale destroy, member hot path."""

from __future__ import annotations

import threading

import pytest

from kr_core.net import netns
from kr_core.net.ipset import IpSet, IpsetError, IpsetRunner, render_sync, temp_name

from .conftest import need_tools

pytestmark = pytest.mark.root


@pytest.fixture
def runner(ns: str) -> IpsetRunner:
    need_tools("ipset")
    return IpsetRunner(netns=ns)


def test_sync_creates_and_replaces(runner: IpsetRunner) -> None:
    runner.sync([IpSet("KUBE-DST-AAAA", entries=["10.244.0.5", "10.244.0.6"]),
                 IpSet("KUBE-DST-AAAA", family="inet6", entries=["fd00::5"])])
    assert runner.list_names(["KUBE-DST-"]) == ["KUBE-DST-AAAA", "inet6:KUBE-DST-AAAA"]
    assert sorted(runner.members("KUBE-DST-AAAA")) == ["10.244.0.5", "10.244.0.6"]
    runner.sync([IpSet("KUBE-DST-AAAA", entries=["10.244.0.7"])])
    assert runner.members("KUBE-DST-AAAA") == ["10.244.0.7"]
    assert runner.members("inet6:KUBE-DST-AAAA") == ["fd00::5"]  # not in this sync: untouched
    assert not [n for n in runner.list_names() if n.startswith("TMP-")]  # temporaries destroyed


def test_nomatch_excepts(runner: IpsetRunner) -> None:
    runner.sync([IpSet("KUBE-SRC-BLOCK", type="hash:net", entries=["10.0.0.0/8"], nomatch=["10.1.0.0/16"]),
                 IpSet("KUBE-SRC-BLOCK", type="hash:net", family="inet6", entries=["fd00::/8"],
                       nomatch=["fd00:1::/32"])])
    assert runner.test("KUBE-SRC-BLOCK", "10.2.3.4")
    assert not runner.test("KUBE-SRC-BLOCK", "10.1.2.3")
    assert not runner.test("KUBE-SRC-BLOCK", "192.168.1.1")
    assert runner.test("inet6:KUBE-SRC-BLOCK", "fd00:2::1")
    assert not runner.test("inet6:KUBE-SRC-BLOCK", "fd00:1::1")
    assert "10.1.0.0/16 nomatch" in runner.members("KUBE-SRC-BLOCK")


def test_destroy_stale(runner: IpsetRunner) -> None:
    runner.sync([IpSet("KUBE-DST-OLD1"), IpSet("KUBE-DST-OLD2", family="inet6"), IpSet("unrelated")])
    stale = runner.list_names(["KUBE-DST-"])
    runner.sync([IpSet("KUBE-DST-NEW", entries=["10.0.0.1"])], destroy=stale)
    assert runner.list_names(["KUBE-DST-"]) == ["KUBE-DST-NEW"]
    assert "unrelated" in runner.list_names()
    assert runner.destroy("unrelated") and not runner.destroy("unrelated")


def test_swap_keeps_membership_consistent(runner: IpsetRunner) -> None:
    """While the set is re-synced over and over (members churn around a stable one), a reader never sees
    the stable member missing, nor the set absent."""
    stable = "10.200.0.1"
    runner.sync([IpSet("KUBE-DST-CHURN", entries=[stable])])
    stop, misses, checks = threading.Event(), [], [0]

    def reader() -> None:
        while not stop.is_set():
            # one process per probe: 40 probes per script keep the reader fast
            script = "".join(f"test KUBE-DST-CHURN {stable}\n" for _ in range(40))
            proc = netns.run(runner.netns, ["ipset", "restore"], input=script, check=False)
            checks[0] += 40
            if proc.returncode != 0:
                misses.append(proc.stderr)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for gen in range(15):
            others = [f"10.{gen}.{i // 250}.{i % 250 + 1}" for i in range(3000)]
            runner.sync([IpSet("KUBE-DST-CHURN", entries=[stable, *others])])
    finally:
        stop.set()
        t.join()
    assert checks[0] > 0 and not misses
    assert len(runner.members("KUBE-DST-CHURN")) == 3001


def test_bad_entry_refused_before_anything_runs(runner: IpsetRunner) -> None:
    runner.sync([IpSet("KUBE-DST-KEEP", entries=["10.0.0.1"])])
    with pytest.raises(ValueError, match="10.0.0.999"):
        runner.sync([IpSet("KUBE-DST-KEEP", entries=["10.0.0.2"]), IpSet("KUBE-DST-X", entries=["10.0.0.999"])])
    assert runner.members("KUBE-DST-KEEP") == ["10.0.0.1"]
    assert runner.list_names(["KUBE-DST-"]) == ["KUBE-DST-KEEP"]


def test_kernel_error_reported(runner: IpsetRunner) -> None:
    runner.sync([IpSet("KUBE-DST-TYPED", type="hash:ip")])
    with pytest.raises(IpsetError) as err:  # a set cannot change type in place: the swap refuses
        runner.sync([IpSet("KUBE-DST-TYPED", type="hash:net", entries=["10.0.0.0/24"])])
    assert "swap" in str(err.value).lower() or "line" in str(err.value).lower()
    runner.destroy(temp_name("KUBE-DST-TYPED"))


def test_member_hot_path(runner: IpsetRunner) -> None:
    runner.sync([IpSet("kube-router-local-pods", entries=["10.244.0.5"]),
                 IpSet("kube-router-local-pods", family="inet6")])
    runner.update_members(add=[("kube-router-local-pods", "10.244.0.6"), ("inet6:kube-router-local-pods", "fd00::6")],
                          delete=[("kube-router-local-pods", "10.244.0.5")])
    runner.update_members(add=[("kube-router-local-pods", "10.244.0.6")],
                          delete=[("kube-router-local-pods", "10.244.0.5")])  # idempotent (-exist)
    assert runner.members("kube-router-local-pods") == ["10.244.0.6"]
    assert runner.members("inet6:kube-router-local-pods") == ["fd00::6"]


def test_render_is_what_runs(runner: IpsetRunner) -> None:
    sets = [IpSet("kube-router-svip-prt", type="hash:ip,port", entries=["10.96.0.10,tcp:53", "10.96.0.10,udp:53"])]
    assert runner.sync(sets) == render_sync(sets)
    assert runner.test("kube-router-svip-prt", "10.96.0.10,udp:53")
    assert not runner.test("kube-router-svip-prt", "10.96.0.10,tcp:54")


def test_netlink_hot_path(runner: IpsetRunner) -> None:
    from kr_core.net.ipset import IpsetNetlink

    runner.sync([IpSet("kube-router-local-pods", entries=["10.244.0.5"])])

    def body() -> None:
        nl = IpsetNetlink(netns=runner.netns)  # the calling thread stays where it is
        try:
            assert nl.add("kube-router-local-pods", "10.244.0.6")
            assert not nl.add("kube-router-local-pods", "10.244.0.6")
            assert nl.delete("kube-router-local-pods", "10.244.0.5")
            assert not nl.delete("kube-router-local-pods", "10.244.0.5")
            assert nl.test("kube-router-local-pods", "10.244.0.6")
            with pytest.raises(IpsetError):
                nl.add("no-such-set", "10.0.0.1")
        finally:
            nl.close()

    body()
    assert runner.members("kube-router-local-pods") == ["10.244.0.6"]
