"""ClickHouse's HTTP interface over the embedded chdb engine.

`ChdbHttpServer(path)` serves a chdb database directory on 127.0.0.1 the way a ClickHouse server
serves port 8123, so that clickhouse-connect (`ClickHouseConnectStore`), dashboards (Grafana's
ClickHouse plugin in HTTP mode) and `curl` can use the embedded store. It executes every request
on the process's shared chdb session for that path (`sinks.clickhouse.acquire_shared_session`,
the one `ChdbStore` uses), under that session's lock, so it and any ChdbStore in the process see
the same data and never run two statements at once.

The subset of the protocol implemented (what clickhouse-connect 0.8+ and 1.x send):

* `GET /ping`, `GET /replicas_status`, and `GET /` without a query: `Ok.`.
* `GET /?query=...` (read-only statements only, as on a server), and `POST /` with the SQL in the
  `query` parameter, in the body, or the parameter followed by the body (ClickHouse concatenates
  them with a newline), or as `multipart/form-data` fields (clickhouse-connect's form encoding
  for long bound parameters; external-data files are refused).
* `INSERT ... FORMAT <fmt>` followed by data (binary `Native` from `client.insert`, text from
  `client.raw_insert`): the data is streamed into chdb's own input parser (`send_insert`), never
  re-encoded or decoded here. Bodies may be sent chunked and compressed (`Content-Encoding`
  gzip, deflate, lz4, zstd, xz, bz2, br when its module is installed); several concatenated
  frames, as clickhouse-connect writes them, are fine. ClickHouse's own compressed-block format
  (`compress=1` / `decompress=1`, used by clickhouse-go's lz4/zstd over HTTP) is refused.
* URL parameters: `database`, `default_format`, `query_id`, `session_id` / `session_timeout` /
  `session_check` (a session keeps its `SET`s and `USE`), `param_<name>` for server-side binding
  of `{name:Type}` placeholders, `readonly` (enforced by statement kind), and any other ClickHouse
  setting (applied to this request only; unknown names are UNKNOWN_SETTING). Transport-only ones
  (`wait_end_of_query`, `enable_http_compression`, `send_progress_in_http_headers`,
  `client_protocol_version`, `http_*`, `user`, `password`, ...) are accepted and ignored:
  responses are sent whole and uncompressed, without progress headers, and there is no
  authentication (so keep the default loopback address). Headers `X-ClickHouse-Database` and
  `X-ClickHouse-Format` stand for `database` and `default_format`.
* Responses carry `X-ClickHouse-Query-Id`, `X-ClickHouse-Timezone`, `X-ClickHouse-Summary`,
  `X-ClickHouse-Server-Display-Name`, and `X-ClickHouse-Format` for statements that return a
  result set. Errors are HTTP 500 (404 for an unknown path, 400 for a malformed body, 415 for an
  unknown Content-Encoding, 503 while stopping) with `X-ClickHouse-Exception-Code` and the
  engine's text `Code: N. DB::Exception: ... (NAME) (version V)`, which clickhouse-connect raises
  as `DatabaseError` with `.code`.

Isolation of the shared session: request settings are applied with one `SET` before the statement
and put back (to the session's own values, or DEFAULT) right after it, under the lock, and
`USE` is undone the same way; ClickHouse's output defaults (plain datetimes, unquoted decimals)
apply to HTTP requests instead of the ChdbStore connection's JSON settings. One statement per
request (as on a server). `SET readonly` / `SET profile` are refused (readonly could never be put
back). Temporary tables are not per HTTP session: they live in the shared chdb session. Native
output is protocol revision 0 (no block info), which clients negotiate down to.
"""

from __future__ import annotations

import argparse
import bz2
import contextlib
import io
import json
import logging
import lzma
import os
import re
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl, urlsplit

from sinks.clickhouse import (
    ClickHouseStoreError,
    acquire_shared_session,
    release_shared_session,
    split_statements,
)

log = logging.getLogger("meterwax.chdb_http")

DEFAULT_PORT = 8123
_CHUNK = 1 << 20
_SPOOL_IN_MEMORY = 32 << 20  # request bodies above this spill to a temporary file
_INSERT_HEAD = 1 << 20  # an INSERT's statement text must start within this many bytes

# Applied to every HTTP request unless it sets them itself: ClickHouse server defaults that the
# shared session (set up for ChdbStore's JSON reader) has changed.
_HTTP_DEFAULT_SETTINGS = {"date_time_output_format": "simple",
                          "output_format_json_quote_decimals": "0"}
