"""ChdbStore against a real embedded chdb database in tmp_path."""

from __future__ import annotations

import random
import shutil
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

import pytest

from schemas.records import RatedWindow
from sinks import clickhouse as ch
from sinks.clickhouse import (
    COLUMNS,
    ChdbStore,
    MigrationChecksumError,
    MigrationError,
    RatedWindowStore,
    StorePathError,
    UnstorableValueError,
    load_migrations,
    split_statements,
)

JAN = datetime(2024, 1, 1, tzinfo=UTC)


def rated(
    sub: str = "sub-1",
    meter: str = "api_calls",
    start: datetime = JAN,
    revision: int = 1,
    amount_delta: str = "1.25",
    **overrides: object,
) -> RatedWindow:
    fields: dict[str, object] = {
        "row_id": f"{sub}:{meter}:{int(start.timestamp())}",
        "subscription_id": sub,
        "customer_id": "cust-1",
        "plan_id": "plan-pro",
        "legal_entity": "ACME Société SAS",
        "currency": "EUR",
        "meter": meter,
        "period": start.strftime("%Y-%m"),
        "window_start": start,
        "window_end": start + timedelta(hours=1),
        "revision": revision,
        "event_count": 3 * revision,
        "window_quantity": Decimal("10.5"),
        "cumulative_quantity": Decimal("10.5") * revision,
        "amount_delta": Decimal(amount_delta),
        "cumulative_amount": Decimal("2.5") * revision,
        "rating_seq": revision,
        "after_close": False,
    }
    fields.update(overrides)
    return RatedWindow(**fields)  # type: ignore[arg-type]


def as_record(row: dict[str, object]) -> RatedWindow:
    return RatedWindow(**{name: row[name] for name in COLUMNS})  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _no_session_left_open():
    yield
    # chdb hosts one database path per process: a store left open would block other tests.
    assert not ch._SESSIONS, "a ChdbStore was left open"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "chdb"


@pytest.fixture
def store(db_path: Path):
    with ChdbStore(db_path) as s:
        yield s


def raw_count(store: ChdbStore) -> int:
    return store.query("SELECT count() AS n FROM meterwax.rated_windows")[0]["n"]


# --- migrations ------------------------------------------------------------------------------


def test_migrations_apply_in_order_and_are_recorded(store: ChdbStore) -> None:
    files = load_migrations()
    assert [m.version for m in files] == [m.version for m in load_migrations()]
    assert store.applied == [m.version for m in load_migrations()]
    ledger = store.query("SELECT version, name, checksum FROM meterwax.schema_migrations "
                         "ORDER BY version")
    assert ledger == [{"version": m.version, "name": m.name, "checksum": m.checksum}
                      for m in files]

    columns = store.query("SELECT name, type FROM system.columns WHERE database = 'meterwax' "
                          "AND table = 'rated_windows' ORDER BY position")
    assert [c["name"] for c in columns] == [*COLUMNS, "inserted_at"]
    types = {c["name"]: c["type"] for c in columns}
    assert types["amount_delta"] == "Decimal(38, 18)"
    assert types["window_start"] == "DateTime64(6, 'UTC')"
    assert types["currency"] == "LowCardinality(String)"
    (table,) = store.query("SELECT engine_full FROM system.tables "
                           "WHERE database = 'meterwax' AND name = 'rated_windows'")
    assert table["engine_full"].startswith(
        "ReplacingMergeTree(revision) ORDER BY (subscription_id, meter, window_start, row_id)")
    assert isinstance(store, RatedWindowStore)


def test_reopen_is_a_noop_and_stores_share_the_session(db_path: Path) -> None:
    with ChdbStore(db_path) as first:
        first.write([rated()])
        with ChdbStore(db_path) as second:  # same process, same path: shares first's session
            assert second.applied == []
            assert raw_count(second) == 1
        assert raw_count(first) == 1  # closing second left first usable
    with ChdbStore(db_path) as again:  # reopen after the engine shut down
        assert again.applied == []
        recorded = again.query("SELECT * FROM meterwax.schema_migrations")
        assert len(recorded) == len(load_migrations())
        again.write([rated()])  # the deduplication log survives the restart
        assert raw_count(again) == 1


def test_database_name_is_configurable(db_path: Path) -> None:
    with ChdbStore(db_path, database="billing_2") as s:
        s.write([rated()])
        assert len(s.query("SELECT * FROM billing_2.rated_windows_final")) == 1
        assert s.query("SELECT count() AS n FROM system.databases WHERE name = 'meterwax'") == [
            {"n": 0}]
    with pytest.raises(ValueError, match="database name"):
        ChdbStore(db_path, database="x; DROP TABLE y")


