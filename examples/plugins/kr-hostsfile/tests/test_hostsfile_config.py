"""The ``hostsfile:`` config section: defaults, and errors that name the key path."""

from __future__ import annotations

import pytest
from kr_hostsfile import Config, HostsFile

from kr_core import PluginConfigError
from kr_core.config import ConfigError
from kr_core.plugins import validate_plugin_config

INFO = HostsFile.info


def test_info_declares_a_new_role_and_services_only() -> None:
    assert INFO.name == "hostsfile"
    assert INFO.role == "service-hosts"
    assert {r.value for r in INFO.resources} == {"Service"}
    assert INFO.config_model is Config
    assert INFO.default_enabled and INFO.implemented


def test_defaults() -> None:
    cfg = validate_plugin_config(INFO, None)
    assert cfg == Config(path="/run/kr/services.hosts", cluster_domain="cluster.local", include_external_ips=False)
    assert validate_plugin_config(INFO, {}) == cfg


def test_values() -> None:
    cfg = validate_plugin_config(
        INFO, {"path": "/etc/hosts.d/k8s", "cluster_domain": "Example.ORG.", "include_external_ips": True}
    )
    assert cfg.path == "/etc/hosts.d/k8s"
    assert cfg.cluster_domain == "example.org"  # normalised: lower case, no trailing dot
    assert cfg.include_external_ips is True


@pytest.mark.parametrize("key", ["bogus", "cluster-domain", "Path"])
def test_unknown_key_is_refused_with_its_path(key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        validate_plugin_config(INFO, {key: "x"})
    assert exc.value.path == f"hostsfile.{key}"
    assert str(exc.value).startswith(f"hostsfile.{key}: ")
    assert "Extra inputs are not permitted" in str(exc.value)


@pytest.mark.parametrize(
    ("section", "path", "words"),
    [
        ({"include_external_ips": "perhaps"}, "hostsfile.include_external_ips", "boolean"),
        ({"path": "relative/services.hosts"}, "hostsfile.path", "absolute path"),
        ({"path": "/run/kr/"}, "hostsfile.path", "not a directory"),
        ({"path": 42}, "hostsfile.path", "string"),
        ({"cluster_domain": "bad_domain!"}, "hostsfile.cluster_domain", "DNS domain"),
        ({"cluster_domain": ""}, "hostsfile.cluster_domain", "DNS domain"),
    ],
)
def test_bad_values_name_the_key(section: dict, path: str, words: str) -> None:
    with pytest.raises(ConfigError) as exc:
        validate_plugin_config(INFO, section)
    assert exc.value.path == path
    assert words in exc.value.message


def test_several_errors_report_the_first_and_count_the_rest() -> None:
    with pytest.raises(ConfigError) as exc:
        validate_plugin_config(INFO, {"bogus": 1, "path": "x"})
    assert "(and 1 more)" in str(exc.value)


def test_configure_validates_a_raw_section_itself(harness) -> None:  # type: ignore[no-untyped-def]
    """An embedder may hand ``configure`` the raw mapping; a bad one is a PluginConfigError (kr exits 2)."""
    harness.ctx.config = {"path": "nope"}
    with pytest.raises(PluginConfigError) as exc:
        harness.configure()
    assert exc.value.path == "path"
    assert str(exc.value).startswith("Value error, must be an absolute path")
    harness.ctx.config = {"path": str(harness.path), "cluster_domain": "corp.example"}
    harness.configure()
    assert harness.instance.config.cluster_domain == "corp.example"
