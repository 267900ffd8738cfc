"""kr_core.lab.vmtest: ``@pytest.mark.vm`` tests run inside one UML VM."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kr_core.lab.vm import vm_available
from kr_core.lab.vmtest import in_vm, requires_vm

_reason = "already inside a lab VM" if in_vm() else vm_available("uml")
needs_uml = pytest.mark.skipif(_reason is not None, reason=f"UML VM unavailable: {_reason}")

DEMO = """
import os
import pytest

def test_on_host():
    assert os.environ.get("KR_IN_VM") != "1"

@pytest.mark.vm
def test_guest_ok():
    assert os.environ["KR_IN_VM"] == "1"

@pytest.mark.vm
@pytest.mark.parametrize("x", [1])
def test_guest_fail(x):
    assert x == 2, "boom in the guest"
"""


def run_demo(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["kr_core.lab.vmtest"]\n')
    (tmp_path / "test_demo.py").write_text(DEMO)
    host_env = {k: v for k, v in os.environ.items() if not k.startswith("KR_VM") and k != "KR_IN_VM"}
    host_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "--color=no", *args, str(tmp_path)],
        cwd=tmp_path,
        env=host_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.vm
@requires_vm
def test_marked_test_runs_inside_the_vm() -> None:
    """Collected on the host as part of ``::vm-tests``; really runs in the guest."""
    assert os.environ["KR_IN_VM"] == "1"
    subprocess.run(["modprobe", "ip_vs"], check=True)
    assert Path("/proc/net/ip_vs").exists()
    subprocess.run(["ip", "link", "add", "kr-vmtest0", "type", "dummy"], check=True)


def test_vm_tests_become_one_wrapper_item(tmp_path: Path) -> None:
    p = run_demo(tmp_path, "--collect-only", "-q")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "test_demo.py::test_on_host" in p.stdout
    assert "::vm-tests" in p.stdout
    assert "test_guest_ok" not in p.stdout
    p = run_demo(tmp_path, "-m", "not vm", "--collect-only", "-q")
    assert "::vm-tests" not in p.stdout and "test_on_host" in p.stdout
    p = run_demo(tmp_path, KR_VM_SKIP="1")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "1 passed, 1 skipped" in p.stdout and "KR_VM_SKIP=1" in p.stdout


def test_one_wrapper_per_kernel(tmp_path: Path) -> None:
    """``vm(kernel="qemu")`` tests get their own wrapper (their own VM); KR_VM_KERNEL=qemu merges them."""
    (tmp_path / "test_q.py").write_text(
        "import pytest\n\n@pytest.mark.vm(kernel='qemu')\ndef test_q():\n    pass\n"
    )
    p = run_demo(tmp_path, "--collect-only", "-q")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "::vm-tests\n" in p.stdout and "::vm-tests-qemu" in p.stdout, p.stdout
    assert "test_q" not in p.stdout
    p = run_demo(tmp_path, "--collect-only", "-q", KR_VM_KERNEL="qemu")
    assert "::vm-tests\n" in p.stdout and "vm-tests-" not in p.stdout, p.stdout
    p = run_demo(tmp_path, "-m", "vm", KR_VM_SKIP="1")
    assert "2 skipped" in p.stdout, p.stdout
    (tmp_path / "test_q.py").write_text("import pytest\n\n@pytest.mark.vm(kernel='xen')\ndef test_x():\n    pass\n")
    p = run_demo(tmp_path, "--collect-only", "-q")
    assert p.returncode != 0 and "vm(kernel='xen')" in p.stdout + p.stderr, p.stdout + p.stderr


@needs_uml
def test_wrapper_runs_them_in_one_vm_and_reports_failures(tmp_path: Path) -> None:
    p = run_demo(tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    assert "FAILED in VM: test_demo.py::test_guest_fail[1]" in out
    assert "boom in the guest" in out  # the guest's own report, from the captured stdout
    # guest: test_guest_ok passed, test_guest_fail failed; host: test_on_host passed, ::vm-tests failed
    assert out.count("1 failed, 1 passed in") == 2, out