# URL parameters that are part of the HTTP transport, not settings to apply.
_TRANSPORT_PARAMS = frozenset({
    "query", "database", "default_format", "query_id", "session_id", "session_timeout",
    "session_check", "user", "password", "quota_key", "role", "compress", "decompress",
    "buffer_size", "wait_end_of_query", "client_protocol_version", "stacktrace", "readonly",
    "enable_http_compression", "send_progress_in_http_headers",
    "cancel_http_readonly_queries_on_client_close", "add_http_cors_header",
})
# Statement kinds that return a result set (and may run under readonly / GET).
_RESULT_KINDS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN",
                           "(", "CHECK"})
_READONLY_KINDS = _RESULT_KINDS - {"CHECK"}
_WRITE_KINDS = frozenset({
    "INSERT", "CREATE", "ALTER", "DROP", "DETACH", "ATTACH", "RENAME", "TRUNCATE", "OPTIMIZE",
    "SYSTEM", "KILL", "DELETE", "UPDATE", "GRANT", "REVOKE", "EXCHANGE", "UNDROP", "BACKUP",
    "RESTORE", "MOVE", "REPLACE", "SET", "USE", "CHECK",
})
# Result kinds chdb's Python API makes of its own (not ClickHouse formats: they return objects).
_PYTHON_ONLY_FORMATS = frozenset({"arrowtable", "dataframe", "datastore", "debug"})
_SESSION_TIMEOUT = 60.0
_MAX_SESSION_TIMEOUT = 3600.0

_CODE = re.compile(r"Code: (\d+)\.")
_KIND = re.compile(r"\s*(\(|[A-Za-z]+)")
_OUTPUT_FORMAT = re.compile(r"\bFORMAT\s+([A-Za-z_][A-Za-z0-9_]*)(?:\s+SETTINGS\b.*)?\s*$",
                            re.IGNORECASE | re.DOTALL)
_IDENT = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*")
_LOCKING_SETTING = re.compile(r"\b(readonly|profile)\b", re.IGNORECASE)
_SQL_SPACE = b" \t\r\n\f\v"


class _ClickHouseError(Exception):
    """An error answered to the client in ClickHouse's form."""

    def __init__(self, code: int, text: str, *, status: int = 500) -> None:
        self.code, self.text, self.status = code, text, status
        super().__init__(text)


def _error(code: int, name: str, message: str, *, status: int = 500) -> _ClickHouseError:
    return _ClickHouseError(code, f"Code: {code}. DB::Exception: {message}. ({name})",
                            status=status)


def _engine_error(exc: BaseException) -> _ClickHouseError:
    """chdb raises ChdbError / RuntimeError whose text holds the server's `Code: N. ...`."""
    text = str(exc)
    match = _CODE.search(text)
    if match is None:
        return _error(1001, "STD_EXCEPTION", text or type(exc).__name__)
    return _ClickHouseError(int(match[1]), text[match.start():].strip())


# --------------------------------------------------------------------------------------------
# Statement text


