"""A map whose entries all live as long, and leave on a timer or when it is full."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any


class ExpiringMap:
    """A dict whose entries all live ``ttl`` seconds, ``max_entries`` at most.

    Entries leave in the order they came (every one lives as long): on a timer armed for
    the oldest, so that memory is given back even when no request comes, and the oldest
    first when the map is full.
    """

    def __init__(self, ttl: float, max_entries: int) -> None:
        self._ttl = ttl
        self._max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._timer: asyncio.TimerHandle | None = None
        self.evicted = 0  # entries that left early to make room

    def get(self, key: str) -> Any:
        entry = self._entries.get(key)
        if entry is None or entry[0] <= time.monotonic():
            return None
        return entry[1]

    def put(self, key: str, value: Any) -> None:
        self._entries.pop(key, None)
        self._entries[key] = (time.monotonic() + self._ttl, value)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
            self.evicted += 1
        if self._timer is None:
            self._arm()

    def pop(self, key: str) -> None:
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        """Stop the expiry timer (the map is no longer used)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        if self._entries:
            expires, _ = next(iter(self._entries.values()))
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(0.0, expires - time.monotonic()), self._expire)

    def _expire(self) -> None:
        self._timer = None
        now = time.monotonic()
        entries = self._entries
        while entries:
            key, (expires, _) = next(iter(entries.items()))
            if expires > now:
                break
            del entries[key]
        self._arm()
