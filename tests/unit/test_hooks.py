"""Every hook of the contract, exercised through a real agent; and the meta-tests that keep the contract honest:
every hook has a ``test_hook_<name>`` here and a heading in the plugin author's guide (docs/plugins.md)."""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

import pytest

from kr_core import EventType, HealthReport, PluginConfigError, Resource, hookimpl, hookspecs
from kr_core.config import ConfigError
from kr_core.plugins import EVENT_HOOK

from ..conftest import make_object, make_service, recording_plugin
from .agent_fixture import make_agent  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[2]


def _started(make_agent, recorder, resources=None, **kw):  # noqa: F811
    cls = recording_plugin("rec", "test-role", recorder, resources)
    agent, src = make_agent(cls, **kw)
    agent.start()
    assert recorder.wait(lambda r: r.of("rec", "sync"))
    return agent, src


# ------------------------------------------------------------------------------------------- lifecycle


def test_hook_configure(make_agent, recorder):  # noqa: F811
    cls = recording_plugin("rec", "test-role", recorder, frozenset({Resource.SERVICE}))
    agent, _ = make_agent(cls, flags={"ipvs-sync-period": 7.0})
    agent.configure()
    (ctx,) = recorder.of("rec", "configure")
    assert ctx.name == "rec" and ctx.node_name == "node-1"
    assert ctx.settings.ipvs_sync_period == 7.0
    assert ctx.caches.resources == {Resource.SERVICE}
    with pytest.raises(LookupError, match="Resource.POD"):
        ctx.caches.pods.list()
    assert recorder.of("rec", "start") == []  # configure only


def test_hook_configure_refusal_names_the_plugin(make_agent, recorder):  # noqa: F811
    class Picky:
        info = recording_plugin("picky", "r", recorder).info

        @hookimpl
        def configure(self, ctx):
            raise PluginConfigError("must be positive", path="size")

    agent, _ = make_agent(Picky)
    with pytest.raises(ConfigError, match=r"picky\.size: must be positive"):
        agent.configure()


def test_hook_start(make_agent, recorder):  # noqa: F811
    svc = make_service("web")
    agent, _ = _started(make_agent, recorder, initial=(svc,))
    (ctx,) = recorder.of("rec", "start")
    assert ctx.caches.services.get("default/web") == svc  # caches are synced before start
    assert [h for _, h, _ in recorder.calls][:3] == ["configure", "start", "sync"]


def test_hook_sync(make_agent, recorder):  # noqa: F811
    agent, _ = _started(make_agent, recorder)
    assert recorder.of("rec", "sync") == ["initial"]
    agent.contexts["rec"].request_sync("because")
    assert recorder.wait(lambda r: "because" in r.of("rec", "sync"))
    assert agent.health.age("rec") is not None  # a successful sync is a heartbeat


def test_hook_sync_periodic(make_agent, recorder):  # noqa: F811
    cls = recording_plugin("rec", "service-proxy", recorder)
    agent, _ = make_agent(cls, flags={"ipvs-sync-period": 0.2})
    agent.start()
    assert recorder.wait(lambda r: r.of("rec", "sync").count("periodic") >= 2, timeout=5)


def test_hook_health(make_agent, recorder):  # noqa: F811
    class Sick:
        info = recording_plugin("sick", "r", recorder, frozenset()).info

        @hookimpl
        def health(self):
            return HealthReport(False, "daemon died")

    agent, _ = make_agent(Sick)
    agent.start()
    w = agent.workers["sick"]
    assert w.call(lambda: None).result(5) is None
    w._check_health()  # what the worker does every 5 s
    assert agent.health_problems() == ["sick: daemon died"]


def test_hook_state(make_agent, recorder):  # noqa: F811
    agent, src = _started(make_agent, recorder)
    src.add(make_service("a"))
    assert recorder.wait(lambda r: r.of("rec", "on_service"))
    st = agent.state()
    assert st["node"] == "node-1"
    assert st["plugins"]["rec"]["state"] == {"summary": {"objects": 1}, "items": []}
    assert st["plugins"]["rec"]["syncs"] >= 1


