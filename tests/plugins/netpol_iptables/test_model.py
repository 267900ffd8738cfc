"""AC-N1, N4, N5, N6 (and naming) on the backend-independent model: kr_core.net.netpol."""

from __future__ import annotations

from dataclasses import replace

from kr_core.net.netpol import Desired, compile_policy, naming
from kr_core.net.netpol.model import INGRESS
from tests.conformance.builders import node, ns, pod, policy

V4V6 = (4, 6)


def whoami_fixture() -> tuple[list, list, list]:
    """kube-router's testdata: nodes vm1/vm2, two whoami pods, policies debug and whoami."""
    pods = [pod("whoami-1", ip=["10.242.1.4", "2001:db8:42:1001::4"], node="vm2", labels={"name": "whoami"}),
            pod("whoami-2", ip=["10.242.0.5", "2001:db8:42:1000::5"], node="vm1", labels={"name": "whoami"})]
    pols = [
        policy("debug", spec={"podSelector": {"matchLabels": {"name": "debug-toolbox"}}, "policyTypes": ["Egress"],
                              "egress": [{"to": [{"podSelector": {"matchLabels": {"name": "whoami"}}}]}]}),
        policy("whoami", spec={"podSelector": {"matchLabels": {"name": "whoami"}}, "policyTypes": ["Ingress"],
                               "ingress": [{"from": [{"podSelector": {"matchLabels": {"name": "debug-toolbox"}}},
                                                     {"ipBlock": {"cidr": "10.95.0.239/32"}}],
                                            "ports": [{"port": 5000, "protocol": "TCP"}]}]}),
    ]
    return pods, pols, [ns("default")]


def test_ac_n1_golden_set_names_and_members():
    pods, pols, nss = whoami_fixture()
    d = Desired("vm1", V4V6)
    d.build(pols, pods, nss)
    s = d.sets
    assert s["KUBE-DST-IZ5JGF4W6BKI7CEV"].entries == {"10.242.0.5", "10.242.1.4"}
    assert s["KUBE-DST-GZIEGRFLGG6BN3N7"].entries == {"2001:db8:42:1000::5", "2001:db8:42:1001::4"}
    blk = s["KUBE-SRC-KLLOHJLFVAV654Z2"]
    assert (blk.type, blk.entries, blk.nomatch) == ("hash:net", {"10.95.0.239/32"}, set())
    # no IPv6 ipBlock set; kr (unlike kube-router) keeps the empty peer-pod set so that rule text never
    # depends on whether a selector currently matches
    assert not [n for n, x in s.items() if x.type == "hash:net" and x.family == 6]
    assert s["KUBE-SRC-4NYDTCW6OPCN2YZW"].entries == set()
    assert d.local["default/whoami-2"].ingress == ("default/whoami",)
    assert d.needed_policies() == {"default/whoami"}
    # policy debug selects no pod of vm1: no chain there, so no set either
    assert "KUBE-DST-P226T6HGLTLDGDLC" not in s and "KUBE-SRC-C2EUPKL23CCP4COF" not in s
    # a debug-toolbox pod on vm1 makes it needed: its sets appear, filled from the pods already known
    delta = d.update_pod("default/debug", pod("debug", ip=["10.242.0.9", "2001:db8:42:1000::9"], node="vm1",
                                              labels={"name": "debug-toolbox"}))
    assert delta.local_changed and d.needed_policies() == {"default/whoami", "default/debug"}
    assert s["KUBE-DST-P226T6HGLTLDGDLC"].entries == {"10.242.0.5", "10.242.1.4"}
    assert s["KUBE-DST-KSECZGZUJPU4SKA3"].family == 6 and len(s["KUBE-DST-KSECZGZUJPU4SKA3"].entries) == 2
    assert s["KUBE-SRC-C2EUPKL23CCP4COF"].entries == {"10.242.0.9"}
    assert s["KUBE-SRC-VY6KNKQ4BF6Y4J2K"].entries == {"2001:db8:42:1000::9"}
    assert s["KUBE-SRC-4NYDTCW6OPCN2YZW"].entries == {"10.242.0.9"}
    # ... and it going away removes them again
    assert d.update_pod("default/debug", None).local_changed
    assert "KUBE-DST-P226T6HGLTLDGDLC" not in s and s["KUBE-SRC-4NYDTCW6OPCN2YZW"].entries == set()