def test_edited_applied_migration_is_a_checksum_error(db_path: Path, tmp_path: Path) -> None:
    ChdbStore(db_path).close()
    edited = tmp_path / "migrations"
    shutil.copytree(Path(str(ch.migrations_dir())), edited)
    sql = edited / "0001_rated_windows.sql"
    sql.write_text(sql.read_text().replace("UInt64,", "UInt32,", 1))

    with pytest.raises(MigrationChecksumError) as err:
        ChdbStore(db_path, migrations=load_migrations(edited))
    assert err.value.version == 1
    assert err.value.recorded == load_migrations()[1].checksum
    # The failed open released the session: the original files still open cleanly.
    with ChdbStore(db_path) as s:
        assert s.applied == []


def test_ledger_disagreements_are_errors(db_path: Path, tmp_path: Path) -> None:
    ChdbStore(db_path).close()
    files = load_migrations()
    with pytest.raises(MigrationError, match="does not have"):  # DB ahead of the code
        ChdbStore(db_path, migrations=files[:1])
    late = ch.Migration(1, "0001_other", "SELECT 1;")
    with pytest.raises(MigrationError, match="duplicate"):
        ChdbStore(db_path, migrations=[*files, late])
    new = ch.Migration(99, "0099_noop", "SELECT 1;")
    with ChdbStore(db_path, migrations=[*files, new]) as s:
        assert s.applied == [99]


def test_split_statements_ignores_semicolons_in_quotes_and_comments() -> None:
    sql = """-- a; comment
    CREATE TABLE t (a String DEFAULT 'x;y', `we;ird` UInt8) /* b; */ ENGINE = Log;
    ;  -- empty
    SELECT 'it\\'s;' ;"""
    assert split_statements(sql) == [
        "CREATE TABLE t (a String DEFAULT 'x;y', `we;ird` UInt8)   ENGINE = Log",
        "SELECT 'it\\'s;'",
    ]


def test_second_path_in_the_process_is_refused(db_path: Path, tmp_path: Path) -> None:
    with ChdbStore(db_path), pytest.raises(StorePathError):
        ChdbStore(tmp_path / "other")
    with ChdbStore(tmp_path / "other") as s:  # fine once the first one is closed
        assert s.applied == [m.version for m in load_migrations()]


# --- writes ----------------------------------------------------------------------------------


def test_replay_and_revisions_collapse_to_the_highest_revision(store: ChdbStore) -> None:
    a1 = rated("sub-1", amount_delta="1.000000000000000001")
    b1 = rated("sub-1", start=JAN + timedelta(hours=1), amount_delta="0.000000000000000001")
    c1 = rated("sub-2", meter="storage_gb", amount_delta="12345678901234567.123456789")
    store.write([a1, b1, c1])
    assert raw_count(store) == 3

    # Replay of the same batch, even reordered: same encoded bytes, same deduplication token,
    # so chdb drops it (non_replicated_deduplication_window > 0) instead of adding a part.
    store.write([c1, a1, b1])
    assert raw_count(store) == 3

    # A replay cut into different batches gets other tokens: duplicates exist until a merge...
    store.write([a1, b1])
    assert raw_count(store) == 5
    # ... and a late event re-emits a1's window with revision 2.
    a2 = rated("sub-1", revision=2, amount_delta="3.5", after_close=True)
    store.write([a2])
    store.write([a1])  # a stale revision arriving after the newer one changes nothing
    assert raw_count(store) == 7

    final = store.final_rows()
    assert [as_record(r) for r in final] == [a2, b1, c1]  # one per row_id, highest revision
    assert [format(r["amount_delta"], "f") for r in final] == [
        "3.5", "0.000000000000000001", "12345678901234567.123456789"]

    (total,) = store.query("SELECT sum(amount_delta) AS s, count() AS n, "
                           "uniqExact(row_id) AS ids FROM meterwax.rated_windows_final")
    assert total == {"s": Decimal("12345678901234570.623456789000000001"), "n": 3, "ids": 3}
    with localcontext(prec=60):
        assert total["s"] == a2.amount_delta + b1.amount_delta + c1.amount_delta

    # FINAL and argMax agree, and merging (OPTIMIZE ... FINAL) leaves exactly the final rows.
    by_argmax = store.query(
        "SELECT row_id, max(revision) AS final_revision, "
        "argMax(amount_delta, revision) AS final_amount_delta "
        "FROM meterwax.rated_windows GROUP BY row_id ORDER BY row_id")
    assert by_argmax == [{"row_id": r["row_id"], "final_revision": r["revision"],
                          "final_amount_delta": r["amount_delta"]} for r in final]
    store.query("OPTIMIZE TABLE meterwax.rated_windows FINAL")
    assert raw_count(store) == 3


