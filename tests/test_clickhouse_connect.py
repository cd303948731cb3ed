"""ClickHouseConnectStore (the real clickhouse-connect, real HTTP on loopback) against
ChdbHttpServer, the embedded chdb engine served over ClickHouse's HTTP interface."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("clickhouse_connect")

from flows.runner import rated_summary
from schemas.records import RatedWindow
from sinks import clickhouse as ch
from sinks.clickhouse import (
    COLUMNS,
    ChdbStore,
    ClickHouseConnectStore,
    ClickHouseServerError,
    MigrationChecksumError,
    RatedWindowStore,
    StorePathError,
    UnstorableValueError,
    load_migrations,
    open_store,
)
from sinks.clickhouse.http import ChdbHttpServer, split_insert
from sinks.clickhouse.serve import serve_main

JAN = datetime(2024, 1, 1, tzinfo=UTC)
ROOT = Path(__file__).resolve().parent.parent


def rated(sub: str = "sub-1", meter: str = "api_calls", start: datetime = JAN,
          revision: int = 1, amount_delta: str = "1.25", **overrides: object) -> RatedWindow:
    fields: dict[str, object] = {
        "row_id": f"{sub}:{meter}:{int(start.timestamp())}",
        "subscription_id": sub, "customer_id": "cust-1", "plan_id": "plan-pro",
        "legal_entity": "ACME Société SAS", "currency": "EUR", "meter": meter,
        "period": start.strftime("%Y-%m"), "window_start": start,
        "window_end": start + timedelta(hours=1), "revision": revision,
        "event_count": 3 * revision, "window_quantity": Decimal("10.5"),
        "cumulative_quantity": Decimal("10.5") * revision,
        "amount_delta": Decimal(amount_delta), "cumulative_amount": Decimal("2.5") * revision,
        "rating_seq": revision, "after_close": False,
    }
    fields.update(overrides)
    return RatedWindow(**fields)  # type: ignore[arg-type]


def as_record(row: dict[str, Any]) -> RatedWindow:
    return RatedWindow(**{name: row[name] for name in COLUMNS})


EDGE = ["0.000000000000000001", "12345678901234567.123456789", "-0.000000000000000001",
        "99999999999999999999.999999999999999999", "-99999999999999999999.999999999999999999",
        "1.500000000000000000000000", "0", "1E+5"]


def sample_rows() -> list[RatedWindow]:
    """Several subscriptions, periods and meters, two revisions of one window, edge decimals."""
    rows = [rated(f"sub-{i % 3}", meter=("api_calls", "storage_gb")[i % 2],
                  start=JAN + timedelta(days=20 * (i % 4), hours=i), amount_delta=value,
                  cumulative_amount=Decimal(value), rating_seq=i + 1)
            for i, value in enumerate(EDGE)]
    return [*rows, rated("sub-0", revision=2, amount_delta="3.5", rating_seq=100,
                         after_close=True)]


@pytest.fixture(autouse=True)
def _no_session_left_open():
    yield
    assert not ch._SESSIONS, "a store or server was left open"


@pytest.fixture
def server(tmp_path: Path):
    with ChdbHttpServer(tmp_path / "chdb") as s:
        yield s


@pytest.fixture
def store(server: ChdbHttpServer):
    with ClickHouseConnectStore(server.url) as s:
        yield s


def raw_count(store: RatedWindowStore) -> int:
    return int(store.query("SELECT count() AS n FROM meterwax.rated_windows")[0]["n"])


def http(server: ChdbHttpServer, query: str = "", body: bytes | None = None,
         headers: dict[str, str] | None = None, **params: str) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP request; (status, headers, body), errors included."""
    if query:
        params["query"] = query
    url = server.url + "/?" + urllib.parse.urlencode(params)
    req = urllib.request.Request(url, data=body, headers=headers or {},
                                 method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


# --- the store --------------------------------------------------------------------------------


def test_migrations_are_recorded_idempotent_and_checksummed(
        server: ChdbHttpServer, tmp_path: Path) -> None:
    files = load_migrations()
    with ClickHouseConnectStore(server.url) as first:
        assert first.applied == [m.version for m in load_migrations()]
        assert isinstance(first, RatedWindowStore)
        ledger = first.query("SELECT version, name, checksum FROM meterwax.schema_migrations "
                             "ORDER BY version")
        assert ledger == [{"version": m.version, "name": m.name, "checksum": m.checksum}
                          for m in files]
        types = {c["name"]: c["type"] for c in first.query(
            "SELECT name, type FROM system.columns WHERE database = {db:String} "
            "AND table = 'rated_windows'", {"db": "meterwax"})}
        assert types["amount_delta"] == "Decimal(38, 18)"
    with ClickHouseConnectStore(server.url) as again:
        assert again.applied == []

    edited = tmp_path / "migrations"
    shutil.copytree(Path(str(ch.migrations_dir())), edited)
    sql = edited / "0001_rated_windows.sql"
    sql.write_text(sql.read_text().replace("UInt64,", "UInt32,", 1))
    with pytest.raises(MigrationChecksumError) as err:
        ClickHouseConnectStore(server.url, migrations=load_migrations(edited))
    assert err.value.version == 1


def test_replay_is_deduplicated_and_the_highest_revision_wins(
        store: ClickHouseConnectStore) -> None:
    a1 = rated("sub-1", amount_delta="1.000000000000000001")
    b1 = rated("sub-1", start=JAN + timedelta(hours=1), amount_delta="0.000000000000000001")
    c1 = rated("sub-2", meter="storage_gb", amount_delta="12345678901234567.123456789")
    store.write([a1, b1, c1])
    store.write([c1, a1, b1])  # replay, reordered: same bytes, same token, dropped
    assert raw_count(store) == 3
    a2 = rated("sub-1", revision=2, amount_delta="3.5", after_close=True)
    store.write([a2])
    store.write([a1])  # a stale revision after the newer one changes nothing
    final = store.final_rows()
    assert [as_record(r) for r in final] == [a2, b1, c1]
    (total,) = store.query("SELECT sum(amount_delta) AS s, count() AS n "
                           "FROM meterwax.rated_windows_final")
    assert total == {"s": Decimal("12345678901234570.623456789000000001"), "n": 3}
    assert store.query("OPTIMIZE TABLE meterwax.rated_windows FINAL") == []  # as ChdbStore
    assert raw_count(store) == 3
    with pytest.raises(UnstorableValueError):  # refused before anything is sent
        store.write([rated("bad", amount_delta="0.0000000000000000001")])


def test_decimals_and_datetimes_round_trip_exactly(store: ClickHouseConnectStore) -> None:
    values = [Decimal(v) for v in EDGE]
    rows = [rated(f"sub-{i}", amount_delta=str(v), cumulative_amount=v, window_quantity=v)
            for i, v in enumerate(values)]
    store.write(rows)
    final = store.final_rows()
    assert [r["amount_delta"] for r in final] == values
    assert [as_record(r) for r in final] == rows
    assert [format(r["amount_delta"], "f") for r in final[:2]] == [
        "0.000000000000000001", "12345678901234567.123456789"]  # as ClickHouse prints them
    assert all(r["window_start"].tzinfo is UTC for r in final)
    (total,) = store.query("SELECT sum(toDecimal256(amount_delta, 18)) AS s "
                           "FROM meterwax.rated_windows_final")
    with localcontext(prec=60):
        assert total["s"] == sum(values, Decimal(0))
    (bound,) = store.query("SELECT {d:Decimal(38, 18)} AS d, {t:DateTime64(6, 'UTC')} AS t",
                           {"d": Decimal("0.000000000000000001"), "t": JAN})
    assert bound == {"d": Decimal("0.000000000000000001"), "t": JAN}


def test_query_errors_are_typed(store: ClickHouseConnectStore) -> None:
    with pytest.raises(ClickHouseServerError) as err:
        store.query("SELECT no_such_column FROM meterwax.rated_windows")
    assert err.value.code == 47  # UNKNOWN_IDENTIFIER
    assert isinstance(err.value, RuntimeError)  # like chdb's errors, for callers of either
    with pytest.raises(ClickHouseServerError) as err:
        store.query("SELECT 1 FROM meterwax.no_such_table")
    assert err.value.code == 60
    assert store.query("SELECT 1 AS one") == [{"one": 1}]  # the server carries on


def test_same_rows_give_the_same_results_on_both_backends(tmp_path: Path) -> None:
    rows = sample_rows()
    with ChdbHttpServer(tmp_path / "over_http") as server, \
            ClickHouseConnectStore(server.url) as remote:
        remote.write(rows)
        http_summary = rated_summary(remote, "meterwax")
        http_final = remote.final_rows()
    with ChdbStore(tmp_path / "embedded") as local:
        local.write(rows)
        chdb_summary = rated_summary(local, "meterwax")
        chdb_final = local.final_rows()
    assert http_summary == chdb_summary
    assert len(http_summary) > 3
    for row in http_final + chdb_final:
        del row["inserted_at"]
    assert http_final == chdb_final
    # Same values and same Python types, down to how decimals print.
    assert [{k: (type(v), str(v)) for k, v in r.items()} for r in http_final] == \
        [{k: (type(v), str(v)) for k, v in r.items()} for r in chdb_final]


def test_a_chdb_store_shares_the_served_path(server: ChdbHttpServer, tmp_path: Path) -> None:
    batch = [rated("sub-1"), rated("sub-2")]
    with open_store(server.path) as local, open_store(server.url) as remote:
        assert isinstance(local, ChdbStore)
        assert isinstance(remote, ClickHouseConnectStore)
        local.write(batch)
        remote.write(batch)  # the same batch over HTTP: the same token, deduplicated
        assert raw_count(remote) == 2
        # HTTP requests changed settings for themselves only: the store still reads its JSON.
        http(server, "SELECT 1", output_format_json_quote_decimals="0", max_threads="1")
        (row,) = local.query("SELECT window_start, amount_delta FROM meterwax.rated_windows "
                             "WHERE subscription_id = 'sub-1'")
        assert row == {"window_start": JAN, "amount_delta": Decimal("1.25")}
        with pytest.raises(StorePathError):
            ChdbStore(tmp_path / "elsewhere")


def test_concurrent_writers_share_one_store(store: ClickHouseConnectStore) -> None:
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


def test_closed_store_refuses_use(server: ChdbHttpServer) -> None:
    s = ClickHouseConnectStore(server.url)
    s.close()
    s.close()
    with pytest.raises(ch.StoreClosedError):
        s.query("SELECT 1")
    with pytest.raises(ValueError, match="path"):
        ClickHouseConnectStore(server.url + "/meterwax")


# --- the HTTP interface -----------------------------------------------------------------------


def test_protocol_basics(server: ChdbHttpServer) -> None:
    assert http(server)[::2] == (200, b"Ok.\n")
    status, headers, body = http(server, "SELECT {x:String} AS x, 1 + 1 AS two FORMAT JSONEachRow",
                                 param_x="a\\tb")
    assert (status, json.loads(body)) == (200, {"x": "a\tb", "two": 2})
    assert headers["X-ClickHouse-Format"] == "JSONEachRow"
    assert headers["X-ClickHouse-Timezone"]
    assert json.loads(headers["X-ClickHouse-Summary"])["read_rows"] == "1"
    # Output as a server would give it, not as the shared session is set up for ChdbStore.
    _, _, body = http(server, "SELECT toDateTime64('2024-01-01 00:00:00', 6, 'UTC') AS t, "
                              "toDecimal64(1.5, 2) AS d FORMAT JSONEachRow")
    assert json.loads(body) == {"t": "2024-01-01 00:00:00.000000", "d": 1.5}

    status, headers, body = http(server, "SELECT nope")
    assert status == 500
    assert headers["X-ClickHouse-Exception-Code"] == "47"
    assert body.startswith(b"Code: 47. DB::Exception: ") and b"(version " in body
    status, headers, _ = http(server, "CREATE TABLE t (a UInt8) ENGINE = Memory")
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (500, "164")  # GET: readonly
    assert http(server, "SELEC 1")[1]["X-ClickHouse-Exception-Code"] == "62"  # not READONLY
    assert http(server, "SELECT 1; SELECT 2", body=b"")[0] == 500
    assert http(server, "SELECT 1", body=b"", no_such_setting="1")[0] == 500
    assert urllib.request.urlopen(server.url + "/ping", timeout=5).read() == b"Ok.\n"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(server.url + "/nowhere", timeout=5)
    assert err.value.code == 404


def test_inserts_from_body_and_compressed_bodies(server: ChdbHttpServer) -> None:
    assert http(server, "CREATE TABLE default.t (a UInt32, s String) ENGINE = MergeTree "
                        "ORDER BY a", body=b"")[0] == 200
    # Statement and data in the body; statement in the URL and gzip data (two gzip members).
    assert http(server, body=b"INSERT INTO default.t FORMAT TSV\n1\tx\n")[0] == 200
    data = gzip.compress(b"2\ty\n") + gzip.compress(b"3\tz\n")
    assert http(server, "INSERT INTO default.t (a, s) FORMAT TSV", body=data,
                headers={"Content-Encoding": "gzip"})[0] == 200
    assert http(server, body=b"INSERT INTO default.t VALUES (4, 'w;')")[0] == 200
    status, _, body = http(server, "SELECT a, s FROM default.t ORDER BY a FORMAT CSV")
    assert (status, body) == (200, b'1,"x"\n2,"y"\n3,"z"\n4,"w;"\n')
    status, _, body = http(server, "INSERT INTO default.t FORMAT TSV", body=b"oops\n")
    assert status == 500 and body.startswith(b"Code: ")
    assert http(server, "SELECT count() FROM default.t")[2] == b"4\n"
    # Binary data may start with whitespace: only the spaces up to the first newline go.
    head = b"INSERT INTO t (`a;`, b) SETTINGS x = 'FORMAT y' FORMAT Native \n"
    assert split_insert(head + b"\t\n") == (
        "INSERT INTO t (`a;`, b) SETTINGS x = 'FORMAT y'", "Native", len(head))
    assert split_insert(b"INSERT INTO t SELECT 1") is None


@pytest.mark.parametrize("compress", ["lz4", "zstd", "gzip", False])
def test_clickhouse_connect_native_inserts_and_form_encoding(
        server: ChdbHttpServer, compress: str | bool) -> None:
    import clickhouse_connect

    client = clickhouse_connect.get_client(host="127.0.0.1", port=server.port,
                                           compress=compress, form_encode_query_params=True)
    try:
        client.command("CREATE TABLE IF NOT EXISTS default.n (a UInt32, d Decimal(38, 18), "
                       "t DateTime64(6, 'UTC'), c LowCardinality(String)) "
                       "ENGINE = MergeTree ORDER BY a")
        client.command("TRUNCATE TABLE default.n")
        values = [Decimal(v) for v in EDGE]
        rows = [[i, v, JAN + timedelta(microseconds=i), f"c{i % 2}"] for i, v in enumerate(values)]
        summary = client.insert("default.n", rows, column_names=["a", "d", "t", "c"])
        assert summary.written_rows == len(rows)  # Native, compressed blocks, chunked upload
        result = client.query("SELECT a, d, t, c FROM default.n WHERE c IN {cs:Array(String)} "
                              "ORDER BY a", parameters={"cs": ["c0", "c1"]}, tz_mode="aware")
        assert [list(r) for r in result.result_rows] == rows
    finally:
        client.close()


def test_http_requests_leave_the_shared_session_as_they_found_it(
        server: ChdbHttpServer) -> None:
    changed = "SELECT name, value FROM system.settings WHERE changed ORDER BY name"
    with ChdbStore(server.path) as local:
        before = local.query(changed)
        http(server, "SELECT 1", body=b"", max_threads="1", output_format_json_quote_decimals="0")
        http(server, "SET max_block_size = 7", session_id="s")
        http(server, "SET max_threads = 'many'", session_id="s")  # fails
        http(server, "SELECT nope", database="system", max_threads="2")  # fails
        http(server, "USE system", session_id="s")
        assert http(server, "SET readonly = 1", session_id="s")[0] == 500  # refused
        assert local.query(changed) == before
        assert local.query("SELECT currentDatabase() AS db") == [{"db": "default"}]


def test_sessions_keep_their_settings_and_database(server: ChdbHttpServer) -> None:
    def get(query: str, **params: str) -> bytes:
        status, _, body = http(server, query, **params)
        assert status == 200, body
        return body

    get("SET max_threads = 3", session_id="s1")
    get("USE system", session_id="s1")
    assert get("SELECT getSetting('max_threads'), currentDatabase()", session_id="s1") \
        == b"3\tsystem\n"
    assert get("SELECT getSetting('max_threads') = 3, currentDatabase()") == b"0\tdefault\n"
    assert get("SELECT currentDatabase()", database="system") == b"system\n"
    assert http(server, "SELECT 1", session_id="nope", session_check="1")[0] == 500


def test_serve_main(tmp_path: Path) -> None:
    assert serve_main(["--path", str(tmp_path / "missing")]) == 2
    ChdbStore(tmp_path / "out" / "clickhouse").close()
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from sinks.clickhouse.serve import serve_main; "
                               "sys.exit(serve_main(sys.argv[1:]))",
         "--path", str(tmp_path / "out"), "--port", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.split(" at ")[1].split()[0]
        query = urllib.parse.urlencode({"query": "SELECT count() FROM meterwax.schema_migrations"})
        migrations = len(load_migrations())
        assert urllib.request.urlopen(f"{url}/?{query}", timeout=10).read() == (
            f"{migrations}\n".encode())
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()


def test_a_read_only_server_refuses_every_write_whatever_the_method(tmp_path: Path) -> None:
    """`meterwax serve-clickhouse` without --writable: anything that reaches the port (there is
    no authentication) can read the store, never change it or reach beyond it."""
    ChdbStore(tmp_path / "ro").close()
    with ChdbHttpServer(tmp_path / "ro", writable=False) as server:
        for sql in ("DROP TABLE meterwax.rated_windows",
                    "INSERT INTO meterwax.schema_migrations SELECT * FROM "
                    "meterwax.schema_migrations",
                    "TRUNCATE TABLE meterwax.rated_windows",
                    "SELECT * FROM file('/etc/passwd', 'LineAsString')",
                    "SELECT 1 INTO OUTFILE '/tmp/x.tsv'"):
            status, _, body = http(server, body=sql.encode())
            assert status == 500 and b"(READONLY)" in body, (sql, body)
            assert b"read-only" in body
        status, _, body = http(server, "SELECT count() FROM meterwax.schema_migrations")
        assert status == 200 and body == f"{len(load_migrations())}\n".encode()
        status, _, _ = http(server, body=b"SET max_threads = 1")  # settings stay allowed
        assert status == 200
    # The store is untouched, and a writable server (what a stream writes through) can write.
    with ChdbHttpServer(tmp_path / "ro") as server:
        status, _, body = http(server, "EXISTS TABLE meterwax.rated_windows")
        assert body == b"1\n"
        status, _, _ = http(server, body=b"CREATE TABLE meterwax.scratch (x UInt8) "
                                         b"ENGINE = Memory")
        assert status == 200
