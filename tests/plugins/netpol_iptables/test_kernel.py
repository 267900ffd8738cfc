"""netpol_iptables against a real kernel, in namespaces made here (tests.conformance.netns_cluster).

What the issue asks of the kernel step: only kr's chains are restored (--noflush), others' rules survive;
set-membership-only updates; only what the node needs; restart adoption without a flip; cleanup; a failed
restore keeps the previous rules; bad input skipped per rule; default deny leaves no window; legacy mode.
"""

from __future__ import annotations

import threading
import time

import pytest

from kr_core.net import netns
from kr_core.net.iptables import IptablesError
from kr_core.net.netpol import naming
from kr_core.net.netpol.oracle import World, matrix
from tests.conformance.builders import pod, policy
from tests.conformance.netns_cluster import NetnsCluster, wait_matrix
from tests.conformance.scenarios import ing

pytestmark = pytest.mark.root

PODS = [("x", "a", {"pod": "a"}), ("x", "b", {"pod": "b"}), ("y", "a", {"pod": "a"})]


@pytest.fixture
def make_cluster(request):
    import os
    import shutil
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root")
    made = []

    def make(**kw):
        c = NetnsCluster("netpol_iptables", kw.pop("pods", PODS), **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def expect(c, family=None):
    w = World.of(c.policies(), {n: o.meta.labels for n, o in c.namespaces.items()})
    return matrix(c.pods.values(), w, [80], ["TCP"], family=family)


def dp(c):
    return c.caller.instance.dp


def test_remote_pod_changes_are_set_membership_only(make_cluster):
    c = make_cluster()
    c.apply_policy(ing("from-cli", "x", {"matchLabels": {"pod": "a"}},
                       [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "cli"}}}]}]))
    restores = dp(c).iptables_restores
    peer_set = naming.peer_pod_set("x", "from-cli", "ingress", 0, 4)
    remote = pod("r", "y", "10.244.1.7", "node-2", {"role": "cli"})
    c.add(remote)
    assert "10.244.1.7" in c.ipset("list", peer_set)
    c.update(pod("r", "y", "10.244.1.7", "node-2", {"role": "none"}))
    assert "10.244.1.7" not in c.ipset("list", peer_set)
    c.delete(remote)
    # a local pod relabelled so that it becomes a client: also membership only (its own policies unchanged)
    c.relabel_pod("y/a", {"pod": "a", "role": "cli"})
    assert c.pods["y/a"].pod_ip in c.ipset("list", peer_set)
    assert dp(c).iptables_restores == restores, "no iptables-restore for membership changes"
    assert not wait_matrix(c, expect(c))


def test_set_members_move_over_netlink_and_fall_back_to_restore(make_cluster):
    """Member updates and set syncs go as netlink batches (no process); where that path is unavailable the
    same changes go through ipset restore."""
    c = make_cluster()
    c.apply_policy(ing("from-cli", "x", {"matchLabels": {"pod": "a"}},
                       [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "cli"}}}]}]))
    d = dp(c)
    assert d.ipset_netlink and d.ipset_restores == 0, "the whole-set sync went over netlink"
    peer_set = naming.peer_pod_set("x", "from-cli", "ingress", 0, 4)
    c.add(pod("r1", "y", "10.244.1.7", "node-2", {"role": "cli"}))
    assert "10.244.1.7" in c.ipset("list", peer_set) and d.ipset_restores == 0
    d.close()
    d._nl_broken = True  # as on a kernel whose ipset netlink refuses us
    c.add(pod("r2", "y", "10.244.1.8", "node-2", {"role": "cli"}))
    assert "10.244.1.8" in c.ipset("list", peer_set) and d.ipset_restores == 1
    c.delete(pod("r1", "y", "10.244.1.7", "node-2", {"role": "cli"}))
    assert "10.244.1.7" not in c.ipset("list", peer_set) and d.ipset_restores == 2
    assert not wait_matrix(c, expect(c))


