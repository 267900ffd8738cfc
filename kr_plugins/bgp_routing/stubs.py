"""GoBGP's gRPC API as Python modules, generated from GoBGP's own ``.proto`` files on first use.

The stubs are never committed: the generated code is tied to the protobuf/grpcio versions it was made with
and the protos to the gobgpd that runs. On first use :func:`load`:

1. finds the protos (``$KR_GOBGP_PROTO_DIR``, Debian's ``golang-github-osrg-gobgp-dev`` install, or a copy
   extracted earlier into the cache); if none is found and ``apt-get`` exists it fetches that one package
   with ``apt-get download`` and extracts it with ``dpkg-deb -x`` into the cache (no install, no
   dependencies);
2. checks the protos' version against ``gobgpd --version`` (a mismatch is logged: the gRPC API is stable
   within GoBGP v3, but the check says which versions met);
3. generates ``kr_gobgp_api/{gobgp,attribute,capability}_pb2{,_grpc}.py`` with grpcio-tools into
   ``<cache>/<gobgp version>-pb<protobuf version>/`` (cross-imports rewritten to that package) and imports
   them.

Cache: ``$KR_GOBGP_STUBS_DIR``, else ``$XDG_CACHE_HOME/kr/gobgp``, else ``~/.cache/kr/gobgp``.
``python -m kr_plugins.bgp_routing.stubs`` prepares the cache ahead of time (for an image build).
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

log = logging.getLogger("kr.bgp_routing.stubs")

PKG = "kr_gobgp_api"
PROTOS = ("gobgp", "attribute", "capability")
DEBIAN_PROTO_DIR = Path("/usr/share/gocode/src/github.com/osrg/gobgp/api")
DEBIAN_PACKAGE = "golang-github-osrg-gobgp-dev"
INSTALL_HINT = (
    "install GoBGP: `apt-get install gobgpd golang-github-osrg-gobgp-dev` (Debian; the -dev package only "
    f"supplies the .proto files: `apt-get download {DEBIAN_PACKAGE}` + `dpkg-deb -x` into $KR_GOBGP_PROTO_DIR "
    "is enough), and grpcio-tools in the Python environment"
)


class StubsError(RuntimeError):
    """The GoBGP API stubs cannot be made: says what is missing and what to install."""


@dataclass(frozen=True)
class GobgpApi:
    """The generated modules: ``api`` (gobgp_pb2), ``attr`` (attribute_pb2), ``cap``, ``grpc`` (the stub)."""

    api: ModuleType
    attr: ModuleType
    cap: ModuleType
    grpc: ModuleType
    version: str


_lock = threading.Lock()
_loaded: GobgpApi | None = None


def cache_root() -> Path:
    if os.environ.get("KR_GOBGP_STUBS_DIR"):
        return Path(os.environ["KR_GOBGP_STUBS_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kr" / "gobgp"


def gobgpd_version(binary: str = "gobgpd") -> str:
    """``3.10.0`` from ``gobgpd --version``; raises :class:`StubsError` when gobgpd is missing."""
    path = shutil.which(binary)
    if not path:
        raise StubsError(f"gobgpd not found in PATH: {INSTALL_HINT}")
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    m = re.search(r"(\d+\.\d+\.\d+)", out.stdout + out.stderr)
    if not m:
        raise StubsError(f"cannot read the version of {path}: {out.stdout.strip()} {out.stderr.strip()}")
    return m.group(1)


def _has_protos(d: Path) -> bool:
    return all((d / f"{p}.proto").is_file() for p in PROTOS)


def _debian_proto_version() -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", DEBIAN_PACKAGE], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.split("-")[0].strip() if out.returncode == 0 else ""


def _fetch_protos(dest: Path) -> tuple[Path, str]:
    """``apt-get download`` the -dev package and extract only it into ``dest``; (proto dir, version)."""
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise StubsError(f"GoBGP .proto files not found and apt-get is not available: {INSTALL_HINT}")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kr-gobgp-deb-") as tmp:
        os.chmod(tmp, 0o755)  # apt's sandbox user must be able to write there
        r = subprocess.run(["apt-get", "download", DEBIAN_PACKAGE], cwd=tmp, capture_output=True, text=True,
                           timeout=300)
        debs = list(Path(tmp).glob(f"{DEBIAN_PACKAGE}_*.deb"))
        if r.returncode != 0 or not debs:
            raise StubsError(f"`apt-get download {DEBIAN_PACKAGE}` failed ({r.stderr.strip()[-300:]}): {INSTALL_HINT}")
        m = re.match(rf"{re.escape(DEBIAN_PACKAGE)}_([0-9.]+)", debs[0].name)
        version = m.group(1) if m else ""
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(dest / "deb")], check=True, capture_output=True,
                       timeout=120)
    proto_dir = dest / "deb" / str(DEBIAN_PROTO_DIR).lstrip("/")
    if not _has_protos(proto_dir):
        raise StubsError(f"{debs[0].name} holds no GoBGP protos: {INSTALL_HINT}")
    (dest / "VERSION").write_text(version)
    log.info("GoBGP protos %s fetched with apt-get download into %s", version, proto_dir)
    return proto_dir, version


def find_protos(*, fetch: bool = True) -> tuple[Path, str]:
    """(directory holding the three .proto files, their GoBGP version or '')."""
    env = os.environ.get("KR_GOBGP_PROTO_DIR")
    if env:
        if not _has_protos(Path(env)):
            raise StubsError(f"$KR_GOBGP_PROTO_DIR={env} does not hold {', '.join(p + '.proto' for p in PROTOS)}")
        return Path(env), ""
    if _has_protos(DEBIAN_PROTO_DIR):
        return DEBIAN_PROTO_DIR, _debian_proto_version()
    fetched = cache_root() / "protos"
    proto_dir = fetched / "deb" / str(DEBIAN_PROTO_DIR).lstrip("/")
    if _has_protos(proto_dir):
        version = (fetched / "VERSION").read_text().strip() if (fetched / "VERSION").exists() else ""
        return proto_dir, version
    if not fetch:
        raise StubsError(f"GoBGP .proto files not found: {INSTALL_HINT}")
    return _fetch_protos(fetched)


def generate(proto_dir: Path, out_dir: Path) -> None:
    """Generate the package ``kr_gobgp_api`` under ``out_dir`` from the protos in ``proto_dir``."""
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError:
        raise StubsError(f"grpcio-tools is not installed (pip install grpcio-tools): {INSTALL_HINT}") from None
    with tempfile.TemporaryDirectory(prefix="kr-gobgp-stage-") as stage:
        pkg = Path(stage) / PKG
        pkg.mkdir()
        for name in PROTOS:
            text = (proto_dir / f"{name}.proto").read_text()
            text = re.sub(r'^import "(gobgp|attribute|capability)\.proto";', rf'import "{PKG}/\1.proto";', text,
                          flags=re.M)
            (pkg / f"{name}.proto").write_text(text)
        tmp_out = Path(tempfile.mkdtemp(prefix=".gen-", dir=out_dir.parent))
        args = ["protoc", f"-I{stage}", f"-I{Path(grpc_tools.__file__).parent / '_proto'}",
                f"--python_out={tmp_out}", f"--grpc_python_out={tmp_out}",
                *(str(pkg / f"{n}.proto") for n in PROTOS)]
        rc = protoc.main(args)
        if rc != 0:
            shutil.rmtree(tmp_out, ignore_errors=True)
            raise StubsError(f"grpc_tools.protoc failed (exit {rc}) on the protos in {proto_dir}")
        (tmp_out / PKG / "__init__.py").write_text("")
        if out_dir.exists():
            shutil.rmtree(tmp_out, ignore_errors=True)  # another process won the race
        else:
            os.replace(tmp_out, out_dir)


def load(*, fetch: bool = True, binary: str = "gobgpd") -> GobgpApi:
    """The GoBGP API modules, generating them on first use (thread-safe; cached per process)."""
    global _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        daemon_version = gobgpd_version(binary)
        proto_dir, proto_version = find_protos(fetch=fetch)
        if proto_version and proto_version != daemon_version:
            log.warning("GoBGP protos are version %s but gobgpd is %s: the v3 API is expected to be compatible",
                        proto_version, daemon_version)
        import google.protobuf

        key = f"{proto_version or daemon_version}-pb{google.protobuf.__version__}"
        out_dir = cache_root() / "stubs" / key
        if not (out_dir / PKG / "gobgp_pb2_grpc.py").exists():
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            log.info("generating GoBGP API stubs from %s into %s", proto_dir, out_dir)
            generate(proto_dir, out_dir)
        if str(out_dir) not in sys.path:
            sys.path.insert(0, str(out_dir))
        try:
            api = importlib.import_module(f"{PKG}.gobgp_pb2")
            attr = importlib.import_module(f"{PKG}.attribute_pb2")
            cap = importlib.import_module(f"{PKG}.capability_pb2")
            grpc_mod = importlib.import_module(f"{PKG}.gobgp_pb2_grpc")
        except Exception as exc:  # version mismatch of the runtime: regenerate next time
            shutil.rmtree(out_dir, ignore_errors=True)
            raise StubsError(f"the generated GoBGP stubs do not import ({exc}); removed {out_dir}, retry") from exc
        _loaded = GobgpApi(api=api, attr=attr, cap=cap, grpc=grpc_mod, version=daemon_version)
        return _loaded


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        g = load()
    except StubsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"GoBGP {g.version} API stubs ready in {Path(g.api.__file__).parent}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
