"""End to end in one process: kr's own agent (its worker threads, queues and health) runs the plugin."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hostsfile_testkit import make_service
from kr_hostsfile import HostsFile

from kr_core.config import ConfigError, Settings
from kr_core.plugins import from_classes
from kr_core.watch import FeedSource

agent_mod = pytest.importorskip("kr_core.agent")


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if not ln.startswith("#")] if path.exists() else []


def test_agent_runs_the_plugin(tmp_path: Path) -> None:
    path = tmp_path / "services.hosts"
    feed = FeedSource([make_service("kube-dns", "kube-system")])
    agent = agent_mod.Agent(
        Settings(),
        from_classes([HostsFile]),
        {"hostsfile": {"path": str(path)}},
        feed,
        node="node-a",
        state_dir=str(tmp_path / "state"),
        serve_http=False,
    )
    agent.start()
    try:
        wait_for(lambda: len(lines(path)) == 1)  # the initial sync, on the plugin's worker thread
        feed.add(make_service("web", "shop", ["10.96.12.7"]))
        wait_for(lambda: len(lines(path)) == 2)
        feed.delete(make_service("kube-dns", "kube-system"))
        wait_for(lambda: lines(path) == ["10.96.12.7\tweb.shop.svc.cluster.local web.shop.svc web.shop"])
        st = agent.state()["plugins"]["hostsfile"]
        assert st["role"] == "service-hosts"
        assert st["state"]["summary"] == {"services": 1, "entries": 1}
        assert agent.health_problems() == []
    finally:
        agent.stop()
    assert path.exists()  # stop leaves the file in place


def test_agent_refuses_a_bad_section_naming_the_key(tmp_path: Path) -> None:
    agent = agent_mod.Agent(
        Settings(), from_classes([HostsFile]), {"hostsfile": {"pth": "/x"}}, FeedSource(), node="n", serve_http=False
    )
    with pytest.raises(ConfigError) as exc:
        agent.configure()
    assert exc.value.path == "hostsfile.pth"


def test_agent_cleanup(tmp_path: Path) -> None:
    path = tmp_path / "services.hosts"
    path.write_text("left by a previous run\n")
    agent = agent_mod.Agent(
        Settings(), from_classes([HostsFile]), {"hostsfile": {"path": str(path)}}, None, node="n", serve_http=False
    )
    assert agent.cleanup() == []
    assert not path.exists()
