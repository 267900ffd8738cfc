"""Fixtures for the informer tests: servers, informers and clients are always stopped at the end of a
test, even when it fails."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes.client import ApiClient

from .helpers import new_server


@pytest.fixture
def make_server() -> Iterator[Callable[..., Any]]:
    servers: list[Any] = []

    def make(**kw: Any) -> Any:
        srv = new_server(**kw)
        servers.append(srv)
        return srv

    yield make
    for srv in reversed(servers):
        try:
            srv.stop()
        except Exception:  # noqa: BLE001 - already stopped by the test
            pass


@pytest.fixture
def cleanup() -> Iterator[Callable[[Any], Any]]:
    """Register informers, sources, servers (``stop()``) and API clients (``close()``) to be shut down after
    the test, in reverse order."""
    things: list[Any] = []

    def register(x: Any) -> Any:
        things.append(x)
        return x

    yield register
    for x in reversed(things):
        try:
            if isinstance(x, ApiClient):
                x.close()
            else:
                x.stop()
        except Exception:  # noqa: BLE001 - best effort; already stopped by the test
            pass
