"""The one retry policy of the sinks (`sinks.retry`), on its own with a fake clock, and in the
ClickHouse server store against the real clickhouse-connect and a real ClickHouse HTTP endpoint
(`ChdbHttpServer`, the chdb engine served on loopback): a server that comes up late, a server
restarted under an insert, the deadline, and errors that must not be retried."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

pytest.importorskip("clickhouse_connect")

from clickhouse_connect.driver.exceptions import (
    DatabaseError,
    OperationalError,
    ProgrammingError,
)
from conftest import FakeTime

from schemas.records import RatedWindow
from sinks import clickhouse as ch
from sinks import redis_dedup, running_charges
from sinks.clickhouse import (
    ClickHouseConnectStore,
    ClickHouseServerError,
    ClickHouseUnavailable,
)
from sinks.clickhouse.connect_store import is_transient
from sinks.clickhouse.http import ChdbHttpServer
from sinks.retry import RetryPolicy, call_with_retry, describe_error

JAN = datetime(2024, 1, 1, tzinfo=UTC)


class Unavailable(Exception):
    pass


def failing(times: int, error: Callable[[], BaseException], value: str = "done"
            ) -> tuple[Callable[[], str], list[int]]:
    """An attempt that raises `error()` on its first `times` calls, then returns `value`."""
    calls = [0]

    def attempt() -> str:
        calls[0] += 1
        if calls[0] <= times:
            raise error()
        return value

    return attempt, calls


def run(attempt: Callable[[], str], policy: RetryPolicy, fake: FakeTime, **kw: object) -> str:
    options: dict[str, object] = {"retryable": (ConnectionError,), "what": "test write",
                                  "on_give_up": Unavailable, "service": "Thing"}
    options.update(kw)
    return call_with_retry(attempt, policy, sleep=fake.sleep, clock=fake.clock,
                           **options)  # type: ignore[arg-type]


# --- the policy, pure ---------------------------------------------------------------------------


def test_success_after_failures_returns_the_value_and_delays_grow_to_the_cap() -> None:
    fake = FakeTime()
    attempt, calls = failing(6, lambda: ConnectionError("refused"))
    policy = RetryPolicy(initial=timedelta(milliseconds=100), maximum=timedelta(seconds=1),
                         random=lambda: 0.0)
    assert run(attempt, policy, fake) == "done"
    assert calls[0] == 7
    assert fake.sleeps == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_jitter_only_ever_shortens_a_wait() -> None:
    draws = iter([1.0, 0.5, 0.0])
    policy = RetryPolicy(initial=timedelta(seconds=1), maximum=timedelta(seconds=4),
                         jitter=0.5, random=lambda: next(draws))
    assert [policy.delay(n) for n in (1, 2, 3)] == pytest.approx([0.5, 1.5, 4.0])


def test_the_deadline_is_never_overslept(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeTime()
    attempt, calls = failing(10_000, lambda: ConnectionError("refused"))
    policy = RetryPolicy(initial=timedelta(milliseconds=100), maximum=timedelta(seconds=1),
                         deadline=timedelta(seconds=3), random=lambda: 0.0)
    with caplog.at_level(logging.WARNING, logger="meterwax.retry"), \
            pytest.raises(Unavailable) as err:
        run(attempt, policy, fake)
    # 0.1 + 0.2 + 0.4 + 0.8 + 1.0 = 2.5 s slept; one more second would end past 3 s.
    assert fake.sleeps == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0])
    assert fake.now <= 3
    assert calls[0] == 6
    assert str(err.value) == ("test write: Thing unavailable for 2.500s over 6 attempt(s), "
                              "deadline 3s: ConnectionError: refused")
    assert isinstance(err.value.__cause__, ConnectionError)
    # One WARNING per failed attempt that is retried, none for the one that gives up.
    assert [r.levelno for r in caplog.records] == [logging.WARNING] * 5
    assert caplog.records[0].getMessage() == (
        "test write: Thing unavailable (ConnectionError: refused); attempt 1 failed, "
        "retrying in 0.100s")


def test_a_zero_deadline_gives_up_on_the_first_failure() -> None:
    fake = FakeTime()
    attempt, calls = failing(1, lambda: ConnectionError("refused"))
    with pytest.raises(Unavailable, match="over 1 attempt"):
        run(attempt, RetryPolicy(deadline=timedelta(0)), fake)
    assert (calls[0], fake.sleeps) == (1, [])


def test_an_error_that_is_not_retryable_propagates_at_once() -> None:
    fake = FakeTime()
    attempt, calls = failing(1, lambda: ValueError("bad row"))
    with pytest.raises(ValueError, match="bad row"):
        run(attempt, RetryPolicy(), fake)
    assert (calls[0], fake.sleeps) == (1, [])
    # A retryable type that the predicate rules out is not retried either.
    attempt, calls = failing(1, lambda: ConnectionError("permanent"))
    with pytest.raises(ConnectionError, match="permanent"):
        run(attempt, RetryPolicy(), fake, transient=lambda exc: "permanent" not in str(exc))
    assert (calls[0], fake.sleeps) == (1, [])


def test_secrets_in_urls_are_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeTime()
    attempt, _ = failing(3, lambda: ConnectionError(
        "cannot reach redis://meter:hunter2@cache:6379/0 nor https://tok/en@edge/x"))
    policy = RetryPolicy(deadline=timedelta(milliseconds=120), random=lambda: 0.0)
    with caplog.at_level(logging.WARNING), pytest.raises(Unavailable) as err:
        run(attempt, policy, fake)
    assert caplog.records
    for text in [str(err.value), *(r.getMessage() for r in caplog.records)]:
        assert "hunter2" not in text and "tok/en" not in text
        assert "redis://meter:***@cache:6379/0" in text and "https://***@edge/x" in text
    long = describe_error(ValueError("head " + "x" * 5000 + " (Caused by refusal)"))
    assert len(long) < 650
    assert long.startswith("ValueError: head x") and long.endswith("x (Caused by refusal)")


def test_the_policy_is_the_one_redis_uses() -> None:
    assert redis_dedup.RetryPolicy is RetryPolicy
    assert running_charges.RetryPolicy is RetryPolicy
    with pytest.raises(ValueError, match="maximum"):
        RetryPolicy(initial=timedelta(seconds=2), maximum=timedelta(seconds=1))
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=1.5)
    with pytest.raises(ValueError, match="negative"):
        RetryPolicy(deadline=timedelta(seconds=-1))


def test_which_clickhouse_connect_errors_are_transient() -> None:
    assert is_transient(OperationalError("Error executing HTTP request"))  # transport, 503
    assert is_transient(ConnectionResetError()) and is_transient(TimeoutError())
    assert is_transient(DatabaseError("too many", code=202))  # TOO_MANY_SIMULTANEOUS_QUERIES
    assert is_transient(DatabaseError("keeper", code=999))
    assert not is_transient(DatabaseError("no table", code=60))  # UNKNOWN_TABLE
    assert not is_transient(DatabaseError("syntax", code=62))  # SYNTAX_ERROR
    assert not is_transient(DatabaseError("HTTP driver received HTTP status 502"))  # no code
    assert not is_transient(ProgrammingError("misuse"))
    assert not is_transient(ValueError("x"))


# --- the ClickHouse server store, for real -------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_session_left_open() -> Iterator[None]:
    yield
    assert not ch._SESSIONS, "a store or server was left open"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rated(i: int) -> RatedWindow:
    start = JAN + timedelta(hours=i)
    return RatedWindow(
        row_id=f"sub-1:api_calls:{int(start.timestamp())}", subscription_id="sub-1",
        customer_id="cust-1", plan_id="plan-pro", legal_entity="le-eu", currency="EUR",
        meter="api_calls", period="2024-01", window_start=start,
        window_end=start + timedelta(hours=1), revision=1, event_count=3,
        window_quantity=Decimal("10.5"), cumulative_quantity=Decimal("10.5") * (i + 1),
        amount_delta=Decimal("1.25"), cumulative_amount=Decimal("1.25") * (i + 1),
        rating_seq=i + 1, after_close=False)


def stored(store: ClickHouseConnectStore) -> tuple[int, list[str]]:
    """(raw row count, before any merge; the final rows' ids)."""
    (raw,) = store.query("SELECT count() AS n FROM meterwax.rated_windows")
    return int(raw["n"]), [r["row_id"] for r in store.final_rows()]


class Later:
    """Start a ChdbHttpServer on `port` after `delay` seconds, in a thread."""

    def __init__(self, path: Path, port: int, delay: float) -> None:
        self.server = ChdbHttpServer(path, port=port)
        self.failed: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, args=(delay,))
        self.thread.start()

    def _run(self, delay: float) -> None:
        time.sleep(delay)
        try:
            self.server.start()
        except BaseException as exc:  # raised in the test by join()
            self.failed.append(exc)

    def join(self) -> ChdbHttpServer:
        self.thread.join()
        if self.failed:
            raise self.failed[0]
        return self.server


