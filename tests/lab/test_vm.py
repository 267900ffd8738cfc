"""kr_core.lab.vm: running commands in a User-Mode Linux VM (live, as root) and command construction.

The live tests boot UML (~3 s each); they skip when not root, when UML is not installed, or
when already inside a lab VM (no nesting). In CI they run as root with UML installed.
"""

from __future__ import annotations

import glob
import io
import lzma
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kr_core.lab import vm
from kr_core.lab.vm import RC_TIMEOUT, run_in_vm, vm_available

_uml_reason = vm_available("uml")
if os.environ.get("KR_IN_VM") == "1":
    _uml_reason = "already inside a lab VM"
elif _uml_reason is None and os.geteuid() != 0:
    _uml_reason = "needs root (CI runs these as root)"
needs_uml = pytest.mark.skipif(_uml_reason is not None, reason=f"UML VM unavailable: {_uml_reason}")


def uml_kernel_versions() -> list[str]:
    return sorted(os.listdir(vm.UML_MODULES))


class TimedStream(io.TextIOBase):
    """A text stream that records (monotonic time, text) for every write."""

    def __init__(self) -> None:
        self.writes: list[tuple[float, str]] = []
        self.lock = threading.Lock()

    def write(self, s: str) -> int:
        with self.lock:
            self.writes.append((time.monotonic(), s))
        return len(s)

    def getvalue(self) -> str:
        return "".join(s for _, s in self.writes)


def run(cmd: list[str] | str, **kw: object) -> tuple[int, str]:
    buf = io.StringIO()
    rc = run_in_vm(cmd, stream=buf, timeout=kw.pop("timeout", 120), **kw)  # type: ignore[arg-type]
    return rc, buf.getvalue()


# --------------------------------------------------------------------------- live (UML)


@needs_uml
def test_true_returns_0() -> None:
    assert run(["true"]) == (0, "")


@needs_uml
def test_exit_code_comes_back() -> None:
    rc, out = run("exit 3")
    assert rc == 3, out


@needs_uml
def test_output_is_streamed_line_by_line() -> None:
    stream = TimedStream()
    rc = run_in_vm("echo hello; uname -r; sleep 1.5; echo later", stream=stream, timeout=120)
    out = stream.getvalue()
    assert rc == 0, out
    lines = out.splitlines()
    assert lines[0] == "hello"
    assert lines[1] in uml_kernel_versions(), lines  # the Debian UML kernel, e.g. 6.1.176
    assert lines[2] == "later"
    assert "\r" not in out
    t_hello = next(t for t, s in stream.writes if "hello" in s)
    t_later = next(t for t, s in stream.writes if "later" in s)
    assert t_later - t_hello > 1.0, "output was not streamed as it came"


@needs_uml
def test_stderr_of_failing_command_reaches_stream() -> None:
    rc, out = run(["ls", "/nonexistent-kr-vm-path"])
    assert rc == 2
    assert "/nonexistent-kr-vm-path" in out and "No such file" in out


@needs_uml
def test_ipvs_after_modprobe() -> None:
    rc, out = run("modprobe ip_vs && modprobe ip_vs_rr && cat /proc/net/ip_vs && ipvsadm -Ln")
    assert rc == 0, out
    assert "IP Virtual Server version" in out


@needs_uml
def test_dummy_link_and_legacy_iptables() -> None:
    rc, out = run(
        "ip link add kr-dummy0 type dummy && ip addr add 10.96.0.10/32 dev kr-dummy0 && ip -br addr show kr-dummy0"
        " && iptables -V && iptables -t nat -A POSTROUTING -j MASQUERADE && iptables -t nat -S POSTROUTING"
    )
    assert rc == 0, out
    assert "kr-dummy0" in out and "10.96.0.10/32" in out
    assert "(legacy)" in out and "-A POSTROUTING -j MASQUERADE" in out


