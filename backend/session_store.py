"""Click-session states between requests, so that the n-th click costs one step, not n.

Label Studio re-sends every click of a label with each request. The state after clicks
c1..ck (``Session.to_bytes``) is stored under a key chained from the task, the image's
pixels, the model version, the inference config, the label and c1..ck; a request for
c1..cn looks up all n prefix keys at once and continues from the longest one found.

``RedisStore`` is shared by every gunicorn worker (entries expire after a TTL); when Redis
fails it answers "not found" and stores nothing, so serving falls back to replaying.
``MemoryStore`` is a per-process LRU used when no REDIS_URL is set.

``LiveSessions`` keeps a few sessions of this process alive in front of either store: the next
click of the same label continues the very object (its resized views and focus crops included)
instead of restoring bytes. A session is taken out while a request works on it and put back
under its new key, so two requests never share one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict

import redis

log = logging.getLogger(__name__)
KEY_PREFIX = "focuscut:session:"


def prefix_keys(scope: dict, clicks) -> list[str]:
    """Keys for clicks[:1], clicks[:2], ..., clicks[:n] within ``scope`` (JSON-able identity:
    task, image digest, model version, config, label)."""
    h = hashlib.sha256(json.dumps(scope, sort_keys=True, default=str).encode()).digest()
    keys = []
    for c in clicks:
        h = hashlib.sha256(h + json.dumps(c.to_list()).encode()).digest()
        keys.append(KEY_PREFIX + h.hex())
    return keys


class MemoryStore:
    """In-process LRU of states, at most ``max_bytes`` in total."""

    kind = "memory"

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        with self._lock:
            found = [self._items.get(k) for k in keys]
            for k, v in zip(keys, found):
                if v is not None:
                    self._items.move_to_end(k)
            return found

    def put_many(self, items: dict[str, bytes]) -> None:
        with self._lock:
            for key, value in items.items():
                if len(value) > self.max_bytes:
                    continue
                old = self._items.pop(key, None)
                self._size += len(value) - (len(old) if old is not None else 0)
                self._items[key] = value
            while self._size > self.max_bytes:
                _, value = self._items.popitem(last=False)
                self._size -= len(value)


class LiveSessions:
    """In-process LRU of at most ``max_items`` live sessions, keyed by their state's prefix key."""

    def __init__(self, max_items: int):
        self.max_items = max_items
        self._items: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, keys: list[str]):
        """(session, k) for the longest prefix keys[:k] held, removed from the LRU; (None, 0) if none."""
        with self._lock:
            for k in range(len(keys), 0, -1):
                session = self._items.pop(keys[k - 1], None)
                if session is not None:
                    return session, k
        return None, 0

    def put(self, key: str, session) -> None:
        if self.max_items <= 0:
            return
        with self._lock:
            self._items[key] = session
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)


class RedisStore:
    """States in Redis with a TTL (seconds). Errors are logged and treated as misses; after one,
    Redis is left alone for ``backoff`` seconds so a dead server does not slow every click."""

    kind = "redis"

    def __init__(self, url: str, ttl: int, timeout: float = 1.0, backoff: float = 5.0):
        self.ttl, self.backoff = ttl, backoff
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._down_until = 0.0

    def _usable(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, what: str, exc: Exception) -> None:
        self._down_until = time.monotonic() + self.backoff
        log.warning("session cache: Redis %s failed (%s); replaying clicks instead", what, exc)

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        if not keys or not self._usable():
            return [None] * len(keys)
        try:
            return self._redis.mget(keys)
        except redis.RedisError as exc:
            self._failed("read", exc)
            return [None] * len(keys)

    def put_many(self, items: dict[str, bytes]) -> None:
        if not items or not self._usable():
            return
        try:
            pipe = self._redis.pipeline(transaction=False)
            for key, value in items.items():
                pipe.set(key, value, ex=self.ttl)
            pipe.execute()
        except redis.RedisError as exc:
            self._failed("write", exc)


class NoStore:
    """Keeps nothing: every request replays its clicks (FOCUSCUT_SESSION_CACHE=off)."""

    kind = "off"

    def get_many(self, keys: list[str]) -> list[None]:
        return [None] * len(keys)

    def put_many(self, items: dict[str, bytes]) -> None:
        pass


def from_settings(s) -> MemoryStore | RedisStore | NoStore:
    if not s.session_cache:
        return NoStore()
    if s.redis_url:
        return RedisStore(s.redis_url, s.session_ttl)
    return MemoryStore(int(s.session_lru_mb * (1 << 20)))
