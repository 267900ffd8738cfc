"""Rendering (pure) and planning: the JSON sent to libnftables, against golden files (KR_UPDATE_GOLDEN=1 to
regenerate), plus the properties the issue asks for: membership-only changes, only changed chains rewritten."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from kr_core.net.netpol import Desired, compile_policy, naming
from kr_core.net.netpol.backend import Options
from kr_core.net.netpol.model import EGRESS, INGRESS
from kr_plugins.nft_netpol import render
from kr_plugins.nft_netpol.dataplane import Dataplane
from kr_plugins.nft_netpol.render import Renderer, interval_elements, policy_rules, tail_chain
from tests.conformance.builders import ns, pod, policy
from tests.plugins.netpol_iptables.test_model import whoami_fixture

GOLDEN = Path(__file__).parent / "golden"


def golden(name: str, obj: Any) -> None:
    text = json.dumps(obj, indent=1, sort_keys=True) + "\n"
    path = GOLDEN / name
    if os.environ.get("KR_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs (KR_UPDATE_GOLDEN=1 to accept)"


def rules_text(rules) -> list[str]:
    return [json.dumps(r, sort_keys=True) for r in rules]


# ------------------------------------------------------------------------------------------ golden

def test_golden_whoami_dual_stack():
    pods, pols, nss = whoami_fixture()
    d = Desired("vm1", (4, 6))
    d.build(pols, pods, nss)
    opts = Options(families=(4, 6), default_deny=True, pod_cidrs=("10.242.0.0/24", "2001:db8:42:1000::/64"),
                   cluster_ranges=("10.96.0.0/12", "fd00:96::/108"), external_ranges=("192.0.2.0/24",))
    golden("whoami.json", {"nftables": render.create_commands(render.render(d, opts))})


def representative() -> tuple[list, list, list]:
    """One node (node-1) with pods in x and y, and policies covering every rule shape."""
    pods = [pod("a", "x", ["10.244.0.10", "fd00:244::10"], labels={"pod": "a"}),
            pod("b", "x", ["10.244.0.11", "fd00:244::11"], labels={"pod": "b"}),
            pod("c", "y", "10.244.1.12", node="node-2", labels={"pod": "c"}),
            pod("h", "y", "10.0.0.5", labels={"pod": "h"}, host_network=True),
            pod("done", "y", "10.244.0.99", labels={"pod": "a"}, phase="Succeeded")]
    pols = [
        policy("deny-all", "x", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        policy("ipblock", "x", {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"], "egress": [
            {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "192.168.1.50/32"]}},
                    {"ipBlock": {"cidr": "::/0", "except": ["fd00::/8"]}}]}]}),
        policy("ports", "x", {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"], "ingress": [
            {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
             "ports": [{"port": 80}, {"port": 30000, "endPort": 31000}, {"port": 81, "protocol": "UDP"},
                       {"port": 36000, "protocol": "SCTP"}, {"port": "serve-81-tcp"}]},
            {"ports": [{"protocol": "UDP"}]},
            {}]}),
        policy("bad", "x", {"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Ingress"], "ingress": [
            {"from": [{"ipBlock": {"cidr": "10.1.2.3/40"}}, {"podSelector": {"matchLabels": {"pod": "a"}}}],
             "ports": [{"port": 80, "protocol": "ICMP"}, {"port": 443}]}]}),
    ]
    nss = [ns("x", {"ns": "x"}), ns("y", {"ns": "y"})]
    return pods, pols, nss


def test_golden_representative():
    pods, pols, nss = representative()
    problems: list[tuple[str, str]] = []
    d = Desired("node-1", (4, 6), on_problem=lambda k, m: problems.append((k, m)))
    d.build(pols, pods, nss)
    opts = Options(families=(4, 6), cluster_ranges=("10.96.0.0/12",))
    golden("representative.json", {"nftables": render.create_commands(render.render(d, opts))})
    assert {k for k, _ in problems} == {"x/bad"}  # bad input: logged against the policy, the rest stands


# ---------------------------------------------------------------------------------- rule shapes

def test_ac_n2_port_only_egress_is_one_accept():
    cp = compile_policy(policy("simple-egress", "nsA", {"podSelector": {}, "policyTypes": ["Egress"],
                                                        "egress": [{"ports": [{"port": 30000}]}]}))
    (rule,) = policy_rules(cp, EGRESS)
    assert rule[0] == {"comment": "nsA/simple-egress egress rule 0 any"}
    assert rule[1:] == ({"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                                   "right": 30000}}, {"accept": None})


@pytest.mark.parametrize("direction", [INGRESS, EGRESS])
def test_ac_n3_end_port_sctp_and_one_rule_per_protocol(direction):
    cp = compile_policy(policy("p", "nsA", {"podSelector": {}, "policyTypes": [direction.title()], direction: [
        {"ports": [{"port": 30000, "endPort": 31000}, {"port": 34000, "endPort": 35000}]},
        {"ports": [{"port": 34000, "endPort": 33000}]},
        {"ports": [{"port": 36000, "protocol": "SCTP"}]}]}))
    r0, r1, r2 = policy_rules(cp, direction)
    assert r0[1]["match"]["right"] == {"set": [{"range": [30000, 31000]}, {"range": [34000, 35000]}]}
    assert r1[1]["match"]["right"] == 34000  # endPort below port: ignored
    assert r2[1]["match"]["left"] == {"payload": {"protocol": "sctp", "field": "dport"}}


def test_ac_n5_n6_ipblock_interval_sets():
    # 192.168.1.0/24 except .50 -> two intervals around it; /0 is one interval, not two halves
    assert interval_elements(["192.168.1.0/24"], ["192.168.1.50/32"]) == {"192.168.1.0-192.168.1.49",
                                                                           "192.168.1.51-192.168.1.255"}
    assert interval_elements(["0.0.0.0/1", "128.0.0.0/1"], []) == {"0.0.0.0/0"}
    assert interval_elements(["::/1", "8000::/1"], ["fd00::/8"]) == {"::-fcff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                                                                     "fe00::/7"}
    assert interval_elements(["10.95.0.239/32"], []) == {"10.95.0.239"}
    assert interval_elements(["10.0.0.0/24", "10.0.1.0/24"], ["10.0.0.0/24"]) == {"10.0.1.0/24"}
    assert interval_elements(["10.0.0.0/24"], ["10.0.0.0/24"]) == frozenset()


def test_ac_n7_tail_chain_default_deny():
    one = Options(default_deny=True, pod_cidrs=("10.244.0.0/24",))
    rules = tail_chain(one)
    assert len(rules) == 2
    assert rules[0][1:] == ({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                                       "right": {"prefix": {"addr": "10.244.0.0", "len": 24}}}},
                            {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                                       "right": "@kube-router-local-pods-ipv4"}}, {"reject": None})
    assert len(tail_chain(Options(default_deny=True, pod_cidrs=("10.244.0.0/24", "10.245.0.0/24")))) == 4
    assert tail_chain(Options(default_deny=False, pod_cidrs=("10.244.0.0/24",))) == ()
    d = Desired("node-1")
    d.build([], [pod("a", ip="10.244.0.5"), pod("b", ip="10.244.1.5", node="node-2")], [ns("default")])
    rs = render.render(d, one)
    assert rs.elements["kube-router-local-pods-ipv4"] == {"10.244.0.5"}


def test_only_what_this_node_needs_and_no_target_sets():
    pols = [policy("here", spec={"podSelector": {"matchLabels": {"pod": "a"}}}),
            policy("there", spec={"podSelector": {"matchLabels": {"pod": "b"}}})]
    d = Desired("node-1")
    d.build(pols, [pod("a", ip="10.0.0.1"), pod("b", ip="10.0.1.1", node="node-2")], [ns("default")])
    rs = render.render(d, Options())
    assert [c for c in rs.chains if c.startswith("KUBE-NWPLCY-") and c not in naming.HELPER_CHAINS] == \
        [render.policy_chain("default", "here", INGRESS)]
    assert [c for c in rs.chains if c.startswith("KUBE-POD-FW-")] == [render.pod_chain("default", "a", INGRESS)]
    assert rs.maps == {"kube-router-ingress-ipv4": {"10.0.0.1": render.pod_chain("default", "a", INGRESS)},
                       "kube-router-egress-ipv4": {}}
    assert rs.sets == {}  # default-deny policy: no peers, and target sets are not needed


def test_cached_renderer_equals_fresh_render():
    pods, pols, nss = representative()
    d = Desired("node-1", (4, 6))
    d.build(pols, pods, nss)
    opts = Options(families=(4, 6))
    r = Renderer()
    first = r.render(d, opts)
    d.update_pod("x/b", pod("b", "x", ["10.244.0.11", "fd00:244::11"], labels={"pod": "a"}))
    again, fresh = r.render(d, opts), render.render(d, opts)
    assert again.chains == fresh.chains and again.elements == fresh.elements and again.maps == fresh.maps
    assert again.chains != first.chains


# ------------------------------------------------------------------------------------------ planning

class FakeNft:
    def __init__(self) -> None:
        self.sent: list[list[dict[str, Any]]] = []
        self.fail = False

    def run(self, commands, what=""):
        if self.fail:
            raise RuntimeError("refused")
        self.sent.append(list(commands))
        return []


def kinds(cmds) -> list[str]:
    out = []
    for c in cmds:
        (verb, body), = c.items()
        (obj, spec), = body.items()
        out.append(f"{verb} {obj} {spec.get('name', spec.get('chain', ''))}")
    return out


def test_plan_membership_only_and_changed_chains_only():
    pols = [policy("a-from-cli", "x", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
        {"from": [{"podSelector": {"matchLabels": {"role": "cli"}}}]}]})]
    d = Desired("node-1")
    d.build(pols, [pod("a", "x", "10.244.0.10", labels={"pod": "a"})], [ns("x")])
    nft = FakeNft()
    dp = Dataplane(nft, fast_elements=False, text=False)  # type: ignore[arg-type]
    r = Renderer()
    opts = Options()
    dp.apply(r.render(d, opts))
    assert kinds(nft.sent[0])[:3] == ["add table kube-router-netpol", "delete table kube-router-netpol", "add table kube-router-netpol"]  # first apply: replace
    # a remote client appears: elements only
    delta = d.update_pod("x/r", pod("r", "x", "10.244.1.7", node="node-2", labels={"role": "cli"}))
    assert not delta.rules_changed
    peer = naming.peer_pod_set("x", "a-from-cli", INGRESS, 0, 4)
    assert dp.move_members([(m.set_name, m.ip) for m in delta.added], []) == 1
    assert kinds(nft.sent[-1]) == [f"add element {peer}"]
    # a local pod the policy selects: its chain, its map element, nothing else
    delta = d.update_pod("x/a2", pod("a2", "x", "10.244.0.11", labels={"pod": "a"}))
    assert delta.rules_changed
    p = dp.apply(r.render(d, opts, elements=False), [(m.set_name, m.ip) for m in delta.added], [])
    chain = render.pod_chain("x", "a2", INGRESS)
    assert kinds(p.commands) == [f"add chain {chain}"] + [f"add rule {chain}"] * 5 + \
        ["add element kube-router-ingress-ipv4"]
    # nothing changed: nothing sent
    n = len(nft.sent)
    assert not dp.apply(r.render(d, opts)).commands and len(nft.sent) == n
    # the pod goes: map element, then its chain
    d.update_pod("x/a2", None)
    p = dp.apply(r.render(d, opts, elements=False))
    assert kinds(p.commands) == ["delete element kube-router-ingress-ipv4", f"flush chain {chain}",
                                 f"delete chain {chain}"]


def test_failed_transaction_keeps_committed_state():
    d = Desired("node-1")
    d.build([policy("p", "x", {"podSelector": {}})], [pod("a", "x", "10.244.0.10")], [ns("x")])
    nft = FakeNft()
    dp = Dataplane(nft, fast_elements=False, text=False)  # type: ignore[arg-type]
    dp.apply(render.render(d, Options()))
    before = (dict(dp.chains), dict(dp.maps))
    d.update_pod("x/b", pod("b", "x", "10.244.0.11"))
    want = render.render(d, Options())
    nft.fail = True
    with pytest.raises(RuntimeError):
        dp.apply(want)
    assert (dp.chains, dp.maps) == before
    nft.fail = False
    p = dp.apply(want)  # the same difference again
    assert render.pod_chain("x", "b", INGRESS) in p.chains_written


def test_incremental_pod_update_equals_full_render():
    pods, pols, nss = representative()
    d = Desired("node-1", (4, 6))
    d.build(pols, pods, nss)
    opts = Options(families=(4, 6), default_deny=True, pod_cidrs=("10.244.0.0/24",))
    r = Renderer()
    rs = r.render(d, opts)
    steps = [("x/n1", pod("n1", "x", ["10.244.0.20", "fd00:244::20"], labels={"pod": "a"})),   # new, isolated
             ("x/n2", pod("n2", "x", "10.244.0.21", labels={"pod": "b"})),
             ("x/b", pod("b", "x", ["10.244.0.11", "fd00:244::11"], labels={"pod": "zz"})),  # relabelled
             ("x/n1", None), ("x/a", None), ("x/b", None), ("x/n2", None)]                  # last ones go
    for key, p in steps:
        before = d.local.get(key)
        d.update_pod(key, p)
        rs = r.update_pod(rs, d, before, d.local.get(key), opts)
        fresh = render.render(d, opts)
        assert rs.chains == fresh.chains, key
        assert rs.maps == fresh.maps and rs.sets == fresh.sets, key
        assert rs.elements[render.local_pods_set(4)] == fresh.elements[render.local_pods_set(4)]
        for name, e in rs.elements.items():
            assert e is None or e == fresh.elements[name], name
    assert not [c for c in rs.chains if c.startswith("KUBE-POD-FW-") or
                (c.startswith("KUBE-NWPLCY-") and c not in naming.HELPER_CHAINS)]
    assert rs.sets.keys() == {render.local_pods_set(4), render.local_pods_set(6)}


def test_comments_are_safe_in_text_syntax():
    assert render.comment('ns/p "x"\\y\x01z') == {"comment": "ns/p xyz"}
    assert render.comment("a" * 200) == {"comment": "a" * 120}