QUICK = RetryPolicy(initial=timedelta(milliseconds=20), maximum=timedelta(milliseconds=200),
                    deadline=timedelta(seconds=60))


def test_a_store_opened_before_the_server_is_up_waits_for_it(tmp_path: Path) -> None:
    port = free_port()
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(seconds)

    later = Later(tmp_path / "chdb", port, delay=0.5)
    try:
        # Connecting and the migrations are retried; then the insert goes through.
        with ClickHouseConnectStore(f"http://127.0.0.1:{port}", retry=QUICK,
                                    sleep=sleep) as store:
            assert sleeps, "the server was up before the first attempt"
            rows = [rated(i) for i in range(5)]
            store.write(rows)
            assert stored(store) == (5, sorted(r.row_id for r in rows))
    finally:
        later.join().stop()


def test_an_insert_is_retried_across_a_server_restart_and_lands_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(seconds)

    server = ChdbHttpServer(tmp_path / "chdb").start()
    port = server.port
    later: Later | None = None
    try:
        with ClickHouseConnectStore(server.url, retry=QUICK, sleep=sleep) as store:
            store.write([rated(0)])
            assert sleeps == []
            server.stop()  # down, with the store's pooled connection to it
            later = Later(tmp_path / "chdb", port, delay=0.5)
            rows = [rated(i) for i in range(1, 4)]
            with caplog.at_level(logging.WARNING, logger="meterwax.clickhouse"):
                store.write(rows)  # waits for the server, then lands
            assert sleeps
            warned = [r.getMessage() for r in caplog.records if r.name == "meterwax.clickhouse"]
            assert len(warned) == len(sleeps)
            assert warned[0].startswith("insert of 3 rated windows: ClickHouse unavailable "
                                        "(OperationalError: ")
            # The cause, kept when a long text is cut.
            assert any("Connection refused" in w for w in warned)
            store.write(rows)  # a replay of the same batch changes nothing
            assert stored(store) == (4, sorted(r.row_id for r in [rated(0), *rows]))
    finally:
        server.stop()
        if later is not None:
            later.join().stop()


