"""The `meterwax` command end to end, as a user runs it: a real process, real files, the real
embedded ClickHouse engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from test_flow import dirty_lines

ROOT = Path(__file__).resolve().parents[1]
CATALOG = str(ROOT / "catalog" / "example.yaml")
# Judged as of a fixed instant after every test event, so no result depends on today's date.
NOW = "2030-01-01T00:00:00Z"


def meterwax(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meterwax.cli", *args], cwd=ROOT, input=stdin.decode()
        if stdin is not None else None, capture_output=True, text=True, timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("events") / "events.jsonl"
    path.write_bytes(b"\n".join(dirty_lines()) + b"\n")
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, events: Path) -> Path:
    out = tmp_path_factory.mktemp("run")
    proc = meterwax("run", "--catalog", CATALOG, "--events", str(events), "--out", str(out),
                    "--now", NOW)
    assert proc.returncode == 0, proc.stderr
    assert "VERDICT: BALANCED" in proc.stdout
    return out


def test_run_writes_every_output(run_dir: Path) -> None:
    report = json.loads((run_dir / "reconciliation.json").read_text())
    assert report["balanced"] is True
    # The final folder, not the one the run wrote into before swapping it in.
    assert report["run"]["rated_windows_store"] == str(run_dir / "clickhouse")
    assert report["run"]["now"] == "2030-01-01T00:00:00+00:00"
    assert sorted(p.name for p in run_dir.parent.iterdir()
                  if p.name.startswith(run_dir.name + ".")) == []
    assert report["events"]["read"] == 29
    candidates = [json.loads(x) for x in (run_dir / "invoice_candidates.jsonl").read_text()
                  .splitlines()]
    ids = [c["invoice_candidate_id"] for c in candidates]
    # the three late October events fall in one adjustment cycle: one adjustment
    assert "sub-acme-1:2026-10" in ids and "sub-acme-1:2026-10:adj-1" in ids
    assert "sub-acme-1:2026-10:adj-2" not in ids
    assert all(isinstance(c["subtotal"], str) and isinstance(c["total"], str)
               for c in candidates)  # decimal strings
    held = {c["customer_id"] for c in candidates if c["status"] == "held"}
    assert held == {"initech", "hooli"}
    exceptions = [json.loads(x) for x in (run_dir / "exceptions.jsonl").read_text()
                  .splitlines()]
    assert [e["position"]["line"] for e in exceptions] == sorted(
        e["position"]["line"] for e in exceptions)
    bad_json = next(e for e in exceptions if e["position"]["line"] == 4)
    assert bad_json["reason"] == "INVALID_JSON" and bad_json["raw"] == "{not json"
    not_utf8 = next(e for e in exceptions if e["position"]["line"] == 5)
    assert not_utf8["raw"] is None and not_utf8["raw_base64"]


def test_rated_windows_are_queryable_with_sql(run_dir: Path) -> None:
    proc = meterwax("sql", "--out", str(run_dir),
                    "SELECT toString(sum(amount_delta)) AS total FROM "
                    "meterwax.rated_windows_final WHERE subscription_id = 'sub-acme-1' "
                    "AND period = '2026-10' AND meter = 'storage_gb'")
    assert proc.returncode == 0, proc.stderr
    # storage max 130 GB: 130 * 0.20 + 5.00 = 31 (exact, unrounded sum of window deltas)
    assert proc.stdout.splitlines() == ["total", "31"]


def test_sql_is_read_only_unless_asked(run_dir: Path, tmp_path: Path) -> None:
    count = "SELECT count() AS n FROM meterwax.rated_windows"
    before = meterwax("sql", "--out", str(run_dir), count).stdout
    for query in ("DROP TABLE meterwax.rated_windows", "TRUNCATE TABLE meterwax.rated_windows",
                  "SELECT 1; DROP TABLE meterwax.rated_windows",
                  "SELECT * FROM file('/etc/passwd', 'LineAsString')"):
        proc = meterwax("sql", "--out", str(run_dir), query)
        assert proc.returncode == 2, (query, proc.stdout)
        assert proc.stderr.startswith("meterwax: "), proc.stderr
    assert "read-only here (pass --writable" in meterwax(
        "sql", "--out", str(run_dir), "DROP TABLE meterwax.rated_windows").stderr
    assert meterwax("sql", "--out", str(run_dir), count).stdout == before
    # Asked for, a change goes through (on a copy: the run folder is shared by the tests).
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, symlinks=True)  # the store links metadata to its data
    proc = meterwax("sql", "--out", str(copy), "--writable",
                    "TRUNCATE TABLE meterwax.rated_windows")
    assert proc.returncode == 0, proc.stderr
    assert meterwax("sql", "--out", str(copy), count).stdout == "n\n0\n"


def test_same_input_gives_identical_files_with_two_workers(run_dir: Path, events: Path,
                                                           tmp_path: Path) -> None:
    proc = meterwax("run", "--catalog", CATALOG, "--events", str(events), "--out",
                    str(tmp_path), "--workers", "2", "--now", NOW)
    assert proc.returncode == 0, proc.stderr
    for name in ("invoice_candidates.jsonl", "exceptions.jsonl"):
        assert (tmp_path / name).read_bytes() == (run_dir / name).read_bytes()


@pytest.mark.parametrize("mode", ["off", "on"])
def test_same_input_gives_identical_files_judged_ahead_or_not(run_dir: Path, events: Path,
                                                              tmp_path: Path, mode: str) -> None:
    proc = meterwax("run", "--catalog", CATALOG, "--events", str(events), "--out",
                    str(tmp_path), "--judge-ahead", mode, "--now", NOW)
    assert proc.returncode == 0, proc.stderr
    for name in ("invoice_candidates.jsonl", "exceptions.jsonl", "erp_ar_invoices.jsonl"):
        assert (tmp_path / name).read_bytes() == (run_dir / name).read_bytes()


def test_events_from_stdin(run_dir: Path, events: Path, tmp_path: Path) -> None:
    proc = meterwax("run", "--catalog", CATALOG, "--events", "-", "--out", str(tmp_path),
                    "--now", NOW, stdin=events.read_bytes().replace(b"\xff\xfe", b"??"))
    assert proc.returncode == 0, proc.stderr
    assert ((tmp_path / "invoice_candidates.jsonl").read_bytes()
            == (run_dir / "invoice_candidates.jsonl").read_bytes())


def test_bad_catalog_lists_every_problem_and_writes_nothing(tmp_path: Path, events: Path
                                                            ) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (ROOT / "catalog" / "example.yaml").read_text()
        .replace('unit_price: "0.002"', "unit_price: 0.002")
        .replace("currency: EUR\n", "currency: EUX\n")
        .replace("plan: scale-jpy", "plan: no-such-plan")
    )
    out = tmp_path / "out"
    proc = meterwax("run", "--catalog", str(bad), "--events", str(events), "--out", str(out))
    assert proc.returncode == 2
    assert "3 problem(s)" in proc.stderr
    assert "plans[0].charges[0].tiers[1].unit_price: unquoted float 0.002" in proc.stderr
    assert "plans[3].currency: unknown ISO 4217 currency 'EUX'" in proc.stderr
    assert "customers[3].subscriptions[0].plan: unknown plan 'no-such-plan'" in proc.stderr
    assert not out.exists()


def test_check_catalog_and_usage_errors(tmp_path: Path) -> None:
    ok = meterwax("check-catalog", CATALOG)
    assert ok.returncode == 0 and "6 customers, 7 subscriptions" in ok.stdout
    zero = meterwax("run", "--catalog", CATALOG, "--events", "x", "--out", str(tmp_path),
                    "--workers", "0", "--judge-ahead", "maybe")
    assert zero.returncode == 2 and "--workers: must be at least 1" in zero.stderr
    assert "--events: no such file: 'x'" in zero.stderr  # reported together
    assert "--judge-ahead: not one of AUTO, ON, OFF: 'maybe'" in zero.stderr
    window = meterwax("run", "--catalog", CATALOG, "--events", "x", "--out", str(tmp_path),
                      "--window", "0s")
    assert window.returncode == 2 and "longer than zero" in window.stderr


def test_stream_settings_report_every_problem_at_once(tmp_path: Path) -> None:
    env_free = {k: v for k, v in os.environ.items()
                if not k.startswith("METERWAX_")}
    proc = subprocess.run(
        [sys.executable, "-m", "meterwax.cli", "stream", "--catalog", str(tmp_path / "none.yaml"),
         "--dedup-ttl", "35d"],
        cwd=ROOT, env={**env_free, "METERWAX_WORKERS": "0"}, capture_output=True, text=True,
        timeout=60, check=False)
    assert proc.returncode == 2
    for problem in ("kafka_bootstrap: required", "input_topic: required", "redis_url: required",
                    "clickhouse: required", "recovery_dir: required",
                    "workers: must be at least 1", "catalog: no such file"):
        assert problem in proc.stderr, proc.stderr


@pytest.mark.parametrize("command", ["run", "demo", "sql", "check-catalog", "stream",
                                     "serve-clickhouse"])
def test_every_subcommand_has_help(command: str) -> None:
    proc = meterwax(command, "-h")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: meterwax {command}")


def test_serve_clickhouse_as_documented(run_dir: Path) -> None:
    # `meterwax serve-clickhouse --path out/ [--port 8123]`, on a free port.
    proc = subprocess.Popen(
        [sys.executable, "-m", "meterwax.cli", "serve-clickhouse", "--path", str(run_dir),
         "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(f"serving {run_dir / 'clickhouse'} over ClickHouse HTTP at "), (
            line, proc.stderr.read() if proc.stderr else "")
        url = line.rsplit(" at ", 1)[1].split()[0]
        query = urllib.parse.urlencode({"query": "SELECT count() > 0 FROM "
                                                 "meterwax.rated_windows_final"})
        assert urllib.request.urlopen(f"{url}/?{query}", timeout=30).read() == b"1\n"
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()


def test_serve_clickhouse_without_a_store_says_to_run_first(tmp_path: Path) -> None:
    proc = meterwax("serve-clickhouse", "--path", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"meterwax: no embedded store at {tmp_path / 'out'} yet: run `meterwax run` first and "
        "serve its --out folder (a store served before the run would not show its rows)"]
    bad_port = meterwax("serve-clickhouse", "--path", str(tmp_path), "--port", "http")
    assert bad_port.returncode == 2 and "--port: not a TCP port" in bad_port.stderr
