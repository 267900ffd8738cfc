"""/healthz with kube-router's heartbeat semantics, /metrics, /state and `kr state`, served by a real agent."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request

from kr_core import HealthReport, PluginInfo, hookimpl
from kr_core.health import HealthChecker

from ..conftest import free_port, make_service, recording_plugin
from .agent_fixture import make_agent  # noqa: F401 - fixture


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_heartbeat_semantics_as_kube_router():
    c = Clock()
    h = HealthChecker(clock=c)
    h.register("proxy", period=300)
    c.t += 100
    assert h.problems() == []  # never beat: still starting
    h.beat("proxy")  # first beat at t+100: TTL = 100 s
    c.t += 300 + 100 + 1.5
    assert h.problems() == []
    c.t += 0.1
    (p,) = h.problems()
    assert p.startswith("proxy: no successful sync for 401.6s (limit 401.5s)")
    h.beat("proxy")
    assert h.problems() == []


def test_healthz_metrics_state_endpoints(make_agent, recorder):  # noqa: F811
    hp, mp = free_port(), free_port()
    cls = recording_plugin("rec", "service-proxy", recorder)
    agent, src = make_agent(cls, serve_http=True,
                            flags={"health-addr": "127.0.0.1", "health-port": hp, "metrics-addr": "127.0.0.1",
                                   "metrics-port": mp})
    agent.start()
    assert recorder.wait(lambda r: r.of("rec", "sync"))
    src.add(make_service("web"))
    assert recorder.wait(lambda r: r.of("rec", "on_service"))
    assert _get(f"http://127.0.0.1:{hp}/healthz") == (200, "OK\n")
    code, body = _get(f"http://127.0.0.1:{mp}/metrics")
    assert code == 200
    for series in ("kube_router_build_info{", 'kr_event_to_dataplane_seconds_count{plugin="rec"} 1.0',
                   'kr_plugin_sync_duration_seconds_count{plugin="rec"}', 'kr_plugin_queue_depth{plugin="rec"} 0.0',
                   "kr_plugin_heartbeat_age_seconds"):
        assert series in body, series
    code, body = _get(f"http://127.0.0.1:{hp}/state")
    st = json.loads(body)
    assert st["plugins"]["rec"]["state"]["summary"] == {"objects": 1}
    r = subprocess.run([sys.executable, "-m", "kr_core.cli", "state", "--addr", f"127.0.0.1:{hp}"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "== rec (service-proxy)" in r.stdout and "objects: 1" in r.stdout
    # a plugin reporting a problem makes /healthz fail
    agent.workers["rec"].last_health = HealthReport(False, "gobgpd is gone")
    assert _get(f"http://127.0.0.1:{hp}/healthz") == (500, "Unhealthy")
    assert agent.health_problems() == ["rec: gobgpd is gone"]
    agent.stop()
    r = subprocess.run([sys.executable, "-m", "kr_core.cli", "state", "--addr", f"127.0.0.1:{hp}"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "cannot reach the agent" in r.stderr


def test_missed_heartbeat_fails_healthz(make_agent):  # noqa: F811
    class Stuck:
        info = PluginInfo(name="stuck", role="r", version="1")
        calls = 0

        @hookimpl
        def sync(self, reason):
            Stuck.calls += 1
            if Stuck.calls > 1:
                raise RuntimeError("iptables-restore: resource busy")

    hp = free_port()
    agent, _ = make_agent(Stuck, serve_http=True, flags={"health-addr": "127.0.0.1", "health-port": hp})
    agent.start()
    c = Clock()
    agent.health._clock = c  # take over time
    agent.health.beat("stuck")
    assert _get(f"http://127.0.0.1:{hp}/healthz")[0] == 200
    c.t += 10_000
    assert _get(f"http://127.0.0.1:{hp}/healthz") == (500, "Unhealthy")


def test_health_port_in_use_is_a_clear_error(make_agent, recorder):  # noqa: F811
    import pytest

    from kr_core.agent import AgentError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        agent, _ = make_agent(recording_plugin("rec", "r", recorder), serve_http=True,
                              flags={"health-addr": "127.0.0.1", "health-port": port})
        with pytest.raises(AgentError, match=f"cannot listen for health checks on 127.0.0.1:{port}"):
            agent.start()
