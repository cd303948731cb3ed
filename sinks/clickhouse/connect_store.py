"""The server backend: rated windows in a ClickHouse server reached over HTTP(S) with
clickhouse-connect (a real server, or `sinks.clickhouse.http` over a chdb directory)."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from schemas.records import AcceptedEvent, RatedWindow
from sinks.clickhouse.errors import ClickHouseServerError, StoreClosedError
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
    EVENT_COLUMNS,
    EVENTS_TABLE,
    batch_token,
    encode_batch,
    encode_events,
)


def _server_error(exc: Exception, doing: str) -> ClickHouseServerError:
    code = getattr(exc, "code", None)
    return ClickHouseServerError(f"{doing}: {exc}", code if isinstance(code, int) else None,
                                 getattr(exc, "name", None))


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
    """

    def __init__(
        self,
        url: str,
        database: str = DEFAULT_DATABASE,
        *,
        username: str = "default",
        password: str = "",
        migrations: Sequence[Migration] | None = None,
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
        try:
            self._client: Any = clickhouse_connect.get_client(
                interface=parts.scheme, host=parts.hostname, port=parts.port,
                username=unquote(parts.username) if parts.username else username,
                password=unquote(parts.password) if parts.password else password,
                # Sessions would serialise the client's threads; nothing here needs one.
                autogenerate_session_id=False, tz_mode="aware", **options)
        except Exception as exc:
            raise _server_error(exc, f"cannot connect to ClickHouse at {self.url}") from exc
        self._closed = False
        self._migration_lock = threading.Lock()
        self.applied: list[int] = []  # versions this open applied
        try:
            with self._migration_lock:
                self.applied = apply_migrations(self, database, migrations)
        except BaseException:
            self.close()
            raise

    def _live(self) -> Any:
        if self._closed:
            msg = "store is closed"
            raise StoreClosedError(msg)
        return self._client

    def command(self, sql: str) -> None:
        """Run a statement without a result (`SqlConnection`, for `apply_migrations`)."""
        client = self._live()
        try:
            client.command(sql)
        except Exception as exc:
            raise _server_error(exc, "statement failed") from exc

    def write(self, rows: Sequence[RatedWindow]) -> None:
        if not rows:
            return
        payload = encode_batch(rows)
        client = self._live()
        try:
            client.raw_insert(
                f"`{self.database}`.{TABLE}", COLUMNS, insert_block=payload, fmt="JSONEachRow",
                settings={"insert_deduplication_token": batch_token(payload),
                          "input_format_skip_unknown_fields": 0,
                          "date_time_input_format": "best_effort"})
        except Exception as exc:
            raise _server_error(exc, f"insert of {len(rows)} rated windows failed") from exc

    def write_events(self, rows: Sequence[AcceptedEvent]) -> None:
        if not rows:
            return
        payload = encode_events(rows)
        client = self._live()
        try:
            client.raw_insert(
                f"`{self.database}`.{EVENTS_TABLE}", EVENT_COLUMNS, insert_block=payload,
                fmt="JSONEachRow",
                settings={"insert_deduplication_token": batch_token(payload),
                          "input_format_skip_unknown_fields": 0,
                          "date_time_input_format": "best_effort"})
        except Exception as exc:
            raise _server_error(exc, f"insert of {len(rows)} usage events failed") from exc

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """`sql` without a FORMAT clause; `params` fill `{name:Type}` placeholders (bound on the
        server). Decimal -> Decimal, DateTime* -> aware UTC datetime, integers -> int."""
        client = self._live()
        parameters = dict(params) if params else None
        try:
            context = client.create_query_context(query=sql, parameters=parameters)
            if context.is_command:
                # OPTIMIZE, ALTER, ...: clickhouse-connect would return its summary as a row.
                client.command(sql, parameters=parameters)
                return []
            result = client.query(context=context)
        except Exception as exc:
            raise _server_error(exc, "query failed") from exc
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
        """Every window's final row (highest revision), ordered by row_id."""
        return self.query(f"SELECT * FROM `{self.database}`.{FINAL_VIEW} ORDER BY row_id")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.close()

    def __enter__(self) -> ClickHouseConnectStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
