"""ClickHouse store for rated windows.

The pieces:

* Backend-neutral pieces, shared by every ClickHouse backend: the versioned migrations in
  `schemas/clickhouse/migrations` (`load_migrations`, `Migration.render`, `apply_migrations`) and
  the batch encoding (`encode_batch`, `batch_token`, `insert_sql`).
* `ChdbStore`: the embedded backend (chdb, the ClickHouse engine in-process).
* `ClickHouseConnectStore`: the server backend (clickhouse-connect over HTTP). It implements
  `SqlConnection` over its client, calls `apply_migrations`, and sends `encode_batch(rows)` with
  `client.raw_insert(..., fmt="JSONEachRow", settings={"insert_deduplication_token": ...})`.
  `sinks.chdb_http` serves a chdb directory over the same HTTP interface.
* `open_store(url_or_path)`: a URL opens the server backend, a path the embedded one.

All I/O lives here; the domain code only builds `RatedWindow` values.
"""

from __future__ import annotations

import decimal
import hashlib
import operator
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import msgspec

from schemas.records import AcceptedEvent, RatedWindow

DEFAULT_DATABASE = "meterwax"
TABLE = "rated_windows"
FINAL_VIEW = "rated_windows_final"
LEDGER = "schema_migrations"

# Columns written by `encode_batch`, in RatedWindow order. `inserted_at` is left to its DEFAULT.
COLUMNS: tuple[str, ...] = RatedWindow.__struct_fields__

# Decimal(38, 18): 20 integer digits and 18 fractional digits.
DECIMAL_SCALE = 18
DECIMAL_INTEGER_DIGITS = 38 - DECIMAL_SCALE

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MIGRATION_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


# --------------------------------------------------------------------------------------------
# Errors


class ClickHouseStoreError(Exception):
    """Base class of the errors raised by this module."""


class MigrationError(ClickHouseStoreError):
    """The migration files and the database's migration ledger disagree."""


class MigrationChecksumError(MigrationError):
    """A migration that is already applied has been edited since."""

    def __init__(self, version: int, name: str, recorded: str, current: str) -> None:
        self.version, self.name, self.recorded, self.current = version, name, recorded, current
        super().__init__(
            f"migration {name} (version {version}) was applied with checksum {recorded}, "
            f"but the file now has checksum {current}: applied migrations must not be edited; "
            "add a new migration instead"
        )


class UnstorableValueError(ClickHouseStoreError, ValueError):
    """A row holds a value the table cannot store exactly (ClickHouse would round or reject it)."""


class StorePathError(ClickHouseStoreError):
    """chdb already hosts a database at another path in this process."""


class StoreClosedError(ClickHouseStoreError):
    """The store was used after `close()`."""


# --------------------------------------------------------------------------------------------
# Store interface