def test_naming_matches_kube_router():
    assert naming.policy_chain("nsA", "simple-egress", 4, version="1") == "KUBE-NWPLCY-C23KD7UE4TAT3Y5M"
    assert naming.target_set("default", "whoami", 4, "ingress") == "KUBE-DST-IZ5JGF4W6BKI7CEV"
    assert naming.target_set("default", "debug", 4, "egress") == "KUBE-SRC-C2EUPKL23CCP4COF"
    # stable: no version, so the same object always gives the same chain
    a = naming.policy_chain("ns", "p", 4, "ingress")
    assert a == naming.policy_chain("ns", "p", 4, "ingress") != naming.policy_chain("ns", "p", 4, "egress")
    assert len(naming.pod_chain("ns" * 40, "p" * 200)) == 28


def ac_n4_world():
    nss = [ns("nsA", {"name": "a", "team": "a"}), ns("nsB", {"name": "b", "team": "a"}), ns("nsC", {"name": "c"}),
           ns("nsD", {"name": "d"})]
    spec = {"Aa": ("nsA", {"app": "a"}), "Aaa": ("nsA", {"app": "a", "component": "a"}),
            "Aab": ("nsA", {"app": "a", "component": "b"}), "Aac": ("nsA", {"app": "a", "component": "c"}),
            "Ba": ("nsB", {"app": "a"}), "Baa": ("nsB", {"app": "a", "component": "a"}),
            "Bab": ("nsB", {"app": "a", "component": "b"}), "Ca": ("nsC", {"app": "a"})}
    pods = [pod(n, namespace=nsn, ip=f"10.0.0.{i + 1}", labels=lab) for i, (n, (nsn, lab)) in enumerate(spec.items())]
    return nss, pods


def _targets(pol, nss, pods):
    d = Desired("node-1", (4,))
    d.build([pol], pods, nss)
    cp = d.policies[pol.key]
    s = d.sets.get(cp.target_set(INGRESS, 4))  # no set: the policy selects no local pod (all pods are local)
    ips = s.entries if s is not None else set()
    return {p.meta.name for p in pods if p.pod_ip in ips}, d, cp


def test_ac_n4_selector_semantics():
    nss, pods = ac_n4_world()
    assert _targets(policy("p", "nsA", {"podSelector": {}}), nss, pods)[0] == {"Aa", "Aaa", "Aab", "Aac"}
    assert _targets(policy("p", "nsD", {"podSelector": {}}), nss, pods)[0] == set()
    assert _targets(policy("p", "nsX", {"podSelector": {}}), nss, pods)[0] == set()
    by_in = _targets(policy("p", "nsA", {"podSelector": {"matchExpressions": [
        {"key": "app", "operator": "In", "values": ["a"]}]}}), nss, pods)[0]
    assert by_in == _targets(policy("p", "nsA", {"podSelector": {"matchLabels": {"app": "a"}}}), nss, pods)[0]
    both = _targets(policy("p", "nsA", {"podSelector": {"matchExpressions": [
        {"key": "app", "operator": "In", "values": ["a"]},
        {"key": "component", "operator": "In", "values": ["b", "c"]}]}}), nss, pods)[0]
    assert both == {"Aab", "Aac"}
    for peer, want in (({"namespaceSelector": {"matchLabels": {"name": "b"}}}, {"Ba", "Baa", "Bab"}),
                       ({"namespaceSelector": {"matchLabels": {"name": "b"}},
                         "podSelector": {"matchExpressions": [{"key": "component", "operator": "In",
                                                               "values": ["b"]}]}}, {"Bab"})):
        _, d, cp = _targets(policy("p", "nsA", {"podSelector": {}, "ingress": [{"from": [peer]}]}), nss, pods)
        ips = d.sets[cp.peer_set(INGRESS, 0, 4)].entries
        assert {p.meta.name for p in pods if p.pod_ip in ips} == want


