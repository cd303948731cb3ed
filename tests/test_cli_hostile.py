"""The `meterwax` command against a careless user: bad arguments are all reported at once and
touch nothing; a run that fails or is killed leaves the previous outputs whole."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_flow import dirty_lines

from flows import runner
from flows.settings import SettingsError, StreamSettings, parse_duration
from meterwax import cli
from meterwax.cli import main
from operators.catalog import load_catalog

ROOT = Path(__file__).resolve().parents[1]
CATALOG = str(ROOT / "catalog" / "example.yaml")
NOW = "2030-01-01T00:00:00Z"  # after every event of the tests: nothing is FUTURE_EVENT


def meterwax(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meterwax.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (the embedded store too) by relative path, with its digest."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            out[str(path.relative_to(folder))] = "-> " + os.readlink(path)
        elif path.is_file():
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[str(path.relative_to(folder)) + "/"] = ""
    return out


def siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(out.name + "."))


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("events") / "events.jsonl"
    path.write_bytes(b"\n".join(dirty_lines()) + b"\n")
    return path


def good_run(events: Path, out: Path, *extra: str) -> dict[str, object]:
    proc = meterwax("run", "--catalog", CATALOG, "--events", str(events), "--out", str(out),
                    "--now", NOW, *extra)
    assert proc.returncode == 0, proc.stderr
    report: dict[str, object] = json.loads((out / "reconciliation.json").read_text())
    return report


@pytest.fixture(scope="module")
def previous(tmp_path_factory: pytest.TempPathFactory, events: Path) -> Path:
    """A folder holding a good run's outputs: what every failed run below must leave alone."""
    out = tmp_path_factory.mktemp("previous") / "out"
    good_run(events, out)
    return out


def run_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    code = main(list(args))
    err = capsys.readouterr().err
    return code, err.splitlines()


