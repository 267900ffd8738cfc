"""kr_core.net.kmod against this machine's kernel and modprobe."""

from __future__ import annotations

import logging
import os

import pytest

from kr_core.net.kmod import load_modules


def test_modules_already_there_need_no_modprobe(monkeypatch: pytest.MonkeyPatch) -> None:
    present = sorted(os.listdir("/sys/module"))[:2]
    monkeypatch.setenv("PATH", "/nonexistent")  # a modprobe run would fail: none may be run
    assert load_modules(*present)


def test_a_module_that_does_not_exist_is_logged_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    if os.geteuid() != 0:
        pytest.skip("modprobe needs root")
    with caplog.at_level(logging.WARNING, logger="kr.net.kmod"):
        assert not load_modules("kr_no_such_module")
    assert "kr_no_such_module" in caplog.text
