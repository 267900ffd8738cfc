"""EndpointSlice controller (placeholder)."""

from __future__ import annotations

from typing import Any


class EndpointSliceController:
    def __init__(self, store: Any, registry: Any) -> None:
        self.store, self.registry = store, registry

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass
