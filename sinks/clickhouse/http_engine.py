"""The engine side of `sinks.clickhouse.http`: runs one HTTP request's statement on the
process's shared chdb session, under its lock, and puts the session's settings and current
database back as they were."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sinks.clickhouse.chdb_store import acquire_shared_session, release_shared_session
from sinks.clickhouse.http_wire import (
    _ClickHouseError,
    _engine_error,
    _error,
    _quote_identifier,
    _quote_string,
    _statement_kind,
)

log = logging.getLogger("meterwax.chdb_http")

# Applied to every HTTP request unless it sets them itself: ClickHouse server defaults that the
# shared session (set up for ChdbStore's JSON reader) has changed.
_HTTP_DEFAULT_SETTINGS = {"date_time_output_format": "simple",
                          "output_format_json_quote_decimals": "0"}
# Statement kinds that return a result set (and may run under readonly / GET).
_RESULT_KINDS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN",
                           "(", "CHECK"})
_READONLY_KINDS = _RESULT_KINDS - {"CHECK"}
_WRITE_KINDS = frozenset({
    "INSERT", "CREATE", "ALTER", "DROP", "DETACH", "ATTACH", "RENAME", "TRUNCATE", "OPTIMIZE",
    "SYSTEM", "KILL", "DELETE", "UPDATE", "GRANT", "REVOKE", "EXCHANGE", "UNDROP", "BACKUP",
    "RESTORE", "MOVE", "REPLACE", "SET", "USE", "CHECK",
})
# What a read-only front end (`serve-clickhouse` and `sql` without --writable) also refuses in a
# statement that is otherwise a read: writing a file, and the table functions that reach the
# host's files, other servers or programs.
_READ_ONLY_ESCAPES = re.compile(
    r"\bINTO\s+OUTFILE\b|\b(?:file|url|executable|s3|s3Cluster|hdfs|remote|remoteSecure|mysql|"
    r"postgresql|odbc|jdbc|sqlite|mongodb|redis|azureBlobStorage|deltaLake|iceberg|hudi)\s*\(",
    re.IGNORECASE)
_SESSION_TIMEOUT = 60.0
_LOCKING_SETTING = re.compile(r"\b(readonly|profile)\b", re.IGNORECASE)


def read_only_problem(sql: str, kind: str) -> str | None:
    """Why a read-only front end refuses `sql` (its first keyword `kind`), or None: anything
    but a read, and a read that writes a file or reaches beyond the store."""
    if kind not in _READONLY_KINDS:
        return (f"{kind or 'this statement'} is refused: the store is read-only here (pass "
                "--writable to change it)")
    if _READ_ONLY_ESCAPES.search(sql):
        return ("INTO OUTFILE and table functions that reach files, other servers or programs "
                "are refused: the store is read-only here (pass --writable to allow them)")
    return None


def refused_read_only(sql: str) -> str | None:
    """`read_only_problem` for a statement as typed (`meterwax sql`): also refused when it is
    empty or several statements."""
    try:
        kind, _ = _statement_kind(sql)
    except _ClickHouseError as exc:
        return exc.text
    return read_only_problem(sql, kind)


# --------------------------------------------------------------------------------------------
# The engine side


@dataclass
class _Request:
    sql: str  # the statement; for an INSERT with data, the part before FORMAT
    kind: str  # first keyword, upper case
    output_format: str  # FORMAT clause, else default_format
    has_format_clause: bool
    insert_format: str | None = None
    data: Iterable[bytes] = ()
    bind: dict[str, str] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    database: str | None = None
    session_id: str | None = None
    session_timeout: float | None = None
    session_check: bool = False
    readonly: int = 0


@dataclass
class _Response:
    body: bytes
    result_format: str | None  # X-ClickHouse-Format; None for statements without a result set
    summary: dict[str, str]


@dataclass
class _HttpSession:
    timeout: float
    expires: float
    settings: dict[str, str | None] = field(default_factory=dict)  # None: back to DEFAULT
    database: str | None = None


class _Engine:
    """Runs requests on the shared chdb session, leaving its state as it found it."""

    def __init__(self, path: str, writable: bool = True) -> None:
        self.writable = writable
        self._shared = acquire_shared_session(path)
        self._lock = self._shared.lock
        self.closed = False
        self._sessions: dict[str, _HttpSession] = {}
        try:
            with self._lock:
                (row,) = self._rows("SELECT version(), timezone(), currentDatabase()")
                self.version, self.timezone, self._base_database = (str(v) for v in row)
                self._baseline = self._changed_settings()
                self._known = {str(r[0]) for r in self._rows("SELECT name FROM system.settings")}
        except BaseException:
            release_shared_session(self._shared)
            raise

    def close(self) -> None:
        with self._lock:  # waits for the request in progress
            if self.closed:
                return
            self.closed = True
            self._sessions.clear()
        release_shared_session(self._shared)

    # -- raw engine calls (lock held) --

    def _run(self, sql: str) -> Any:
        try:
            return self._shared.raw.query(sql, "TabSeparated")
        except Exception as exc:
            raise _engine_error(exc) from exc

    def _rows(self, sql: str) -> list[list[Any]]:
        try:
            result = self._shared.raw.query(sql, "JSONCompact")
        except Exception as exc:
            raise _engine_error(exc) from exc
        rows: list[list[Any]] = json.loads(result.bytes())["data"]
        return rows

    def _changed_settings(self) -> dict[str, str]:
        return {str(name): str(value) for name, value in
                self._rows("SELECT name, value FROM system.settings WHERE changed")}

    def _set(self, values: dict[str, str | None]) -> None:
        if values:
            self._run("SET " + ", ".join(
                f"{name} = {'DEFAULT' if value is None else _quote_string(value)}"
                for name, value in values.items()))

    def _restore(self, names: Iterable[str]) -> None:
        values = {name: self._baseline.get(name) for name in names}
        try:
            self._set(values)
        except _ClickHouseError:
            # One bad name must not keep the others from being put back: one at a time.
            failed = []
            for name, value in values.items():
                try:
                    self._set({name: value})
                except _ClickHouseError:
                    failed.append(name)
            if failed:
                raise

    # -- requests --

    def execute(self, req: _Request) -> _Response:
        if not self.writable and req.kind not in ("SET", "USE"):
            problem = read_only_problem(req.sql, req.kind)
            if problem is not None:
                raise _error(164, "READONLY", problem)
        if req.readonly and req.kind not in _READONLY_KINDS and not (
                req.readonly == 2 and req.kind in ("SET", "USE")):
            if req.kind not in _WRITE_KINDS:  # perhaps not SQL at all: let the parser say so
                with self._lock:
                    if not self.closed:
                        self._run(f"EXPLAIN AST {req.sql}")
            raise _error(164, "READONLY", "Cannot execute query in readonly mode. For queries "
                         "over HTTP, method GET implies readonly. You should use method POST "
                         "for modifying queries")
        with self._lock:
            if self.closed:
                raise _error(210, "NETWORK_ERROR", "The server is shutting down", status=503)
            session = self._session(req)
            settings: dict[str, str | None] = dict(_HTTP_DEFAULT_SETTINGS)
            if session is not None:
                settings.update(session.settings)
            settings.update(req.settings)
            for name in settings:
                if name not in self._known:
                    raise _error(115, "UNKNOWN_SETTING", f"Unknown setting '{name}'")
            database = req.database or (session.database if session else None)
            touched: set[str] = set()
            moved = False
            try:
                if database and database != self._base_database:
                    moved = True
                    self._run(f"USE {_quote_identifier(database)}")
                touched.update(settings)
                self._set(settings)
                return self._dispatch(req, session, touched)
            finally:
                try:
                    self._restore(touched)
                    if moved or req.kind == "USE":
                        self._run(f"USE {_quote_identifier(self._base_database)}")
                except _ClickHouseError:
                    log.exception("could not restore the shared chdb session's state")
                    raise

    def _session(self, req: _Request) -> _HttpSession | None:
        now = time.monotonic()
        for key in [k for k, s in self._sessions.items() if s.expires < now]:
            del self._sessions[key]
        if not req.session_id:
            return None
        session = self._sessions.get(req.session_id)
        if session is None:
            if req.session_check:
                msg = f"Session {req.session_id} not found"
                raise _error(372, "SESSION_NOT_FOUND", msg)
            session = self._sessions[req.session_id] = _HttpSession(_SESSION_TIMEOUT, now)
        if req.session_timeout is not None:
            session.timeout = req.session_timeout
        session.expires = now + session.timeout
        return session

    def _dispatch(self, req: _Request, session: _HttpSession | None,
                  touched: set[str]) -> _Response:
        raw = self._shared.raw
        if req.insert_format is not None:
            try:
                inserter = raw.send_insert(req.sql, req.insert_format)
            except Exception as exc:
                raise _engine_error(exc) from exc
            try:
                for chunk in req.data:
                    if chunk:
                        inserter.append(chunk)
                done = inserter.finish()
            except BaseException as exc:
                try:
                    inserter.cancel()
                except Exception:  # the engine may already have dropped it
                    log.debug("cancelling a failed insert", exc_info=True)
                if isinstance(exc, _ClickHouseError | KeyboardInterrupt | SystemExit):
                    raise
                raise _engine_error(exc) from exc
            return _Response(b"", None, _summary(written_rows=done.rows_written,
                                                 written_bytes=done.bytes_written,
                                                 elapsed=done.elapsed))
        if req.kind == "SET":
            if _LOCKING_SETTING.search(req.sql):
                # `readonly` can never be set back once set: it would lock the shared session.
                raise _error(48, "NOT_IMPLEMENTED",
                             "SET readonly / profile is not supported by this server")
            before = self._changed_settings()
            self._run(req.sql)
            after = self._changed_settings()
            diff = {name: after.get(name) for name in before.keys() | after.keys()
                    if before.get(name) != after.get(name)}
            touched.update(diff)
            if session is not None:
                session.settings.update(diff)
            return _Response(b"", None, _summary())
        if req.kind == "USE":
            self._run(req.sql)
            if session is not None:
                ((session.database,),) = self._rows("SELECT currentDatabase()")
            return _Response(b"", None, _summary())
        try:
            result = raw.query(req.sql, req.output_format, params=req.bind or None)
        except Exception as exc:
            raise _engine_error(exc) from exc
        body = bytes(result.bytes() or b"")
        produces = req.has_format_clause or req.kind in _RESULT_KINDS
        return _Response(body, req.output_format if produces else None, _summary(
            read_rows=result.rows_read(), read_bytes=result.bytes_read(),
            written_rows=result.rows_written(), written_bytes=result.bytes_written(),
            elapsed=result.elapsed()))


def _summary(*, read_rows: int = 0, read_bytes: int = 0, written_rows: int = 0,
             written_bytes: int = 0, elapsed: float = 0.0) -> dict[str, str]:
    return {"read_rows": str(read_rows), "read_bytes": str(read_bytes),
            "written_rows": str(written_rows), "written_bytes": str(written_bytes),
            "total_rows_to_read": "0", "result_rows": "0", "result_bytes": "0",
            "elapsed_ns": str(int(elapsed * 1e9))}
