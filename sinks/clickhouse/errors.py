"""The errors of the ClickHouse stores: every one is a `ClickHouseStoreError`."""

from __future__ import annotations


class ClickHouseStoreError(Exception):
    """Base class of the errors raised by the `sinks.clickhouse` package."""


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


class ClickHouseServerError(ClickHouseStoreError, RuntimeError):
    """The server refused a statement, or could not be reached. `code` is ClickHouse's error code
    (e.g. 47 UNKNOWN_IDENTIFIER) when the server sent one, else None. A RuntimeError, like the
    errors chdb raises, so callers handle SQL errors from either backend alike."""

    def __init__(self, message: str, code: int | None = None, name: str | None = None) -> None:
        self.code, self.name = code, name
        super().__init__(message)


class ClickHouseUnavailable(ClickHouseServerError):
    """The server could not be reached, or kept failing transiently, until the retry policy's
    deadline (`ClickHouseConnectStore`'s `retry`). The last write may or may not have landed;
    writing it again is safe (the tables collapse copies). `code` is None; the last failure is
    the `__cause__`."""
