"""The wire side of `sinks.clickhouse.http`: ClickHouse's error form, the statement text (an
INSERT's FORMAT and data, a statement's kind, quoting, content types) and request bodies
(chunked transfer, Content-Encoding, multipart forms)."""

from __future__ import annotations

import bz2
import io
import lzma
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from sinks.clickhouse.migrations import split_statements

_CHUNK = 1 << 20

_CODE = re.compile(r"Code: (\d+)\.")
_KIND = re.compile(r"\s*(\(|[A-Za-z]+)")
_OUTPUT_FORMAT = re.compile(r"\bFORMAT\s+([A-Za-z_][A-Za-z0-9_]*)(?:\s+SETTINGS\b.*)?\s*$",
                            re.IGNORECASE | re.DOTALL)
_IDENT = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*")
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
