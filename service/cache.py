"""In-process caches for the hot read path (recommendations, token checks).

Two kinds: an LRU of things that never change once made (a finished fit's rebuilt engine
object, the encoded answer to a question about it), and values read from the database
that stay valid exactly until the next commit anywhere (see `store.db.ChangeProbe`).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar, cast

from anyio import to_thread

from store.db import ChangeProbe, Engine

T = TypeVar("T")


class LRUCache:
    """A small thread-safe least-recently-used map, for immutable things derived from fits."""

    def __init__(self, size: int) -> None:
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


class CommitScopedCache:
    """Values loaded from the database, reused until the database's next commit.

    The commit counter is read *before* loading, so a commit racing with the load leaves an
    entry that the next call already sees as stale. Without a counter (PostgreSQL) every
    call loads.
    """

    def __init__(self, probe: ChangeProbe, size: int = 4096) -> None:
        self._probe = probe
        self._items = LRUCache(size)

    def version(self) -> int | None:
        """The database's commit counter now (None where there is none)."""
        return self._probe.version()

    def get_or_load(self, key: Hashable, load: Callable[[], T]) -> T:
        version = self._probe.version()
        if version is None:
            return load()
        hit = self._items.get(key)
        if hit is not None and hit[0] == version:
            return cast(T, hit[1])
        value = load()
        self._items.put(key, (version, value))
        return value

    async def get_or_load_async(
        self, key: Hashable, load: Callable[[], T], keep: Callable[[T], bool] | None = None
    ) -> T:
        """The same from the event loop: a hit costs microseconds; a miss loads in a thread.

        A loaded value is cached only if `keep(value)` (all if `keep` is None): failed token
        lookups are not kept, so guessing tokens cannot evict the valid ones.
        """
        version = self._probe.version()
        if version is not None:
            hit = self._items.get(key)
            if hit is not None and hit[0] == version:
                return cast(T, hit[1])
        value = await to_thread.run_sync(load)
        if version is not None and (keep is None or keep(value)):
            self._items.put(key, (version, value))
        return value


_by_engine: weakref.WeakKeyDictionary[Engine, CommitScopedCache] = weakref.WeakKeyDictionary()
_by_engine_lock = threading.Lock()


def commit_cache(engine: Engine) -> CommitScopedCache:
    """The commit-scoped cache of `engine`'s database (one per engine, made on first use)."""
    with _by_engine_lock:
        cache = _by_engine.get(engine)
        if cache is None:
            cache = _by_engine[engine] = CommitScopedCache(ChangeProbe(engine))
        return cache