@needs_uml
def test_rw_dirs_out_dir_env_and_cwd(tmp_path: Path) -> None:
    rw, out_dir, work = tmp_path / "rw", tmp_path / "out", tmp_path / "work"
    rw.mkdir()
    work.mkdir()
    (work / "input.txt").write_text("from host\n")
    script = (
        'set -e; cat input.txt > "$1/copied.txt"; pwd > "$KR_VM_OUT/pwd.txt"; echo "$KR_TEST_VALUE" > "$1/env.txt"; '
        f'{sys.executable} -c "import os, sys; print(os.environ[\'KR_IN_VM\'], sys.prefix)" > "$1/py.txt"; '
        "if touch input.txt.new 2>/dev/null; then echo WRITABLE; fi; "
        'echo "tmp=$TMPDIR"; touch "$TMPDIR/x"'
    )
    env = dict(os.environ, KR_TEST_VALUE="a b 'c' $d")
    rc, text = run(["bash", "-c", script, "bash", str(rw)], cwd=work, env=env, out_dir=out_dir, rw_dirs=[rw])
    assert rc == 0, text
    assert (rw / "copied.txt").read_text() == "from host\n"
    assert (out_dir / "pwd.txt").read_text() == f"{work}\n"
    assert (rw / "env.txt").read_text() == "a b 'c' $d\n"
    assert (rw / "py.txt").read_text() == f"1 {sys.prefix}\n"
    assert "WRITABLE" not in text, "the host file system must be read-only in the guest"
    assert not (work / "input.txt.new").exists()
    assert "tmp=/run/tmp" in text


@needs_uml
def test_two_vms_in_parallel() -> None:
    def one(i: int) -> tuple[int, str]:
        return run(f"echo vm-{i} $KR_VM_ID; sleep 1", run_id=f"krvm-par{i}-{os.getpid()}")

    t0 = time.monotonic()
    with ThreadPoolExecutor(2) as ex:
        results = list(ex.map(one, range(2)))
    elapsed = time.monotonic() - t0
    for i, (rc, out) in enumerate(results):
        assert rc == 0, out
        assert out == f"vm-{i} krvm-par{i}-{os.getpid()}\n"
    print(f"two VMs in parallel: {elapsed:.1f} s")


@needs_uml
def test_timeout_kills_the_vm() -> None:
    run_id = f"krvm-timeout-{os.getpid()}-{int(time.time())}"
    stream = TimedStream()
    t0 = time.monotonic()
    rc = run_in_vm("echo started; sleep 120", stream=stream, timeout=6, run_id=run_id)
    elapsed = time.monotonic() - t0
    assert rc == RC_TIMEOUT != 0
    assert elapsed < 20
    assert "timed out" in stream.getvalue()
    left = subprocess.run(["pgrep", "-f", f"umid={run_id}"], capture_output=True, text=True)
    assert left.returncode == 1 and not left.stdout, f"leftover linux.uml processes: {left.stdout}"


@needs_uml
def test_keyboard_interrupt_kills_the_vm() -> None:
    run_id = f"krvm-sigint-{os.getpid()}-{int(time.time())}"
    stream = TimedStream()
    # Ctrl-C as the terminal gives it: Python's own handler, the signal to the main thread (a process-directed
    # signal may land on any of the threads earlier tests left running, and another test may have replaced
    # the handler: neither is what is tested here)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    blocked = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    timer = threading.Timer(5.0, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            rc = run_in_vm("echo started; sleep 120", stream=stream, timeout=60, run_id=run_id)
            pytest.fail(f"the VM ended (rc {rc}) before the interrupt: {stream.getvalue()[-3000:]}")
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    left = subprocess.run(["pgrep", "-f", f"umid={run_id}"], capture_output=True, text=True)
    assert left.returncode == 1 and not left.stdout, f"leftover linux.uml processes: {left.stdout}"
    assert not glob.glob(os.path.join(tempfile.gettempdir(), f"{run_id}.*")), "per-run directory left behind"


