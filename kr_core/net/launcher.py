"""Start commands (iptables, ipset) from a small helper process instead of from the agent itself.

Starting a process from a large process is slow where the kernel copies the parent's address space
layout to make the child: in User-Mode Linux every ``exec`` from the agent forks the agent's whole host
process first, so with 10k Services cached (~200 MB) one ``iptables-save`` took ~0.6 s, against ~0.03 s
from a small process (measured in the VM). :class:`Launcher` keeps one small Python helper (``python -S``,
a few MB) and has it start the commands; the agent pays the expensive start once.

The helper runs in the network namespace of the thread that started it (it is made on first use, or by
:meth:`Launcher.start`), so use a launcher only for commands meant for that namespace. Calls are
serialised (one command at a time). If the helper dies, the call fails over to a direct
:func:`subprocess.run` and the next call starts a new helper.
"""

from __future__ import annotations

import json
import logging
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import IO, Any

log = logging.getLogger(__name__)

_LEN = struct.Struct("!I")

# The helper: reads (request header, stdin bytes) frames, runs each command, writes (header, out, err).
HELPER = r"""
import json, struct, subprocess, sys
L = struct.Struct("!I")
r, w = sys.stdin.buffer, sys.stdout.buffer
def rd():
    h = r.read(4)
    if len(h) < 4:
        sys.exit(0)
    return r.read(L.unpack(h)[0])
def wr(b):
    w.write(L.pack(len(b)))
    w.write(b)
while True:
    req = json.loads(rd())
    data = rd()
    timed_out = False
    try:
        p = subprocess.run(req["argv"], input=data if req["stdin"] else None,
                           stdin=None if req["stdin"] else subprocess.DEVNULL,
                           capture_output=True, timeout=req["timeout"])
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err, timed_out = -9, e.stdout or b"", e.stderr or b"", True
    except OSError as e:
        rc, out, err = 127, b"", str(e).encode()
    wr(json.dumps({"rc": rc, "timeout": timed_out}).encode())
    wr(out)
    wr(err)
    w.flush()
"""


class Launcher:
    """A small helper process that runs commands for this one; :meth:`run` mirrors :func:`subprocess.run`
    with ``capture_output=True``."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self.started = 0  # helpers started (tests, logs)

    def start(self) -> None:
        """Start the helper now (in the calling thread's network namespace) if it is not running."""
        with self._lock:
            self._ensure()

    def _ensure(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen([sys.executable, "-S", "-c", HELPER], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True)
            self.started += 1
        return self._proc

    def close(self) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is not None:
            for f in (proc.stdin, proc.stdout):
                if f is not None:
                    f.close()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, argv: Sequence[str], *, input: str | bytes | None = None, check: bool = False,
            timeout: float | None = 60, text: bool = True) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` through the helper; output captured, decoded when ``text``. Raises
        :class:`subprocess.TimeoutExpired` after ``timeout`` and, with ``check``,
        :class:`subprocess.CalledProcessError` on a non-zero exit."""
        data = input.encode() if isinstance(input, str) else input
        header = json.dumps({"argv": list(argv), "stdin": data is not None, "timeout": timeout}).encode()
        try:
            with self._lock:
                proc = self._ensure()
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(_LEN.pack(len(header)) + header + _LEN.pack(len(data or b"")) + (data or b""))
                proc.stdin.flush()
                res = json.loads(_read(proc.stdout))
                out, err = _read(proc.stdout), _read(proc.stdout)
        except (OSError, ValueError, EOFError) as exc:
            log.warning("command launcher failed (%s): running %s directly", exc, argv[0])
            self.close()
            return subprocess.run(list(argv), input=input, capture_output=True, check=check, timeout=timeout, text=text)
        if res["timeout"]:
            raise subprocess.TimeoutExpired(list(argv), timeout or 0, out, err)
        rc: int = res["rc"]
        cp: subprocess.CompletedProcess[Any] = subprocess.CompletedProcess(
            list(argv), rc, out.decode(errors="replace") if text else out, err.decode(errors="replace") if text else err)
        if check:
            cp.check_returncode()
        return cp

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None


def _read(f: IO[bytes]) -> bytes:
    head = f.read(4)
    if len(head) < 4:
        raise EOFError("launcher helper closed its output")
    n = _LEN.unpack(head)[0]
    data = f.read(n)
    if len(data) < n:
        raise EOFError("launcher helper closed its output")
    return data

