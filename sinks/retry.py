"""The one retry policy of the sinks: capped exponential backoff with jitter and an optional
deadline, shared by Redis (dedup, running charges) and the ClickHouse server store.

`call_with_retry` runs an attempt until it succeeds. Which errors mean "unavailable, try again"
is the caller's to say (`retryable` types, narrowed by an optional `transient` predicate): every
other error propagates at once, on the first attempt. Each failed attempt is logged at WARNING
with the error's class and message only, any password in a URL of that message hidden; after the
deadline the caller's own typed error (`on_give_up`) is raised from the last failure.

The clock and the sleep are injected, so tests run whole schedules without sleeping. Standard
library only: every sink can use it whatever client library it needs.
"""

from __future__ import annotations

import logging
import random as _random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

log = logging.getLogger("meterwax.retry")

T = TypeVar("T")

# Error texts are logged and put into the give-up error: a client that prints its URL would
# print a password in it, and one that prints a request would print all of it. The userinfo runs
# to the last "@" of the word, as a password may hold "@" and "/" unescaped: a URL whose path
# holds an "@" is hidden too much, never too little.
_URL_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)(\S*)@")
# Long texts keep both ends: clients put the cause last (urllib3: "... (Caused by ...)").
_HEAD, _TAIL = 300, 300


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Capped exponential backoff with jitter. Attempt n (n >= 1 failures) waits
    min(maximum, initial * multiplier**(n-1)) scaled by a factor in [1 - jitter, 1] drawn from
    `random` (injectable for tests). `deadline`: give up once the next attempt would start more
    than this long after the first; None retries forever."""

    initial: timedelta = timedelta(milliseconds=50)
    maximum: timedelta = timedelta(seconds=5)
    multiplier: float = 2.0
    jitter: float = 0.5
    deadline: timedelta | None = None
    random: Callable[[], float] = field(default=_random.random, compare=False)

    def __post_init__(self) -> None:
        if self.initial <= timedelta(0) or self.maximum < self.initial:
            msg = "retry delays must be positive and maximum >= initial"
            raise ValueError(msg)
        if self.multiplier < 1 or not 0 <= self.jitter <= 1:
            msg = "retry multiplier must be >= 1 and jitter within [0, 1]"
            raise ValueError(msg)
        if self.deadline is not None and self.deadline < timedelta(0):
            msg = "retry deadline must not be negative"
            raise ValueError(msg)

    def delay(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th consecutive failure."""
        cap = self.maximum.total_seconds()
        # Bounded exponent: the cap is reached long before the float would overflow.
        base = min(cap, self.initial.total_seconds() * self.multiplier ** min(failures - 1, 64))
        return base * (1 - self.jitter * self.random())


def describe_error(exc: BaseException) -> str:
    """`Class: message` of `exc`, fit to log: the password of any URL in it replaced by ***
    (the user kept), and a long text cut in the middle to a few hundred characters."""

    def hide(match: re.Match[str]) -> str:
        user, colon, _password = match[2].partition(":")
        # No colon: some clients read a lone userinfo as the password (rediss://token@host).
        return f"{match[1]}{user}:***@" if colon else f"{match[1]}***@"

    text = _URL_USERINFO.sub(hide, f"{type(exc).__name__}: {exc}")
    if len(text) > _HEAD + _TAIL + 5:
        text = f"{text[:_HEAD]} ... {text[-_TAIL:]}"
    return text


def call_with_retry(attempt: Callable[[], T], policy: RetryPolicy, *,
                    retryable: tuple[type[BaseException], ...],
                    what: str,
                    sleep: Callable[[float], None],
                    clock: Callable[[], float],
                    on_give_up: Callable[[str], BaseException],
                    service: str = "the server",
                    transient: Callable[[BaseException], bool] | None = None,
                    logger: logging.Logger | None = None) -> T:
    """Run `attempt` until it returns, retrying the errors that are instances of `retryable`
    (and for which `transient`, when given, answers True) per `policy`; any other error
    propagates at once.

    `what` names the operation and `service` the system (e.g. "Redis") in the log lines and the
    give-up message. When the next wait would end past `policy.deadline` (counted from the
    first attempt, on `clock`), `on_give_up(message)` is raised from the last error.
    """
    out = logger if logger is not None else log
    start = clock()
    failures = 0
    while True:
        try:
            return attempt()
        except retryable as exc:
            if transient is not None and not transient(exc):
                raise
            failures += 1
            delay = policy.delay(failures)
            elapsed = clock() - start
            deadline = policy.deadline
            if deadline is not None and elapsed + delay > deadline.total_seconds():
                msg = (f"{what}: {service} unavailable for {elapsed:.3f}s over {failures} "
                       f"attempt(s), deadline {deadline.total_seconds():g}s: "
                       f"{describe_error(exc)}")
                raise on_give_up(msg) from exc
            out.warning("%s: %s unavailable (%s); attempt %d failed, retrying in %.3fs",
                        what, service, describe_error(exc), failures, delay)
            sleep(delay)
