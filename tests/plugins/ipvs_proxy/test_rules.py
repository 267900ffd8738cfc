"""iptables / ipset rendering against golden files (AC-P10 hairpin, AC-P11 firewall ipsets).

Regenerate the golden files after an intended change with ``KR_UPDATE_GOLDEN=1``.
"""

from __future__ import annotations

import os
from pathlib import Path

from kr_core.net.ipset import render_sync
from kr_core.net.iptables import render_restore
from kr_plugins.ipvs_proxy import rules
from kr_plugins.ipvs_proxy.model import ANN_HAIRPIN, Desired, NodeInfo, Options, build_service

from .fixtures import NODE, OPTS, ep, eps, svc

GOLDEN = Path(__file__).parent / "golden"


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("KR_UPDATE_GOLDEN") == "1" or not path.exists():
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from the golden file"


def ipset_fixture() -> Desired:
    """The shape of upstream's testdata/ipset_test_1/services.yaml: a dual-stack cluster with kube-dns,
    the API server, a few apps and two external IPs."""
    def s(name, ips, ports, ns="default", **kw):
        return svc(name, ns, cluster_ip=ips, ports=ports, **kw)
    tcp = lambda p, n="": {"name": n, "port": p, "protocol": "TCP"}  # noqa: E731
    udp = lambda p, n="": {"name": n, "port": p, "protocol": "UDP"}  # noqa: E731
    svcs = [
        s("kubernetes", ["10.96.0.1"], [tcp(443, "https")]),
        s("kube-dns", ["10.96.0.10"], [udp(53, "dns"), tcp(53, "dns-tcp"), tcp(9153, "metrics")], "kube-system"),
        s("whoami", ["10.96.115.202", "2001:db8:42:1::bd90"], [udp(5001, "u"), tcp(5000, "t")],
          externalIPs=["10.243.0.1"]),
        s("web", ["10.96.156.243"], [tcp(80)]),
        s("db", ["10.96.243.193"], [tcp(5432)], externalIPs=["10.243.0.10"]),
        s("cache", ["10.96.255.137", "2001:db8:42:1::8e7d"], [tcp(6379)]),
        s("headless", ["None"], [tcp(80)]),
    ]
    node = NodeInfo(name="node-1", ips={4: "10.241.0.20", 6: "2001:db8:42:1000::20"})
    opts = Options(families=(4, 6))
    return Desired.build(build_service(x, [], node, opts) for x in svcs)


def test_ac_p11_firewall_ipsets_golden():
    d = ipset_fixture()
    assert d.svip(4) == {"10.96.0.1", "10.96.0.10", "10.96.115.202", "10.96.156.243", "10.96.243.193",
                         "10.96.255.137", "10.243.0.1", "10.243.0.10"}
    assert d.svip(6) == {"2001:db8:42:1::bd90", "2001:db8:42:1::8e7d"}
    for e in ("10.96.0.10,udp:53", "10.96.0.10,tcp:53", "10.96.0.10,tcp:9153", "10.96.115.202,udp:5001",
              "10.243.0.1,tcp:5000"):
        assert e in d.svip_prt(4)
    sets = rules.ipsets(4, d.svip(4), d.svip_prt(4), ["10.241.0.20"]) + \
        rules.ipsets(6, d.svip(6), d.svip_prt(6), ["2001:db8:42:1000::20"])
    assert [(x.kernel_name, x.type) for x in sets] == [
        ("kube-router-svip", "hash:ip"), ("kube-router-svip-prt", "hash:ip,port"), ("kube-router-local-ips", "hash:ip"),
        ("inet6:kube-router-svip", "hash:ip"), ("inet6:kube-router-svip-prt", "hash:ip,port"),
        ("inet6:kube-router-local-ips", "hash:ip")]
    assert all(x.timeout == 0 for x in sets)
    golden("ipsets_ac_p11.txt", render_sync(sets))


def hairpin_desired(node_port: bool = False) -> Desired:
    ports = [{"name": "port-1", "port": 80, "protocol": "TCP", **({"nodePort": 30080} if node_port else {})}]
    s = svc("hp", cluster_ip="10.42.13.240", type="NodePort" if node_port else "ClusterIP", ports=ports,
            annotations={ANN_HAIRPIN: ""})
    return Desired.build([build_service(s, [eps("hp", [ep("10.244.2.23")])], NODE, OPTS)])


