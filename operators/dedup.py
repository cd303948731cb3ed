"""Deduplication port: one question, asked a batch at a time.

`claim` answers, for each (identity, origin) in input order, whether that occurrence is the first
one. The first occurrence's origin (source name, partition, offset) is remembered with it, so the
*same* message read again after a restart finds its own origin and is processed again (its
downstream writes are idempotent), while a copy at any other offset is a duplicate. This is the
replay-safety that plain "seen ids" dedup lacks: it never classifies a replay as a duplicate of
itself and so never loses usage whose first processing did not reach the store.

Every claim also says when its identity may be forgotten: the end of the event's period
(epoch seconds). `expire(through)` is called once the watermark retired every period ending at or
before `through` (operators/ingest.py): an event of such a period is refused before dedup is
asked (LATE_BEYOND_RETENTION), so no later claim can need those identities. The memory store
forgets them then, which bounds it by the periods in flight, not the length of the input; Redis
forgets by its own TTL, which this horizon defaults to. A duplicate dated in a later period than
the first occurrence keeps the identity until that later period retires too: forgetting it with
the first one's period would let a third copy, dated in the later period, be rated again.

Implementations: `MemoryDedup` here (file mode, tests); a Redis one beside the Kafka source.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

Origin = tuple[str, int, int]  # (source name, partition, offset)


class DedupStore(Protocol):
    # Claims this process answered True because the same message (same origin) had claimed
    # the identity before: a replay recognised, not a duplicate. In-process and monotonic, for
    # metrics only: it is not part of any snapshot or result.
    replays: int

    def claim(self, items: Sequence[tuple[str, Origin]],
              expires: Sequence[int] | None = None) -> list[bool]: ...

    def expire(self, through: int) -> None: ...

    # What a recovery snapshot must hold to rebuild this store (None: it keeps its own state,
    # as Redis does). The flow stores it without knowing which implementation it holds.
    def snapshot(self) -> Any: ...


class MemoryDedup:
    def __init__(self) -> None:
        self.replays = 0
        self.first: dict[str, Origin] = {}
        # period end (epoch seconds) -> the identities first claimed for that period. Forgetting
        # is by whole periods, so a list per period costs one reference per identity.
        self.by_expiry: dict[int, list[str]] = {}
        # identity -> the latest period end of a duplicate dated after its first occurrence's
        # period: the few identities whose memory a duplicate extended.
        self.until: dict[str, int] = {}

    def claim(self, items: Sequence[tuple[str, Origin]],
              expires: Sequence[int] | None = None) -> list[bool]:
        out = []
        first = self.first
        by_expiry = self.by_expiry
        for n, (identity, origin) in enumerate(items):
            seen = first.get(identity)
            if seen is None:
                first[identity] = origin
                if expires is not None:
                    at = expires[n]
                    bucket = by_expiry.get(at)
                    if bucket is None:
                        bucket = by_expiry[at] = []
                    bucket.append(identity)
                out.append(True)
            else:
                same = seen == origin
                if same:
                    self.replays += 1
                elif expires is not None:
                    at = expires[n]
                    if at > self.until.get(identity, -1):
                        self.until[identity] = at
                out.append(same)
        return out

    def expire(self, through: int) -> None:
        first, until, by_expiry = self.first, self.until, self.by_expiry
        for at in sorted(at for at in by_expiry if at <= through):
            for identity in by_expiry.pop(at):
                later = until.pop(identity, None)
                if later is not None and later > through:
                    by_expiry.setdefault(later, []).append(identity)  # kept until then
                else:
                    first.pop(identity, None)

    def snapshot(self) -> tuple[dict[str, Origin], dict[int, list[str]], dict[str, int]]:
        return (dict(self.first), {at: list(ids) for at, ids in self.by_expiry.items()},
                dict(self.until))

    @classmethod
    def restore(cls, snapshot: Any) -> MemoryDedup:
        """From `snapshot()`, or from a snapshot of the builds before expiry (the dict alone)."""
        store = cls()
        if isinstance(snapshot, tuple):
            first, by_expiry, *until = snapshot
            store.first = dict(first)
            store.by_expiry = {at: list(ids) for at, ids in by_expiry.items()}
            store.until = dict(until[0]) if until else {}
        elif snapshot:
            store.first = dict(snapshot)
        return store
