"""ClickHouse store for rated windows.

The pieces:

* Backend-neutral pieces, shared by every ClickHouse backend: the versioned migrations in
  `schemas/clickhouse/migrations` (`migrations`: `load_migrations`, `Migration.render`,
  `apply_migrations`) and the batch encoding (`rows`: `encode_batch`, `batch_token`,
  `insert_sql`, and the storable-value checks). The exceptions are in `errors`.
* `ChdbStore` (`chdb_store`): the embedded backend (chdb, the ClickHouse engine in-process).
* `ClickHouseConnectStore` (`connect_store`): the server backend (clickhouse-connect over HTTP).
  It implements `SqlConnection` over its client, calls `apply_migrations`, and sends
  `encode_batch(rows)` with `client.raw_insert(..., fmt=ROWS_FORMAT,
  settings={"insert_deduplication_token": ...})`. `sinks.clickhouse.http` serves a chdb
  directory over the same HTTP interface.
* `open_store(url_or_path)` (`store`): a URL opens the server backend, a path the embedded one.
* `sinks.clickhouse.sink`: the Bytewax sink adapter that buffers rows into a store's `write`.

All I/O lives here; the domain code only builds `RatedWindow` values. `http` and `sink` are not
imported here (they need the HTTP server and Bytewax); import them as modules.
"""

from sinks.clickhouse.chdb_store import (
    _SESSIONS as _SESSIONS,  # the open chdb sessions; tests check that none is left open
)
from sinks.clickhouse.chdb_store import (
    ChdbStore,
    acquire_shared_session,
    release_shared_session,
)
from sinks.clickhouse.connect_store import ClickHouseConnectStore
from sinks.clickhouse.errors import (
    ClickHouseServerError,
    ClickHouseStoreError,
    ClickHouseUnavailable,
    MigrationChecksumError,
    MigrationError,
    StoreClosedError,
    StorePathError,
    UnstorableValueError,
)
from sinks.clickhouse.migrations import (
    DEFAULT_DATABASE,
    FINAL_VIEW,
    LEDGER,
    TABLE,
    Migration,
    SqlConnection,
    apply_migrations,
    check_database,
    load_migrations,
    migrations_dir,
    split_statements,
)
from sinks.clickhouse.rows import (
    COLUMNS,
    DECIMAL_INTEGER_DIGITS,
    DECIMAL_SCALE,
    EVENT_COLUMNS,
    EVENTS_TABLE,
    batch_token,
    check_row,
    decode_json_result,
    encode_batch,
    encode_events,
    encode_row,
    events_insert_sql,
    insert_sql,
)
from sinks.clickhouse.store import RatedWindowStore, open_store

__all__ = [
    "COLUMNS",
    "DECIMAL_INTEGER_DIGITS",
    "DECIMAL_SCALE",
    "DEFAULT_DATABASE",
    "EVENTS_TABLE",
    "EVENT_COLUMNS",
    "FINAL_VIEW",
    "LEDGER",
    "TABLE",
    "ChdbStore",
    "ClickHouseConnectStore",
    "ClickHouseServerError",
    "ClickHouseStoreError",
    "ClickHouseUnavailable",
    "Migration",
    "MigrationChecksumError",
    "MigrationError",
    "RatedWindowStore",
    "SqlConnection",
    "StoreClosedError",
    "StorePathError",
    "UnstorableValueError",
    "acquire_shared_session",
    "apply_migrations",
    "batch_token",
    "check_database",
    "check_row",
    "decode_json_result",
    "encode_batch",
    "encode_events",
    "encode_row",
    "events_insert_sql",
    "insert_sql",
    "load_migrations",
    "migrations_dir",
    "open_store",
    "release_shared_session",
    "split_statements",
]
