"""Rendering (pure): AC-N2, AC-N3, AC-N7, the pod chain, and golden restore/ipset payloads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kr_core.net.ipset import render_sync
from kr_core.net.iptables import render_restore
from kr_core.net.netpol import Desired, compile_policy, naming
from kr_core.net.netpol.model import EGRESS, INGRESS
from kr_plugins.netpol_iptables.render import Options, policy_rules, render, tail_chain
from tests.conformance.builders import ns, pod, policy
from tests.plugins.netpol_iptables.test_model import whoami_fixture

GOLDEN = Path(__file__).parent / "golden"


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("KR_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs (KR_UPDATE_GOLDEN=1 to accept)"


def test_ac_n2_port_rendering():
    pol = policy("simple-egress", "nsA", {"podSelector": {"matchExpressions": [
        {"key": "app", "operator": "In", "values": ["a"]}]}, "policyTypes": ["Egress"],
        "egress": [{"ports": [{"port": 30000}]}]})
    cp = compile_policy(pol)
    rules = policy_rules(cp, EGRESS, 4)
    assert len(rules) == 2
    for r in rules:
        assert '--comment "nsA/simple-egress egress any"' in r and "--dport 30000" in r
    assert rules[0].endswith("-j MARK --set-xmark 0x10000/0x10000")
    assert rules[1].endswith("-m mark --mark 0x10000/0x10000 -j RETURN")
    both = compile_policy(policy("simple-egress", "nsA", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                                                          "egress": [{"ports": [{"port": 30000}]}],
                                                          "ingress": [{"ports": [{"port": 37000}]}]}))
    # kube-router's single chain = kr's egress chain then ingress chain
    kube_router_chain = policy_rules(both, EGRESS, 4) + policy_rules(both, INGRESS, 4)
    assert ["egress any" in r and "30000" in r for r in kube_router_chain] == [True, True, False, False]
    assert all("ingress any" in r and "37000" in r for r in kube_router_chain[2:])
    assert naming.policy_chain("nsA", "simple-egress", 4, version="1") == "KUBE-NWPLCY-C23KD7UE4TAT3Y5M"


@pytest.mark.parametrize("direction,key", [("ingress", "from"), ("egress", "to")])
def test_ac_n3_end_port_and_sctp(direction, key):
    cp = compile_policy(policy("p", "nsA", {"podSelector": {}, "policyTypes": [direction.title()], direction: [
        {"ports": [{"port": 30000, "endPort": 31000}, {"port": 34000, "endPort": 35000}]},
        {"ports": [{"port": 34000, "endPort": 33000}]},
        {"ports": [{"port": 36000, "protocol": "SCTP"}]}]}))
    text = "\n".join(policy_rules(cp, direction, 4))
    assert "--dport 30000:31000" in text and "--dport 34000:35000" in text
    assert "--dport 34000 " in text and "33000" not in text
    assert "-p sctp --dport 36000" in text


def test_ac_n7_tail_chain():
    one = Options(default_deny=True, pod_cidrs=("10.244.0.0/24",))
    rules = tail_chain(one, 4)
    assert len(rules) == 5
    assert "-s 10.244.0.0/24 -m set ! --match-set kube-router-local-pods src -j REJECT" in rules[0]
    assert "-d 10.244.0.0/24 -m set ! --match-set kube-router-local-pods dst -j REJECT" in rules[1]
    assert rules[2].endswith("-m mark --mark 0x20000/0x20000 -j ACCEPT")
    assert rules[3].endswith("-s 10.244.0.0/24 -j REJECT") and rules[4].endswith("-d 10.244.0.0/24 -j REJECT")
    assert len(tail_chain(Options(default_deny=True, pod_cidrs=("10.244.0.0/24", "10.245.0.0/24")), 4)) == 9
    assert len(tail_chain(Options(default_deny=False, pod_cidrs=("10.244.0.0/24",)), 4)) == 1
    # the local-pods set holds the local pods whose chains are written (per family)
    d = Desired("node-1")
    d.build([], [pod("a", ip="10.244.0.5"), pod("b", ip="10.244.1.5", node="node-2")], [ns("default")])
    rs = render(d, 4, one)
    assert rs.sets[naming.LOCAL_PODS_SET].entries == ("10.244.0.5",)


def test_only_what_this_node_needs():
    pols = [policy("here", spec={"podSelector": {"matchLabels": {"pod": "a"}}}),
            policy("there", spec={"podSelector": {"matchLabels": {"pod": "b"}}})]
    d = Desired("node-1")
    d.build(pols, [pod("a", ip="10.0.0.1"), pod("b", ip="10.0.1.1", node="node-2")], [ns("default")])
    rs = render(d, 4, Options())
    pol_chains = [c for c in rs.chains if c.startswith("KUBE-NWPLCY-") and c not in naming.HELPER_CHAINS]
    assert pol_chains == [naming.policy_chain("default", "here", 4, INGRESS)]
    assert [c for c in rs.chains if c.startswith("KUBE-POD-FW-")] == [naming.pod_chain("default", "a")]
    assert naming.target_set("default", "there", 4, INGRESS) not in rs.sets


def test_golden_whoami():
    pods, pols, nss = whoami_fixture()
    d = Desired("vm1", (4, 6))
    d.build(pols, pods, nss)
    opts = Options(families=(4, 6), default_deny=True, pod_cidrs=("10.242.0.0/24", "2001:db8:42:1000::/64"),
                   cluster_ranges=("10.96.0.0/12",))
    for f in (4, 6):
        rs = render(d, f, opts)
        golden(f"whoami-v{f}.rules", render_restore({"filter": rs.chains}))
        golden(f"whoami-v{f}.ipset", render_sync(rs.sets.values()))


def test_splice_of_top_chains():
    from kr_plugins.netpol_iptables.dataplane import render_payload, splice
    j = '-m comment --comment "rule to jump traffic {}" -s {} -j X'
    old = ("-d 10.96.0.0/12 -j RETURN", j.format(1, "10.0.0.1"), j.format(2, "10.0.0.2"), "-j TAIL")
    new = ("-d 10.96.0.0/12 -j RETURN", j.format(2, "10.0.0.2"), j.format(3, "10.0.0.3"), "-j TAIL")
    pos, dels, ins = splice(old, new)
    assert (pos, dels, ins) == (2, [old[1]], [new[2]])
    text = render_payload({"KUBE-POD-FW-X": ["-j ACCEPT"]}, {"KUBE-ROUTER-INPUT": (pos, dels, ins)}, ["KUBE-POD-FW-Y"])
    assert text.splitlines() == ["*filter", ":KUBE-POD-FW-X - [0:0]", ":KUBE-POD-FW-Y - [0:0]",
                                 "-A KUBE-POD-FW-X -j ACCEPT", f"-D KUBE-ROUTER-INPUT {old[1]}",
                                 f"-I KUBE-ROUTER-INPUT 2 {new[2]}", "-X KUBE-POD-FW-Y", "COMMIT"]
    assert splice(old, ("-j OTHER", *new[1:])) is None  # the head changed: rewrite
    assert splice(None, new) is None