def _skip_space_and_comments(buf: bytes, i: int) -> int:
    n = len(buf)
    while i < n:
        if buf[i] in _SQL_SPACE:
            i += 1
        elif buf.startswith(b"--", i):
            end = buf.find(b"\n", i)
            i = n if end < 0 else end + 1
        elif buf.startswith(b"/*", i):
            end = buf.find(b"*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            break
    return i


def split_insert(buf: bytes) -> tuple[str, str, int] | None:
    """For `INSERT ... FORMAT <fmt>` followed by data, (the statement before FORMAT, fmt, the
    offset where the data starts); None for anything else (INSERT ... VALUES / SELECT included).

    The data starts after the whitespace that follows the format name, up to and including the
    first newline, as in ClickHouse's parser (binary data may itself start with a tab or newline).
    """
    i = _skip_space_and_comments(buf, 0)
    if buf[i:i + 6].upper() != b"INSERT":
        return None
    n, depth = len(buf), 0
    while True:
        i = _skip_space_and_comments(buf, i)
        if i >= n:
            return None
        ch = buf[i:i + 1]
        if ch in (b"'", b'"', b"`"):
            j = i + 1
            while j < n and buf[j:j + 1] != ch:
                j += 2 if buf[j:j + 1] == b"\\" else 1
            if j >= n:
                return None
            i = j + 1
        elif ch == b"(":
            depth, i = depth + 1, i + 1
        elif ch == b")":
            depth, i = depth - 1, i + 1
        elif ch == b";":
            return None
        elif (word := _IDENT.match(buf, i)) is not None:
            upper = word[0].upper()
            if depth == 0 and upper in (b"VALUES", b"SELECT", b"WITH", b"FROM"):
                return None
            if depth == 0 and upper == b"FORMAT":
                name = _IDENT.match(buf, _skip_space_and_comments(buf, word.end()))
                if name is None:
                    return None
                k = name.end()
                while k < n and buf[k] in _SQL_SPACE:
                    k += 1
                    if buf[k - 1] == 0x0A:
                        break
                try:
                    statement = buf[:i].decode().strip()
                except UnicodeDecodeError:
                    return None
                return statement, name[0].decode(), k
            i = word.end()
        else:
            i += 1


def _statement_kind(sql: str) -> tuple[str, str | None]:
    """(the statement's first keyword, its FORMAT clause if any) of a single statement."""
    statements = split_statements(sql) if (";" in sql or "--" in sql or "/*" in sql) else [sql]
    statements = [s for s in statements if s.strip()]
    if not statements:
        raise _error(62, "SYNTAX_ERROR", "Empty query")
    if len(statements) > 1:
        raise _error(62, "SYNTAX_ERROR", "Multi-statements are not allowed")
    kind = _KIND.match(statements[0])
    fmt = _OUTPUT_FORMAT.search(statements[0])
    return (kind[1].upper() if kind else ""), (fmt[1] if fmt else None)


def _quote_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _content_type(fmt: str) -> str:
    upper = fmt.upper()
    if upper.startswith(("TABSEPARATED", "TSV")):
        return "text/tab-separated-values; charset=UTF-8"
    if upper.startswith("CSV"):
        return "text/csv; charset=UTF-8; header=absent"
    if upper.startswith(("JSON", "NDJSON")):
        return "application/json; charset=UTF-8"
    if upper in ("NATIVE", "PARQUET", "ARROW", "ARROWSTREAM", "ORC", "AVRO", "PROTOBUF") or \
            upper.startswith("ROWBINARY"):
        return "application/octet-stream"
    return "text/plain; charset=UTF-8"


# --------------------------------------------------------------------------------------------
# Request bodies


class _Decoder:
    """Incremental decompression of one Content-Encoding, over any number of concatenated
    frames or members (clickhouse-connect compresses each block as its own frame)."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory

    def decode(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        current, started = self.factory(), False
        for chunk in chunks:
            data = chunk
            while data:
                started = True
                out = current.decompress(data)
                if out:
                    yield out
                if current.eof:
                    data = current.unused_data
                    current, started = self.factory(), False
                else:
                    data = b""
        if started:
            raise _error(354, "CANNOT_DECOMPRESS", "Compressed request body is truncated",
                         status=400)


class _BrotliDecompressor:
    def __init__(self) -> None:
        import brotli  # optional, like in clickhouse-connect

        self._d = brotli.Decompressor()
        self.unused_data = b""

    @property
    def eof(self) -> bool:
        return bool(self._d.is_finished())

    def decompress(self, data: bytes) -> bytes:
        return bytes(self._d.process(data))


def _zstd_factory() -> Callable[[], Any]:
    try:
        from compression import zstd  # Python 3.14+
    except ImportError:
        try:
            from backports import zstd  # clickhouse-connect's dependency before 3.14
        except ImportError:
            import zstandard

            return lambda: zstandard.ZstdDecompressor().decompressobj()
    return zstd.ZstdDecompressor


def _decoder(encoding: str) -> _Decoder:
    factories: dict[str, Callable[[], Callable[[], Any]]] = {
        "gzip": lambda: lambda: zlib.decompressobj(wbits=47),  # gzip or zlib header
        "x-gzip": lambda: lambda: zlib.decompressobj(wbits=47),
        "deflate": lambda: lambda: zlib.decompressobj(wbits=47),
        "xz": lambda: lzma.LZMADecompressor,
        "bz2": lambda: bz2.BZ2Decompressor,
        "br": lambda: _BrotliDecompressor,
        "zstd": _zstd_factory,
        "lz4": lambda: __import__("lz4.frame", fromlist=["frame"]).LZ4FrameDecompressor,
    }
    make = factories.get(encoding)
    if make is None:
        msg = f"Unknown Content-Encoding {encoding!r}"
        raise _error(48, "NOT_IMPLEMENTED", msg, status=415)
    try:
        return _Decoder(make())
    except ImportError as exc:
        msg = f"Content-Encoding {encoding!r} needs a module that is not installed ({exc})"
        raise _error(48, "NOT_IMPLEMENTED", msg, status=415) from exc


def _read_exactly(rfile: io.BufferedIOBase, size: int) -> Iterator[bytes]:
    while size > 0:
        piece = rfile.read(min(size, _CHUNK))
        if not piece:
            raise _error(33, "CANNOT_READ_ALL_DATA", "Request body ended early", status=400)
        size -= len(piece)
        yield piece


def _read_chunked(rfile: io.BufferedIOBase) -> Iterator[bytes]:
    while True:
        line = rfile.readline(1024)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise _error(33, "CANNOT_READ_ALL_DATA", "Malformed chunked request body",
                         status=400) from None
        if size == 0:
            while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return
        yield from _read_exactly(rfile, size)
        rfile.readline(16)  # the CRLF after each chunk


def _form_fields(content_type: str, body: bytes) -> dict[str, str]:
    """The fields of a multipart/form-data body (clickhouse-connect's form encoding)."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        if part.get_filename() is not None:
            raise _error(48, "NOT_IMPLEMENTED",
                         "External data (files in a form) is not supported by this server")
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            fields[name] = payload.decode() if isinstance(payload, bytes) else ""
    return fields


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

    def __init__(self, path: str) -> None:
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


# --------------------------------------------------------------------------------------------
# HTTP


def _flag(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes", "on")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clickhouse-connect pools its connections
    server_version = "meterwax-chdb"
    timeout = 30  # seconds an idle keep-alive connection is kept
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; with Nagle on, the body waits for the client's
        # delayed ACK (~40 ms a request).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._handle(has_body=False)

    def do_POST(self) -> None:
        self._handle(has_body=True)

    def _handle(self, *, has_body: bool) -> None:
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        query_id = params.get("query_id") or str(uuid.uuid4())
        engine = self.server.engine
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s params=%s headers=%s", self.command, url.path,
                      {k: v for k, v in params.items() if k != "password"},
                      {k: v for k, v in self.headers.items()
                       if k.lower() not in ("authorization", "x-clickhouse-key")})
        if url.path in ("/ping", "/replicas_status") or (
                url.path == "/" and not has_body and "query" not in params):
            self._drain(has_body)
            self._send(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
            return
        spool: IO[bytes] | None = None
        try:
            if url.path != "/":
                self.close_connection = True
                raise _error(48, "NOT_IMPLEMENTED", f"There is no handle {url.path}. Use / "
                             "for queries, /ping or /replicas_status for health checks",
                             status=404)
            if has_body:
                spool = self._read_body(params)
            request = self._request(params, spool, readonly=not has_body)
            response = engine.execute(request)
        except _ClickHouseError as exc:
            self._send_error(exc, query_id)
            return
        except Exception as exc:  # a bug here, not the client's: still answer in kind
            log.exception("request failed")
            self._send_error(_error(1001, "STD_EXCEPTION", f"{type(exc).__name__}: {exc}"),
                             query_id)
            return
        finally:
            if spool is not None:
                spool.close()
        headers = {
            "Content-Type": _content_type(response.result_format or "TabSeparated"),
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Summary": json.dumps(response.summary, separators=(",", ":")),
        }
        if response.result_format is not None:
            headers["X-ClickHouse-Format"] = response.result_format
        self._send(200, response.body, headers)

    def _drain(self, has_body: bool) -> None:
        if has_body and (self.headers.get("Content-Length") or self.headers.get(
                "Transfer-Encoding")):
            try:
                for _ in self._body_chunks():
                    pass
            except _ClickHouseError:
                self.close_connection = True

    def _body_chunks(self) -> Iterator[bytes]:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return _read_chunked(self.rfile)
        length = self.headers.get("Content-Length")
        if length is None:
            return iter(())
        try:
            size = int(length)
        except ValueError:
            raise _error(33, "CANNOT_READ_ALL_DATA", "Bad Content-Length", status=400) from None
        return _read_exactly(self.rfile, size)

    def _read_body(self, params: dict[str, str]) -> IO[bytes]:
        """The whole body, decoded, spooled (to memory, or a temporary file when large) before the
        engine is locked, so a slow client never holds up other requests. Multipart form fields
        are merged into `params`."""
        self.close_connection = True  # until the body has been read completely
        chunks: Iterable[bytes] = self._body_chunks()
        encoding = self.headers.get("Content-Encoding", "").strip().lower()
        spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115
        try:
            if encoding and encoding != "identity":
                # The raw body is read in full first: an error leaves the connection reusable.
                raw = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115
                with raw:
                    for chunk in chunks:
                        raw.write(chunk)
                    self.close_connection = False
                    raw.seek(0)
                    for piece in _decoder(encoding).decode(iter(lambda: raw.read(_CHUNK), b"")):
                        spool.write(piece)
            else:
                for chunk in chunks:
                    spool.write(chunk)
            self.close_connection = False
            spool.seek(0)
            content_type = self.headers.get("Content-Type", "")
            if content_type.lower().startswith("multipart/form-data"):
                params.update(_form_fields(content_type, spool.read()))
                spool.seek(0)
                spool.truncate()
            if log.isEnabledFor(logging.DEBUG):
                log.debug("body (%s bytes): %r", spool.seek(0, os.SEEK_END), _peek(spool, 300))
                spool.seek(0)
            return spool
        except BaseException:
            spool.close()
            raise

    def _request(self, params: dict[str, str], spool: IO[bytes] | None, *,
                 readonly: bool) -> _Request:
        for name in ("compress", "decompress"):
            if _flag(params.get(name)):
                msg = (f"{name}=1 (ClickHouse's compressed block format) is not supported; "
                       "use Content-Encoding / Accept-Encoding instead")
                raise _error(48, "NOT_IMPLEMENTED", msg)
        query = params.pop("query", "")
        database = params.pop("database", None) or self.headers.get("X-ClickHouse-Database")
        default_format = (params.pop("default_format", None)
                          or self.headers.get("X-ClickHouse-Format") or "TabSeparated")
        session_id = params.pop("session_id", None) or None
        timeout = params.pop("session_timeout", None)
        session_timeout: float | None = None
        if timeout:
            try:
                session_timeout = float(timeout)
            except ValueError:
                raise _error(36, "BAD_ARGUMENTS",
                             f"Invalid session timeout: {timeout!r}") from None
            if not 0 < session_timeout <= _MAX_SESSION_TIMEOUT:
                msg = (f"Session timeout {timeout} is out of range (0, "
                       f"{_MAX_SESSION_TIMEOUT:.0f}]")
                raise _error(36, "BAD_ARGUMENTS", msg)
        session_check = _flag(params.pop("session_check", None))
        readonly_param = params.pop("readonly", "0")
        try:
            readonly_level = int(readonly_param)
        except ValueError:
            raise _error(36, "BAD_ARGUMENTS", f"readonly={readonly_param!r}") from None
        if readonly:
            readonly_level = max(readonly_level, 2)  # GET: read-only, settings may change
        bind = {k.removeprefix("param_"): v for k, v in params.items() if k.startswith("param_")}
        settings = {k: v for k, v in params.items() if not (
            k in _TRANSPORT_PARAMS or k.startswith(("param_", "http_")))}

        if default_format.lower() in _PYTHON_ONLY_FORMATS:
            msg = f"Unknown output format {default_format}"
            raise _error(73, "UNKNOWN_FORMAT", msg)
        prefix = (query + "\n").encode() if query else b""
        head = prefix + (spool.read(_INSERT_HEAD) if spool is not None else b"")
        common: dict[str, Any] = {
            "bind": bind, "settings": settings, "database": database,
            "session_id": session_id, "session_timeout": session_timeout,
            "session_check": session_check, "readonly": readonly_level,
        }
        insert = split_insert(head)
        if insert is not None:
            statement, fmt, offset = insert
            rest: Iterable[bytes] = iter(lambda: spool.read(_CHUNK), b"") if spool else ()
            return _Request(statement, "INSERT", default_format, False, insert_format=fmt,
                            data=_chain(head[offset:], rest), **common)
        body = head + (spool.read() if spool is not None else b"")
        try:
            sql = body.decode()
        except UnicodeDecodeError as exc:
            raise _error(36, "BAD_ARGUMENTS", f"The query is not valid UTF-8: {exc}") from None
        kind, clause = _statement_kind(sql)
        return _Request(sql, kind, clause or default_format, clause is not None, **common)

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        engine = self.server.engine
        self.send_header("X-ClickHouse-Server-Display-Name", self.server.display_name)
        self.send_header("X-ClickHouse-Timezone", engine.timezone)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_error(self, exc: _ClickHouseError, query_id: str) -> None:
        text = exc.text
        if "(version " not in text:
            text += f" (version {self.server.engine.version})"
        log.debug("error %s: %s", exc.code, text)
        self._send(exc.status, (text + "\n").encode(), {
            "Content-Type": "text/plain; charset=UTF-8",
            "X-ClickHouse-Exception-Code": str(exc.code),
            "X-ClickHouse-Query-Id": query_id,
        })


def _chain(first: bytes, rest: Iterable[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


def _peek(spool: IO[bytes], size: int) -> bytes:
    spool.seek(0)
    return spool.read(size)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], engine: _Engine) -> None:
        self.engine = engine
        self.display_name = socket.gethostname()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away mid-response, or a connection ended by stop(): not news.
        log.debug("connection from %s failed", client_address, exc_info=True)

    def close_connections(self) -> None:
        """End idle keep-alive connections, whose handler threads would otherwise wait for a
        next request that may never come."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class ChdbHttpServer:
    """A chdb database directory served over ClickHouse's HTTP interface (see the module doc).

        with ChdbHttpServer(path) as server:          # port 0: any free port
            client = clickhouse_connect.get_client(dsn=server.url)

    It shares the process's chdb session on `path`, so a ChdbStore on the same path may stay
    open alongside; a different path raises `StorePathError` while another is open. `stop()`
    waits for the request in progress, then closes every connection and releases the session.
    """

    def __init__(self, path: str | os.PathLike[str], host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.path = os.path.realpath(path)
        self.host = host
        self._requested_port = port
        self._engine: _Engine | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> ChdbHttpServer:
        if self._server is not None:
            return self
        engine = _Engine(self.path)
        try:
            server = _Server((self.host, self._requested_port), engine)
        except BaseException:
            engine.close()
            raise
        self._engine, self._server = engine, server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"chdb-http:{server.server_address[1]}", daemon=True)
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        if self._server is None:
            msg = "the server is not running"
            raise ClickHouseStoreError(msg)
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        server, thread, engine = self._server, self._thread, self._engine
        self._server = self._thread = self._engine = None
        if server is None:
            return
        try:
            server.shutdown()
            server.server_close()
            server.close_connections()
            if thread is not None:
                thread.join()
        finally:
            if engine is not None:
                engine.close()

    def __enter__(self) -> ChdbHttpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# meterwax serve-clickhouse


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `meterwax serve-clickhouse` (the main command line declares them with
    this too, so that both spell them the same)."""
    parser.add_argument("--path", required=True,
                        help="the chdb directory (e.g. OUT/clickhouse), or a run's output folder")
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT,
                        help=f"TCP port (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; there is no authentication)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 5 and int(text) <= 65535):
        msg = f"not a TCP port (0 .. 65535): {text[:20]!r}"
        raise argparse.ArgumentTypeError(msg)
    return int(text)


def serve_main(argv: Sequence[str] | None = None) -> int:
    """`meterwax serve-clickhouse --path DIR [--port N]`: serve until interrupted (SIGINT or
    SIGTERM). Exit 0 when stopped, 2 on a bad path, 1 when the server cannot start."""
    parser = argparse.ArgumentParser(
        prog="meterwax serve-clickhouse",
        description="Serve an embedded chdb store over ClickHouse's HTTP interface "
                    "(clickhouse-connect, Grafana's ClickHouse plugin in HTTP mode, curl).")
    add_serve_arguments(parser)
    args = parser.parse_args(list(argv) if argv is not None else None)
    return serve(args.path, args.host, args.port, verbose=args.verbose)


def serve(store: str, host: str, port: int, *, verbose: bool = False) -> int:
    """Serve `store` until interrupted; the exit code of `serve_main`."""
    path = Path(store)
    if (path / "clickhouse").is_dir() and not (path / "metadata").exists():
        path = path / "clickhouse"  # a run's output folder
    if not path.is_dir():
        # Not created empty here: a run replaces its --out folder whole when it finishes, and
        # chdb keeps serving the folder it opened, so a server started before the run would
        # never see the run's rows.
        print(f"meterwax: no embedded store at {store} yet: run `meterwax run` first and "
              "serve its --out folder (a store served before the run would not show its rows)",
              file=sys.stderr, flush=True)
        return 2
    if verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(message)s")
        log.setLevel(logging.DEBUG)
    server = ChdbHttpServer(path, host, port)
    try:
        server.start()
    except (ClickHouseStoreError, OSError) as exc:
        print(f"meterwax: cannot serve {path}: {exc}", flush=True)
        return 1
    stop = threading.Event()
    with contextlib.suppress(ValueError):  # not in the main thread: KeyboardInterrupt stops it
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"serving {path} over ClickHouse HTTP at {server.url} (Ctrl-C to stop)", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