def test_ac_n5_model_edge_cases():
    cp = compile_policy(policy("p", spec={"podSelector": {}, "ingress": [{}]}))
    assert cp.ingress_rules[0].all_peers and cp.ingress_rules[0].all_ports
    cp = compile_policy(policy("p", spec={"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}))
    r = cp.ingress_rules[0]
    assert r.all_peers and not r.all_ports and r.ports[0].port == 80 and r.ports[0].protocol == "TCP"
    for direction, key in (("ingress", "from"), ("egress", "to")):
        cp = compile_policy(policy("p", spec={"podSelector": {}, "policyTypes": [direction.title()], direction: [
            {key: [{"ipBlock": {"cidr": "192.168.1.0/24", "except": ["192.168.1.50/32"]}}]}]}))
        b = cp.rules(direction)[0].ipblocks[0]
        assert (b.entries, b.nomatch) == (("192.168.1.0/24",), ("192.168.1.50/32",))
    assert (compile_policy(policy("p", spec={"policyTypes": ["Ingress"]})).directions()) == ("ingress",)
    assert (compile_policy(policy("p", spec={"policyTypes": ["Egress"]})).directions()) == ("egress",)
    assert compile_policy(policy("p", spec={"policyTypes": ["Ingress", "Egress"]})).directions() == ("ingress", "egress")
    assert compile_policy(policy("p", spec={})).directions() == ("ingress",)
    pods = [pod("hostnet", ip="10.0.0.1", host_network=True), pod("done", ip="10.0.0.2", phase="Succeeded"),
            pod("failed", ip="10.0.0.3", phase="Failed"), pod("noip", ip=""), pod("run", ip="10.0.0.5")]
    d = Desired("node-1")
    d.build([policy("p", spec={"podSelector": {}})], pods, [ns("default")])
    assert d.sets[naming.target_set("default", "p", 4, "ingress")].entries == {"10.0.0.5"}
    assert set(d.local) == {"default/run"}


def test_ac_n6_zero_prefix_split():
    cp = compile_policy(policy("p", spec={"podSelector": {}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["0.0.0.0/0"]}}, {"ipBlock": {"cidr": "::/0"}}]}]}), (4, 6))
    v4, v6 = cp.ingress_rules[0].ipblocks_of(4)[0], cp.ingress_rules[0].ipblocks_of(6)[0]
    assert v4.entries == ("0.0.0.0/1", "128.0.0.0/1")
    assert v6.entries == ("::/1", "8000::/1")  # all of IPv6 (kube-router: 2000::/3 + fd00::/8)


def test_overlapping_ipblocks_of_one_rule_get_separate_sets():
    cp = compile_policy(policy("p", spec={"podSelector": {}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}, {"ipBlock": {"cidr": "10.0.0.0/12"}}]}]}))
    assert len(cp.ingress_rules[0].ipblocks) == 2
    cp = compile_policy(policy("p", spec={"podSelector": {}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}, {"ipBlock": {"cidr": "10.1.2.0/24"}}]}]}))
    assert len(cp.ingress_rules[0].ipblocks) == 1


def test_bad_input_is_skipped_per_peer_and_port():
    cp = compile_policy(policy("p", spec={"podSelector": {}, "ingress": [
        {"from": [{"ipBlock": {"cidr": "10.0.0.300/8"}}, {"ipBlock": {"cidr": "10.2.0.0/16"}}],
         "ports": [{"port": 80, "protocol": "ICMP"}, {"port": 81, "protocol": "UDP"}, {"port": 0}]},
        {"ports": [{"port": 34000, "endPort": 33000}]}]}))
    r0, r1 = cp.ingress_rules
    assert r0.ipblocks[0].entries == ("10.2.0.0/16",)
    assert [(p.protocol, p.port) for p in r0.ports] == [("UDP", 81)]
    assert (r1.ports[0].port, r1.ports[0].end_port) == (34000, None)
    assert len(cp.problems) == 4


