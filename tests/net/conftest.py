"""Fixtures for kr_core.net tests: throwaway namespaces, a veth pair between two of them, golden files.

Every kernel-touching test works only inside namespaces made here (``krt-<hex>``), deleted in a finalizer
even when the test fails, so nothing touches the root namespace.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kr_core.net import netns
from kr_core.net.links import ensure_address, ensure_veth, set_up

GOLDEN = Path(__file__).parent / "golden"
A_IP, B_IP = "10.99.0.1", "10.99.0.2"


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    if not shutil.which("ip"):
        pytest.skip("needs iproute2")


def need_tools(*tools: str) -> None:
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")


@pytest.fixture
def golden() -> Callable[[str, str], None]:
    """``golden(name, text)``: compare with ``tests/net/golden/<name>``; ``KR_UPDATE_GOLDEN=1`` rewrites."""

    def check(name: str, text: str) -> None:
        path = GOLDEN / name
        if os.environ.get("KR_UPDATE_GOLDEN") == "1":
            path.write_text(text)
            return
        if not path.exists():
            pytest.fail(f"golden file {name} missing: run with KR_UPDATE_GOLDEN=1 to create it")
        assert text == path.read_text(), f"output differs from golden file {name} (KR_UPDATE_GOLDEN=1 updates it)"

    return check


@pytest.fixture
def make_ns(request: pytest.FixtureRequest) -> Callable[[], str]:
    """Factory of throwaway namespaces; each is deleted at teardown, whatever the test's outcome."""
    need_root()
    made: list[str] = []

    def make() -> str:
        name = f"krt-{os.urandom(4).hex()}"
        made.append(name)  # registered first: deleted even if creation half-fails
        netns.create(name)
        return name

    def cleanup() -> None:
        for name in made:
            netns.delete(name)

    request.addfinalizer(cleanup)
    return make


@pytest.fixture
def ns(make_ns: Callable[[], str]) -> str:
    return make_ns()


@dataclass
class Pair:
    """Two namespaces joined by a veth: ``a`` has veth-a 10.99.0.1/24, ``b`` has veth-b 10.99.0.2/24."""

    a: str
    b: str

    def ping(self, src: str | None = None, dst: str = B_IP) -> bool:
        src = src or self.a
        return netns.run(src, ["ping", "-n", "-q", "-c1", "-W1", dst], check=False).returncode == 0

    def tcp(self, port: int, src: str | None = None, dst: str = B_IP, timeout: float = 1.0) -> bool:
        """Connect from ``src`` to ``dst:port`` (a listener from :meth:`listen`); True when connected."""
        with netns.in_netns(src or self.a):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.settimeout(timeout)
            s.connect((dst, port))
            return True
        except OSError:
            return False
        finally:
            s.close()

    def listen(self, where: str | None = None, addr: str = B_IP) -> tuple[int, Callable[[], None]]:
        """A TCP listener in ``where`` (default ``b``) accepting in a thread; returns (port, stop)."""
        with netns.in_netns(where or self.b):
            srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((addr, 0))
        srv.listen(16)
        srv.settimeout(0.2)
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, _ = srv.accept()
                    conn.close()
                except OSError:
                    continue

        t = threading.Thread(target=serve, daemon=True)
        t.start()

        def close() -> None:
            stop.set()
            t.join(2)
            srv.close()

        return srv.getsockname()[1], close


@pytest.fixture
def pair(make_ns: Callable[[], str]) -> Iterator[Pair]:
    from pyroute2 import IPRoute

    need_tools("ping")
    a, b = make_ns(), make_ns()

    def side_a() -> None:
        with IPRoute() as ipr:
            ensure_veth(ipr, "veth-a", "veth-b", peer_netns=b)
            ensure_address(ipr, "veth-a", f"{A_IP}/24")

    def side_b() -> None:
        with IPRoute() as ipr:
            set_up(ipr, "veth-b")
            ensure_address(ipr, "veth-b", f"{B_IP}/24")

    netns.call_in(a, side_a)
    netns.call_in(b, side_b)
    p = Pair(a, b)
    for _ in range(20):  # the veth needs a moment to come up (no DAD on IPv4)
        if p.ping():
            break
    else:
        pytest.fail("veth pair not reachable")
    yield p
