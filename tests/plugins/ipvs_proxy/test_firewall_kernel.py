"""The proxy's chains, jumps and ipsets against a real kernel, in both iptables backends.

On this host (no IPVS, no xt_ipvs) with the nft backend (and legacy where the host kernel has it): sets,
the INPUT firewall chain and its jump, the SNAT chain, drift repair, member updates, cleanup. In the VM
(legacy only, xt_ipvs present) the same plus the POSTROUTING jumps with ``-m ipvs``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess

import pytest

from kr_core.net import netns
from kr_plugins.ipvs_proxy import rules as R
from kr_plugins.ipvs_proxy.firewall import Firewall
from kr_plugins.ipvs_proxy.model import Desired, SourceRangeRule


def _mode_works(mode: str, ns: str) -> bool:
    p = subprocess.run(["ip", "netns", "exec", ns, f"iptables-{mode}", "-t", "nat", "-S"], capture_output=True)
    q = subprocess.run(["ip", "netns", "exec", ns, "ipset", "list", "-n"], capture_output=True)
    return p.returncode == 0 and q.returncode == 0


def save(ns: str, mode: str, v6: bool = False) -> str:
    tool = f"ip6tables-{mode}-save" if v6 else f"iptables-{mode}-save"
    return subprocess.run(["ip", "netns", "exec", ns, tool], capture_output=True, text=True, check=True).stdout


def exercise(mode: str, with_ipvs_match: bool) -> None:
    with netns.temporary("krp-fw") as ns, contextlib.ExitStack() as stack:
        if not _mode_works(mode, ns):
            pytest.skip(f"iptables-{mode} or ipset does not work in this kernel")
        with netns.in_netns(ns):
            fw = Firewall((4, 6), mode)
            stack.callback(fw.close)  # its launcher helper and netlink socket, even on failure
            assert fw.modes == {4: mode, 6: mode}
            sets = R.ipsets(4, ["10.96.0.10"], ["10.96.0.10,tcp:80", "10.96.0.10,udp:53"], ["192.168.1.5"]) + \
                R.ipsets(6, ["fd00::10"], ["fd00::10,tcp:80"], ["fd00:1::5"])
            assert fw.sync_sets(sets) and not fw.sync_sets(sets)
            # large sets are filled over netlink (temp set + swap); the live set keeps being referenced
            many = [f"10.97.{i >> 8}.{i & 255}" for i in range(1500)]
            big = R.ipsets(4, many, [f"{a},tcp:80" for a in many] + ["10.96.0.10,udp:53"], ["192.168.1.5"]) + \
                R.ipsets(6, [f"fd00::{i:x}" for i in range(600)], ["fd00::10,tcp:80"], ["fd00:1::5"])
            assert fw.sync_sets(big) and not fw.sync_sets(big)
            assert len(fw.ipset.members("kube-router-svip-prt")) == 1501
            assert "10.96.0.10,udp:53" in fw.ipset.members("kube-router-svip-prt")
            assert len(fw.ipset.members("inet6:kube-router-svip")) == 600
            assert not [n for n in fw.ipset.list_names() if n.startswith("TMP-")]
            assert fw.sync_sets(sets) and set(fw.ipset.members("kube-router-svip")) == {"10.96.0.10"}
            ranges = [SourceRangeRule(4, "10.255.0.7", 6, 80, ("192.0.2.0/24",), "default/lb")]
            want = {
                (4, "filter", R.CHAIN_SERVICES): R.firewall_rules(4, ranges),
                (6, "filter", R.CHAIN_SERVICES): R.firewall_rules(6, []),
                (4, "nat", R.CHAIN_SNAT): R.snat_rules(4, "192.168.1.5", ["10.244.1.0/24"], False),
            }
            assert fw.sync_chains(want) and not fw.sync_chains(want)
            writes = fw.writes
            for f in (4, 6):
                fw.ensure_input_jump(f)
                fw.ensure_input_jump(f)
            assert fw.writes == writes + 2
            if with_ipvs_match:
                fw.sync_chains({(4, "nat", R.CHAIN_HAIRPIN): R.hairpin_rules(4, Desired.build([]).hairpin(4)) or
                                [["-s", "10.244.1.9/32", "-j", "RETURN"]]})
                fw.ensure_postrouting(4, hairpin=True)
                w = fw.writes
                fw.ensure_postrouting(4, hairpin=True)
                assert fw.writes == w
                fw.ensure_postrouting(4, hairpin=False)
                fw.sync_chains({}, [(4, "nat", R.CHAIN_HAIRPIN)])
        text, text6 = save(ns, mode), save(ns, mode, v6=True)
        first_input = next(ln for ln in text.splitlines() if ln.startswith("-A INPUT"))
        assert first_input.startswith("-A INPUT -m set --match-set kube-router-svip dst"), first_input
        assert "--match-set inet6:kube-router-svip dst" in text6
        assert '-s 192.0.2.0/24 -d 10.255.0.7/32 -p tcp -m tcp --dport 80' in text
        assert "-j SNAT --to-source 192.168.1.5 --random-fully" in text
        if with_ipvs_match:
            post = [ln for ln in text.splitlines() if ln.startswith("-A POSTROUTING")]
            assert post and "--vmethod MASQ" in post[0] and "KUBE-ROUTER-IPVS-SNAT" in post[0], post
            assert ":KUBE-ROUTER-HAIRPIN" not in text
        with netns.in_netns(ns):
            # drift: someone flushes our chain; the check notices, the next sync rewrites it
            subprocess.run([f"iptables-{mode}", "-F", R.CHAIN_SERVICES], check=True)
            fw.check_drift()
            assert fw.sync_chains(want)
            assert fw.update_members([("kube-router-svip", "10.96.0.11")], [("kube-router-svip", "10.96.0.10")])
            assert not fw.update_members([("kube-router-svip", "10.96.0.11")], [])
            members = set(fw.ipset.members("kube-router-svip"))
            assert members == {"10.96.0.11"}
            fw.read_sets()
            assert fw.sets["kube-router-svip"] == {"10.96.0.11"}
            fw.cleanup()
            fw.cleanup()
            assert fw.ipset.list_names(R.OWNED_SETS) == []
        text = save(ns, mode) + save(ns, mode, v6=True)
        assert "KUBE-ROUTER" not in text and "kube-router" not in text


@pytest.mark.root
@pytest.mark.parametrize("mode", ["nft", "legacy"])
def test_firewall_on_this_kernel(mode):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    exercise(mode, with_ipvs_match=False)


@pytest.mark.vm
def test_firewall_in_vm_legacy_with_ipvs_match():
    subprocess.run(["modprobe", "ip_vs"], check=False)
    exercise("legacy", with_ipvs_match=True)


def exercise_sync_iptables(mode: str, with_ipvs_match: bool) -> None:
    """Chains + jumps + deletions in one save and one restore per family; idempotent; drift repaired;
    stale jump copies removed; another tool's rules left alone."""
    with netns.temporary("krp-fw2") as ns, contextlib.ExitStack() as stack:
        if not _mode_works(mode, ns):
            pytest.skip(f"iptables-{mode} or ipset does not work in this kernel")
        with netns.in_netns(ns):
            fw = Firewall((4, 6), mode)
            stack.callback(fw.close)  # its launcher helper and netlink socket, even on failure
            fw.sync_sets(R.ipsets(4, ["10.96.0.10"], [], []) + R.ipsets(6, ["fd00::10"], [], []))
            subprocess.run([f"iptables-{mode}", "-A", "INPUT", "-s", "192.0.2.99", "-j", "ACCEPT"], check=True)
            # a stale copy of our INPUT jump (other position) must go
            subprocess.run([f"iptables-{mode}", "-N", R.CHAIN_SERVICES], check=True)
            subprocess.run([f"iptables-{mode}", "-A", "INPUT", "-m", "comment", "--comment", R.JUMP_INPUT_COMMENT,
                            "-j", R.CHAIN_SERVICES], check=True)
            want = {(f, "filter", R.CHAIN_SERVICES): R.firewall_rules(f, []) for f in (4, 6)}
            want[(4, "nat", R.CHAIN_SNAT)] = R.snat_rules(4, "192.168.1.5", ["10.244.1.0/24"], False)
            want[(6, "nat", R.CHAIN_SNAT)] = R.snat_rules(6, "fd00:1::5", ["fd00:244::/64"], False)
            hairpin = [["-s", "10.244.1.9/32", "-d", "10.244.1.9/32", "-j", "SNAT", "--to-source", "10.96.0.10"]]
            if with_ipvs_match:
                want[(4, "nat", R.CHAIN_HAIRPIN)] = hairpin
                jumps = {**fw.jumps(4, hairpin=True), **fw.jumps(6, hairpin=False)}
            else:  # no xt_ipvs on this kernel: INPUT only
                jumps = {k: v for f in (4, 6) for k, v in fw.jumps(f, hairpin=False).items() if k[2] == "INPUT"}
            assert fw.sync_iptables(want, [], jumps)
            w = fw.writes
            assert not fw.sync_iptables(want, [], jumps) and fw.writes == w  # nothing changed: no restore
            text = save(ns, mode)
            inputs = [ln for ln in text.splitlines() if ln.startswith("-A INPUT")]
            assert len(inputs) == 2 and R.CHAIN_SERVICES in inputs[0] and "192.0.2.99" in inputs[1], inputs
            if with_ipvs_match:
                post = [ln for ln in text.splitlines() if ln.startswith("-A POSTROUTING")]
                assert len(post) == 2 and R.CHAIN_HAIRPIN in post[0] and R.CHAIN_SNAT in post[1], post
            # drift: our chain flushed by hand, the INPUT jump deleted: both repaired by the next sync
            subprocess.run([f"iptables-{mode}", "-F", R.CHAIN_SERVICES], check=True)
            subprocess.run([f"iptables-{mode}", "-D", "INPUT", "1"], check=True)
            assert fw.sync_iptables(want, [], jumps)
            assert not fw.sync_iptables(want, [], jumps)
            text = save(ns, mode)
            assert text.count(f"-A {R.CHAIN_SERVICES} ") == len(want[(4, "filter", R.CHAIN_SERVICES)])
            assert next(ln for ln in text.splitlines() if ln.startswith("-A INPUT")).find(R.CHAIN_SERVICES) > 0
            if with_ipvs_match:  # hairpin no longer wanted: its jump and chain go in the same restore
                del want[(4, "nat", R.CHAIN_HAIRPIN)]
                jumps.update(fw.jumps(4, hairpin=False))
                assert fw.sync_iptables(want, [(4, "nat", R.CHAIN_HAIRPIN)], jumps)
                text = save(ns, mode)
                assert f":{R.CHAIN_HAIRPIN}" not in text
                post = [ln for ln in text.splitlines() if ln.startswith("-A POSTROUTING")]
                assert len(post) == 1 and R.CHAIN_SNAT in post[0], post
            fw.cleanup()
        text = save(ns, mode) + save(ns, mode, v6=True)
        assert "KUBE-ROUTER" not in text and "192.0.2.99" in text


@pytest.mark.root
@pytest.mark.parametrize("mode", ["nft", "legacy"])
def test_sync_iptables_on_this_kernel(mode):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    exercise_sync_iptables(mode, with_ipvs_match=False)


@pytest.mark.vm
def test_sync_iptables_in_vm_legacy_with_ipvs_match():
    subprocess.run(["modprobe", "ip_vs"], check=False)
    exercise_sync_iptables("legacy", with_ipvs_match=True)
