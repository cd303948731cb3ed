"""The versioned DDL in `schemas/clickhouse/migrations`: loading, checksums, and applying them
to a database through any backend's `SqlConnection` (shared by every ClickHouse backend)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any, Protocol

from sinks.clickhouse.errors import MigrationChecksumError, MigrationError

DEFAULT_DATABASE = "meterwax"
TABLE = "rated_windows"
FINAL_VIEW = "rated_windows_final"
LEDGER = "schema_migrations"

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MIGRATION_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


class SqlConnection(Protocol):
    """What `apply_migrations` needs from a backend."""

    def command(self, sql: str) -> None: ...

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]: ...


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
