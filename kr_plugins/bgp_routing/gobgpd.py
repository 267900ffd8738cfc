"""The managed ``gobgpd``: started with its API on a unix socket, watched, restarted when it dies.

kr configures gobgpd entirely over gRPC (no config file), so a restarted daemon is empty: the watcher calls
``on_restart`` and the plugin re-advertises everything on its next sync. The daemon runs in the agent's
network namespace (or ``netns`` when given, for tests), while the socket file lives on the shared filesystem.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger("kr.bgp_routing.gobgpd")


class GobgpdError(RuntimeError):
    pass


class Gobgpd:
    """One gobgpd process. ``start`` returns once the API socket accepts connections."""

    def __init__(self, socket_path: str, *, binary: str = "gobgpd", netns: str | None = None,
                 extra_api_hosts: Sequence[str] = (), log_path: str | None = None, log_level: str = "info",
                 on_restart: Callable[[int], None] | None = None, restart_backoff: float = 0.5) -> None:
        self.socket_path = socket_path
        self.binary = binary
        self.netns = netns
        self.extra_api_hosts = list(extra_api_hosts)
        self.log_path = log_path or str(Path(socket_path).with_suffix(".log"))
        self.log_level = log_level
        self.on_restart = on_restart
        self.restart_backoff = restart_backoff
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def target(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _argv(self) -> list[str]:
        path = shutil.which(self.binary)
        if not path:
            raise GobgpdError(f"{self.binary} not found: apt-get install gobgpd")
        hosts = ",".join([self.target, *self.extra_api_hosts])
        argv = [path, "-p", "--pprof-disable", "-l", self.log_level, "--api-hosts", hosts]
        if shutil.which("setpriv"):  # dies with the agent (as kube-router's in-process GoBGP), even on SIGKILL
            argv = ["setpriv", "--pdeathsig", "KILL", *argv]
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else argv

    def _spawn(self, timeout: float = 10.0) -> None:
        for path in (self.socket_path, self.pidfile):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        Path(self.socket_path).parent.mkdir(parents=True, exist_ok=True)
        logf = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(self._argv(), stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        finally:
            logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise GobgpdError(f"gobgpd exited with {self.proc.returncode} at start; see {self.log_path}")
            if os.path.exists(self.socket_path):
                Path(self.pidfile).write_text(f"{self.proc.pid}\n")
                log.info("gobgpd started (pid %d, api %s%s)", self.proc.pid, self.target,
                         f", netns {self.netns}" if self.netns else "")
                return
            time.sleep(0.02)
        self._kill(signal.SIGKILL)
        raise GobgpdError(f"gobgpd did not open {self.socket_path} within {timeout} s; see {self.log_path}")

    @property
    def pidfile(self) -> str:
        return self.socket_path + ".pid"

    def kill_leftover(self, sig: int = signal.SIGTERM) -> int | None:
        """Stop a gobgpd a previous agent left running (it was killed before its ``stop``): found by the pid
        file next to the socket, and only if that process still is a gobgpd serving this socket."""
        try:
            pid = int(Path(self.pidfile).read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            return None
        if "gobgpd" not in cmdline or self.socket_path not in cmdline:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        for _ in range(100):
            if not os.path.exists(f"/proc/{pid}"):
                break
            time.sleep(0.05)
        log.info("gobgpd (pid %d) left by a previous run stopped", pid)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.pidfile)
        return pid

    def start(self, *, graceful_restart: bool = False) -> None:
        self.kill_leftover(signal.SIGKILL if graceful_restart else signal.SIGTERM)
        with self._lock:
            self._stopping.clear()
            self._spawn()
        if self._watcher is None or not self._watcher.is_alive():
            self._watcher = threading.Thread(target=self._watch, name="gobgpd-watch", daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        backoff = self.restart_backoff
        while not self._stopping.is_set():
            proc = self.proc
            if proc is None:
                return
            rc = proc.wait()
            if self._stopping.is_set():
                return
            log.warning("gobgpd (pid %d) died with status %s: restarting", proc.pid, rc)
            while not self._stopping.is_set():
                try:
                    with self._lock:
                        if self._stopping.is_set():
                            return
                        self._spawn()
                    break
                except GobgpdError as exc:
                    log.error("gobgpd restart failed: %s; retrying in %.1f s", exc, backoff)
                    self._stopping.wait(backoff)
                    backoff = min(backoff * 2, 30.0)
            else:
                return
            backoff = self.restart_backoff
            self.restarts += 1
            if self.on_restart:
                try:
                    self.on_restart(self.restarts)
                except Exception:  # the callback only requests a sync; never kill the watcher
                    log.exception("gobgpd on_restart callback failed")

    def _kill(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    def stop(self, *, graceful_restart: bool = False, timeout: float = 5.0) -> None:
        """Stop the daemon. With graceful restart it is killed without a NOTIFICATION (SIGKILL), so peers keep
        its routes for the restart time; otherwise SIGTERM (peers withdraw at once)."""
        self._stopping.set()
        with self._lock:
            if self.proc is None:
                return
            self._kill(signal.SIGKILL if graceful_restart else signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill(signal.SIGKILL)
                self.proc.wait(timeout)
            log.info("gobgpd (pid %d) stopped", self.proc.pid)
        if self._watcher and self._watcher is not threading.current_thread():
            self._watcher.join(timeout)
        for path in (self.socket_path, self.pidfile):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
