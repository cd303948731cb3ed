"""The store interface every backend implements, and `open_store`, which picks the backend."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from schemas.records import RatedWindow
from sinks.clickhouse.chdb_store import ChdbStore
from sinks.clickhouse.connect_store import ClickHouseConnectStore
from sinks.clickhouse.migrations import DEFAULT_DATABASE


@runtime_checkable
class RatedWindowStore(Protocol):
    def write(self, rows: Sequence[RatedWindow]) -> None:
        """Store a batch, in one INSERT. Idempotent: writing rows again never double-counts."""

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a SELECT (no FORMAT clause); rows as dicts, Decimal columns as `Decimal`."""
        ...

    def close(self) -> None: ...


_URL = re.compile(r"https?://", re.IGNORECASE)


def open_store(
    url_or_path: str | os.PathLike[str], database: str = DEFAULT_DATABASE, *,
    migrate: bool = True,
) -> ChdbStore | ClickHouseConnectStore:
    """`http(s)://...`: a ClickHouse server over clickhouse-connect; anything else: a chdb
    directory, embedded. `migrate=False`: a reader's server connection, which applies no
    migrations (an embedded store is always brought up to date: it is this process's own)."""
    if isinstance(url_or_path, str) and _URL.match(url_or_path):
        return ClickHouseConnectStore(url_or_path, database, migrate=migrate)
    return ChdbStore(url_or_path, database)
