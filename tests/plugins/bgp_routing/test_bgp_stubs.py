"""GoBGP stub generation from the .proto files (never committed; made on first use)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kr_plugins.bgp_routing import stubs


def test_generate_package_from_protos(tmp_path: Path) -> None:
    if not shutil.which("gobgpd"):
        pytest.skip("gobgpd not installed")
    try:
        proto_dir, _ = stubs.find_protos(fetch=False)
    except stubs.StubsError as e:
        pytest.skip(str(e))
    stubs.generate(proto_dir, tmp_path / "out")
    pkg = tmp_path / "out" / stubs.PKG
    assert {p.name for p in pkg.glob("*_pb2*.py")} >= {"gobgp_pb2.py", "gobgp_pb2_grpc.py", "attribute_pb2.py"}
    assert f"from {stubs.PKG} import gobgp_pb2" in (pkg / "attribute_pb2.py").read_text()  # cross-imports rewritten


def test_missing_gobgpd_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(stubs.StubsError, match="apt-get install gobgpd"):
        stubs.gobgpd_version()


def test_bad_proto_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KR_GOBGP_PROTO_DIR", str(tmp_path))
    with pytest.raises(stubs.StubsError, match="does not hold"):
        stubs.find_protos()
