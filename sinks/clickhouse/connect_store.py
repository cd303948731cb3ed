"""The server backend: rated windows in a ClickHouse server reached over HTTP(S) with
clickhouse-connect (a real server, or `sinks.clickhouse.http` over a chdb directory).

Every write path retries transient failures with the policy every sink shares (`sinks.retry`,
as Redis does): connecting, the migrations run on open, and each INSERT. After the policy's
deadline `ClickHouseUnavailable` is raised; a permanent error (a SQL error, a refused value) is
raised at once as `ClickHouseServerError` with the server's code. `query` does not retry: a
reader should fail fast and let its caller decide.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

from schemas.records import AcceptedEvent, RatedWindow, StoredDocument, StoredRejection
from sinks.clickhouse.errors import (
    ClickHouseServerError,
    ClickHouseStoreError,
    ClickHouseUnavailable,
    StoreClosedError,
)
from sinks.clickhouse.migrations import (
    DEFAULT_DATABASE,
    FINAL_VIEW,
    TABLE,
    Migration,
    apply_migrations,
    check_database,
)
from sinks.clickhouse.rows import (
    _WRAPPER,
    COLUMNS,
    DOCUMENT_COLUMNS,
    DOCUMENTS_TABLE,
    EVENT_COLUMNS,
    EVENTS_TABLE,
    REJECTED_COLUMNS,
    REJECTED_TABLE,
    ROWS_FORMAT,
    batch_token,
    encode_batch,
    encode_documents,
    encode_events,
    encode_rejections,
)
from sinks.retry import RetryPolicy, call_with_retry

log = logging.getLogger("meterwax.clickhouse")

T = TypeVar("T")

# Which failures are transient (retried), read from clickhouse-connect's sync HTTP client
# (driver/exceptions.py, _backend/http_sync.py, _backend/httpcommon.py; 0.8 to 1.x):
#
# * `OperationalError`. The client raises it for a transport failure (any urllib3 HTTPError:
#   connection refused or reset, connect or read timeout, the connection closed before or while
#   the response came), for HTTP 429, 503 and 504 (`retryable_http_statuses`: an overloaded
#   server, or a server or proxy restarting), and for a response body cut off mid-read. Its other
#   uses never come from the calls retried here (Arrow string settings, the async client's
#   decompression) but one: an unexpected answer to the version and settings queries that
#   `get_client` sends, i.e. something other than ClickHouse at that address. That is retried
#   like a server not up yet, and each WARNING line says what answered, until the deadline.
# * The builtin `ConnectionError` and `TimeoutError`, should one ever escape the client unwrapped.
# * `DatabaseError` (HTTP 500 with an X-ClickHouse-Exception-Code) only with one of the server
#   codes in _TRANSIENT_CODES: load, timeouts, replication and Keeper trouble, the server's own
#   network. Each clears without any change to the statement.
#
# Everything else is permanent and raised at once: a SQL or schema error (SYNTAX_ERROR 62,
# UNKNOWN_TABLE 60, UNKNOWN_IDENTIFIER 47, UNKNOWN_DATABASE 81, ...), a refused value
# (CANNOT_PARSE_*, INCORRECT_DATA), AUTHENTICATION_FAILED 516, READONLY 164 (a read-only user
# stays read-only), a `ProgrammingError` (misuse of the client), and a `DatabaseError` without a
# server code: an HTTP error other than 429/503/504 and without ClickHouse's exception header
# (a proxy's 502, a 404), which clickhouse-connect does not tell apart, and whose text we never
# match.
_TRANSIENT_CODES = frozenset({
    159,  # TIMEOUT_EXCEEDED
    202,  # TOO_MANY_SIMULTANEOUS_QUERIES
    203,  # NO_FREE_CONNECTION
    209,  # SOCKET_TIMEOUT
    210,  # NETWORK_ERROR
    241,  # MEMORY_LIMIT_EXCEEDED: the server's total, taken by other queries (batches are bounded)
    242,  # TABLE_IS_READ_ONLY: a replica that lost Keeper
    252,  # TOO_MANY_PARTS: inserts outpacing merges; backing off is the cure
    279,  # ALL_CONNECTION_TRIES_FAILED
    285,  # TOO_FEW_LIVE_REPLICAS: insert_quorum not reachable right now
    319,  # UNKNOWN_STATUS_OF_INSERT: a quorum insert's fate unknown; resend the same block
    999,  # KEEPER_EXCEPTION
})

# Retrying a write is safe even when the failed attempt did land (the server committed the block
# and the reply was lost). rated_windows is a ReplacingMergeTree(revision) sorted by
# (subscription_id, meter, window_start, row_id), usage_events a ReplacingMergeTree sorted by the
# event's identity (schemas/clickhouse/migrations/0001_rated_windows.sql, 0002_usage_events.sql):
# a second copy of a row collapses into the first, and reads through rated_windows_final or FINAL
# count it once. The retry also sends the same bytes with the same insert_deduplication_token,
# so with non_replicated_deduplication_window the server usually drops it before it is a part.
# Migrations are re-runnable statement by statement (IF NOT EXISTS, the rule of
# 0000_schema_migrations.sql), and a ledger row written twice holds the same checksum, which
# `apply_migrations` accepts.


def _retryable() -> tuple[type[BaseException], ...]:
    from clickhouse_connect.driver.exceptions import DatabaseError  # see the import in __init__

    return (DatabaseError, ConnectionError, TimeoutError)


def is_transient(exc: BaseException) -> bool:
    """Whether a failure of a clickhouse-connect call is worth retrying (see _TRANSIENT_CODES)."""
    from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

    if isinstance(exc, OperationalError | ConnectionError | TimeoutError):
        return True
    return isinstance(exc, DatabaseError) and exc.code in _TRANSIENT_CODES


def _server_error(exc: Exception, doing: str) -> ClickHouseServerError:
    code = getattr(exc, "code", None)
    return ClickHouseServerError(f"{doing}: {exc}", code if isinstance(code, int) else None,
                                 getattr(exc, "name", None))


def _mapped(call: Callable[[], T], failed: str) -> T:
    """`call`, its client errors raised as ClickHouseServerError ("{failed}: ..."); the store's
    own errors (ClickHouseUnavailable, StoreClosedError) pass as they are."""
    try:
        return call()
    except ClickHouseStoreError:
        raise
    except Exception as exc:
        raise _server_error(exc, failed) from exc


def _plain_decimal(value: Decimal) -> Decimal:
    """`value` as ClickHouse prints it (and ChdbStore returns it): no trailing fractional zeros,
    no exponent. The Native reader keeps the column's scale (1.5 -> 1.500000000000000000)."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return Decimal(text)