def run_args(events: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--catalog", CATALOG, "--events", str(events), "--out", str(out), *extra]


# -- every bad argument: exit 2, one line, nothing created ------------------------------------

BAD_RUN_ARGUMENTS = [
    (["--window", "99999999999d"], "--window: '99999999999d' is longer than the 10-year limit"),
    (["--window", "9" * 5000 + "s"], "longer than the 10-year limit"),
    (["--window", "3661d"], "longer than the 10-year limit (3660 days)"),
    (["--window", "0s"], "--window: must be longer than zero"),
    (["--window", "1.5s"], "--window: not a duration: '1.5s'"),
    (["--window", ""], "--window: not a duration"),
    (["--window", "\u0663s"], "--window: not a duration"),  # an Arabic-Indic digit
    (["--window", "1m1h"], "--window: not a duration"),
    (["--allowed-lateness", "3661d"], "--allowed-lateness: '3661d' is longer than the 10-year"),
    (["--allowed-lateness", "soon"], "--allowed-lateness: not a duration"),
    (["--max-future", "3661d"], "--max-future: '3661d' is longer than the 10-year limit"),
    (["--max-future=-1h"], "--max-future: not a duration: '-1h'"),
    (["--dedup-ttl", "0s"], "--dedup-ttl: must be longer than zero"),
    (["--adjustment-cycle", "0s"], "--adjustment-cycle: must be longer than zero"),
    (["--adjustment-cycle", "weekly"], "--adjustment-cycle: not a duration"),
    (["--dedup-ttl", "3661d"], "--dedup-ttl: '3661d' is longer than the 10-year limit"),
    (["--bill-from", "2026-10"], "--bill-from: was removed: set `billing_start: \"YYYY-MM\"`"),
    (["--workers", "0"], "--workers: must be at least 1, got 0"),
    (["--workers", "65"], "--workers: must be at most 64, got 65"),
    (["--workers", "two"], "--workers: not a whole number: 'two'"),
    (["--workers", "1" * 40], "--workers: must be at most 64"),
    (["--now", "2026-12-01T00:00:00"], "--now: '2026-12-01T00:00:00' has no UTC offset"),
    (["--now", "2026-12-01"], "--now: not an RFC 3339 timestamp: '2026-12-01'"),
    (["--now", "yesterday"], "--now: not an RFC 3339 timestamp"),
    (["--now", "2200-01-01T00:00:00Z"], "--now: '2200-01-01T00:00:00Z' is outside"),
    (["--now", "1969-12-31T23:59:59Z"], "--now: '1969-12-31T23:59:59Z' is outside"),
]


@pytest.mark.parametrize(("extra", "expected"), BAD_RUN_ARGUMENTS,
                         ids=[" ".join(a)[:30] for a, _ in BAD_RUN_ARGUMENTS])
def test_each_bad_value_is_one_line_and_creates_nothing(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, events: Path, extra: list[str],
        expected: str) -> None:
    out = tmp_path / "out"
    code, lines = run_in_process(capsys, *run_args(events, out, *extra))
    assert code == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith("meterwax: ") and expected in lines[0], lines
    assert not out.exists() and siblings(out) == []


def test_the_window_overflow_names_the_limit() -> None:
    proc = meterwax("run", "--catalog", CATALOG, "--events", "x", "--out", "/tmp/mwx-unused",
                    "--window", "99999999999d", timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "OverflowError" not in proc.stderr
    assert "--window: '99999999999d' is longer than the 10-year limit (3660 days)" in proc.stderr


def test_durations_stop_at_the_limit() -> None:
    assert parse_duration("3660d").days == 3660
    assert parse_duration("0003660d").days == 3660  # leading zeros are not digits of size
    assert parse_duration("90") == parse_duration("1m30s")
    for text in ("3660d1s", "1" + "0" * 12 + "s", "9" * 100 + "d"):
        with pytest.raises(Exception, match="10-year limit"):
            parse_duration(text)


def test_every_problem_is_reported_together(capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    code, lines = run_in_process(
        capsys, "run", "--catalog", str(tmp_path / "none.yaml"), "--events",
        str(tmp_path / "typo.jsonl"), "--out", str(a_file), "--window", "99999999999d",
        "--allowed-lateness", "1x", "--max-future", "3661d", "--now", "2026-12-01",
        "--bill-from", "2300-01", "-w", "65")
    assert code == 2
    assert all(line.startswith("meterwax: ") for line in lines)
    flags = [line.split(":")[1].strip() for line in lines]
    assert flags == ["--bill-from", "--window", "--allowed-lateness", "--max-future",
                     "--workers", "--now", "--events", "--catalog", "--out"], lines
    assert a_file.read_text() == "not a folder"


BAD_PATHS = [
    ("missing events", lambda t: ["--events", str(t / "typo.jsonl")],
     "--events: no such file"),
    ("events is a folder", lambda t: ["--events", str(t)], "is a folder, not a file"),
    ("missing catalog", lambda t: ["--catalog", str(t / "none.yaml")],
     "--catalog: no such file"),
    ("catalog is a folder", lambda t: ["--catalog", str(t)], "is a folder, not a file"),
    ("out is a file", lambda t: ["--out", str(t / "file")], "exists and is not a folder"),
    ("parent is a file", lambda t: ["--out", str(t / "file" / "out")], "is not a folder"),
    ("parent missing", lambda t: ["--out", str(t / "no" / "out")], "does not exist"),
    ("out under /proc", lambda t: ["--out", "/proc/meterwax-out"], "cannot create folders in"),
    ("out is root", lambda t: ["--out", "/"], "is the root folder"),
    ("out is a mount point", lambda t: ["--out", "/proc"], "/proc is a mount point"),
    ("out holds other files", lambda t: ["--out", str(t / "foreign")],
     "holds files a run did not write (notes.txt)"),
]


@pytest.mark.parametrize(("name", "args", "expected"), BAD_PATHS, ids=[n for n, *_ in BAD_PATHS])
def test_bad_paths_are_one_line_and_touch_nothing(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, events: Path, name: str,
        args: object, expected: str) -> None:
    (tmp_path / "file").write_text("keep")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    base = {"--catalog": CATALOG, "--events": str(events), "--out": str(tmp_path / "out")}
    given = args(tmp_path)  # type: ignore[operator]
    base.update(zip(given[::2], given[1::2], strict=True))
    code, lines = run_in_process(capsys, "run", *[x for kv in base.items() for x in kv])
    assert code == 2
    problems = [line for line in lines if expected in line]
    assert problems and all(line.startswith("meterwax: ") for line in lines), lines
    assert snapshot(tmp_path) == before


def test_the_current_folder_is_never_an_output_folder(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, events: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for out in (".", str(tmp_path.parent)):
        code, lines = run_in_process(capsys, *run_args(events, Path(out)))
        assert code == 2 and any("is the current folder or holds it" in x for x in lines)


def test_inputs_inside_out_are_refused(capsys: pytest.CaptureFixture[str], previous: Path,
                                       tmp_path: Path) -> None:
    # Re-rating a demo's events into the demo's own folder would delete them with the swap.
    before = snapshot(previous)
    inside = previous / "events.jsonl"
    inside.write_bytes(b"\n".join(dirty_lines()) + b"\n")
    try:
        code, lines = run_in_process(capsys, *run_args(inside, previous))
    finally:
        inside.unlink()
    assert code == 2
    assert lines == [f"meterwax: --events: {inside} is inside --out {previous}, which a run "
                     "replaces whole; move it or choose another --out"]
    assert snapshot(previous) == before


def test_demo_arguments(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "demo"
    code, lines = run_in_process(capsys, "demo", "--out", str(out), "--size", "0", "--seed",
                                 "x", "--now", "2026-12-01T00:00:00", "--max-future", "3661d")
    assert code == 2
    assert [x.split(":")[1].strip() for x in lines] == ["--max-future", "--now", "--size",
                                                        "--seed"], lines
    code, lines = run_in_process(capsys, "demo", "--out", str(out), "--size", "100000001")
    assert code == 2 and lines == ["meterwax: --size: must be at most 100000000, got 100000001"]
    assert not out.exists()


# -- failed runs leave the previous outputs whole ---------------------------------------------

def test_failed_runs_leave_the_previous_outputs_byte_identical(
        previous: Path, events: Path, tmp_path: Path) -> None:
    before = snapshot(previous)
    assert "clickhouse/" in before and "reconciliation.json" in before
    bad_catalog = tmp_path / "bad.yaml"
    bad_catalog.write_text(Path(CATALOG).read_text().replace("currency: EUR", "currency: EUX"))
    attempts = {
        "missing events": ["--events", str(tmp_path / "typo.jsonl")],
        "bad window": ["--window", "99999999999d"],
        "bad catalog": ["--catalog", str(bad_catalog)],
    }
    for name, change in attempts.items():
        args = {"--catalog": CATALOG, "--events": str(events), "--out": str(previous),
                **dict(zip(change[::2], change[1::2], strict=True))}
        proc = meterwax("run", *[x for kv in args.items() for x in kv])
        assert proc.returncode == 2, (name, proc.stderr)
        assert "Traceback" not in proc.stderr, name
        assert snapshot(previous) == before, name
        assert siblings(previous) == [], name
    assert "unknown ISO 4217 currency 'EUX'" in proc.stderr


def test_a_run_that_fails_half_way_keeps_the_previous_outputs(
        capsys: pytest.CaptureFixture[str], previous: Path, events: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    before = snapshot(previous)

    class NoStore:
        def close(self) -> None:
            pass

    def half_a_run(opts: object, catalog: object, config: object, work: Path, *rest: object
                   ) -> object:
        (work / "exceptions.jsonl").write_text("half\n")
        msg = "disk full\nCaused by => the details"
        raise OSError(msg)

    monkeypatch.setattr(runner, "open_embedded_store", lambda *_: NoStore())
    monkeypatch.setattr(runner, "_run", half_a_run)
    code, lines = run_in_process(capsys, *run_args(events, previous, "--now", NOW))
    assert code == 3
    assert lines[0] == (f"meterwax: run failed: OSError: disk full; the previous outputs in "
                        f"{previous} are unchanged")
    assert lines[1:] == ["  Caused by => the details"]
    assert snapshot(previous) == before
    assert siblings(previous) == []


@pytest.fixture(scope="module")
def big_events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workload that takes seconds to rate: long enough to stop a run in the middle."""
    from meterwax.workload import write_workload

    path = tmp_path_factory.mktemp("big") / "big.jsonl"
    write_workload(path, load_catalog(CATALOG), 150_000)
    return path


def start_and_stop(big: Path, out: Path, sig: signal.Signals) -> subprocess.Popen[str]:
    """Start a run of `big` into `out`; send `sig` once it is rating into its partial folder."""
    # SIGINT as a terminal delivers it, whatever started the suite: a shell without job control
    # starts background commands with SIGINT ignored, and the run would inherit that.
    proc = subprocess.Popen(
        [sys.executable, "-m", "meterwax.cli", "run", "--catalog", CATALOG, "--events", str(big),
         "--out", str(out), "--now", NOW], cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    partial = out.with_name(f"{out.name}.partial-{proc.pid}")
    try:
        deadline = time.monotonic() + 60
        while not (partial / "clickhouse").exists():
            assert proc.poll() is None, "the run ended before it could be stopped"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.5)  # into the flow itself
        assert proc.poll() is None, "the run ended before it could be stopped"
        proc.send_signal(sig)
        proc.wait(timeout=60)  # reaped: a zombie's pid still looks alive
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc


def test_sigkill_mid_run_keeps_the_previous_outputs_and_the_next_run_cleans_up(
        tmp_path: Path, events: Path, big_events: Path) -> None:
    out = tmp_path / "out"
    good_run(events, out)
    before = snapshot(out)
    proc = start_and_stop(big_events, out, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert snapshot(out) == before
    assert siblings(out) == [f"out.partial-{proc.pid}"]  # what a kill leaves; nothing else

    report = good_run(events, out, "--window", "2m")
    assert siblings(out) == []
    assert report["run"]["window_seconds"] == 120  # type: ignore[index]
    assert report["run"]["rated_windows_store"] == str(out / "clickhouse")  # type: ignore[index]
    sql = meterwax("sql", "--out", str(out), "SELECT count() AS n FROM meterwax.rated_windows")
    assert sql.returncode == 0 and sql.stdout.splitlines()[0] == "n", sql.stderr


def test_ctrl_c_mid_run_says_the_previous_outputs_are_kept(
        tmp_path: Path, events: Path, big_events: Path) -> None:
    out = tmp_path / "out"
    good_run(events, out)
    before = snapshot(out)
    proc = start_and_stop(big_events, out, signal.SIGINT)
    assert proc.returncode == 3
    assert proc.stderr is not None
    assert proc.stderr.read().splitlines()[-1] == (
        f"meterwax: run interrupted; the previous outputs in {out} are unchanged")
    assert snapshot(out) == before
    assert siblings(out) == []  # an interrupted run removes its own partial folder


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sweep_restores_a_swap_killed_between_its_renames(tmp_path: Path) -> None:
    out = tmp_path / "out"
    pid = _dead_pid()
    aside = tmp_path / f"out.previous-{pid}"
    aside.mkdir()
    (aside / "reconciliation.json").write_text("previous")
    (tmp_path / f"out.partial-{pid}").mkdir()
    runner.sweep_leftovers(out)
    assert (out / "reconciliation.json").read_text() == "previous"
    assert siblings(out) == []


def test_sweep_leaves_a_live_run_alone(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        mine = tmp_path / f"out.partial-{live.pid}"
        mine.mkdir()
        stale = tmp_path / f"out.partial-{_dead_pid()}"
        stale.mkdir()
        unrelated = tmp_path / "out.partial-backup"  # not our naming: never touched
        unrelated.mkdir()
        other = tmp_path / f"outer.partial-{_dead_pid()}"  # another folder's leftover
        other.mkdir()
        runner.sweep_leftovers(out)
        assert mine.exists() and unrelated.exists() and other.exists() and not stale.exists()
    finally:
        live.kill()
        live.wait()


def test_the_swap_keeps_the_folder_mode_and_a_symlinked_out(tmp_path: Path,
                                                            events: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    real.chmod(0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    good_run(events, link)
    assert link.is_symlink() and (real / "reconciliation.json").exists()
    assert real.stat().st_mode & 0o777 == 0o700
    assert siblings(real) == []


# -- the new options --------------------------------------------------------------------------

def test_now_and_max_future_decide_what_is_in_the_future(tmp_path: Path, events: Path) -> None:
    # The dirty workload runs from 2026-10-01 to 2026-11; as of 2026-10-02 most of it is ahead.
    proc = meterwax("run", "--catalog", CATALOG, "--events", str(events), "--out",
                    str(tmp_path / "early"), "--now", "2026-10-02T00:00:00+02:00")
    assert proc.returncode in (0, 1), proc.stderr
    report = json.loads((tmp_path / "early" / "reconciliation.json").read_text())
    assert report["run"]["now"] == "2026-10-01T22:00:00+00:00"
    assert report["run"]["max_future_seconds"] == 86400
    assert report["events"]["exceptions"]["FUTURE_EVENT"] > 0

    wide = good_run(events, tmp_path / "wide", "--now", "2026-10-02T00:00:00Z",
                    "--max-future", "3650d")
    assert wide["events"]["exceptions"]["FUTURE_EVENT"] == 0  # type: ignore[index]
    assert wide["run"]["max_future_seconds"] == 3650 * 86400  # type: ignore[index]


def test_the_retention_horizon_refuses_usage_for_retired_periods(tmp_path: Path) -> None:
    """`--dedup-ttl` is the horizon: October retires 1 day after its close (1h lateness), and a
    later event for it is LATE_BEYOND_RETENTION, with its bytes, in exceptions.jsonl."""
    lines = [
        {"id": "a", "time": "2026-10-05T10:00:00Z"},
        {"id": "b", "time": "2026-11-03T00:00:00Z"},  # past 1 Nov 01:00 + 1 day
        {"id": "c", "time": "2026-10-06T10:00:00Z"},
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps({"specversion": "1.0", "source": "t",
                                        "type": "api.request", "subject": "acme-prod",
                                        "data": {}, **x}) + "\n" for x in lines))
    report = good_run(path, tmp_path / "out", "--dedup-ttl", "1d")
    assert report["run"]["retention_seconds"] == 86400  # type: ignore[index]
    assert report["events"]["exceptions"]["LATE_BEYOND_RETENTION"] == 1  # type: ignore[index]
    records = [json.loads(x) for x in (tmp_path / "out" / "exceptions.jsonl").read_text()
               .splitlines()]
    late = [r for r in records if r["reason"] == "LATE_BEYOND_RETENTION"]
    assert [(r["event_id"], json.loads(r["raw"])["id"]) for r in late] == [("c", "c")]
    assert "retention horizon (24h)" in late[0]["error"]


# -- stream settings --------------------------------------------------------------------------

@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("METERWAX_"):
            monkeypatch.delenv(name)
    return monkeypatch


STREAM_OK = ["stream", "--catalog", CATALOG, "--kafka-bootstrap", "k:9092", "--input-topic",
             "t", "--redis-url", "redis://r", "--clickhouse", "/tmp/ch", "--recovery-dir",
             "/tmp/rec"]


def test_stream_reports_every_bad_new_value(capsys: pytest.CaptureFixture[str],
                                            no_env: pytest.MonkeyPatch) -> None:
    code, lines = run_in_process(
        capsys, *STREAM_OK, "--max-future", "99999999999d", "--window", "0s", "--dedup-ttl",
        "0s", "--allowed-lateness", "x", "-w", "65", "--metrics-port", "70000", "-i", "2",
        "-a", "h:1", "-a", "nohost")
    assert code == 2
    expected = ["metrics_port: must be at most 65535", "dedup_ttl: must be longer than zero",
                "window: must be longer than zero", "allowed_lateness: not a duration",
                "max_future: '99999999999d' is longer than the 10-year limit",
                "workers: must be at most 64", "process_id: must be at most 1",
                "addresses: not host:port: 'nohost'"]
    assert len(lines) == len(expected), lines
    for line, want in zip(lines, expected, strict=True):
        assert line.startswith("meterwax: ") and want in line, (line, want)


def test_stream_max_future_from_flag_or_environment(no_env: pytest.MonkeyPatch) -> None:
    args = vars(cli._parser().parse_args(STREAM_OK))
    assert StreamSettings.from_mapping(args).max_future.total_seconds() == 86400
    no_env.setenv("METERWAX_MAX_FUTURE", "2h")
    no_env.setenv("METERWAX_WINDOW", "5m")
    settings = StreamSettings.from_mapping(args)
    assert settings.max_future.total_seconds() == 7200 and settings.window.seconds == 300
    flagged = vars(cli._parser().parse_args([*STREAM_OK, "--max-future", "30m"]))
    assert StreamSettings.from_mapping(flagged).max_future.total_seconds() == 1800
    no_env.setenv("METERWAX_MAX_FUTURE", "3661d")
    no_env.setenv("METERWAX_WORKERS", "many")
    with pytest.raises(SettingsError) as err:
        StreamSettings.from_mapping(args)
    assert [p.split(":")[0] for p in err.value.problems] == ["max_future", "workers"]


def test_stream_cluster_flags_come_together(capsys: pytest.CaptureFixture[str],
                                            no_env: pytest.MonkeyPatch) -> None:
    code, lines = run_in_process(capsys, *STREAM_OK, "-a", "h:1")
    assert code == 2 and lines == ["meterwax: process_id: required with --addresses"]
    code, lines = run_in_process(capsys, *STREAM_OK, "-i", "0")
    assert code == 2 and lines == ["meterwax: addresses: required with --process-id"]


def test_hostile_names_stay_on_one_line(capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "evil\nname").write_text("")
    code, lines = run_in_process(capsys, "run", "--catalog", CATALOG, "--events",
                                 str(tmp_path / "no\nsuch"), "--out", str(out))
    assert code == 2
    assert len(lines) == 2, lines
    assert lines[0].startswith("meterwax: --events: no such file: ")
    assert lines[1].startswith("meterwax: --out: holds files a run did not write ('evil\\nname')")
