"""Connection to the API server, built with the official ``kubernetes`` client's configuration machinery.

kube-router's rules (``clientcmd.BuildConfigFromFlags`` / ``rest.InClusterConfig``):

- ``--kubeconfig PATH``: the file's current context (or ``context``); ``--master`` then overrides its server;
- ``--master URL`` alone: the in-cluster service-account credentials with the host replaced, or, outside a
  pod, just that host with no credentials (a local ``kr apiserver`` without a token);
- neither: the in-cluster configuration (service-account token and CA, ``KUBERNETES_SERVICE_HOST/PORT``).

The client is used for configuration, authentication and transport only; the informers read the bodies
themselves (:mod:`kr_core.watch.informer`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping

from kubernetes.client import ApiClient, Configuration
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.incluster_config import (
    SERVICE_CERT_FILENAME,
    SERVICE_HOST_ENV_NAME,
    SERVICE_PORT_ENV_NAME,
    SERVICE_TOKEN_FILENAME,
    InClusterConfigLoader,
)
from kubernetes.config.kube_config import load_kube_config

log = logging.getLogger(__name__)

#: At least this many pooled connections: one long-lived watch per resource plus lists and writes.
MIN_POOL_SIZE = 16


class KubeConfigError(RuntimeError):
    """The connection could not be configured (no kubeconfig, not in a pod, unreadable file...)."""


def _normalise_master(master: str, tls: bool) -> str:
    """``host:port`` without a scheme gets https when TLS material is configured, http otherwise (as
    client-go's ``DefaultServerURL``); a trailing slash is dropped."""
    master = master.strip().rstrip("/")
    if "://" not in master:
        master = ("https://" if tls else "http://") + master
    return master


def _override_host(cfg: Configuration, host: str) -> None:
    """Set ``cfg.host`` and keep it set: the client's token-refresh hooks (in-cluster and kubeconfig
    tokens) rewrite ``host`` from their own source on every request, which would undo ``--master``."""
    cfg.host = host
    hook: Callable[[Configuration], None] | None = cfg.refresh_api_key_hook
    if hook is None:
        return

    def refresh_keep_host(c: Configuration) -> None:
        hook(c)
        c.host = host
        # the kubeconfig loader's hook re-installs itself on every call: put this one back
        c.refresh_api_key_hook = refresh_keep_host

    cfg.refresh_api_key_hook = refresh_keep_host


def in_cluster_possible(environ: Mapping[str, str] = os.environ, token_path: str = SERVICE_TOKEN_FILENAME) -> bool:
    """True when the process looks like it runs in a pod (service env vars and a token file)."""
    return bool(environ.get(SERVICE_HOST_ENV_NAME)) and bool(environ.get(SERVICE_PORT_ENV_NAME)) and os.path.isfile(
        token_path
    )


def load_configuration(
    kubeconfig: str = "",
    master: str = "",
    *,
    context: str | None = None,
    environ: Mapping[str, str] = os.environ,
    token_path: str = SERVICE_TOKEN_FILENAME,
    ca_path: str = SERVICE_CERT_FILENAME,
) -> Configuration:
    """A client :class:`Configuration` following kube-router's ``--kubeconfig`` / ``--master`` rules.

    ``environ``, ``token_path`` and ``ca_path`` locate the in-cluster credentials (overridable for tests).
    Raises :class:`KubeConfigError` with what was tried when nothing applies.
    """
    cfg = Configuration()
    kubeconfig = os.path.expanduser(kubeconfig) if kubeconfig else ""
    if kubeconfig:
        if not os.path.isfile(kubeconfig):
            raise KubeConfigError(f"kubeconfig {kubeconfig!r} does not exist")
        try:
            load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg, persist_config=False)
        except (ConfigException, OSError, ValueError) as e:
            raise KubeConfigError(f"cannot load kubeconfig {kubeconfig!r}: {e}") from e
        source = f"kubeconfig {kubeconfig}"
    elif master and not in_cluster_possible(environ, token_path):
        # Outside a pod, --master alone is just a URL (client-go builds a config with only the host).
        source = "--master (no in-cluster credentials)"
    else:
        try:
            InClusterConfigLoader(token_path, ca_path, try_refresh_token=True, environ=environ).load_and_set(cfg)
        except ConfigException as e:
            hint = "" if master else " (and neither --kubeconfig nor --master was given)"
            raise KubeConfigError(f"in-cluster configuration unavailable: {e}{hint}") from e
        source = "in-cluster service account"
    if master:
        tls = bool(cfg.ssl_ca_cert or cfg.cert_file or not cfg.verify_ssl)
        _override_host(cfg, _normalise_master(master, tls))
        source += ", host from --master"
    cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize or 0, MIN_POOL_SIZE)
    log.info("API server %s (from %s)", cfg.host, source)
    return cfg


def load_api_client(
    kubeconfig: str = "",
    master: str = "",
    *,
    context: str | None = None,
    environ: Mapping[str, str] = os.environ,
    token_path: str = SERVICE_TOKEN_FILENAME,
    ca_path: str = SERVICE_CERT_FILENAME,
) -> ApiClient:
    """An :class:`ApiClient` for :func:`load_configuration`'s configuration (close it when done)."""
    cfg = load_configuration(kubeconfig, master, context=context, environ=environ, token_path=token_path, ca_path=ca_path)
    return ApiClient(cfg)
