"""Which plugins run: defaults, config selection, role switches, conflicts, unknown names, import failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kr_core.config import Selection, merge
from kr_core.plugins import Discovered, SelectionError, from_classes, select

from ..conftest import Recorder, recording_plugin

KR = [sys.executable, "-m", "kr_core.cli"]


def _installed(*specs, **extra):
    r = Recorder()
    classes = [recording_plugin(n, role, r, **extra.get(n, {})) for n, role in specs]
    return from_classes(classes, distribution="dist")


FOUR = [("bgp_routing", "pod-routing"), ("ipvs_proxy", "service-proxy"), ("netpol_iptables", "network-policy")]


def _enabled(choices):
    return sorted(c.plugin.name for c in choices if c.enabled)


def test_default_is_every_installed_plugin():
    inst = _installed(*FOUR, ("nft_netpol", "network-policy"), nft_netpol={"default_enabled": False})
    ch = select(inst, Selection(), merge({}, {}))
    assert _enabled(ch) == ["bgp_routing", "ipvs_proxy", "netpol_iptables"]
    assert "alternative backend" in next(c.reason for c in ch if c.plugin.name == "nft_netpol")


def test_role_switches():
    inst = _installed(*FOUR, ("audit", "audit-log"))
    ch = select(inst, Selection(), merge({}, {"run-firewall": False, "run-router": False}))
    assert _enabled(ch) == ["audit", "ipvs_proxy"]
    reasons = {c.plugin.name: c.reason for c in ch}
    assert reasons["netpol_iptables"] == "role network-policy switched off by --run-firewall=false"


def test_enabled_and_disabled_lists():
    inst = _installed(*FOUR)
    assert _enabled(select(inst, Selection(enabled=["ipvs_proxy"]), merge({}, {}))) == ["ipvs_proxy"]
    assert _enabled(select(inst, Selection(disabled=["ipvs_proxy"]), merge({}, {}))) == ["bgp_routing",
                                                                                         "netpol_iptables"]


def test_nftables_flag_picks_the_backend():
    inst = _installed(*FOUR, ("nft_netpol", "network-policy"), nft_netpol={"default_enabled": False})
    ch = select(inst, Selection(), merge({}, {"use-nftables-for-netpol": True}))
    assert _enabled(ch) == ["bgp_routing", "ipvs_proxy", "nft_netpol"]


def test_two_plugins_of_one_role_is_an_error_naming_both():
    inst = _installed(*FOUR, ("nft_netpol", "network-policy"))
    with pytest.raises(SelectionError, match=r"netpol_iptables \(dist\) and nft_netpol \(dist\)"):
        select(inst, Selection(), merge({}, {}))
    with pytest.raises(SelectionError, match="network-policy"):
        select(inst, Selection(enabled=["netpol_iptables", "nft_netpol"]), merge({}, {}))


def test_unknown_name_lists_installed():
    inst = _installed(*FOUR)
    with pytest.raises(SelectionError, match=r"'nope'.*installed: bgp_routing, ipvs_proxy, netpol_iptables"):
        select(inst, Selection(enabled=["nope"]), merge({}, {}))
    with pytest.raises(SelectionError, match="plugins.disabled names plugin 'nope'"):
        select(inst, Selection(disabled=["nope"]), merge({}, {}))


def test_import_failure_error_if_asked_warning_otherwise(caplog):
    inst = _installed(*FOUR) + [Discovered("broken", "kr-plugin-broken", "1.0", None, "ImportError: no libfoo")]
    with pytest.raises(SelectionError, match=r"'broken' from distribution kr-plugin-broken .*no libfoo"):
        select(inst, Selection(enabled=["broken", "ipvs_proxy"]), merge({}, {}))
    ch = select(inst, Selection(), merge({}, {}))
    assert _enabled(ch) == ["bgp_routing", "ipvs_proxy", "netpol_iptables"]
    assert "broken" in caplog.text and "no libfoo" in caplog.text


# ------------------------------------------------------------------ through real entry points and the CLI


@pytest.fixture
def broken_dist(tmp_path: Path) -> dict[str, str]:
    """A distribution on sys.path whose kr.plugins entry point fails to import."""
    d = tmp_path / "site"
    (d / "kr_broken_plugin").mkdir(parents=True)
    (d / "kr_broken_plugin" / "__init__.py").write_text("import kr_no_such_module_anywhere\n")
    info = d / "kr_plugin_broken-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kr-plugin-broken\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[kr.plugins]\nbroken = kr_broken_plugin:Plugin\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(d) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _kr(args, env=None, cwd=None):
    return subprocess.run(KR + args, capture_output=True, text=True, env=env, cwd=cwd, timeout=60)


def test_cli_plugins_lists_the_four_and_the_example():
    r = _kr(["plugins", "--json"])
    assert r.returncode == 0, r.stderr
    rows = {p["name"]: p for p in json.loads(r.stdout)}
    for name, role in [("ipvs_proxy", "service-proxy"), ("netpol_iptables", "network-policy"),
                       ("nft_netpol", "network-policy"), ("bgp_routing", "pod-routing"),
                       ("hostsfile", "service-hosts")]:
        assert rows[name]["role"] == role
    assert rows["ipvs_proxy"]["distribution"] == "kr-plugin-ipvs-proxy"
    assert rows["nft_netpol"]["enabled"] is False
    table = _kr(["plugins"]).stdout
    assert table.splitlines()[0].split()[:6] == ["NAME", "DISTRIBUTION", "VERSION", "ROLE", "STATUS", "HOOKS"]
    assert "hostsfile" in table and "on_service" in table


def test_cli_import_failure(broken_dist, tmp_path):
    r = _kr(["plugins", "--json"], env=broken_dist)
    assert r.returncode == 0, r.stderr
    rows = {p["name"]: p for p in json.loads(r.stdout)}
    assert rows["broken"]["enabled"] is False and "kr_no_such_module_anywhere" in rows["broken"]["status"]
    assert "broken" in r.stderr  # the warning
    cfg = tmp_path / "c.yaml"
    cfg.write_text("plugins:\n  enabled: [broken]\n")
    r = _kr(["config", "check", str(cfg)], env=broken_dist)
    assert r.returncode == 2
    assert "'broken' from distribution kr-plugin-broken" in r.stderr


@pytest.mark.parametrize(
    "text,rc,needle",
    [
        ("plugins:\n  enabled: [ipvs_proxy]\nipvs-sync-period: 1m\n", 0, "plugins enabled: ipvs_proxy"),
        ("plugins:\n  enabled: [netpol_iptables, nft_netpol]\n", 2, "netpol_iptables (kr-plugin-netpol-iptables) and nft_netpol"),
        ("plugins:\n  enabled: [nope]\n", 2, "installed: bgp_routing"),
        ("hostsfile:\n  colour: red\n", 2, "hostsfile.colour"),
        ("service-node-port-range: 9-1\n", 2, "service-node-port-range"),
        ("ipvs_proxy: [1, 2]\n", 2, "ipvs_proxy: a plugin section must be a mapping"),
        ("{{{", 2, "not valid YAML"),
    ],
)
def test_cli_config_check(tmp_path, text, rc, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    r = _kr(["config", "check", str(cfg)])
    assert r.returncode == rc, r.stdout + r.stderr
    assert needle in (r.stdout + r.stderr)


def test_cli_flag_error_exit_2():
    r = _kr(["plugins", "--ipvs-sync-period=forever"])
    assert r.returncode == 2 and "--ipvs-sync-period: invalid duration" in r.stderr


@pytest.mark.parametrize("cfg", sorted(Path(__file__).resolve().parents[2].joinpath("examples", "configs").glob("*.yaml")))
def test_example_configs_are_valid(cfg):
    r = _kr(["config", "check", str(cfg)])
    assert r.returncode == 0, r.stderr


def test_example_configs_exist():
    names = {p.stem for p in Path(__file__).resolve().parents[2].joinpath("examples", "configs").glob("*.yaml")}
    assert {"all-plugins", "proxy-only", "firewall-nftables", "routing-only"} <= names


def test_version_and_help():
    assert _kr(["--version"]).stdout.startswith("kr ")
    help_text = _kr(["run", "--help"]).stdout
    for flag in ("--run-router", "--ipvs-sync-period", "--peer-router-ips", "--netpol-default-deny"):
        assert flag in help_text