def test_ac_p10_hairpin_chain_golden():
    one = rules.hairpin_rules(4, hairpin_desired().hairpin(4))
    assert one == [["-s", "10.244.2.23/32", "-d", "10.244.2.23/32", "-m", "ipvs", "--vaddr", "10.42.13.240/32",
                    "--vport", "80", "-m", "comment", "--comment", "hairpin 10.42.13.240:80 -> 10.244.2.23",
                    "-j", "SNAT", "--to-source", "10.42.13.240"]]
    assert rules.hairpin_jump() == ["-m", "ipvs", "--vdir", "ORIGINAL", "-j", "KUBE-ROUTER-HAIRPIN"]
    two = rules.hairpin_rules(4, hairpin_desired(node_port=True).hairpin(4))
    assert len(two) == 2 and any("--to-source" in r and "10.0.0.1" in r and "30080" in r for r in two)
    golden("hairpin_ac_p10.txt", render_restore({"nat": {rules.CHAIN_HAIRPIN: two}}))
    # no hairpin Service left: the chain is deleted
    assert rules.hairpin_rules(4, Desired.build([]).hairpin(4)) == []


def test_firewall_and_snat_chains_golden():
    s = svc("lb", cluster_ip="10.96.0.70", type="LoadBalancer", loadBalancerSourceRanges=["192.0.2.0/24"],
            ports=[{"name": "port-1", "port": 80, "protocol": "TCP", "nodePort": 30070}],
            status={"loadBalancer": {"ingress": [{"ip": "10.255.0.7"}]}})
    d = Desired.build([build_service(s, [], NODE, OPTS)])
    fw4 = rules.firewall_rules(4, d.source_ranges(4))
    fw6 = rules.firewall_rules(6, [], permit_all=False)
    snat = rules.snat_rules(4, "10.0.0.1", ["10.244.1.0/24"], masquerade_all=False)
    snat_all = rules.snat_rules(4, "10.0.0.1", ["10.244.1.0/24"], masquerade_all=True, random_fully=False)
    text = render_restore({"filter": {rules.CHAIN_SERVICES: fw4}, "nat": {rules.CHAIN_SNAT: snat}})
    text += render_restore({"nat": {rules.CHAIN_SNAT: snat_all}})
    text += render_restore({"filter": {rules.CHAIN_SERVICES: fw6}})
    golden("chains.txt", text)
    assert fw6[-2][-1] == "RETURN" and fw4[-2][-1] == "ACCEPT"
    assert rules.snat_rules(4, "", [], False) == []


def test_set_refs_count_each_service_once_per_member():
    """The plugin's inline count for one-server Services equals the per-Service sets of the general path."""
    from collections import Counter

    from kr_plugins.ipvs_proxy.model import ServiceModel
    from kr_plugins.ipvs_proxy.plugin import Plugin

    from .fixtures import NODE_DS, OPTS_DS

    models = [build_service(svc("a", cluster_ip="10.96.0.1"), [], NODE, OPTS),
              build_service(svc("b", cluster_ip="10.96.0.1", ports=[{"name": "x", "port": 53, "protocol": "UDP"}]),
                            [], NODE, OPTS),
              build_service(svc("c", cluster_ip=["10.96.0.3", "fd00::3"], externalIPs=["1.1.1.1"],
                                ports=[{"name": "x", "port": 53, "protocol": "UDP"},
                                       {"name": "y", "port": 53, "protocol": "TCP"}]), [], NODE_DS, OPTS_DS),
              build_service(svc("d", cluster_ip="fd00::4"), [], NODE_DS, OPTS_DS),
              ServiceModel(key="e/skipped", skipped="headless")]
    slow: dict[str, Counter[str]] = {}
    for m in models:
        Plugin._add_set_refs(slow, m, 1)
    fast = Plugin()._set_entries(models)
    assert {n: +c for n, c in fast.items()} == {n: +c for n, c in slow.items()}
    assert fast["kube-router-svip"]["10.96.0.1"] == 2 and fast["inet6:kube-router-svip"]["fd00::4"] == 1
