"""The command launcher (kr_core.net.launcher): commands started from a small helper process."""

from __future__ import annotations

import os
import subprocess

import pytest

from kr_core.net import netns
from kr_core.net.launcher import Launcher


def test_runs_commands_like_subprocess_run() -> None:
    with Launcher() as launcher:
        p = launcher.run(["sh", "-c", "cat; echo err >&2; exit 3"], input="a\nb\n")
        assert (p.returncode, p.stdout, p.stderr) == (3, "a\nb\n", "err\n")
        big = "x" * 3_000_000  # larger than a pipe buffer both ways
        assert launcher.run(["cat"], input=big).stdout == big
        assert launcher.run(["cat"], input=b"\x00\xff", text=False).stdout == b"\x00\xff"
        assert launcher.run(["sh", "-c", "test -t 0 || read x || echo no-stdin"]).stdout == "no-stdin\n"
        with pytest.raises(subprocess.CalledProcessError):
            launcher.run(["false"], check=True)
        assert launcher.run(["/nonexistent/tool"]).returncode == 127
        with pytest.raises(subprocess.TimeoutExpired):
            launcher.run(["sleep", "5"], timeout=0.2)
        helper = launcher.pid
        assert helper is not None and launcher.run(["sh", "-c", "echo $PPID"]).stdout.strip() == str(helper)
        assert launcher.started == 1
        # the helper dies: this call fails over to a direct run, the next one starts a new helper
        os.kill(helper, 9)
        os.waitpid(helper, 0)
        assert launcher.run(["echo", "ok"]).stdout == "ok\n"
        assert launcher.run(["echo", "again"]).stdout == "again\n" and launcher.started == 2
    assert launcher.pid is None


@pytest.mark.root
def test_helper_stays_in_the_namespace_it_was_started_in(make_ns) -> None:
    ns = make_ns()
    with netns.in_netns(ns):
        launcher = Launcher()
        launcher.start()
    try:
        mine = os.readlink("/proc/self/ns/net")
        theirs = launcher.run(["readlink", "/proc/self/ns/net"]).stdout.strip()
        assert theirs != mine
        assert theirs == subprocess.run(["ip", "netns", "exec", ns, "readlink", "/proc/self/ns/net"],
                                        capture_output=True, text=True).stdout.strip()
        # kr_core.net.netns.run uses it only for the current namespace (name None)
        assert netns.run(None, ["readlink", "/proc/self/ns/net"], launcher=launcher).stdout.strip() == theirs
    finally:
        launcher.close()
