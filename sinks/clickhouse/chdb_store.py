"""The embedded backend: rated windows in a chdb database directory (the ClickHouse engine
in-process), and the one chdb session per path that the process shares."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from schemas.records import AcceptedEvent, RatedWindow, StoredDocument, StoredRejection
from sinks.clickhouse.errors import StoreClosedError, StorePathError
from sinks.clickhouse.migrations import (
    DEFAULT_DATABASE,
    FINAL_VIEW,
    Migration,
    apply_migrations,
    check_database,
)
from sinks.clickhouse.rows import (
    DOCUMENT_COLUMNS,
    DOCUMENTS_TABLE,
    REJECTED_COLUMNS,
    REJECTED_TABLE,
    batch_token,
    decode_json_result,
    encode_batch,
    encode_documents,
    encode_events,
    encode_rejections,
    events_insert_sql,
    insert_sql,
    table_insert_sql,
)

# Settings of the store's own chdb connection (connection-string parameters apply to that
# connection only): decimals as JSON strings, datetimes as ISO 8601 UTC ("...Z").
_CHDB_SETTINGS = "output_format_json_quote_decimals=1&date_time_output_format=iso"


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
        # Under the lock: a writer on another thread may be inside a statement
        # (sinks.clickhouse.sink._BackgroundWriter), and chdb must not close under it.
        with self.lock:
            self._session.close()

    @property
    def raw(self) -> Any:
        """The chdb Session itself, for other in-process front ends (`sinks.clickhouse.http`).
        Hold `lock` around every use, and leave its settings and current database as they
        were."""
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
        # No retry (unlike ClickHouseConnectStore): the engine is in-process, no network to wait.
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

    def write_documents(self, rows: Sequence[StoredDocument]) -> None:
        self._write_table(DOCUMENTS_TABLE, DOCUMENT_COLUMNS,
                          encode_documents(rows) if rows else b"")

    def write_rejections(self, rows: Sequence[StoredRejection]) -> None:
        self._write_table(REJECTED_TABLE, REJECTED_COLUMNS,
                          encode_rejections(rows) if rows else b"")

    def _write_table(self, table: str, columns: Sequence[str], payload: bytes) -> None:
        if not payload:
            return
        sql = table_insert_sql(self.database, table, columns, batch_token(payload))
        self._session().command(sql + "\n" + payload.decode())

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """`sql` without a FORMAT clause; `params` fill `{name:Type}` placeholders."""
        return self._session().query(sql, params)

    def final_rows(self) -> list[dict[str, Any]]:
        """Every row once (replayed copies collapsed), ordered by row_id."""
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
