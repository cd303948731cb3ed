"""The processing clock, injected wherever the domain needs "now".

Domain code never reads the wall clock itself: it calls the `Clock` it was given. Flows pass
`system_clock`; tests and replays pass a fixed instant (`fixed_clock`), so a run over old data is
judged as of the time it is replayed for.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


def fixed_clock(at: datetime) -> Clock:
    if at.tzinfo is None:
        msg = "a clock must give aware UTC times"
        raise ValueError(msg)
    instant = at.astimezone(UTC)
    return lambda: instant
