"""The namespace helpers themselves."""

from __future__ import annotations

import threading

import pytest

from kr_core.net import netns

pytestmark = pytest.mark.root


def _links() -> str:
    return netns.run(None, ["ip", "-o", "link"]).stdout


def test_create_delete_run(make_ns) -> None:
    name = make_ns()
    assert netns.exists(name) and name in netns.list_names()
    assert "state UNKNOWN" in netns.run(name, ["ip", "-o", "link", "show", "lo"]).stdout  # lo is up
    with pytest.raises(FileExistsError):
        netns.create(name)
    netns.create(name, exist_ok=True)
    netns.delete(name)
    assert not netns.exists(name)
    netns.delete(name)  # missing_ok
    with pytest.raises(FileNotFoundError):
        netns.delete(name, missing_ok=False)


def test_in_netns_is_per_thread(make_ns) -> None:
    name = make_ns()
    netns.run(name, ["ip", "link", "add", "kr-probe", "type", "bridge"])
    outside: list[str] = []
    started, release = threading.Event(), threading.Event()

    def other_thread() -> None:
        started.wait(5)
        outside.append(_links())
        release.set()

    t = threading.Thread(target=other_thread)
    t.start()
    with netns.in_netns(name):
        assert "kr-probe" in _links()  # children of this thread start in the namespace
        started.set()
        release.wait(5)
    t.join()
    assert "kr-probe" not in outside[0]  # the other thread never moved
    assert "kr-probe" not in _links()  # and this one is back


def test_call_in(make_ns) -> None:
    name = make_ns()
    netns.run(name, ["ip", "link", "add", "kr-probe", "type", "bridge"])
    assert "kr-probe" in netns.call_in(name, _links)
    assert "kr-probe" not in _links()
    with pytest.raises(ZeroDivisionError):
        netns.call_in(name, lambda: 1 / 0)
    assert netns.call_in(None, lambda x: x + 1, 1) == 2


def test_temporary_deleted_on_error() -> None:
    from .conftest import need_root

    need_root()
    with pytest.raises(RuntimeError), netns.temporary("krt") as name:
        assert netns.exists(name)
        raise RuntimeError("boom")
    assert not netns.exists(name)
