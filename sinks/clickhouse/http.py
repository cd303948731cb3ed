"""ClickHouse's HTTP interface over the embedded chdb engine.

`ChdbHttpServer(path)` serves a chdb database directory on 127.0.0.1 the way a ClickHouse server
serves port 8123, so that clickhouse-connect (`ClickHouseConnectStore`), dashboards (Grafana's
ClickHouse plugin in HTTP mode) and `curl` can use the embedded store. It executes every request
on the process's shared chdb session for that path
(`sinks.clickhouse.chdb_store.acquire_shared_session`, the one `ChdbStore` uses), under that
session's lock, so it and any ChdbStore in the process see the same data and never run two
statements at once. The request handling is split in `http_wire` (statement text, request
bodies) and `http_engine` (running a request on the shared session); `sinks.clickhouse.serve` is
the `meterwax serve-clickhouse` command.

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

import contextlib
import json
import logging
import os
import socket
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any
from urllib.parse import parse_qsl, urlsplit

from sinks.clickhouse.errors import ClickHouseStoreError
from sinks.clickhouse.http_engine import _Engine, _Request
from sinks.clickhouse.http_wire import (
    _CHUNK,
    _ClickHouseError,
    _content_type,
    _decoder,
    _error,
    _form_fields,
    _read_chunked,
    _read_exactly,
    _statement_kind,
    split_insert,
)

log = logging.getLogger("meterwax.chdb_http")

DEFAULT_PORT = 8123
_SPOOL_IN_MEMORY = 32 << 20  # request bodies above this spill to a temporary file
_INSERT_HEAD = 1 << 20  # an INSERT's statement text must start within this many bytes
# URL parameters that are part of the HTTP transport, not settings to apply.
_TRANSPORT_PARAMS = frozenset({
    "query", "database", "default_format", "query_id", "session_id", "session_timeout",
    "session_check", "user", "password", "quota_key", "role", "compress", "decompress",
    "buffer_size", "wait_end_of_query", "client_protocol_version", "stacktrace", "readonly",
    "enable_http_compression", "send_progress_in_http_headers",
    "cancel_http_readonly_queries_on_client_close", "add_http_cors_header",
})
# Result kinds chdb's Python API makes of its own (not ClickHouse formats: they return objects).
_PYTHON_ONLY_FORMATS = frozenset({"arrowtable", "dataframe", "datastore", "debug"})
_MAX_SESSION_TIMEOUT = 3600.0


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
                 port: int = 0, *, writable: bool = True) -> None:
        """`writable=False`: only reads are served (`read_only_problem`), whatever the method;
        the stream and tests write through it, `meterwax serve-clickhouse` does not unless
        asked."""
        self.writable = writable
        self.path = os.path.realpath(path)
        self.host = host
        self._requested_port = port
        self._engine: _Engine | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> ChdbHttpServer:
        if self._server is not None:
            return self
        engine = _Engine(self.path, writable=self.writable)
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