def test_decimals_round_trip_exactly(store: ChdbStore) -> None:
    rng = random.Random(20240101)
    edge = ["0.000000000000000001", "-0.000000000000000001", "12345678901234567.123456789",
            "99999999999999999999.999999999999999999", "-99999999999999999999.999999999999999999",
            "1E-18", "1.500000000000000000000000", "0", "-0", "1E+5"]
    values = [Decimal(v) for v in edge]
    for _ in range(300):  # random values of every scale 0..18 that fit Decimal(38, 18)
        k = rng.randrange(0, 19)
        values.append(Decimal(f"{rng.randrange(-10**(20 + k) + 1, 10**(20 + k))}E-{k}"))
    rows = [rated(f"sub-{i:04d}", amount_delta=str(v), cumulative_amount=v, window_quantity=v)
            for i, v in enumerate(values)]
    store.write(rows)
    final = store.final_rows()
    assert [r["amount_delta"] for r in final] == values
    assert [as_record(r) for r in final] == rows
    # sum() over Decimal(38, 18) wraps silently past ~1.7e20 (these values reach 1e20 each):
    # Decimal(76, 18) keeps the total exact.
    (total,) = store.query("SELECT sum(toDecimal256(amount_delta, 18)) AS s "
                           "FROM meterwax.rated_windows_final")
    with localcontext(prec=60):  # the default context (28 digits) would round the sum
        assert total["s"] == sum(values, Decimal(0))


@pytest.mark.parametrize(("field", "value", "problem"), [
    ("amount_delta", Decimal("0.0000000000000000001"), "fractional digits"),
    ("cumulative_amount", Decimal("100000000000000000000"), "integer digits"),
    ("window_quantity", Decimal("NaN"), "not finite"),
    ("window_start", datetime(2024, 1, 1), "naive datetime"),  # noqa: DTZ001
])
def test_unstorable_values_are_refused_not_rounded(
    store: ChdbStore, field: str, value: object, problem: str
) -> None:
    bad: dict[str, Any] = {field: value}
    with pytest.raises(UnstorableValueError, match=problem):
        store.write([rated("ok"), rated("bad", **bad)])
    assert raw_count(store) == 0  # the batch is validated before anything is written


def test_concurrent_writers_share_one_store(store: ChdbStore) -> None:
    def worker(w: int) -> None:
        for batch in range(5):
            store.write([rated(f"w{w}", start=JAN + timedelta(hours=batch * 10 + i))
                         for i in range(10)])

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert raw_count(store) == 200
    assert len(store.final_rows()) == 200


def test_closed_store_refuses_use(db_path: Path) -> None:
    s = ChdbStore(db_path)
    s.close()
    s.close()  # idempotent
    with pytest.raises(ch.StoreClosedError):
        s.write([rated()])


def test_usage_ledger_keeps_each_accepted_event_once(db_path: Path) -> None:
    from schemas.records import AcceptedEvent

    def event(i: int, offset: int) -> AcceptedEvent:
        return AcceptedEvent(
            event_source="svc", event_id=f"e{i}", event_type="api.request", subject="acme-prod",
            time=JAN + timedelta(minutes=i), customer_id="acme", subscription_id="sub-1",
            period="2026-01", origin_source="usage", origin_partition=0, origin_offset=offset,
            raw=f'{{"id":"e{i}"}}')

    with ChdbStore(db_path) as store:
        batch = [event(i, i) for i in range(5)]
        store.write_events(batch)
        store.write_events(list(reversed(batch)))  # a replay, in another order: same token
        store.write_events([event(3, 3), event(5, 5)])  # overlapping batch after a restart
        rows = store.query("SELECT count() AS n, uniqExact(event_id) AS ids "
                           "FROM meterwax.usage_events FINAL")
        assert rows == [{"n": 6, "ids": 6}]
        raw = store.query("SELECT raw FROM meterwax.usage_events FINAL WHERE event_id = 'e2'")
        assert raw == [{"raw": '{"id":"e2"}'}]