def test_only_rules_for_this_node_and_others_rules_survive(make_cluster):
    c = make_cluster()
    # someone else's chain and rules in the same table (kube-router #1248: clobbered by a full restore)
    netns.run(c.node_ns, ["iptables", "-N", "OTHER-TOOL"])
    netns.run(c.node_ns, ["iptables", "-A", "OTHER-TOOL", "-s", "192.0.2.1", "-j", "DROP"])
    netns.run(c.node_ns, ["iptables", "-A", "FORWARD", "-d", "192.0.2.2", "-j", "DROP"])
    c.apply_policy(ing("remote-only", "x", {"matchLabels": {"pod": "zz"}}, None))
    c.add(pod("zz", "x", "10.244.1.9", "node-2", {"pod": "zz"}))
    c.apply_policy(ing("local", "x", {"matchLabels": {"pod": "a"}}, None))
    c.sync()
    save = c.iptables_save()
    assert naming.policy_chain("x", "local", 4, "ingress") in save
    assert naming.policy_chain("x", "remote-only", 4, "ingress") not in save
    assert naming.target_set("x", "remote-only", 4, "ingress") not in c.ipset("list", "-n")
    assert "-A OTHER-TOOL -s 192.0.2.1/32 -j DROP" in save and "-d 192.0.2.2/32 -j DROP" in save
    assert save.index("kube-router netpol") < save.index("192.0.2.2")  # our jump is first in FORWARD
    assert not wait_matrix(c, expect(c))
    st = c.state()
    row = next(i for i in st["items"] if i["pod"] == "x/a")
    assert row["ingress_policies"] == ["x/local"] and st["summary"]["local_pods"] == 3
    c.in_node(c.caller.cleanup)
    c.in_node(c.caller.cleanup)  # twice is fine
    save = c.iptables_save()
    assert "KUBE-" not in save and "OTHER-TOOL -s 192.0.2.1" in save and "192.0.2.2" in save
    assert not [n for n in c.ipset("list", "-n").split() if n.startswith(("KUBE-", "kube-router", "inet6:"))]


def test_restart_adopts_without_a_flip(make_cluster):
    c = make_cluster()
    c.apply_policy(ing("a-from-b", "x", {"matchLabels": {"pod": "a"}}, [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]))
    want = expect(c)
    assert not wait_matrix(c, want)
    flips: list[str] = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            got = c.matrix([80], ["TCP"])
            flips.extend(f"{k}: {v}" for k, v in got.items() if v != want[k])

    t = threading.Thread(target=watch)
    t.start()
    try:
        c.restart_plugin()
        time.sleep(0.3)
    finally:
        stop.set()
        t.join()
    assert not flips, flips[:10]
    assert dp(c).iptables_restores <= 1


def test_failed_restore_keeps_previous_rules_and_retries(make_cluster, monkeypatch):
    c = make_cluster()
    c.apply_policy(ing("deny", "x", {}, None))
    assert not wait_matrix(c, expect(c))
    before = c.iptables_save()
    ipt = dp(c).ipt[4]
    real = ipt.restore
    monkeypatch.setattr(ipt, "restore", lambda text, **kw: (_ for _ in ()).throw(IptablesError("injected")))
    with pytest.raises(IptablesError):
        c.delete(c.policies()[0])
    assert c.iptables_save() == before  # nothing half-applied
    assert not c.in_node(c.caller.health).healthy
    monkeypatch.setattr(ipt, "restore", real)
    c.sync()  # the retry (kr's broadcaster retries the failed event; a sync does the same)
    assert all(wait_and_get(c).values())


def wait_and_get(c):
    time.sleep(0.1)
    return c.matrix([80], ["TCP"])


def test_bad_input_is_skipped_for_that_rule_only(make_cluster):
    c = make_cluster()
    bad = policy("bad", "x", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
        {"from": [{"ipBlock": {"cidr": "10.244.0.300/24"}}]},                       # unparseable CIDR
        {"ports": [{"port": 80, "protocol": "ICMP"}]},                              # unknown protocol
        {"ports": [{"port": "no-such-port"}]},                                      # unresolvable named port
        {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]})           # fine
    c.relabel_namespace("y", {"ns": "y"})
    c.apply_policy(bad)
    want = expect(c)
    assert want[("y/a", "x/a", 80, "TCP")] and not want[("x/b", "x/a", 80, "TCP")]
    assert not wait_matrix(c, want)
    assert c.in_node(c.caller.health).healthy


