"""Where API token records live (operators/tokens.py says what they are): a Redis hash for a
stream deployment, a JSON file in the `--out` folder for the embedded API. Only records are
stored, never a token: a copy of the store grants nothing.

    Redis:  {namespace}:api_tokens   hash, field <token id> -> the record as JSON
    folder: OUT/api_tokens.json      {"tokens": [record, ...]}, mode 0600, replaced atomically

A re-run of `meterwax run` replaces its output folder whole; the token file is carried over to
the new folder (flows/runner.py, staged_output), since tokens are not outputs of a run and a
re-run must neither revoke them nor bring back revoked ones.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import msgspec
import redis

from operators.tokens import TokenRecord
from sinks.redis_dedup import connect

TOKENS_FILE = "api_tokens.json"


class TokenStore(Protocol):
    def add(self, record: TokenRecord) -> None: ...

    def get(self, token_id: str) -> TokenRecord | None: ...

    def all(self) -> list[TokenRecord]: ...

    def revoke(self, token_id: str, at: datetime) -> TokenRecord | None:
        """The record as revoked (already revoked: unchanged); None for an unknown id."""
        ...


class _File(msgspec.Struct):
    tokens: list[TokenRecord]


_DECODE = msgspec.json.Decoder(_File)
_DECODE_ONE = msgspec.json.Decoder(TokenRecord)
_ENCODE = msgspec.json.Encoder()


class FileTokenStore:
    """Token records in OUT/api_tokens.json. Reads are cached until the file changes (one
    `stat` per lookup), so a revocation by `meterwax tokens revoke` in another process takes
    effect on the API's next request."""

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.path = Path(out_dir) / TOKENS_FILE
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._records: dict[str, TokenRecord] = {}

    def _load(self) -> dict[str, TokenRecord]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._seen, self._records = None, {}
            return self._records
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._seen:
            records = _DECODE.decode(self.path.read_bytes()).tokens
            self._records = {r.token_id: r for r in records}
            self._seen = stamp
        return self._records

    def _write(self, records: Mapping[str, TokenRecord]) -> None:
        tmp = self.path.with_name(f"{TOKENS_FILE}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(_ENCODE.encode(_File(sorted(records.values(),
                                                 key=lambda r: (r.created_at, r.token_id)))))
        os.replace(tmp, self.path)

    def add(self, record: TokenRecord) -> None:
        with self._lock:
            records = dict(self._load())
            records[record.token_id] = record
            self._write(records)

    def get(self, token_id: str) -> TokenRecord | None:
        with self._lock:
            return self._load().get(token_id)

    def all(self) -> list[TokenRecord]:
        with self._lock:
            return list(self._load().values())

    def revoke(self, token_id: str, at: datetime) -> TokenRecord | None:
        with self._lock:
            records = dict(self._load())
            record = records.get(token_id)
            if record is None or record.revoked_at is not None:
                return record
            records[token_id] = msgspec.structs.replace(record, revoked_at=at)
            self._write(records)
            return records[token_id]


class RedisTokenStore:
    """Token records in one Redis hash, shared by every API replica and the `tokens` command."""

    def __init__(self, client_or_url: redis.Redis | str, namespace: str = "meterwax") -> None:
        self.client = connect(client_or_url) if isinstance(client_or_url, str) else client_or_url
        self.key = f"{namespace}:api_tokens"

    def add(self, record: TokenRecord) -> None:
        self.client.hset(self.key, record.token_id, _ENCODE.encode(record))

    def get(self, token_id: str) -> TokenRecord | None:
        raw: Any = self.client.hget(self.key, token_id)
        return _DECODE_ONE.decode(raw) if raw is not None else None

    def all(self) -> list[TokenRecord]:
        raw: Mapping[Any, Any] = self.client.hgetall(self.key)
        return sorted((_DECODE_ONE.decode(v) for v in raw.values()),
                      key=lambda r: (r.created_at, r.token_id))

    def revoke(self, token_id: str, at: datetime) -> TokenRecord | None:
        record = self.get(token_id)
        if record is None or record.revoked_at is not None:
            return record
        revoked = msgspec.structs.replace(record, revoked_at=at)
        self.client.hset(self.key, token_id, _ENCODE.encode(revoked))
        return revoked

    def close(self) -> None:
        self.client.close()
