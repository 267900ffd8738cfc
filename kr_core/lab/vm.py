"""Run a command inside a VM that has a Debian kernel and this machine's files.

The development hosts run a kernel without IPVS, ipip/fou, dummy links or SCTP.
:func:`run_in_vm` boots a Debian kernel that has them, shows it the host's file system,
runs one command there as (guest) root, streams the command's output line by line, and
returns the command's exit code. There is no TTY and no stdin, as in CI.

Kernels
-------
``kernel="uml"`` (default): User-Mode Linux from Debian's ``user-mode-linux`` package
(``/usr/bin/linux.uml``, modules in ``/usr/lib/uml/modules``). It is an ordinary host process
(no KVM needed) and boots in about 3 s. The host's ``/`` is its read-only root file system
(hostfs). It has IPVS, dummy, ipip, veth, bridges, netns and ipset, one vCPU, and only the
*legacy* iptables backend: nf_tables exists only for the ``bridge`` family. For that reason
the guest bind-mounts ``xtables-legacy-multi`` over ``xtables-nft-multi``, so plain
``iptables`` is iptables-legacy there (pass ``legacy_iptables=False`` to turn it off).

``kernel="qemu"``: Debian's amd64 kernel (``linux-image-amd64``) under QEMU/TCG, started by
virtme-ng (``vng``, ``pip install virtme-ng==1.42``); ``scripts/setup.sh`` installs both. It has
everything, nftables ip/inet and FoU tunnels included, but boots in 10-30 s (host load) and runs
Python about 10x slower than UML (KVM does not work on these hosts, so it is always
``--disable-kvm``). Use it when nftables ip/inet or fou is needed; tests ask for it with
``@pytest.mark.vm(kernel="qemu")`` (:mod:`kr_core.lab.vmtest`).
virtme-ng puts guest-only tmpfs/overlays on ``/tmp``, ``/etc``, ``/var``, ...: files the
host has under ``/tmp`` may not be visible there unless passed in ``rw_dirs``.

What the guest sees
-------------------
* The whole host file system, read-only, at the same paths; ``cwd`` (default: the caller's
  working directory) is kept, so a venv's ``python`` works as it is. ``/proc``, ``/sys``,
  ``/dev`` and ``/run`` are the guest's own, so ``cwd``, ``out_dir`` and ``rw_dirs`` must not
  lie there (nor contain whitespace or ``,``).
* Writable: a tmpfs ``/run`` (``TMPDIR=/run/tmp``, ``HOME=/run/tmp``; QEMU: ``/tmp``), the per-run
  results directory (``out_dir``, exported as ``KR_VM_OUT``) and every directory in ``rw_dirs``;
  these are the host's directories, so files written there come back.
* The environment: the caller's ``os.environ`` (or ``env`` if given), except the host's
  ``HOME``/``TMPDIR``/``PWD``, plus ``XDG_CACHE_HOME`` (the host's cache, read-only), ``KR_IN_VM=1``, ``KR_VM_KERNEL``, ``KR_VM_OUT`` and
  ``KR_VM_ID``. It is written into a file in the per-run directory, not onto the kernel
  command line.
* Its own network stack with only ``lo`` (up). No network device is connected to anything;
  never add one.
* Kernel modules load on demand (``modprobe``, or automatically, e.g. by ``iptables -t nat``).
  IPVS is **not** loaded up front: callers that need it run ``modprobe ip_vs`` and the
  schedulers they use (``ip_vs_rr``, ``ip_vs_wrr``, ``ip_vs_sh``, ...) themselves.

The UML root file system is read-only only because the guest kernel says so: guest root could
remount it read-write and write the host's files. Code run in the VM must never remount ``/``.

Host side
---------
Every run gets its own temporary directory (init script, environment, exit-code file, UML's
``uml_dir``) and a unique id (``umid=`` on the ``linux.uml`` command line), so several VMs
can run at the same time. The VM runs in its own process group, which is killed (SIGKILL) on
timeout, on KeyboardInterrupt and on any error. UML maps guest pages one by one, so guest
processes die at about 250 MB RSS unless the host's ``vm.max_map_count`` is raised; when
running as root it is raised to 1048576 if it is lower. ``/lib/modules`` (the mount point
for UML's modules) is created on the host if missing (needs root).

Exit codes: the guest command's own code; :data:`RC_TIMEOUT` (124) when the VM was killed
after ``timeout`` seconds; :data:`RC_NO_STATUS` (125) when the VM ended without reporting one
(its boot output is then printed to ``stream``). Set ``KR_VM_KEEP=1`` to keep the per-run
directory for debugging.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import lzma
import os
import re
import secrets
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO

__all__ = [
    "RC_NO_STATUS",
    "RC_TIMEOUT",
    "VmUnavailable",
    "qemu_command",
    "run_in_vm",
    "uml_command",
    "vm_available",
]

log = logging.getLogger(__name__)

UML_BINARY = "/usr/bin/linux.uml"
UML_MODULES = "/usr/lib/uml/modules"
HOST_MODULES = "/lib/modules"
XTABLES_LEGACY = "/usr/sbin/xtables-legacy-multi"
XTABLES_NFT = "/usr/sbin/xtables-nft-multi"
MAX_MAP_COUNT = 1048576
MAX_MAP_COUNT_FILE = "/proc/sys/vm/max_map_count"
KERNELS = ("uml", "qemu")

RC_TIMEOUT = 124
RC_NO_STATUS = 125

GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GUEST_TMP = {"uml": "/run/tmp", "qemu": "/tmp"}
# Host variables that make no sense in the guest (it cannot write the host's home or tmp).
_DROP_ENV = frozenset({"HOME", "TMPDIR", "PWD", "OLDPWD", "SHLVL", "_"})
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RUN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

# Modules udev would load for q35 / "-cpu max" devices; each costs seconds under TCG.
QEMU_MODULE_BLACKLIST = (
    "kvm,kvm_amd,kvm_intel,powernow_k8,acpi_cpufreq,pcspkr,iTCO_wdt,i2c_i801,lpc_ich,ahci,sr_mod,"
    "aesni_intel,ghash_clmulni_intel,sha256_ssse3,sha512_ssse3,sha1_ssse3,crc32_pclmul,"
    "crct10dif_pclmul,polyval_clmulni,evdev,serio_raw,button,joydev,psmouse"
)
QEMU_INSTALL_HINT = "apt-get install linux-image-amd64 qemu-system-x86 busybox-static && pip install virtme-ng==1.42"


class VmUnavailable(RuntimeError):
    """The requested VM kernel cannot be used on this machine; ``str(exc)`` says why."""


class _StdoutDefault:
    """Marker for "``sys.stdout`` at call time" (pytest and others replace ``sys.stdout``)."""

    def __repr__(self) -> str:
        return "sys.stdout"


_STDOUT = _StdoutDefault()


# --------------------------------------------------------------------------- availability


def _find_uml() -> str | None:
    return shutil.which("linux.uml") or (UML_BINARY if os.access(UML_BINARY, os.X_OK) else None)


def _find_vng() -> str | None:
    found = shutil.which("vng")
    if found:
        return found
    beside = Path(sys.executable).parent / "vng"  # a venv's bin dir need not be on PATH
    return str(beside) if os.access(beside, os.X_OK) else None


def _version_key(version: str) -> list[tuple[int, str]]:
    return [(int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"[.-]", version)]


def _find_qemu_kernel() -> tuple[str, str] | None:
    """Newest ``/boot/vmlinuz-<ver>`` that has ``/lib/modules/<ver>``: ``(image, ver)``."""
    found = []
    for image in glob.glob("/boot/vmlinuz-*"):
        ver = image.removeprefix("/boot/vmlinuz-")
        if os.path.isdir(os.path.join(HOST_MODULES, ver)):
            found.append((_version_key(ver), image, ver))
    if not found:
        return None
    _, image, ver = max(found)
    return image, ver


def vm_available(kernel: str = "uml") -> str | None:
    """Return None when ``run_in_vm(..., kernel=kernel)`` can run here, else a one-line reason."""
    if os.environ.get("KR_IN_VM") == "1":
        return "already inside a lab VM (KR_IN_VM=1); VMs do not nest"
    if kernel == "uml":
        if _find_uml() is None:
            return "install user-mode-linux: apt-get install user-mode-linux"
        if not os.path.isdir(UML_MODULES) or not os.listdir(UML_MODULES):
            return f"{UML_MODULES} is missing: apt-get install --reinstall user-mode-linux"
        if not os.path.isdir(HOST_MODULES) and os.geteuid() != 0:
            return f"{HOST_MODULES} is missing (mount point for the UML modules): run as root or mkdir {HOST_MODULES}"
        if not os.access("/dev/shm", os.W_OK | os.X_OK) or os.statvfs("/dev/shm").f_flag & os.ST_NOEXEC:
            return "/dev/shm must be writable and not noexec (UML keeps guest memory there)"
        return None
    if kernel == "qemu":
        if _find_vng() is None:
            return f"virtme-ng (vng) not found: {QEMU_INSTALL_HINT}"
        if shutil.which("qemu-system-x86_64") is None:
            return f"qemu-system-x86_64 not found: {QEMU_INSTALL_HINT}"
        if shutil.which("busybox") is None:
            return f"busybox not found (virtme-ng builds its initramfs with it): {QEMU_INSTALL_HINT}"
        if _find_qemu_kernel() is None:
            return f"no /boot/vmlinuz-* with matching /lib/modules: {QEMU_INSTALL_HINT}"
        return None
    return f"unknown kernel {kernel!r} (choose one of {', '.join(KERNELS)})"


# --------------------------------------------------------------------------- host preparation


def _ensure_max_map_count(path: str = MAX_MAP_COUNT_FILE, wanted: int = MAX_MAP_COUNT) -> None:
    """Raise ``vm.max_map_count`` (UML guest processes die at ~250 MB RSS below it) if we can."""
    try:
        current = int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return
    if current >= wanted:
        return
    if os.geteuid() == 0:
        try:
            Path(path).write_text(f"{wanted}\n")
            log.info("raised vm.max_map_count from %d to %d for UML", current, wanted)
            return
        except OSError as exc:
            log.warning("cannot raise vm.max_map_count (%s): %s", current, exc)
            return
    log.warning(
        "vm.max_map_count is %d: UML guest processes die at ~250 MB RSS; raise it with: sysctl -w vm.max_map_count=%d",
        current,
        wanted,
    )


def _ensure_modules_mountpoint() -> None:
    if not os.path.isdir(HOST_MODULES):
        try:
            os.makedirs(HOST_MODULES, exist_ok=True)
        except OSError as exc:
            raise VmUnavailable(f"cannot create {HOST_MODULES} (mount point for the UML modules): {exc}") from exc


def _uncompressed_vmlinux(image: str, ver: str) -> str:
    """Return a cached uncompressed ELF ``vmlinux`` for a bzImage (saves ~4.5 s under TCG), or ``image``.

    Debian amd64 kernels are xz-compressed; the ELF is extracted once into
    ``$XDG_CACHE_HOME/kr/vm/`` (default ``~/.cache``). Any failure falls back to ``image``.
    """
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kr" / "vm"
    target = cache / f"vmlinux-{ver}"
    if target.is_file() and target.stat().st_size > 0:
        return str(target)
    try:
        data = Path(image).read_bytes()
        pos = data.find(b"\xfd7zXZ\x00")
        if pos < 0:
            return image
        elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[pos:])
        if elf[:4] != b"\x7fELF":
            return image
        cache.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(elf)
        tmp.replace(target)
        return str(target)
    except (OSError, lzma.LZMAError) as exc:
        log.info("using %s as is (no uncompressed vmlinux: %s)", image, exc)
        return image


# --------------------------------------------------------------------------- guest scripts


# The guest mounts its own file systems here, hiding the host's.
_GUEST_OWN = ("/proc", "/sys", "/dev", "/run")


def _shareable(path: str) -> bool:
    return not (any(c.isspace() for c in path) or "," in path or any(_is_under(path, p) for p in _GUEST_OWN))


def _is_under(path: str, top: str) -> bool:
    return path == top or path.startswith(top + "/")


def _check_host_path(path: str, what: str) -> str:
    path = os.path.abspath(path)
    if not _shareable(path):
        raise ValueError(
            f"{what} {path!r}: cannot be shared with the VM (whitespace, ',' or under {', '.join(_GUEST_OWN)})"
        )
    return path


def guest_env(env: Mapping[str, str] | None, *, kernel: str, out_dir: str, run_id: str) -> dict[str, str]:
    """The environment the guest command gets (see the module docstring)."""
    base = dict(os.environ) if env is None else dict(env)
    if env is None:
        for name in _DROP_ENV:
            base.pop(name, None)
    result = {k: v for k, v in base.items() if _ENV_NAME.match(k)}
    tmp = GUEST_TMP[kernel]
    result.setdefault("PATH", GUEST_PATH)
    # make sure the sbin tools (ip, modprobe, ipvsadm, iptables) are found
    parts = result["PATH"].split(":")
    result["PATH"] = ":".join(parts + [p for p in GUEST_PATH.split(":") if p not in parts])
    result.setdefault("HOME", tmp)
    result.setdefault("TMPDIR", tmp)
    # the host's cache (read-only in the guest): what was prepared there (e.g. generated GoBGP stubs) is
    # found without the network the guest does not have
    result.setdefault("XDG_CACHE_HOME", os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache"))
    result.update(KR_IN_VM="1", KR_VM_KERNEL=kernel, KR_VM_OUT=out_dir, KR_VM_ID=run_id)
    return result


def begin_marker(run_id: str) -> str:
    return f"@@kr-vm {run_id} begin@@"


def end_marker(run_id: str) -> str:
    return f"@@kr-vm {run_id} end@@"


def run_script(cmd: Sequence[str] | str, *, cwd: str, env: Mapping[str, str], rc_file: str, run_id: str) -> str:
    """The bash script the guest runs: environment, markers, ``cd``, the command, its rc into ``rc_file``.

    A string ``cmd`` runs with ``bash -c``; a list is executed directly (via ``env --``, so a
    builtin name such as ``exit`` is not special).
    """
    lines = ["# generated by kr_core.lab.vm: runs the command inside the VM", "set +e"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    lines.append('mkdir -p "$TMPDIR" 2>/dev/null; chmod 1777 "$TMPDIR" 2>/dev/null')
    lines.append(f"printf '%s\\n' {shlex.quote(begin_marker(run_id))}")
    if isinstance(cmd, str):
        command = f"bash -c {shlex.quote(cmd)}"
    else:
        if not cmd:
            raise ValueError("empty command")
        command = "env -- " + shlex.join(list(cmd))
    lines.append(f"if cd {shlex.quote(cwd)}; then {command} </dev/null; rc=$?; else rc=126; fi")
    lines.append(f"echo $rc > {shlex.quote(rc_file)}")
    lines.append("sync")
    lines.append(f"printf '%s\\n' {shlex.quote(end_marker(run_id))}")
    lines.append("exit $rc")
    return "\n".join(lines) + "\n"


def uml_init_script(*, script: str, rw_dirs: Sequence[str], legacy_iptables: bool = True) -> str:
    """PID 1 inside UML: mounts, modules, rw host dirs, ``lo`` up, then ``bash script``, then power off."""
    q = shlex.quote
    lines = [
        "#!/bin/bash",
        "# generated by kr_core.lab.vm: PID 1 inside User-Mode Linux",
        f"export PATH={GUEST_PATH}",
        "mount -t proc proc /proc",
        "mount -t sysfs sysfs /sys",
        "mount -t tmpfs -o mode=0755 tmpfs /run",
        "mkdir -p /run/tmp /run/lock && chmod 1777 /run/tmp",
        "mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev",
        "mkdir -p /dev/pts /dev/shm",
        "mount -t devpts devpts /dev/pts",
        "mount -t tmpfs tmpfs /dev/shm",
        "mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null",
        f"mount -r -t hostfs -o {UML_MODULES} hostfs {HOST_MODULES}",
    ]
    # parents before children, so nested rw dirs stay visible
    for d in sorted(set(rw_dirs), key=lambda p: (p.count("/"), p)):
        lines.append(f"mount -t hostfs -o {q(d)} hostfs {q(d)} || echo 'kr-vm: cannot mount '{q(d)} read-write")
    if legacy_iptables:
        lines.append(f"[ -e {XTABLES_LEGACY} ] && [ -e {XTABLES_NFT} ] && mount --bind {XTABLES_LEGACY} {XTABLES_NFT}")
    lines += [
        "ip link set lo up",
        "hostname kr-vm",
        "stty -onlcr 2>/dev/null  # the console is a tty: no \\r\\n in the output",
        f"bash {q(script)} </dev/null",
        "sync",
        "poweroff -f --no-wtmp 2>/dev/null",
        "echo o > /proc/sysrq-trigger",
        "sleep 5",
        "",
    ]
    return "\n".join(lines)


def uml_command(*, uml: str, mem: str, init: str, run_id: str, uml_dir: str) -> list[str]:
    """The host command line that boots UML with the host's ``/`` as a read-only hostfs root.

    ``con0`` (the console) writes to our stdout; nothing reads stdin; no network device.
    """
    return [
        uml,
        f"mem={mem}",
        "rootfstype=hostfs",
        "rootflags=/",
        "ro",
        "quiet",
        "loglevel=1",
        f"init={init}",
        f"umid={run_id}",
        f"uml_dir={uml_dir}",
        "con=null",
        "con0=null,fd:1",
        "ssl=null",
    ]


def qemu_command(*, vng: str, kernel_image: str, mem: str, cpus: int, rw_dirs: Sequence[str], script: str) -> list[str]:
    """The host command line for virtme-ng on QEMU/TCG (recipe B of the VM notes)."""
    argv = [vng, "--run", kernel_image, "--disable-kvm", "--force-9p", "--memory", mem, "--cpus", str(cpus)]
    argv += [f"--rwdir={d}" for d in sorted(set(rw_dirs))]
    argv += ["--append", f"modprobe.blacklist={QEMU_MODULE_BLACKLIST}"]
    argv += ["--exec", f"bash {shlex.quote(script)}"]
    return argv


# --------------------------------------------------------------------------- process handling


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Output:
    """Splits the VM's output into lines; shows only what lies between the run's markers.

    Everything else (boot and power-off messages) is kept and shown only if the run fails
    without an exit code.
    """

    def __init__(self, stream: IO[str] | None, run_id: str) -> None:
        self.stream = stream
        self.begin = begin_marker(run_id)
        self.end = end_marker(run_id)
        self.state = "boot"  # boot -> cmd -> done
        self.hidden: list[str] = []
        self.pending = b""

    def _emit(self, text: str) -> None:
        if self.stream is not None and text:
            self.stream.write(text)
            with contextlib.suppress(Exception):
                self.stream.flush()

    def _line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace")
        if text.endswith("\r\n"):
            text = text[:-2] + "\n"
        if self.state == "boot":
            if self.begin in text:
                self.state = "cmd"
            else:
                self.hidden.append(text)
        elif self.state == "cmd":
            idx = text.find(self.end)
            if idx >= 0:
                self._emit(text[:idx])  # output that did not end with a newline
                self.state = "done"
            else:
                self._emit(text)
        else:
            self.hidden.append(text)

    def feed(self, data: bytes) -> None:
        self.pending += data
        *lines, self.pending = self.pending.split(b"\n")
        for raw in lines:
            self._line(raw + b"\n")

    def close(self) -> None:
        if self.pending:
            self._line(self.pending)
            self.pending = b""

    def show_hidden(self) -> None:
        for text in self.hidden:
            self._emit(text)
        self.hidden.clear()


def _run_process(argv: list[str], *, env: dict[str, str] | None, timeout: float, out: _Output) -> int | None:
    """Run ``argv`` in a new process group, feed its output to ``out``; None on timeout.

    The whole process group is SIGKILLed before the leader is reaped (so its id cannot have
    been reused), on timeout and on any exception, KeyboardInterrupt included.
    """
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    pgid = proc.pid
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    timed_out = False
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    timed_out = True
                    break
                if not sel.select(min(left, 1.0)):
                    continue
                data = os.read(fd, 65536)
                if not data:
                    break
                out.feed(data)
        out.close()
        if not timed_out:
            # wait for the leader without reaping it (its pid stays ours), then kill the group's stragglers
            while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                if time.monotonic() >= deadline:
                    timed_out = True
                    break
                time.sleep(0.02)
    finally:
        _kill_group(pgid)
        proc.stdout.close()
        rc = proc.wait()
        # the group's other processes (UML's per-address-space helpers) may take a moment to go
        for _ in range(250):
            if not _group_alive(pgid):
                break
            _kill_group(pgid)
            time.sleep(0.02)
    return None if timed_out else rc


# --------------------------------------------------------------------------- public API


def run_in_vm(
    cmd: Sequence[str] | str,
    *,
    kernel: str = "uml",
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 900,
    mem: str = "2G",
    stream: IO[str] | None | _StdoutDefault = _STDOUT,
    out_dir: str | os.PathLike[str] | None = None,
    rw_dirs: Iterable[str | os.PathLike[str]] = (),
    run_id: str | None = None,
    cpus: int = 2,
    legacy_iptables: bool = True,
) -> int:
    """Run ``cmd`` as root in a fresh VM and return its exit code.

    ``cmd``: a list is executed directly, a string with ``bash -c``. ``kernel``: ``"uml"`` or
    ``"qemu"``. ``cwd``: directory in the guest (default: the current one). ``env``: the
    guest's environment (default: ``os.environ``; see the module docstring). ``timeout``:
    seconds for the whole run, boot included; then the VM is killed and
    :data:`RC_TIMEOUT` returned. ``mem``: guest RAM (``"2G"``). ``stream``: where output goes
    line by line (default ``sys.stdout``; None drops it). ``out_dir``: host directory the
    guest can write (created if missing; default: a temporary one, deleted afterwards), also
    ``$KR_VM_OUT`` in the guest. ``rw_dirs``: more existing host directories the guest can
    write. ``run_id``: unique id of this VM (on the ``linux.uml`` command line as
    ``umid=<run_id>``); generated if not given. ``cpus``: QEMU only (UML has one).
    ``legacy_iptables``: UML only, make plain ``iptables`` the legacy one in the guest.

    Raises :class:`VmUnavailable` when the kernel cannot run here (see :func:`vm_available`).
    """
    reason = vm_available(kernel)
    if reason:
        raise VmUnavailable(reason)
    if run_id is None:
        run_id = f"krvm-{secrets.token_hex(6)}"
    elif not _RUN_ID.match(run_id):
        raise ValueError(f"run_id {run_id!r}: use letters, digits, '_', '.', '-'")
    out_stream: IO[str] | None = sys.stdout if isinstance(stream, _StdoutDefault) else stream
    guest_cwd = _check_host_path(os.fspath(cwd) if cwd is not None else os.getcwd(), "cwd")
    given_out = None if out_dir is None else _check_host_path(os.fspath(out_dir), "out_dir")
    extra = [_check_host_path(os.fspath(d), "rw dir") for d in rw_dirs]
    for d in extra:
        if not os.path.isdir(d):
            raise ValueError(f"rw dir {d!r} does not exist")

    base = tempfile.gettempdir()
    if not _shareable(os.path.abspath(base)):
        base = "/tmp"
    run_dir = tempfile.mkdtemp(prefix=f"{run_id}.", dir=base)
    keep = os.environ.get("KR_VM_KEEP") == "1"
    try:
        # shared read-write with the guest: the guest script and its exit code (virtme-ng may
        # hide the host's /tmp under a guest tmpfs, so the script must be in a shared dir)
        ctl = os.path.join(run_dir, "ctl")
        os.mkdir(ctl)
        if given_out is None:
            guest_out = os.path.join(run_dir, "out")
            os.mkdir(guest_out)
        else:
            guest_out = given_out
            os.makedirs(guest_out, exist_ok=True)
        rc_file = os.path.join(ctl, "rc")
        script = os.path.join(ctl, "run.sh")
        genv = guest_env(env, kernel=kernel, out_dir=guest_out, run_id=run_id)
        Path(script).write_text(run_script(cmd, cwd=guest_cwd, env=genv, rc_file=rc_file, run_id=run_id))
        shared = [ctl, guest_out, *extra]

        if kernel == "uml":
            _ensure_modules_mountpoint()
            _ensure_max_map_count()
            init = os.path.join(run_dir, "init.sh")
            Path(init).write_text(uml_init_script(script=script, rw_dirs=shared, legacy_iptables=legacy_iptables))
            os.chmod(init, 0o755)
            uml_dir = os.path.join(run_dir, "uml")
            os.mkdir(uml_dir)
            uml = _find_uml()
            assert uml is not None
            argv = uml_command(uml=uml, mem=mem, init=init, run_id=run_id, uml_dir=uml_dir)
            host_env = None
        else:
            vng = _find_vng()
            found = _find_qemu_kernel()
            assert vng is not None and found is not None
            image = _uncompressed_vmlinux(*found)
            argv = qemu_command(vng=vng, kernel_image=image, mem=mem, cpus=cpus, rw_dirs=shared, script=script)
            host_env = dict(os.environ)
            # vng execs virtme-run from PATH
            host_env["PATH"] = os.path.dirname(vng) + os.pathsep + host_env.get("PATH", "")

        out = _Output(out_stream, run_id)
        log.debug("kr-vm %s: %s", run_id, shlex.join(argv))
        host_rc = _run_process(argv, env=host_env, timeout=timeout, out=out)
        if host_rc is None:
            out._emit(f"kr-vm: timed out after {timeout:g} s; VM {run_id} killed\n")
            return RC_TIMEOUT
        try:
            return int(Path(rc_file).read_text().strip())
        except (OSError, ValueError):
            out.show_hidden()
            if kernel == "qemu" and host_rc not in (0, None):
                return host_rc
            out._emit(f"kr-vm: VM {run_id} ended without an exit code ({argv[0]} rc={host_rc})\n")
            return RC_NO_STATUS
    finally:
        if keep:
            log.warning("kr-vm %s: kept %s", run_id, run_dir)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
