"""The watch layer: caches plugins read, and the sources that fill them (informers, in-process feeds)."""

from kr_core.watch.cache import Caches, CacheView, Store, StoreView
from kr_core.watch.feed import EventSink, FeedSource

__all__ = ["Caches", "CacheView", "EventSink", "FeedSource", "Store", "StoreView"]