def test_membership_only_vs_rule_changes():
    d = Desired("node-1")
    pols = [policy("web", spec={"podSelector": {"matchLabels": {"app": "web"}},
                                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "cli"}}}],
                                             "ports": [{"port": "http"}]}]})]
    d.build(pols, [pod("w", ip="10.0.0.1", labels={"app": "web"}, ports=[(8080, "TCP", "http")])], [ns("default")])
    # a remote client appearing: membership only
    delta = d.update_pod("default/c", pod("c", ip="10.0.1.9", node="node-2", labels={"app": "cli"}))
    assert not delta.rules_changed and [m.ip for m in delta.added] == ["10.0.1.9"]
    # a remote web pod resolving "http" to the same port: membership only
    delta = d.update_pod("default/w2", pod("w2", ip="10.0.1.2", node="node-2", labels={"app": "web"},
                                            ports=[(8080, "TCP", "http")]))
    assert not delta.rules_changed
    # ... to another port: a new named-port group, rule text changes
    delta = d.update_pod("default/w3", pod("w3", ip="10.0.1.3", node="node-2", labels={"app": "web"},
                                            ports=[(9090, "TCP", "http")]))
    assert delta.groups_changed == {"default/web"}
    delta = d.update_pod("default/w3", None)
    assert delta.groups_changed == {"default/web"}
    # relabel the client away: membership only; a local pod appearing: rules change
    assert not d.update_pod("default/c", pod("c", ip="10.0.1.9", node="node-2", labels={})).rules_changed
    assert d.update_pod("default/x", pod("x", ip="10.0.0.7", labels={"app": "web"})).local_changed


def test_node_builder_smoke():
    assert node("n", "10.0.0.1", ["10.244.0.0/24"]).pod_cidrs == ("10.244.0.0/24",)


def _snapshot(d):
    return ({n: (s.type, frozenset(s.entries), frozenset(s.nomatch)) for n, s in d.sets.items()},
            dict(d.local), {k: d.groups_of(k) for k in d.policies})


def test_incremental_updates_equal_a_full_build():
    """Policies, pods and namespace labels changed one at a time give exactly what a full build gives."""
    import random

    from tests.conformance.generated import cases
    rng = random.Random(3)
    nss = {n: ns(n, {"ns": n}) for n in "xyz"}
    pods = {f"{n}/{p}": pod(p, n, f"10.0.{i}.{j}", node="node-1" if j % 2 else "node-2")
            for i, n in enumerate("xyz") for j, p in enumerate("abc")}
    ips = {k: p.pod_ip for k, p in pods.items()}
    pols = {}
    d = Desired("node-1")
    d.build([], pods.values(), nss.values())
    for step, case in enumerate(cases(30, seed=5)[:30]):
        body = case.steps[0].apply[0](ips)
        pol = replace(body, meta=replace(body.meta, name=f"p{step % 7}", namespace=rng.choice("xy")))
        if rng.random() < 0.2 and pols:
            k = rng.choice(sorted(pols))
            del pols[k]
            d.update_policy(k, None)
        else:
            pols[pol.key] = pol
            d.update_policy(pol.key, pol)
        if rng.random() < 0.5:
            k = rng.choice(sorted(pods))
            p = pods[k]
            pods[k] = pod(p.meta.name, p.meta.namespace, p.pod_ip, p.node_name,
                          {"pod": rng.choice("abc"), **({"role": "cli"} if rng.random() < 0.5 else {})})
            d.update_pod(k, pods[k])
        if rng.random() < 0.3:
            n = rng.choice("yz")
            nss[n] = ns(n, {"ns": n, **({"team": "t"} if rng.random() < 0.5 else {})})
            d.update_namespace(n, nss[n])
        full = Desired("node-1")
        full.build(pols.values(), pods.values(), nss.values())
        assert _snapshot(d) == _snapshot(full), f"step {step}"


