"""Redis dedup: `operators.dedup.DedupStore` with its state in Redis, one round trip per batch.

Semantics are exactly those of `operators.dedup.MemoryDedup`: for each (identity, origin) of a
batch, in order, the first occurrence of an identity is stored with its origin (source name,
partition, offset) and answers True; the *same* message read again (same origin) answers True
again (it is processed again; its downstream writes are idempotent); any other origin answers
False (a duplicate). Within one batch the first occurrence wins and later ones are duplicates.
Nothing lives in this process, so there is nothing to snapshot: a restarted worker asks Redis.

One round trip per batch. A single Lua script runs over every key of the batch, in order:

    SET key origin NX EX ttl   -> stored: 1 (the first occurrence)
    else GET key == origin     -> 2 (the same message again: a replay) or 0 (a duplicate)

and returns the list of 0/1/2 (1 and 2 both answer True; 2 is counted in `replays`).
A script runs atomically, so no other client can interleave between
the SET and the GET of a key, and the batch order is kept. It is sent with EVALSHA; after a
NOSCRIPT reply (a restarted or flushed server has lost its script cache) it is sent once with
EVAL, which answers and also caches the script again. Every key of a batch is touched by one
script, so on Redis Cluster all of a batch's keys must hash to one slot (give `namespace` a hash
tag such as "{meterwax}"); a single primary with a replica needs nothing.

Keys: `{namespace}:dedup:{identity}`. An identity is any text (ingest builds it from the event's
`source` and `id`, both chosen by the sender), and Redis keys are binary-safe, so it is stored
verbatim. An identity longer than 200 bytes (UTF-8) is replaced by its SHA-256 under a separate
prefix, `{namespace}:dedup#sha256:{hex}`: a sender could otherwise make every key as large as its
event id, and the dedup store is the one structure that holds a key per event for the whole TTL.
The `#` keeps hashed keys disjoint from verbatim ones, so no short identity can collide with a
hashed one. Origins are stored as `source\\x1fpartition\\x1foffset`: partition and offset are
integers, which never contain \\x1f, so the encoding is unambiguous even if the source name does.

TTL (default 35 days) is set when the key is first stored and never refreshed. It must exceed
both the longest horizon over which a duplicate can arrive and the longest replay (the input's
retention): after it expires, a copy would be accepted as a first occurrence. Size the server for
one key per event over the TTL: about 230 bytes each with ingest-shaped identities (measured on
Redis 7.0), so 10 million events a day for 35 days need about 80 GB.

Durability is the server's: run it with AOF persistence (`appendfsync always` for no loss at all;
`everysec` can forget up to a second of claims in a crash, and a copy of one of those would then
be accepted). A replay of a forgotten *original* is harmless: it is stored again as first.

Unavailability: a ConnectionError, TimeoutError or BusyLoadingError (a server loading its data
after a restart), or a READONLY reply (a replica during failover), retries the *whole batch* with
capped exponential backoff and jitter (`sinks.retry`, the policy every sink shares), forever or
until `RetryPolicy.deadline`, after which `DedupUnavailable` is raised. The store never guesses an
answer and never drops an event. Retrying the whole batch is safe because the script is
idempotent for the same origins: if a failed attempt was in fact applied (the reply was lost)
or the server kept part of what it wrote, the retry finds each stored origin equal to the
claiming one and answers True again, not "duplicate"; an identity the attempt found already
owned by another origin is still owned by it and answers False again. The retry therefore gives
exactly the answers the first attempt would have.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from operators.dedup import Origin
from sinks.retry import RetryPolicy  # the shared policy, importable from here as before
from sinks.retry import call_with_retry as _call_with_retry

log = logging.getLogger("meterwax.redis")

T = TypeVar("T")

# BusyLoadingError is a ConnectionError in redis-py; READONLY means we reached a replica (a
# failover in progress), which the next connection will not be.
RETRYABLE: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, ReadOnlyError)

MAX_VERBATIM_IDENTITY = 200  # bytes; longer identities are stored as their SHA-256


class RedisUnavailable(Exception):
    """Redis could not be reached within the retry policy's deadline."""


class DedupUnavailable(RedisUnavailable):
    """The dedup store could not answer a batch within the deadline. No answer was guessed."""


def call_with_retry(attempt: Callable[[], T], policy: RetryPolicy, *,
                    sleep: Callable[[float], None], clock: Callable[[], float],
                    unavailable: type[RedisUnavailable], what: str) -> T:
    """`sinks.retry.call_with_retry` for Redis: run `attempt` until it succeeds, retrying the
    errors in RETRYABLE per `policy`; `unavailable` is raised after its deadline."""
    return _call_with_retry(attempt, policy, retryable=RETRYABLE, what=what, sleep=sleep,
                            clock=clock, on_give_up=unavailable, service="Redis", logger=log)


