"""Run pytest tests inside the lab VM (see :mod:`kr_core.lab.vm`).

Tests that need kernel features this host lacks (IPVS, ipip/fou, dummy links, SCTP) are
marked ``@pytest.mark.vm`` and run in a VM with a Debian kernel::

    import pytest

    @pytest.mark.vm
    def test_ipvs_service():
        subprocess.run(["modprobe", "ip_vs", "ip_vs_rr"], check=True)   # load what you need
        ...

    @pytest.mark.vm(kernel="qemu")   # needs Debian's amd64 kernel (fou tunnels, nftables ip/inet)
    def test_fou_tunnel():
        ...

How it works: this module is a pytest plugin. On the host, after selection (``-k``, ``-m``,
node ids), it takes all selected ``vm`` tests out of the run and puts **one** item per kernel in
their place, ``::vm-tests`` (the default kernel) and ``::vm-tests-qemu`` (tests marked
``kernel="qemu"`` when the default is UML), each of which boots one VM and runs
``<sys.executable> -m pytest -p no:cacheprovider -p kr_core.lab.vmtest ... <their node ids>``
inside it from the rootdir (guest root, ``KR_IN_VM=1``; the plugin records the guest's
failed node ids in ``$KR_VM_OUT``). That item passes when the guest pytest passes; it
fails with the guest's failed node ids and the guest output (captured stdout; ``-s`` shows
it live); it skips with the reason when the VM cannot run here (no ``linux.uml``, ...).
Inside the guest (``KR_IN_VM=1``) the plugin changes nothing, so the tests run for real.

Enabling the plugin (any one):

* ``pytest_plugins = ["kr_core.lab.vmtest"]`` in the top-level ``conftest.py``;
* ``-p kr_core.lab.vmtest`` on the command line;
* in a lower ``conftest.py``: ``from kr_core.lab.vmtest import pytest_collection_modifyitems,
  pytest_configure  # noqa: F401`` (the hooks run at most once even if several conftests do it).

Without the plugin, ``vm`` tests would run on the host; guard them with
:data:`requires_vm` (``@requires_vm`` skips unless ``KR_IN_VM=1``) if that must not happen.

Environment knobs (host side): ``KR_VM_KERNEL=qemu`` (the default kernel, ``uml`` if unset:
tests without a ``kernel=`` then run under QEMU too), ``KR_VM_TIMEOUT`` (seconds per VM,
default 900), ``KR_VM_SKIP=1`` (skip the VM tests).

Without the plugin, :func:`run_pytest_in_vm` runs any node ids in a VM and returns pytest's
exit code, e.g. from a script or CI step::

    sys.exit(run_pytest_in_vm(["tests/integration/test_ipvs.py"]))
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import pytest

from kr_core.lab.vm import KERNELS, RC_NO_STATUS, RC_TIMEOUT, run_in_vm, vm_available

__all__ = ["in_vm", "item_kernel", "requires_vm", "run_pytest_in_vm", "repo_root"]

IN_VM_ENV = "KR_IN_VM"
_DONE = pytest.StashKey[bool]()


def in_vm() -> bool:
    """True inside a lab VM (``KR_IN_VM=1``)."""
    return os.environ.get(IN_VM_ENV) == "1"


requires_vm = pytest.mark.skipif(not in_vm(), reason="runs only inside the lab VM (KR_IN_VM=1)")


def default_kernel() -> str:
    """The kernel of ``vm`` tests that do not name one: ``$KR_VM_KERNEL``, else ``uml``."""
    return os.environ.get("KR_VM_KERNEL") or "uml"


def item_kernel(item: pytest.Item) -> str:
    """The VM kernel a ``vm`` test needs: its marker's ``kernel=`` or :func:`default_kernel`."""
    marker = item.get_closest_marker("vm")
    kernel = (marker.kwargs.get("kernel") if marker is not None else None) or default_kernel()
    if kernel not in KERNELS:
        raise pytest.UsageError(f"{item.nodeid}: vm(kernel={kernel!r}): choose one of {', '.join(KERNELS)}")
    return kernel


