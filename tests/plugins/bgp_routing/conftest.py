from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

if os.environ.get("KR_IN_VM") != "1" and not os.environ.get("KR_GOBGP_STUBS_DIR"):
    # the VM runner passes the environment (not HOME) to the guest: point the guest at the host's stub cache,
    # which it sees read-only, and make sure the stubs exist before a VM boots
    from kr_plugins.bgp_routing.stubs import StubsError, cache_root, load

    os.environ["KR_GOBGP_STUBS_DIR"] = str(cache_root())
    if os.geteuid() == 0 and shutil.which("gobgpd"):
        try:
            load()
        except StubsError:
            pass  # need_bgp_tools() skips with the reason


def need_bgp_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    missing = [t for t in ("ip", "gobgpd", "bird", "birdc", "ping", "ipset", "iptables") if not shutil.which(t)]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")
    from kr_plugins.bgp_routing.stubs import StubsError, load

    try:
        load()
    except StubsError as e:
        pytest.skip(str(e))


@pytest.fixture
def netlab_factory() -> Iterator:
    need_bgp_tools()
    from .netlab import NetLab

    labs: list[NetLab] = []

    def make(*args, **kw) -> NetLab:  # type: ignore[no-untyped-def]
        lab = NetLab(*args, **kw)
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.close()