@runtime_checkable
class RatedWindowStore(Protocol):
    def write(self, rows: Sequence[RatedWindow]) -> None:
        """Store a batch, in one INSERT. Idempotent: writing rows again never double-counts."""

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a SELECT (no FORMAT clause); rows as dicts, Decimal columns as `Decimal`."""
        ...

    def close(self) -> None: ...


class SqlConnection(Protocol):
    """What `apply_migrations` needs from a backend."""

    def command(self, sql: str) -> None: ...

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]: ...


# --------------------------------------------------------------------------------------------
# Migrations (shared)


def check_database(database: str) -> str:
    if not _IDENTIFIER.fullmatch(database):
        msg = f"database name {database!r} must match {_IDENTIFIER.pattern}"
        raise ValueError(msg)
    return database


@dataclass(frozen=True)
class Migration:
    version: int
    name: str  # file stem, e.g. "0001_rated_windows"
    sql: str  # unrendered text, `{database}` placeholders, LF line endings

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def render(self, database: str) -> str:
        return self.sql.replace("{database}", f"`{check_database(database)}`")

    def statements(self, database: str) -> list[str]:
        return split_statements(self.render(database))


def migrations_dir() -> Traversable:
    return resources.files("schemas") / "clickhouse" / "migrations"


def load_migrations(directory: Traversable | Path | None = None) -> list[Migration]:
    """The migration files of `directory` (default: the packaged ones), in version order."""
    root = migrations_dir() if directory is None else directory
    found: dict[int, Migration] = {}
    for entry in root.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _MIGRATION_FILE.fullmatch(entry.name)
        if match is None:
            msg = f"migration file {entry.name!r} is not named NNNN_snake_case.sql"
            raise MigrationError(msg)
        version = int(match[1])
        if version in found:
            msg = f"two migration files with version {version}: {found[version].name}, {entry.name}"
            raise MigrationError(msg)
        # Normalise line endings so a CRLF checkout does not change the checksum.
        text = entry.read_bytes().decode().replace("\r\n", "\n")
        found[version] = Migration(version, entry.name.removesuffix(".sql"), text)
    return [found[v] for v in sorted(found)]


def split_statements(sql: str) -> list[str]:
    """Split a SQL script on `;`, ignoring those in quotes and comments. Drops comment-only parts
    (ClickHouse server endpoints take one statement per request)."""
    statements: list[str] = []
    current: list[str] = []
    has_code = False
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
            continue
        if sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
            current.append(" ")
            continue
        if ch in "'\"`":
            j = i + 1
            while j < n and sql[j] != ch:
                j += 2 if sql[j] == "\\" else 1
            current.append(sql[i : j + 1])
            has_code = True
            i = j + 1
            continue
        if ch == ";":
            if has_code:
                statements.append("".join(current).strip())
            current, has_code = [], False
        else:
            current.append(ch)
            has_code = has_code or not ch.isspace()
        i += 1
    if has_code:
        statements.append("".join(current).strip())
    return statements


def apply_migrations(
    conn: SqlConnection, database: str, migrations: Sequence[Migration] | None = None
) -> list[int]:
    """Bring `database` up to date; returns the versions applied now (empty when up to date).

    Migration 0 is the ledger (`schema_migrations`) and runs first on every call. Every other
    check happens before anything else is applied: an applied migration whose file changed
    (`MigrationChecksumError`), an applied version with no file, or a new file numbered below an
    applied one (`MigrationError`). Not safe against a concurrent run from another process on the
    same database; callers serialise it (ChdbStore holds the session lock).
    """
    check_database(database)
    ordered = sorted(load_migrations() if migrations is None else migrations,
                     key=lambda m: m.version)
    if len({m.version for m in ordered}) != len(ordered):
        msg = "duplicate migration versions"
        raise MigrationError(msg)
    if not ordered or ordered[0].version != 0:
        msg = f"migration 0000 (the {LEDGER} ledger) is missing"
        raise MigrationError(msg)
    for statement in ordered[0].statements(database):
        conn.command(statement)

    rows = conn.query(f"SELECT version, name, checksum FROM `{database}`.{LEDGER} ORDER BY version")
    applied: dict[int, str] = {}
    for row in rows:
        version, checksum = int(row["version"]), str(row["checksum"])
        if applied.setdefault(version, checksum) != checksum:
            msg = f"ledger holds two checksums for version {version}"
            raise MigrationError(msg)
    known = {m.version: m for m in ordered}
    unknown = sorted(set(applied) - set(known))
    if unknown:
        msg = f"database {database!r} has migrations {unknown} applied that this code does not have"
        raise MigrationError(msg)
    for m in ordered:
        if m.version in applied and applied[m.version] != m.checksum:
            raise MigrationChecksumError(m.version, m.name, applied[m.version], m.checksum)
    pending = [m for m in ordered if m.version not in applied]
    latest = max(applied, default=-1)
    late = [m.name for m in pending if m.version < latest]
    if late:
        msg = f"migrations {late} are numbered below the applied version {latest}; renumber them"
        raise MigrationError(msg)

    for m in pending:
        if m.version != 0:  # migration 0 has just run
            for statement in m.statements(database):
                conn.command(statement)
        conn.command(
            f"INSERT INTO `{database}`.{LEDGER} (version, name, checksum) "
            f"VALUES ({m.version}, '{m.name}', '{m.checksum}')"
        )
    return [m.version for m in pending]


# --------------------------------------------------------------------------------------------
# Batch encoding (shared)

_ENCODER = msgspec.json.Encoder()


def _decimal_text(value: Decimal, field: str) -> str:
    """`value` as plain decimal text, if Decimal(38, 18) holds it exactly. ClickHouse silently
    truncates extra fractional digits, so they are refused here instead."""
    if not value.is_finite():
        msg = f"{field}: {value} is not finite"
        raise UnstorableValueError(msg)
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    end = len(digits)
    while exponent < -DECIMAL_SCALE and end > 1 and digits[end - 1] == 0:
        end -= 1  # trailing zeros do not change the value
        exponent += 1
    if exponent < -DECIMAL_SCALE and any(digits):
        msg = f"{field}: {value} has more than {DECIMAL_SCALE} fractional digits"
        raise UnstorableValueError(msg)
    if value and value.adjusted() >= DECIMAL_INTEGER_DIGITS:
        msg = f"{field}: {value} has more than {DECIMAL_INTEGER_DIGITS} integer digits"
        raise UnstorableValueError(msg)
    return format(value, "f")


def _datetime_text(value: datetime, field: str) -> str:
    if value.tzinfo is None or value.utcoffset() is None:
        msg = f"{field}: naive datetime {value.isoformat()} (need an aware one)"
        raise UnstorableValueError(msg)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


_DECIMAL_FIELDS = tuple(
    f for f, t in zip(RatedWindow.__struct_fields__,
                      msgspec.structs.fields(RatedWindow), strict=True)
    if t.type is Decimal or t.type == "Decimal"
)
_DATETIME_FIELDS = tuple(
    f for f, t in zip(RatedWindow.__struct_fields__,
                      msgspec.structs.fields(RatedWindow), strict=True)
    if t.type is datetime or t.type == "datetime"
)
# Decimals encode as JSON strings (exponent forms such as "1E+3" included, which ClickHouse
# parses exactly); datetimes as RFC 3339 with "Z", read with date_time_input_format=best_effort.
_ROW_ENCODER = msgspec.json.Encoder(decimal_format="string")


# The fast path of `check_row`: a finite value below 10^20 that is a whole multiple of 10^-18
# is exactly a Decimal(38, 18). The remainder is exact once the quotient (< 10^38) fits the
# precision; an explicit context keeps that true whatever context the calling thread has.
_QUANTUM = Decimal(1).scaleb(-DECIMAL_SCALE)
_EXACT = decimal.Context(prec=DECIMAL_INTEGER_DIGITS + DECIMAL_SCALE + 2)


def check_row(row: RatedWindow) -> None:
    """Refuse what Decimal(38, 18) / DateTime64 would silently alter. The fast path is three
    cheap Decimal calls per value (no `as_tuple`, which builds a tuple of digits); the exact
    check, with its messages, runs only when that is inconclusive."""
    for field in _DECIMAL_FIELDS:
        value = getattr(row, field)
        if not (value.is_finite() and value.adjusted() < DECIMAL_INTEGER_DIGITS
                and not _EXACT.remainder(value, _QUANTUM)):
            _decimal_text(value, field)
    for field in _DATETIME_FIELDS:
        value = getattr(row, field)
        if value.tzinfo is not UTC and (value.tzinfo is None or value.utcoffset() is None):
            _datetime_text(value, field)


def encode_row(row: RatedWindow) -> bytes:
    """One JSONEachRow line (no newline), after `check_row`."""
    check_row(row)
    return _ROW_ENCODER.encode(row)


def encode_batch(rows: Sequence[RatedWindow]) -> bytes:
    """A batch as newline-separated JSONEachRow, ordered by (row_id, revision) so the same rows
    always encode to the same bytes (stable: equal keys keep their order, so the last one still
    wins a revision tie). Raises `UnstorableValueError` before anything is written."""
    ordered = sorted(rows, key=_BATCH_ORDER)
    for row in ordered:
        check_row(row)
    # One C call for the batch: the rows' `encode_row` lines, each followed by b"\n". Dropping
    # the last newline gives exactly the bytes b"\n".join would (the token hashes them).
    return _ROW_ENCODER.encode_lines(ordered)[:-1]


_BATCH_ORDER = operator.attrgetter("row_id", "revision")

EVENTS_TABLE = "usage_events"
EVENT_COLUMNS: tuple[str, ...] = AcceptedEvent.__struct_fields__
_EVENT_ORDER = operator.attrgetter("event_source", "event_id")


def encode_events(rows: Sequence[AcceptedEvent]) -> bytes:
    """Accepted events as JSONEachRow in identity order, so a replayed batch encodes to the same
    bytes and its dedup token matches."""
    for row in rows:
        if row.time.tzinfo is None:
            _datetime_text(row.time, "time")
    return _ROW_ENCODER.encode_lines(sorted(rows, key=_EVENT_ORDER))[:-1]


def events_insert_sql(database: str, token: str) -> str:
    return (
        f"INSERT INTO `{check_database(database)}`.{EVENTS_TABLE} ({', '.join(EVENT_COLUMNS)}) "
        f"SETTINGS insert_deduplication_token = '{token}', input_format_skip_unknown_fields = 0, "
        "date_time_input_format = 'best_effort' "
        "FORMAT JSONEachRow"
    )


def batch_token(payload: bytes) -> str:
    """Deterministic insert_deduplication_token for an encoded batch.

    It hashes the whole payload, not only row ids and revisions: ClickHouse drops *any* insert
    whose token it has seen, whatever its data, so a token from ids and revisions alone would
    silently discard a corrected replay (same windows and revisions, different amounts, e.g.
    after a catalog fix) for as long as the first token is in the deduplication window.
    """
    return "rw1-" + hashlib.sha256(payload).hexdigest()


def insert_sql(database: str, token: str) -> str:
    """The INSERT statement for one encoded batch (data follows on the next line).

    input_format_skip_unknown_fields=0: a RatedWindow field with no column is an error, not a
    silently dropped value."""
    columns = ", ".join(COLUMNS)
    return (
        f"INSERT INTO `{check_database(database)}`.{TABLE} ({columns}) "
        f"SETTINGS insert_deduplication_token = '{token}', input_format_skip_unknown_fields = 0, "
        "date_time_input_format = 'best_effort' "
        "FORMAT JSONEachRow"
    )


# --------------------------------------------------------------------------------------------
# Query results (chdb JSON output -> Python values)

# Settings of the store's own chdb connection (connection-string parameters apply to that
# connection only): decimals as JSON strings, datetimes as ISO 8601 UTC ("...Z").
_CHDB_SETTINGS = "output_format_json_quote_decimals=1&date_time_output_format=iso"
# Even unquoted JSON numbers decode as Decimal (exact), never through a binary float.
_DECODER = msgspec.json.Decoder(float_hook=Decimal)
_WRAPPER = re.compile(r"(?:Nullable|LowCardinality)\((.*)\)")


def _converter(ch_type: str) -> Any:
    while (match := _WRAPPER.fullmatch(ch_type)) is not None:
        ch_type = match[1]
    if ch_type.startswith("Decimal"):
        return Decimal
    if re.fullmatch(r"U?Int\d+", ch_type):
        return int
    if ch_type.startswith("Float"):
        return float
    if ch_type.startswith("DateTime"):
        return datetime.fromisoformat
    if ch_type in ("Date", "Date32"):
        return date.fromisoformat
    return None


def decode_json_result(payload: bytes) -> list[dict[str, Any]]:
    """Rows of a `FORMAT JSON` result, each value converted by its column type: Decimal ->
    Decimal, integers -> int, DateTime* -> aware datetime, Date -> date; others as decoded."""
    if not payload.strip():
        return []
    result = _DECODER.decode(payload)
    converters = {
        col["name"]: conv for col in result["meta"] if (conv := _converter(col["type"])) is not None
    }
    rows: list[dict[str, Any]] = result["data"]
    for row in rows:
        for name, conv in converters.items():
            value = row[name]
            if value is not None:
                row[name] = conv(value if isinstance(value, str) else str(value))
    return rows


# --------------------------------------------------------------------------------------------
# Embedded backend: chdb
#
# What chdb (4.4, engine 26.9) allows, checked by experiment: one process hosts ONE embedded
# engine, bound to one database path. Any number of sessions on that path may coexist (they see
# the same data, each has its own settings); opening a session on another path, or on ":memory:"
# (chdb.query() without a path, too), while one is open raises
# "EmbeddedServer already initialized with path ..."; once the last session closes, another path
# may be opened. chdb's own sessions are documented thread-safe, but the store still serialises
# its calls with a lock: one chdb connection, one statement at a time, and migrations atomic with
# respect to the other workers of the process.
#
# So every ChdbStore on a path shares one chdb session through a module-level registry with a
# reference count; the last close() closes it. A store on a second path raises StorePathError
# while another is open (instead of chdb's RuntimeError). Other code in the process that opens
# chdb itself (e.g. an in-memory chdb.query()) conflicts the same way while a store is open.


class _SharedSession:
    def __init__(self, path: str) -> None:
        from chdb.session import Session  # imported here: other backends do not need chdb

        self.path = path
        self.lock = threading.RLock()
        self.refs = 0
        self._session = Session(f"{path}?{_CHDB_SETTINGS}")

    def command(self, sql: str) -> None:
        with self.lock:
            self._session.query(sql, "TabSeparated")

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        with self.lock:
            result = self._session.query(sql, "JSON", params=dict(params) if params else None)
        return decode_json_result(result.bytes())

    def close(self) -> None:
        self._session.close()

    @property
    def raw(self) -> Any:
        """The chdb Session itself, for other in-process front ends (`sinks.chdb_http`). Hold
        `lock` around every use, and leave its settings and current database as they were."""
        return self._session


_REGISTRY_LOCK = threading.Lock()
_SESSIONS: dict[str, _SharedSession] = {}


def _acquire(path: str) -> _SharedSession:
    with _REGISTRY_LOCK:
        shared = _SESSIONS.get(path)
        if shared is None:
            if _SESSIONS:
                other = next(iter(_SESSIONS))
                msg = (f"chdb hosts one database path per process; {other!r} is open, so "
                       f"{path!r} cannot be opened until every store on it is closed")
                raise StorePathError(msg)
            shared = _SESSIONS[path] = _SharedSession(path)
        shared.refs += 1
        return shared


def _release(shared: _SharedSession) -> None:
    with _REGISTRY_LOCK:
        shared.refs -= 1
        if shared.refs == 0:
            del _SESSIONS[shared.path]
            shared.close()


def acquire_shared_session(path: str | os.PathLike[str]) -> _SharedSession:
    """The process's chdb session on `path`, shared with every ChdbStore on it (reference
    counted; `StorePathError` while another path is open). Pair with `release_shared_session`."""
    return _acquire(os.path.realpath(path))


def release_shared_session(shared: _SharedSession) -> None:
    _release(shared)


class ChdbStore:
    """Rated windows in an embedded chdb database directory `path`, database `database`.

    Opening applies pending migrations. Safe to share between Bytewax worker threads, and to open
    several times in one process on the same path (one chdb session is shared; see above).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        database: str = DEFAULT_DATABASE,
        *,
        migrations: Sequence[Migration] | None = None,
    ) -> None:
        self.database = check_database(database)
        self.path = os.path.realpath(path)
        self.applied: list[int] = []  # versions this open applied
        self._shared: _SharedSession | None = _acquire(self.path)
        try:
            with self._shared.lock:
                self.applied = apply_migrations(self._shared, database, migrations)
        except BaseException:
            self.close()
            raise

    def _session(self) -> _SharedSession:
        if self._shared is None:
            msg = "store is closed"
            raise StoreClosedError(msg)
        return self._shared

    def write(self, rows: Sequence[RatedWindow]) -> None:
        if not rows:
            return
        payload = encode_batch(rows)
        sql = insert_sql(self.database, batch_token(payload)) + "\n" + payload.decode()
        self._session().command(sql)

    def write_events(self, rows: Sequence[AcceptedEvent]) -> None:
        if not rows:
            return
        payload = encode_events(rows)
        sql = events_insert_sql(self.database, batch_token(payload)) + "\n" + payload.decode()
        self._session().command(sql)

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """`sql` without a FORMAT clause; `params` fill `{name:Type}` placeholders."""
        return self._session().query(sql, params)

    def final_rows(self) -> list[dict[str, Any]]:
        """Every window's final row (highest revision), ordered by row_id."""
        return self.query(f"SELECT * FROM `{self.database}`.{FINAL_VIEW} ORDER BY row_id")

    def close(self) -> None:
        with _REGISTRY_LOCK:
            shared, self._shared = self._shared, None
        if shared is not None:
            _release(shared)

    def __enter__(self) -> ChdbStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# Server backend: clickhouse-connect over HTTP (a ClickHouse server, or `sinks.chdb_http`)


class ClickHouseServerError(ClickHouseStoreError, RuntimeError):
    """The server refused a statement, or could not be reached. `code` is ClickHouse's error code
    (e.g. 47 UNKNOWN_IDENTIFIER) when the server sent one, else None. A RuntimeError, like the
    errors chdb raises, so callers handle SQL errors from either backend alike."""

    def __init__(self, message: str, code: int | None = None, name: str | None = None) -> None:
        self.code, self.name = code, name
        super().__init__(message)


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
    clickhouse-connect: a real server, or `sinks.chdb_http.ChdbHttpServer` over a chdb directory.

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


_URL = re.compile(r"https?://", re.IGNORECASE)


def open_store(
    url_or_path: str | os.PathLike[str], database: str = DEFAULT_DATABASE
) -> ChdbStore | ClickHouseConnectStore:
    """`http(s)://...`: a ClickHouse server over clickhouse-connect; anything else: a chdb
    directory, embedded."""
    if isinstance(url_or_path, str) and _URL.match(url_or_path):
        return ClickHouseConnectStore(url_or_path, database)
    return ChdbStore(url_or_path, database)
