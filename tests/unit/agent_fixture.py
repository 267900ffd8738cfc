"""An agent fed in-process, for tests of the core."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kr_core.agent import Agent
from kr_core.config import merge
from kr_core.plugins import from_classes
from kr_core.watch.feed import FeedSource

MakeAgent = Callable[..., tuple[Agent, FeedSource]]


@pytest.fixture
def make_agent() -> Iterator[MakeAgent]:
    agents: list[Agent] = []

    def make(*classes: type, initial: tuple = (), sections: dict[str, Any] | None = None,
             flags: dict[str, Any] | None = None, **kw: Any) -> tuple[Agent, FeedSource]:
        kw.setdefault("serve_http", False)
        kw.setdefault("min_sync_interval", 0.05)
        src = FeedSource(initial)
        agent = Agent(merge({}, flags or {}), from_classes(classes), sections, src, node="node-1", **kw)
        agents.append(agent)
        return agent, src

    yield make
    for a in agents:
        a.stop()