def connect(url: str, **kwargs: Any) -> redis.Redis:
    """A client for `url` whose own retries are off, so `RetryPolicy` alone decides (redis-py
    retries a failed command itself by default, with its own sleeps), and which never blocks
    forever on a silent server."""
    options: dict[str, Any] = {"socket_timeout": 10.0, "socket_connect_timeout": 5.0,
                               "retry": Retry(NoBackoff(), 0)}
    options.update(kwargs)
    return redis.Redis.from_url(url, **options)


class LuaScript:
    """EVALSHA, and EVAL once when the server answers NOSCRIPT: one round trip in the steady
    state, two after a server restart or SCRIPT FLUSH (EVAL caches the script again)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, client: redis.Redis, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return client.eval(self.source, len(keys), *keys, *args)


_CLAIM = LuaScript("""
local ttl = ARGV[1]
local out = {}
for i = 1, #KEYS do
  local origin = ARGV[i + 1]
  if redis.call('SET', KEYS[i], origin, 'NX', 'EX', ttl) then
    out[i] = 1
  elseif redis.call('GET', KEYS[i]) == origin then
    out[i] = 2
  else
    out[i] = 0
  end
end
return out
""")


def encode_origin(origin: Origin) -> bytes:
    source, partition, offset = origin
    return f"{source}\x1f{partition}\x1f{offset}".encode("utf-8", "surrogatepass")


class RedisDedup:
    """`DedupStore` backed by Redis. Thread-safe: Bytewax worker threads may share one.

    Given a URL (or through `from_url`) the client's own retries are off and `retry` alone
    decides; a client passed in keeps its settings, and `retry` wraps whatever it does."""

    def __init__(self, client_or_url: redis.Redis | str, *, namespace: str = "meterwax",
                 ttl: timedelta = timedelta(days=35), retry: RetryPolicy | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not namespace:
            msg = "namespace must not be empty"
            raise ValueError(msg)
        seconds = ttl.total_seconds()
        if seconds < 1 or seconds % 1:
            msg = f"ttl must be a whole number of seconds, at least 1, got {ttl}"
            raise ValueError(msg)
        self.client = connect(client_or_url) if isinstance(client_or_url, str) else client_or_url
        self.namespace = namespace
        self.ttl = ttl
        self.retry = retry if retry is not None else RetryPolicy()
        # Replays recognised (module docstring). A batch retried after an attempt that reached
        # Redis but whose reply was lost counts its claims here too: they are the same messages.
        self.replays = 0
        self._sleep = sleep
        self._clock = clock
        self._ttl_arg = str(int(seconds)).encode()
        self._prefix = f"{namespace}:dedup:".encode()
        self._hashed_prefix = f"{namespace}:dedup#sha256:".encode()

    @classmethod
    def from_url(cls, url: str, *, namespace: str = "meterwax",
                 ttl: timedelta = timedelta(days=35), retry: RetryPolicy | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, **client_options: Any
                 ) -> RedisDedup:
        """`client_options` go to redis-py (e.g. socket_timeout, ssl_ca_certs)."""
        return cls(connect(url, **client_options), namespace=namespace, ttl=ttl, retry=retry,
                   sleep=sleep, clock=clock)

    def key(self, identity: str) -> bytes:
        raw = identity.encode("utf-8", "surrogatepass")
        if len(raw) > MAX_VERBATIM_IDENTITY:
            return self._hashed_prefix + hashlib.sha256(raw).hexdigest().encode()
        return self._prefix + raw

    def snapshot(self) -> None:
        """Nothing: the first occurrences live in Redis, which persists them itself."""
        return None

    def expire(self, through: int) -> None:
        """Nothing: Redis forgets an identity by its TTL, which the retention horizon defaults
        to (operators/dedup.py)."""

    def claim(self, items: Sequence[tuple[str, Origin]],
              expires: Sequence[int] | None = None) -> list[bool]:
        # `expires` is for stores that forget by event time; this one forgets by its TTL.
        if not items:
            return []
        key = self.key
        keys = [key(identity) for identity, _ in items]
        args = [self._ttl_arg, *(encode_origin(origin) for _, origin in items)]
        client = self.client

        def attempt() -> list[Any]:
            return _CLAIM(client, keys, args)

        answers = call_with_retry(attempt, self.retry, sleep=self._sleep, clock=self._clock,
                                  unavailable=DedupUnavailable,
                                  what=f"dedup claim of {len(items)} event(s)")
        if len(answers) != len(items):
            msg = f"dedup script answered {len(answers)} claims for {len(items)}"
            raise RuntimeError(msg)
        self.replays += answers.count(2)
        return [a != 0 for a in answers]

    def close(self) -> None:
        self.client.close()
