"""The watch layer: caches plugins read, and the sources that fill them (informers, in-process feeds)."""

from typing import Any

from kr_core.watch.cache import Caches, CacheView, Store, StoreView
from kr_core.watch.feed import EventSink, FeedSource

# The informers pull in the kubernetes client (slow to import): loaded on first use.
_LAZY = {
    "Informer": "kr_core.watch.informer",
    "InformerSource": "kr_core.watch.informer",
    "WatchMetrics": "kr_core.watch.informer",
    "KubeConfigError": "kr_core.watch.kubeconfig",
    "load_api_client": "kr_core.watch.kubeconfig",
    "load_configuration": "kr_core.watch.kubeconfig",
}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(mod), name)


__all__ = ["Caches", "CacheView", "EventSink", "FeedSource", "Store", "StoreView", *_LAZY]
