"""--kubeconfig / --master / in-cluster loading (kube-router's rules), and an informer over the result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kr_core.model import Resource
from kr_core.watch.cache import Store
from kr_core.watch.informer import Informer
from kr_core.watch.kubeconfig import KubeConfigError, load_api_client, load_configuration

from .helpers import USE_STUB, Api, service, wait_until


def _kubeconfig(path: Path, server: str, token: str | None = None) -> str:
    user: dict[str, Any] = {"token": token} if token else {}
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    }))
    return str(path)


@pytest.fixture
def pod_env(tmp_path: Path) -> dict[str, Any]:
    """Fake in-cluster credentials: service env vars, a token file and a CA file."""
    token = tmp_path / "token"
    token.write_text("sa-token")
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\nnot used\n-----END CERTIFICATE-----\n")
    return {"environ": {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"},
            "token_path": str(token), "ca_path": str(ca)}


NO_POD = {"environ": {}, "token_path": "/nonexistent/token", "ca_path": "/nonexistent/ca.crt"}


def test_kubeconfig_from_the_server_lists_through_an_informer(make_server: Any, cleanup: Any, tmp_path: Path) -> None:
    srv = make_server()
    path = str(tmp_path / "kubeconfig")
    srv.write_kubeconfig(path)
    Api(srv.url).ensure_namespace()
    Api(srv.url).create(Resource.SERVICE, service("via-kubeconfig"))
    client = cleanup(load_api_client(kubeconfig=path, **NO_POD))
    assert client.configuration.host == srv.url
    inf = cleanup(Informer(client, Resource.SERVICE, Store(Resource.SERVICE), lambda e: None, timeout_seconds=30))
    inf.start()
    assert inf.store.synced.wait(10)
    assert inf.store.get("kr-test/via-kubeconfig") is not None


def test_master_overrides_kubeconfig_server(make_server: Any, cleanup: Any, tmp_path: Path) -> None:
    srv = make_server()
    path = _kubeconfig(tmp_path / "kc", "http://127.0.0.1:1", token="t0k")
    client = cleanup(load_api_client(kubeconfig=path, master=srv.url, **NO_POD))
    cfg = client.configuration
    assert cfg.host == srv.url
    cfg.auth_settings()
    auth = cfg.auth_settings()  # runs the token refresh hook (twice): it must not undo --master
    assert auth["BearerToken"]["value"].lower() == "bearer t0k"
    assert cfg.host == srv.url
    inf = cleanup(Informer(client, Resource.NAMESPACE, Store(Resource.NAMESPACE), lambda e: None, timeout_seconds=30))
    inf.start()
    assert inf.store.synced.wait(10)


def test_master_alone_outside_a_pod_is_just_the_host() -> None:
    cfg = load_configuration(master="127.0.0.1:8080", **NO_POD)
    assert cfg.host == "http://127.0.0.1:8080"
    assert cfg.auth_settings() == {}


def test_master_alone_in_a_pod_keeps_service_account_credentials(pod_env: dict[str, Any]) -> None:
    cfg = load_configuration(master="https://127.0.0.1:6443/", **pod_env)
    assert cfg.host == "https://127.0.0.1:6443"
    assert cfg.ssl_ca_cert == pod_env["ca_path"]
    assert cfg.auth_settings()["BearerToken"]["value"] == "bearer sa-token"
    assert cfg.host == "https://127.0.0.1:6443", "the in-cluster token refresh must keep the --master host"


def test_master_without_scheme_in_a_pod_is_https(pod_env: dict[str, Any]) -> None:
    assert load_configuration(master="127.0.0.1:6443", **pod_env).host == "https://127.0.0.1:6443"


def test_in_cluster_default(pod_env: dict[str, Any]) -> None:
    cfg = load_configuration(**pod_env)
    assert cfg.host == "https://10.96.0.1:443"
    assert cfg.ssl_ca_cert == pod_env["ca_path"]
    assert cfg.auth_settings()["BearerToken"]["value"] == "bearer sa-token"
    assert cfg.connection_pool_maxsize >= 16


def test_nothing_configured_is_a_clear_error() -> None:
    with pytest.raises(KubeConfigError, match="in-cluster configuration unavailable.*neither --kubeconfig nor --master"):
        load_configuration(**NO_POD)


def test_missing_or_broken_kubeconfig(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match="does not exist"):
        load_configuration(kubeconfig=str(tmp_path / "nope"), **NO_POD)
    bad = tmp_path / "bad"
    bad.write_text("apiVersion: v1\nkind: Config\ncurrent-context: missing\ncontexts: []\n")
    with pytest.raises(KubeConfigError, match="cannot load kubeconfig"):
        load_configuration(kubeconfig=str(bad), **NO_POD)


@pytest.mark.skipif(USE_STUB, reason="the stub has no authentication")
def test_bearer_token_from_kubeconfig(make_server: Any, cleanup: Any, tmp_path: Path) -> None:
    srv = make_server(token="s3cret")
    good = str(tmp_path / "good")
    srv.write_kubeconfig(good)
    inf = cleanup(Informer(cleanup(load_api_client(kubeconfig=good, **NO_POD)), Resource.NAMESPACE,
                           Store(Resource.NAMESPACE), lambda e: None, timeout_seconds=30))
    inf.start()
    assert inf.store.synced.wait(10)

    bad = _kubeconfig(tmp_path / "bad", srv.url, token="wrong")
    inf2 = cleanup(Informer(cleanup(load_api_client(kubeconfig=bad, **NO_POD)), Resource.NAMESPACE,
                            Store(Resource.NAMESPACE), lambda e: None, timeout_seconds=30, backoff_initial=0.05))
    inf2.start()
    wait_until(lambda: inf2.stats["errors"] >= 2, what="401s retried")
    assert not inf2.store.synced.is_set()