@needs_uml
def test_cli_returns_exit_code() -> None:
    p = subprocess.run(
        [sys.executable, "-m", "kr_core.lab.cli_vm", "--timeout", "120", "--", "echo cli-ok; exit 5"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert p.returncode == 5, p.stdout + p.stderr
    assert p.stdout == "cli-ok\n"


# --------------------------------------------------------------------------- live (QEMU)

_qemu_reason = vm_available("qemu") or (None if os.geteuid() == 0 else "needs root")


@pytest.mark.slow
@pytest.mark.skipif(_qemu_reason is not None, reason=f"QEMU VM unavailable: {_qemu_reason}")
def test_qemu_runs_command_with_nftables() -> None:
    rc, out = run("nft add table inet krvm && nft list tables && exit 4", kernel="qemu", timeout=600)
    assert rc == 4, out
    assert "table inet krvm" in out


# --------------------------------------------------------------------------- no VM needed


def test_cli_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    from kr_core.lab.cli_vm import main

    assert main([]) == 2
    assert "missing command" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--kernel", "xen", "--", "true"])


def test_vm_available_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KR_IN_VM", raising=False)
    assert "unknown kernel" in (vm_available("xen") or "")
    monkeypatch.setattr(vm, "_find_uml", lambda: None)
    assert vm_available("uml") == "install user-mode-linux: apt-get install user-mode-linux"
    monkeypatch.setattr(vm, "_find_vng", lambda: None)
    reason = vm_available("qemu") or ""
    assert "virtme-ng" in reason and "linux-image-amd64 qemu-system-x86 busybox-static" in reason
    with pytest.raises(vm.VmUnavailable, match="user-mode-linux"):
        run_in_vm(["true"])
    monkeypatch.setenv("KR_IN_VM", "1")
    assert "do not nest" in (vm_available("uml") or "")


def test_guest_env() -> None:
    env = vm.guest_env(None, kernel="uml", out_dir="/o", run_id="r1")
    assert env["HOME"] == env["TMPDIR"] == "/run/tmp"
    assert env["KR_IN_VM"] == "1" and env["KR_VM_OUT"] == "/o" and env["KR_VM_ID"] == "r1"
    assert "/usr/sbin" in env["PATH"].split(":")
    assert "PWD" not in env
    given = vm.guest_env({"PATH": "/x", "HOME": "/h", "bad-name": "1"}, kernel="qemu", out_dir="/o", run_id="r")
    assert given["HOME"] == "/h" and given["TMPDIR"] == "/tmp"
    assert given["PATH"].startswith("/x:") and "bad-name" not in given


def test_run_script_quoting() -> None:
    s = vm.run_script(["exit", "a b"], cwd="/w", env={"A": "x'y"}, rc_file="/c/rc", run_id="r")
    assert "export A='x'\"'\"'y'" in s
    assert "env -- exit 'a b' </dev/null" in s
    assert "echo $rc > /c/rc" in s
    s2 = vm.run_script("echo $HOME; exit 3", cwd="/w", env={}, rc_file="/c/rc", run_id="r")
    assert "bash -c 'echo $HOME; exit 3' </dev/null" in s2
    assert s2.index(vm.begin_marker("r")) < s2.index("cd /w") < s2.index(vm.end_marker("r"))
    with pytest.raises(ValueError):
        vm.run_script([], cwd="/w", env={}, rc_file="/c/rc", run_id="r")


def test_uml_command_and_init() -> None:
    argv = vm.uml_command(uml="/usr/bin/linux.uml", mem="1G", init="/t/init.sh", run_id="krvm-x", uml_dir="/t/uml")
    assert argv[:2] == ["/usr/bin/linux.uml", "mem=1G"]
    assert {"umid=krvm-x", "uml_dir=/t/uml", "init=/t/init.sh", "rootfstype=hostfs", "rootflags=/", "ro"} <= set(argv)
    assert not any(a.startswith("eth") for a in argv), "the VM must have no network device"
    init = vm.uml_init_script(script="/t/run.sh", rw_dirs=["/a/b", "/a"])
    assert init.index("-o /a hostfs /a ") < init.index("-o /a/b hostfs /a/b ")
    for needle in (
        "mount -r -t hostfs -o /usr/lib/uml/modules hostfs /lib/modules",
        "mount -t devpts devpts /dev/pts",
        "mount -t cgroup2",
        "mount --bind /usr/sbin/xtables-legacy-multi /usr/sbin/xtables-nft-multi",
        "ip link set lo up",
        "stty -onlcr",
        "bash /t/run.sh </dev/null",
        "poweroff -f",
    ):
        assert needle in init, needle
    assert "xtables" not in vm.uml_init_script(script="/t/run.sh", rw_dirs=[], legacy_iptables=False)


def test_qemu_command() -> None:
    argv = vm.qemu_command(
        vng="/v/bin/vng", kernel_image="/k/vmlinux", mem="2G", cpus=2, rw_dirs=["/o", "/c"], script="/t/run.sh"
    )
    assert argv[:3] == ["/v/bin/vng", "--run", "/k/vmlinux"]
    assert "--disable-kvm" in argv and "--force-9p" in argv
    assert argv[argv.index("--memory") + 1] == "2G" and argv[argv.index("--cpus") + 1] == "2"
    assert [a for a in argv if a.startswith("--rwdir")] == ["--rwdir=/c", "--rwdir=/o"]
    assert argv[argv.index("--append") + 1].startswith("modprobe.blacklist=kvm,")
    assert argv[-2:] == ["--exec", "bash /t/run.sh"]
    assert "--network" not in argv


def test_output_filter_markers_and_partial_lines() -> None:
    buf = io.StringIO()
    out = vm._Output(buf, "r")
    out.feed(b"boot noise\n" + vm.begin_marker("r").encode() + b"\r\nhel")
    out.feed(b"lo\r\nno newline" + vm.end_marker("r").encode() + b"\nPowering off.\n")
    out.close()
    assert buf.getvalue() == "hello\nno newline"
    out.show_hidden()
    assert buf.getvalue().endswith("boot noise\nPowering off.\n")


def test_max_map_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "max_map_count"
    f.write_text("65530\n")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    vm._ensure_max_map_count(str(f))
    assert f.read_text() == f"{vm.MAX_MAP_COUNT}\n"
    f.write_text("65530\n")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    vm._ensure_max_map_count(str(f))  # only a hint
    assert f.read_text() == "65530\n"


def test_uncompressed_vmlinux_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    elf = b"\x7fELF" + os.urandom(1000)
    image = tmp_path / "vmlinuz-6.1.0-test"
    image.write_bytes(b"MZ setup code " * 10 + lzma.compress(elf, format=lzma.FORMAT_XZ))
    got = vm._uncompressed_vmlinux(str(image), "6.1.0-test")
    assert got == str(tmp_path / "cache" / "kr" / "vm" / "vmlinux-6.1.0-test")
    assert Path(got).read_bytes() == elf
    plain = tmp_path / "plain"
    plain.write_bytes(b"no xz here")
    assert vm._uncompressed_vmlinux(str(plain), "other") == str(plain)


def test_bad_arguments(tmp_path: Path) -> None:
    if vm_available("uml"):
        pytest.skip("argument checks run after the availability check")
    with pytest.raises(ValueError, match="run_id"):
        run_in_vm(["true"], run_id="bad id")
    with pytest.raises(ValueError, match="cannot be shared"):
        run_in_vm(["true"], cwd=str(tmp_path / "a b"))
    with pytest.raises(ValueError, match="cannot be shared"):
        run_in_vm(["true"], out_dir="/run/kr-vm-test")
    with pytest.raises(ValueError, match="does not exist"):
        run_in_vm(["true"], rw_dirs=[tmp_path / "missing"])


def test_version_key() -> None:
    versions = ["6.1.0-9-amd64", "6.1.0-56-amd64", "6.1.0-10-amd64"]
    assert max(versions, key=vm._version_key) == "6.1.0-56-amd64"


def test_qemu_path_with_a_fake_vng(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The QEMU code path end to end, with a stand-in ``vng`` that runs ``--exec`` on the host."""
    fake = tmp_path / "bin" / "vng"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/bash\n"
        'echo "$@" > "$(dirname "$0")/args"\n'
        'echo "vng boot noise"\n'
        'while [ $# -gt 0 ]; do if [ "$1" = --exec ]; then bash -c "$2"; exit $?; fi; shift; done\n'
        "exit 99\n"
    )
    fake.chmod(0o755)
    image = tmp_path / "vmlinuz-6.1.0-99-amd64"
    image.write_bytes(b"not really a kernel")
    real_which = shutil.which
    monkeypatch.setattr(vm, "_find_vng", lambda: str(fake))
    monkeypatch.setattr(vm, "_find_qemu_kernel", lambda: (str(image), "6.1.0-99-amd64"))
    monkeypatch.setattr(vm.shutil, "which", lambda name: f"/usr/bin/{name}" if name != "vng" else real_which(name))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out_dir = tmp_path / "out"
    rc, out = run(
        'echo "in $KR_VM_KERNEL tmp=$TMPDIR"; echo $PATH > "$KR_VM_OUT/path"; exit 4', kernel="qemu", out_dir=out_dir
    )
    assert rc == 4
    assert out == "in qemu tmp=/tmp\n"  # vng's own output is hidden
    assert (out_dir / "path").read_text().startswith(os.environ["PATH"])
    args = (fake.parent / "args").read_text()
    assert args.startswith(f"--run {image} --disable-kvm --force-9p --memory 2G --cpus 2 ")
    assert f"--rwdir={out_dir}" in args
