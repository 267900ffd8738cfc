"""Packaging: `pip install .` gives the core alone; `pip install ./kr_plugins/<name>` adds exactly that plugin.

Builds a fresh virtualenv (dependencies come from pip's cache or the package index).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_core_alone_then_one_plugin(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]

    def kr_plugins() -> dict[str, dict]:
        r = subprocess.run([str(venv / "bin" / "kr"), "plugins", "--json"], capture_output=True, text=True,
                           timeout=60, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        return {p["name"]: p for p in json.loads(r.stdout)}

    subprocess.run(pip + [str(ROOT)], check=True, timeout=600)
    assert kr_plugins() == {}
    r = subprocess.run([str(venv / "bin" / "python"), "-c", "import kr_plugins.ipvs_proxy"], capture_output=True,
                       text=True, cwd=tmp_path)
    assert r.returncode != 0  # not installed: simply absent

    subprocess.run(pip + ["--no-deps", str(ROOT / "kr_plugins" / "ipvs_proxy")], check=True, timeout=300)
    got = kr_plugins()
    assert list(got) == ["ipvs_proxy"]
    assert got["ipvs_proxy"]["distribution"] == "kr-plugin-ipvs-proxy" and got["ipvs_proxy"]["role"] == "service-proxy"
    r = subprocess.run([str(venv / "bin" / "python"), "-c",
                        "import kr_plugins.ipvs_proxy.plugin as p; print(p.Plugin.info.name)"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.stdout.strip() == "ipvs_proxy"