def repo_root() -> Path:
    """The directory with ``pyproject.toml`` above this package (the project's root)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "kr_core").is_dir():
            return parent
    return Path.cwd()


def run_pytest_in_vm(
    nodeids: Sequence[str],
    kernel: str = "uml",
    extra_args: Sequence[str] = (),
    *,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 900,
    stream: IO[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    rw_dirs: Sequence[str | os.PathLike[str]] = (),
) -> int:
    """Run ``python -m pytest -p no:cacheprovider <extra_args> <nodeids>`` in a VM; return its exit code.

    ``cwd`` defaults to the repository root (node ids are relative to it); ``stream``
    defaults to ``sys.stdout`` at call time. Raises :class:`kr_core.lab.vm.VmUnavailable`.
    """
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *extra_args, *nodeids]
    return run_in_vm(
        argv,
        kernel=kernel,
        cwd=cwd if cwd is not None else repo_root(),
        timeout=timeout,
        stream=stream if stream is not None else sys.stdout,
        out_dir=out_dir,
        rw_dirs=rw_dirs,
    )


class VmTestsFailed(Exception):
    """The guest pytest run failed."""


FAILED_FILE = "pytest-failed.txt"


def _read_failed(out_dir: Path) -> list[str]:
    """Node ids the guest recorded as failed (see :func:`pytest_runtest_logreport`), in order, once each."""
    try:
        lines = (out_dir / FAILED_FILE).read_text().splitlines()
    except OSError:
        return []
    return list(dict.fromkeys(line for line in lines if line))


class VmTestsItem(pytest.Item):
    """One host-side item that runs the selected ``vm`` tests of one kernel inside one VM."""

    def __init__(self, *, nodeids: Sequence[str], kernel: str = "uml", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.nodeids = list(nodeids)
        self.kernel = kernel
        self.add_marker(pytest.mark.vm)

    def runtest(self) -> None:
        if os.environ.get("KR_VM_SKIP") == "1":
            pytest.skip("KR_VM_SKIP=1")
        kernel = self.kernel
        reason = vm_available(kernel)
        if reason:
            pytest.skip(f"{len(self.nodeids)} vm tests: {kernel} VM unavailable: {reason}")
        timeout = float(os.environ.get("KR_VM_TIMEOUT", "900"))
        config = self.config
        extra = ["-rfEs", "--color=no"]
        if config.option.verbose > 0:
            extra.append("-v")
        if config.option.maxfail:
            extra.append(f"--maxfail={config.option.maxfail}")
        if config.inipath is not None:
            extra += ["-c", str(config.inipath)]
        extra.append(f"--rootdir={config.rootpath}")
        extra += ["-p", __name__]  # in the guest: records failed node ids in $KR_VM_OUT
        with tempfile.TemporaryDirectory(prefix="kr-vm-tests.") as out:
            rc = run_pytest_in_vm(self.nodeids, kernel, extra, cwd=config.rootpath, timeout=timeout, out_dir=out)
            failed = _read_failed(Path(out))
        if rc == 0:
            return
        if rc == RC_TIMEOUT:
            why = f"VM timed out after {timeout:g} s"
        elif rc == RC_NO_STATUS:
            why = "VM ended without an exit code"
        else:
            why = f"guest pytest exit code {rc}"
        lines = [f"{why} ({len(self.nodeids)} vm tests in a {kernel} VM)"]
        lines += [f"  FAILED in VM: {f}" for f in failed]
        raise VmTestsFailed("\n".join(lines))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, VmTestsFailed):
            return str(excinfo.value) + "\n(the guest output is in the captured stdout)"
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"{self.name}: {len(self.nodeids)} tests in a {self.kernel} VM"


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``vm`` marker."""
    config.addinivalue_line(
        "markers", "vm(kernel='uml'|'qemu'): runs inside the lab VM (kernel features this host lacks)"
    )


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """On the host, replace the selected ``vm`` tests by one :class:`VmTestsItem` per kernel."""
    if in_vm() or config.stash.get(_DONE, False):
        return
    config.stash[_DONE] = True
    vm_items = [it for it in items if it.get_closest_marker("vm") is not None]
    if not vm_items:
        return
    first = items.index(vm_items[0])
    groups: dict[str, list[str]] = {}
    for it in vm_items:
        groups.setdefault(item_kernel(it), []).append(it.nodeid)
    default = default_kernel()
    wrappers = [
        VmTestsItem.from_parent(
            session, name="vm-tests" if kernel == default else f"vm-tests-{kernel}", nodeids=ids, kernel=kernel
        )
        for kernel, ids in sorted(groups.items(), key=lambda kv: kv[0] != default)
    ]
    chosen = set(map(id, vm_items))
    rest = [it for it in items if id(it) not in chosen]
    rest[first:first] = wrappers
    items[:] = rest


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """In the guest: append failed node ids to ``$KR_VM_OUT/pytest-failed.txt`` for the host item."""
    if not (report.failed and in_vm()):
        return
    out = os.environ.get("KR_VM_OUT")
    if out and os.path.isdir(out):
        with open(os.path.join(out, FAILED_FILE), "a") as f:
            f.write(report.nodeid + "\n")