def test_default_deny_new_pod_is_unreachable_until_programmed(make_cluster):
    c = make_cluster(flags={"netpol-default-deny": True})
    assert not wait_matrix(c, expect(c))
    key = c.add_pod("x", "new", {"pod": "new"}, feed=False)  # the kubelet made it; kr has not seen it yet
    ip = c.pods[key].pod_ip
    from tests.conformance.netns_cluster import probe
    assert not probe(c.pod_ns["x/a"], ip, 80, "TCP"), "reachable before its chain exists"
    assert not probe(c.pod_ns[key], c.pods["x/a"].pod_ip, 80, "TCP")
    c.add(c.pods[key])
    assert probe(c.pod_ns["x/a"], ip, 80, "TCP") and probe(c.pod_ns[key], c.pods["x/a"].pod_ip, 80, "TCP")
    assert ip in c.ipset("list", naming.LOCAL_PODS_SET)
    # the top-level chains got the new pod's jumps spliced in, not rewritten
    payload = c.caller.instance.last_apply.iptables_payloads[4]
    assert f"-I {naming.FORWARD_CHAIN} " in payload and f":{naming.FORWARD_CHAIN} " not in payload
    fwd = netns.run(c.node_ns, ["iptables", "-S", naming.FORWARD_CHAIN]).stdout.splitlines()
    assert fwd[-2].endswith(f"-j {naming.TAIL_CHAIN}") and sum(ip + "/32" in r for r in fwd) == 2
    c.delete(c.pods[key])
    fwd = netns.run(c.node_ns, ["iptables", "-S", naming.FORWARD_CHAIN]).stdout
    assert ip not in fwd and naming.pod_chain("x", "new") not in c.iptables_save()


def test_legacy_mode_and_detection(make_cluster):
    c = make_cluster(config={"iptables_mode": "legacy"})
    c.apply_policy(ing("deny", "x", {}, None))
    assert not wait_matrix(c, expect(c))
    assert "KUBE-ROUTER-FORWARD" in c.iptables_save("legacy")
    assert "KUBE-ROUTER-FORWARD" not in c.iptables_save("nft")
    # a restart in auto mode finds kr's chains in legacy and stays there
    c.config = {}
    c.restart_plugin()
    assert str(dp(c).modes[4]) == "legacy"
    assert not wait_matrix(c, expect(c))


def test_dual_stack_real_packets_both_families(make_cluster):
    c = make_cluster(ipv6=True, flags={"enable-ipv6": True}, pods=[*PODS, ("x", "c", {"pod": "c"})])
    c.relabel_namespace("y", {"ns": "y"})
    c.apply_policy(ing("from-y", "x", {"matchLabels": {"pod": "a"}},
                       [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": 80}]}]))
    ya4, ya6 = c.pods["y/a"].pod_ips
    # x/b may send anywhere over IPv4 except to y/a, and over IPv6 only to y/a
    c.apply_policy(policy("egress-b", "x", {"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Egress"],
                                            "egress": [{"to": [{"ipBlock": {"cidr": ya6 + "/128"}}]},
                                                       {"to": [{"ipBlock": {"cidr": "0.0.0.0/0",
                                                                             "except": [ya4 + "/32"]}}]}]}))
    for fam in (4, 6):
        c.family = fam
        want = expect(c, fam)
        assert want[("x/b", "y/a", 80, "TCP")] == (fam == 6) and want[("x/b", "x/c", 80, "TCP")] == (fam == 4)
        assert not wait_matrix(c, want), f"IPv{fam}"
    assert "KUBE-ROUTER-FORWARD" in netns.run(c.node_ns, ["ip6tables-save", "-t", "filter"]).stdout
    assert "inet6:" in c.ipset("list", "-n")


def test_periodic_sync_repairs_drift(make_cluster):
    c = make_cluster()
    c.apply_policy(ing("deny", "x", {}, None))
    want = expect(c)
    assert not wait_matrix(c, want)
    chain = naming.policy_chain("x", "deny", 4, "ingress")
    pod_chain = naming.pod_chain("x", "a")
    netns.run(c.node_ns, ["iptables", "-F", pod_chain])  # someone flushes a pod chain
    netns.run(c.node_ns, ["iptables", "-N", "KUBE-POD-FW-STRAYSTRAYSTRAY"])  # and leaves a stray chain of ours
    assert all(c.matrix([80], ["TCP"], [("y/a", "x/a")]).values())  # x/a is open now
    c.in_node(c.caller.sync, "periodic")
    assert not wait_matrix(c, want)
    save = c.iptables_save()
    assert "STRAY" not in save and chain in save
