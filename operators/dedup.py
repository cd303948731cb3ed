"""Deduplication port: one question, asked a batch at a time.

`claim` answers, for each (identity, origin) in input order, whether that occurrence is the first
one. The first occurrence's origin (source name, partition, offset) is remembered with it, so the
*same* message read again after a restart finds its own origin and is processed again (its
downstream writes are idempotent), while a copy at any other offset is a duplicate. This is the
replay-safety that plain "seen ids" dedup lacks: it never classifies a replay as a duplicate of
itself and so never loses usage whose first processing did not reach the store.

Implementations: `MemoryDedup` here (file mode, tests); a Redis one beside the Kafka source.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

Origin = tuple[str, int, int]  # (source name, partition, offset)


class DedupStore(Protocol):
    def claim(self, items: Sequence[tuple[str, Origin]]) -> list[bool]: ...

    # What a recovery snapshot must hold to rebuild this store (None: it keeps its own state,
    # as Redis does). The flow stores it without knowing which implementation it holds.
    def snapshot(self) -> Any: ...


class MemoryDedup:
    def __init__(self) -> None:
        self.first: dict[str, Origin] = {}

    def claim(self, items: Sequence[tuple[str, Origin]]) -> list[bool]:
        out = []
        first = self.first
        for identity, origin in items:
            seen = first.get(identity)
            if seen is None:
                first[identity] = origin
                out.append(True)
            else:
                out.append(seen == origin)
        return out

    def snapshot(self) -> dict[str, Origin]:
        return dict(self.first)