def test_hook_cleanup(make_agent, recorder):  # noqa: F811
    cls = recording_plugin("rec", "test-role", recorder)
    agent, _ = make_agent(cls)
    assert agent.cleanup() == []
    assert [h for _, h, _ in recorder.calls] == ["configure", "cleanup"]


def test_hook_stop(make_agent, recorder):  # noqa: F811
    agent, src = _started(make_agent, recorder)
    for i in range(50):
        src.add(make_service(f"s{i}"))
    agent.stop()
    hooks = [h for _, h, _ in recorder.calls]
    assert hooks[-1] == "stop"
    assert len(recorder.of("rec", "on_service")) == 50  # queues drained before stop


# ------------------------------------------------------------------------------------------- events


def _event_roundtrip(make_agent, recorder, resource: Resource) -> None:  # noqa: F811
    agent, src = _started(make_agent, recorder, resources=frozenset({resource}))
    hook = EVENT_HOOK[resource]
    v1 = make_object(resource, "x", "1")
    src.add(v1)
    assert recorder.wait(lambda r: len(r.of("rec", hook)) == 1)
    v2 = make_object(resource, "x", "2")
    src.update(v2)
    assert recorder.wait(lambda r: len(r.of("rec", hook)) == 2)
    src.delete(v2)
    assert recorder.wait(lambda r: len(r.of("rec", hook)) == 3)
    added, modified, deleted = recorder.of("rec", hook)
    assert (added.type, added.new, added.old) == (EventType.ADDED, v1, None)
    assert (modified.type, modified.new, modified.old) == (EventType.MODIFIED, v2, v1)
    assert (deleted.type, deleted.new, deleted.old) == (EventType.DELETED, None, v2)
    # only the declared resource is delivered
    other = Resource.NODE if resource is not Resource.NODE else Resource.POD
    assert src.add(make_object(other, "y")) is None  # not even cached: nobody watches it


def test_hook_on_service(make_agent, recorder):  # noqa: F811
    _event_roundtrip(make_agent, recorder, Resource.SERVICE)


def test_hook_on_endpoints(make_agent, recorder):  # noqa: F811
    _event_roundtrip(make_agent, recorder, Resource.ENDPOINTSLICE)


def test_hook_on_policy(make_agent, recorder):  # noqa: F811
    _event_roundtrip(make_agent, recorder, Resource.NETWORKPOLICY)


def test_hook_on_node(make_agent, recorder):  # noqa: F811
    _event_roundtrip(make_agent, recorder, Resource.NODE)


def test_hook_on_pod(make_agent, recorder):  # noqa: F811
    _event_roundtrip(make_agent, recorder, Resource.POD)


def test_hook_on_namespace(make_agent, recorder):  # noqa: F811
    _event_roundtrip(make_agent, recorder, Resource.NAMESPACE)


# ------------------------------------------------------------------------------------------- meta


def test_every_hook_has_a_test():
    names = {n for n, _ in inspect.getmembers(sys.modules[__name__], inspect.isfunction)}
    missing = [h for h in hookspecs.ALL_HOOKS if f"test_hook_{h}" not in names]
    assert not missing, f"hooks exercised by no test_hook_<name>: {missing}"


def test_every_hook_is_documented():
    doc = (ROOT / "docs" / "plugins.md").read_text()
    headings = dict(re.findall(r"^###\s+`(\w+)\(([^)]*)\)`", doc, re.M))
    for h in hookspecs.ALL_HOOKS:
        assert h in headings, f"docs/plugins.md has no '### `{h}(...)`' section"
        params = [p.strip().split(":")[0].strip() for p in headings[h].split(",") if p.strip()]
        spec = list(inspect.signature(getattr(hookspecs, h)).parameters)
        assert params == spec, f"docs/plugins.md documents {h}({', '.join(params)}), the spec is {h}({', '.join(spec)})"


def test_every_hook_spec_is_documented_in_code():
    for h in hookspecs.ALL_HOOKS:
        assert (getattr(hookspecs, h).__doc__ or "").strip(), f"hook {h} has no docstring"