def _aware_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _result_converter(ch_type: str) -> Any:
    while (match := _WRAPPER.fullmatch(ch_type)) is not None:
        ch_type = match[1]
    if ch_type.startswith("Decimal"):
        return _plain_decimal
    if ch_type.startswith("DateTime"):
        return _aware_utc
    return None


class ClickHouseConnectStore:
    """Rated windows in database `database` of a ClickHouse server reached over HTTP(S) with
    clickhouse-connect: a real server, or `sinks.clickhouse.http.ChdbHttpServer` over a chdb
    directory.

    Same contract as ChdbStore: opening applies pending migrations (`apply_migrations`, the same
    files, ledger and checksums); `write` sends one INSERT per batch with exactly ChdbStore's
    JSONEachRow payload, settings and `insert_deduplication_token`, so a batch replayed through
    either backend is recognised; `query` returns Decimal columns as exact Decimals (the Native
    reader builds them from integers; never through float), printed as ClickHouse prints them, and
    DateTime columns as aware UTC datetimes. Thread-safe (no HTTP session: every request stands
    alone). `url`: `http(s)://[user:password@]host:port`; other URL query parameters go to
    `clickhouse_connect.get_client` (e.g. `?compress=false&connect_timeout=5`).

    `retry`: connecting, migrating and every write retry transient failures (`is_transient`)
    with this policy; the default, like Redis's, retries forever, so an outage stalls the
    pipeline instead of failing it. After a deadline `ClickHouseUnavailable` is raised. `sleep`
    and `clock` are injected for tests.
    """

    def __init__(
        self,
        url: str,
        database: str = DEFAULT_DATABASE,
        *,
        username: str = "default",
        password: str = "",
        migrations: Sequence[Migration] | None = None,
        migrate: bool = True,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from urllib.parse import parse_qsl, unquote, urlsplit

        import clickhouse_connect  # imported here: the embedded backend does not need it

        self.database = check_database(database)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            msg = f"ClickHouse URL {url!r} must look like http(s)://host:port"
            raise ValueError(msg)
        if parts.path not in ("", "/"):
            # A database in the URL would be sent with every request, before migration 0000
            # has created it; the store names its database in every statement instead.
            msg = f"ClickHouse URL {url!r} has a path; pass the database as `database`"
            raise ValueError(msg)
        self.url = f"{parts.scheme}://{parts.hostname}:{parts.port}" if parts.port else \
            f"{parts.scheme}://{parts.hostname}"
        options: dict[str, Any] = dict(parse_qsl(parts.query))
        self.retry = retry if retry is not None else RetryPolicy()
        self._sleep, self._clock = sleep, clock
        host, port = parts.hostname, parts.port

        def connect() -> Any:
            # get_client asks the server for its version and settings: the first request.
            return clickhouse_connect.get_client(
                interface=parts.scheme, host=host, port=port,
                username=unquote(parts.username) if parts.username else username,
                password=unquote(parts.password) if parts.password else password,
                # Sessions would serialise the client's threads; nothing here needs one.
                autogenerate_session_id=False, tz_mode="aware", **options)

        self._closed = False
        self._client: Any = self._retrying(connect, f"connecting to ClickHouse at {self.url}",
                                           f"cannot connect to ClickHouse at {self.url}")
        self._migration_lock = threading.Lock()
        self.applied: list[int] = []  # versions this open applied
        try:
            # A reader (the HTTP API) passes migrate=False: it must work against a read-only
            # server, and the schema is the writer's (`meterwax stream`) to bring up to date.
            if migrate:
                with self._migration_lock:
                    self.applied = apply_migrations(_Migrating(self), database, migrations)
        except BaseException:
            self.close()
            raise

    def _retrying(self, call: Callable[[], T], what: str, failed: str) -> T:
        """`call` under the retry policy; a permanent failure as ClickHouseServerError
        ("{failed}: ..."), the deadline as ClickHouseUnavailable ("{what}: ...")."""
        return _mapped(lambda: call_with_retry(
            call, self.retry, retryable=_retryable(), transient=is_transient, what=what,
            sleep=self._sleep, clock=self._clock, on_give_up=ClickHouseUnavailable,
            service="ClickHouse", logger=log), failed)

    def _live(self) -> Any:
        if self._closed:
            msg = "store is closed"
            raise StoreClosedError(msg)
        return self._client

    def command(self, sql: str) -> None:
        """Run a statement without a result (`SqlConnection`, for `apply_migrations`), retrying
        transient failures: migration statements are re-runnable."""
        self._retrying(lambda: self._live().command(sql), "statement", "statement failed")

    def write(self, rows: Sequence[RatedWindow]) -> None:
        """One INSERT, retried while the server is unavailable (safe: see above)."""
        if not rows:
            return
        self._insert(TABLE, COLUMNS, encode_batch(rows), f"insert of {len(rows)} rated windows",
                     ROWS_FORMAT)

    def write_events(self, rows: Sequence[AcceptedEvent]) -> None:
        if not rows:
            return
        self._insert(EVENTS_TABLE, EVENT_COLUMNS, encode_events(rows),
                     f"insert of {len(rows)} usage events")

    def write_documents(self, rows: Sequence[StoredDocument]) -> None:
        if rows:
            self._insert(DOCUMENTS_TABLE, DOCUMENT_COLUMNS, encode_documents(rows),
                         f"insert of {len(rows)} billing documents")

    def write_rejections(self, rows: Sequence[StoredRejection]) -> None:
        if rows:
            self._insert(REJECTED_TABLE, REJECTED_COLUMNS, encode_rejections(rows),
                         f"insert of {len(rows)} rejected events")

    def _insert(self, table: str, columns: Sequence[str], payload: bytes, what: str,
                fmt: str = "JSONEachRow") -> None:
        settings = {"insert_deduplication_token": batch_token(payload),
                    "input_format_skip_unknown_fields": 0,
                    "date_time_input_format": "best_effort"}

        def insert() -> None:
            self._live().raw_insert(f"`{self.database}`.{table}", columns, insert_block=payload,
                                    fmt=fmt, settings=settings)

        self._retrying(insert, what, f"{what} failed")

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """`sql` without a FORMAT clause; `params` fill `{name:Type}` placeholders (bound on the
        server). Decimal -> Decimal, DateTime* -> aware UTC datetime, integers -> int. Not
        retried."""
        return self._query(sql, params, retried=False)

    def _query(self, sql: str, params: Mapping[str, Any] | None, *,
               retried: bool) -> list[dict[str, Any]]:
        parameters = dict(params) if params else None

        def run() -> Any:
            client = self._live()
            context = client.create_query_context(query=sql, parameters=parameters)
            if context.is_command:
                # OPTIMIZE, ALTER, ...: clickhouse-connect would return its summary as a row.
                client.command(sql, parameters=parameters)
                return None
            return client.query(context=context)

        result = (self._retrying(run, "query", "query failed") if retried
                  else _mapped(run, "query failed"))
        if result is None:
            return []
        names = list(result.column_names)
        converters = [(name, conv) for name, ch_type in zip(names, result.column_types,
                                                            strict=True)
                      if (conv := _result_converter(ch_type.name)) is not None]
        rows = [dict(zip(names, row, strict=True)) for row in result.result_rows]
        for row in rows:
            for name, conv in converters:
                value = row[name]
                if value is not None:
                    row[name] = conv(value)
        return rows

    def final_rows(self) -> list[dict[str, Any]]:
        """Every row once (replayed copies collapsed), ordered by row_id."""
        return self.query(f"SELECT * FROM `{self.database}`.{FINAL_VIEW} ORDER BY row_id")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.close()

    def __enter__(self) -> ClickHouseConnectStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Migrating:
    """The store as `apply_migrations` sees it: statements and the ledger read both retried
    (opening is a write path; the public `query` is not retried)."""

    def __init__(self, store: ClickHouseConnectStore) -> None:
        self._store = store

    def command(self, sql: str) -> None:
        self._store.command(sql)

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        return self._store._query(sql, params, retried=True)