def test_after_the_deadline_the_typed_error_says_what_failed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nothing listens there
    fake = FakeTime()
    policy = RetryPolicy(initial=timedelta(milliseconds=10), maximum=timedelta(milliseconds=40),
                         deadline=timedelta(milliseconds=100), random=lambda: 0.0)
    with caplog.at_level(logging.WARNING, logger="meterwax.clickhouse"), \
            pytest.raises(ClickHouseUnavailable) as err:
        ClickHouseConnectStore(f"http://meter:hunter2@127.0.0.1:{port}", retry=policy,
                               sleep=fake.sleep, clock=fake.clock)
    message = str(err.value)
    assert message.startswith(f"connecting to ClickHouse at http://127.0.0.1:{port}: "
                              "ClickHouse unavailable for 0.070s over 4 attempt(s), "
                              "deadline 0.1s: OperationalError: ")
    assert "Connection refused" in message
    assert isinstance(err.value, ClickHouseServerError) and err.value.code is None
    assert isinstance(err.value.__cause__, OperationalError)
    assert fake.sleeps == pytest.approx([0.01, 0.02, 0.04])
    ours = [r for r in caplog.records if r.name == "meterwax.clickhouse"]
    assert len(ours) == 3
    assert all("hunter2" not in r.getMessage() for r in caplog.records)
    assert "hunter2" not in message

    # The same deadline for an insert into a server that went away.
    fake = FakeTime()
    with ChdbHttpServer(tmp_path / "chdb") as server, \
            ClickHouseConnectStore(server.url, retry=policy, sleep=fake.sleep,
                                   clock=fake.clock) as store:
        server.stop()
        with pytest.raises(ClickHouseUnavailable,
                           match=r"^insert of 2 rated windows: ClickHouse unavailable .* "
                                 r"deadline 0\.1s: OperationalError"):
            store.write([rated(0), rated(1)])
    assert fake.sleeps == pytest.approx([0.01, 0.02, 0.04])


def test_sql_errors_are_not_retried(tmp_path: Path) -> None:
    sleeps: list[float] = []
    with ChdbHttpServer(tmp_path / "chdb") as server, \
            ClickHouseConnectStore(server.url, sleep=sleeps.append) as store:
        with pytest.raises(ClickHouseServerError) as err:
            store.command("SELEC 1")
        assert err.value.code == 62  # SYNTAX_ERROR
        assert not isinstance(err.value, ClickHouseUnavailable)
        store.command("DROP TABLE meterwax.rated_windows_final")
        store.command("DROP TABLE meterwax.rated_windows")
        with pytest.raises(ClickHouseServerError, match="insert of 1 rated windows failed") as err:
            store.write([rated(0)])
        assert err.value.code == 60  # UNKNOWN_TABLE
        assert sleeps == []  # the default policy retries forever: it was never asked to wait


def test_a_transient_server_code_is_retried(tmp_path: Path) -> None:
    """TIMEOUT_EXCEEDED from the real engine (over HTTP 500, as a DatabaseError with a code)."""
    fake = FakeTime()
    policy = RetryPolicy(initial=timedelta(milliseconds=100), maximum=timedelta(milliseconds=100),
                         deadline=timedelta(milliseconds=250), jitter=0)
    with ChdbHttpServer(tmp_path / "chdb") as server, \
            ClickHouseConnectStore(server.url, retry=policy, sleep=fake.sleep,
                                   clock=fake.clock) as store:
        with pytest.raises(ClickHouseUnavailable, match=r"over 3 attempt.*code: 159") as err:
            store.command("SELECT sleepEachRow(0.02) FROM numbers(20) SETTINGS "
                          "max_block_size = 1, max_execution_time = 0.05")
        assert fake.sleeps == pytest.approx([0.1, 0.1])
        assert isinstance(err.value.__cause__, DatabaseError)
        assert err.value.__cause__.code == 159