def test_random_churn_equals_a_full_build():
    """Pods moving between nodes, relabelled, resolving named ports to other numbers, sharing an address
    with a finished pod; policies and namespaces changing; dual stack. After every step the incremental
    state equals a full build, and the deltas reported move exactly the members that changed."""
    import random

    rng = random.Random(11)
    nss = {n: ns(n, {"ns": n}) for n in "xyz"}
    specs = [
        {"podSelector": {"matchLabels": {"app": "a"}}, "ingress": [{"from": [{"podSelector": {}}],
                                                                    "ports": [{"port": "http"}]}]},
        {"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "b"]}]},
         "policyTypes": ["Egress"], "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": "t"}},
                                                         "podSelector": {"matchLabels": {"role": "db"}}}],
                                                  "ports": [{"port": "http"}]}]},
        {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
         "ingress": [{"from": [{"namespaceSelector": {}}]}],
         "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"port": "http"}]}]},
        {"podSelector": {"matchExpressions": [{"key": "role", "operator": "DoesNotExist"}]},
         "ingress": [{"from": [{"podSelector": {"matchExpressions": [
             {"key": "app", "operator": "NotIn", "values": ["a"]}, {"key": "role", "operator": "Exists"}]}}]}]},
    ]

    def random_pod(name: str, n: str, i: int) -> object:
        labels = {"app": rng.choice("abc")}
        if rng.random() < 0.4:
            labels["role"] = rng.choice(["db", "web"])
        ip = f"10.0.{i}.{rng.randint(1, 4)}"  # few addresses: pods share them
        return pod(name, n, [ip, f"fd00::{i}:{ip.rsplit('.', 1)[1]}"], node=rng.choice(["node-1", "node-2"]),
                   labels=labels, ports=[(rng.choice([80, 8080]), "TCP", "http")],
                   phase=rng.choice(["Running"] * 5 + ["Succeeded"]))

    pods = {f"{n}/p{j}": random_pod(f"p{j}", n, i) for i, n in enumerate("xyz") for j in range(4)}
    pols = {}
    d = Desired("node-1", V4V6)
    d.build([], pods.values(), nss.values())
    rebuilt = Desired("node-1", V4V6)  # full builds again and again on one object (reusing its pod index)
    for step in range(120):
        r = rng.random()
        if r < 0.5:
            k = rng.choice(sorted(pods))
            n, name = k.split("/")
            pods[k] = random_pod(name, n, "xyz".index(n))
            before = {name_: set(s.entries) for name_, s in d.sets.items()}
            delta = d.update_pod(k, pods[k])
            if not delta.local_changed:  # members moved exactly as reported
                for m in delta.added:
                    assert m.ip not in before.get(m.set_name, set()) and m.ip in d.sets[m.set_name].entries
                for m in delta.removed:
                    assert m.ip in before[m.set_name]
                    assert m.set_name not in d.sets or m.ip not in d.sets[m.set_name].entries
        elif r < 0.8:
            i = rng.randrange(len(specs))
            key = f"{rng.choice('xy')}/pol{i}"
            if key in pols and rng.random() < 0.3:
                del pols[key]
                d.update_policy(key, None)
            else:
                pols[key] = policy(f"pol{i}", key.split("/")[0], specs[i])
                d.update_policy(key, pols[key])
        else:
            n = rng.choice("yz")
            nss[n] = ns(n, {"ns": n, **({"team": "t"} if rng.random() < 0.5 else {})})
            d.update_namespace(n, nss[n])
        full = Desired("node-1", V4V6)
        full.build(pols.values(), pods.values(), nss.values())
        assert _snapshot(d) == _snapshot(full), f"step {step}"
        rebuilt.build(pols.values(), pods.values(), nss.values())
        assert _snapshot(rebuilt) == _snapshot(full), f"step {step} (rebuilt)"
