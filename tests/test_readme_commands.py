"""Every command line of README.md's "## Commands" block, run as a user would type it: the
installed `meterwax` on PATH, a shell, relative paths, in a folder holding what the lines name
(`catalog/example.yaml`, `events.jsonl`).

What is changed from the README text, and why:
- an optional part `[...]` is kept as written (the brackets removed), except where it is a
  placeholder (`[--now RFC3339]`), which is dropped;
- `meterwax demo`'s `[--size 200000]` runs with 2000 events: 200,000 take a minute;
- `meterwax stream`, `exceptions` and `contracts` need Kafka (and Redis), so they run with `-h`
  only (tests/test_stream.py, test_exceptions_retry.py and test_contracts_stream.py run them for
  real);
- `meterwax serve-clickhouse` runs with `-h`, and then for real in the background, with its
  `[--port 8123]` set to a free port, answering `SELECT 1` over HTTP;
- `meterwax tokens` runs as written (on the demo's folder); `meterwax api` runs with `-h`, and
  then for real in the background on a free port, answering its probes and, with the token
  `tokens create` printed, a customer's charges.
A line for any other command fails the test, so a new README line gets a rule here.
"""

from __future__ import annotations

import re
import shlex
import shutil
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from meterwax.workload import write_workload
from operators.catalog import load_catalog

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv the tests run in, where `meterwax` is installed
_OPTIONAL = re.compile(r"\[([^\[\]]*)\]")
_PLACEHOLDERS = ("--now RFC3339",)
DEMO_SIZE = ("--size 200000", "--size 2000")


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Commands\n", 1)[1]
    block = section.split("```sh\n", 1)[1].split("\n```", 1)[0]
    return [line for line in block.splitlines() if line.startswith("meterwax ")]


def subcommand(line: str) -> str:
    return line.split()[1]


def helped(line: str) -> str:
    """The line with its optional parts dropped and `-h` added (before a trailing comment)."""
    return re.sub(r"\s+#.*$", "", as_run(line, drop_optional=True)) + " -h"


def as_run(line: str, *, drop_optional: bool = False) -> str:
    """The line with its optional parts kept (brackets removed) or dropped, placeholders
    always dropped."""
    def part(match: re.Match[str]) -> str:
        inner = match.group(1)
        return "" if drop_optional or inner in _PLACEHOLDERS else inner

    return _OPTIONAL.sub(part, line)


def shell(line: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(cwd), "LANG": "C.UTF-8"}
    return subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert (BIN / "meterwax").is_file(), f"meterwax is not installed in {BIN}"
    folder = tmp_path_factory.mktemp("readme")
    (folder / "catalog").mkdir()
    shutil.copy(ROOT / "catalog" / "example.yaml", folder / "catalog" / "example.yaml")
    write_workload(folder / "events.jsonl", load_catalog(ROOT / "catalog" / "example.yaml"),
                   2000)
    return folder


def test_the_block_holds_the_commands_this_test_knows() -> None:
    assert [subcommand(line) for line in readme_commands()] == [
        "run", "run", "demo", "sql", "check-catalog", "stream", "serve-clickhouse",
        "exceptions", "contracts", "contracts", "tokens", "tokens", "api"]
    # `-h` must land before a trailing comment, or the line would start a server instead.
    serve = next(x for x in readme_commands() if subcommand(x) == "serve-clickhouse")
    assert helped(serve).endswith(" -h") and "#" not in helped(serve)


def test_every_readme_command_runs_as_written(workdir: Path) -> None:
    token = ""
    for line in readme_commands():
        command = subcommand(line)
        if command == "api":
            api_for_real(line, workdir, token)
            continue
        if command in ("stream", "exceptions", "contracts"):  # need the services: help here
            proc = shell(helped(line), workdir, timeout=60)
            assert proc.returncode == 0 and proc.stdout.startswith("usage: "), (
                line, proc.stderr)
            continue
        if command == "serve-clickhouse":
            serve_for_real(line, workdir)
            continue
        typed = as_run(line)
        if command == "demo":
            assert DEMO_SIZE[0] in typed, typed
            typed = typed.replace(*DEMO_SIZE)
        proc = shell(typed, workdir)
        # run: 1 means it finished and reconciliation found a difference, which the dirty
        # workload may well give; anything else is a failure.
        allowed = (0, 1) if command == "run" else (0,)
        assert proc.returncode in allowed, (typed, proc.returncode, proc.stderr)
        if command == "sql":
            assert proc.stdout.splitlines()[0] == "meter\tsum(event_count)", proc.stdout
            assert len(proc.stdout.splitlines()) > 1, proc.stdout
        if command == "check-catalog":
            assert proc.stdout.startswith("catalog OK"), proc.stdout
        if command == "tokens" and " create " in typed:
            token = proc.stdout.strip().splitlines()[-1]
            assert token.startswith("mwx_"), proc.stdout


def api_for_real(line: str, workdir: Path, token: str) -> None:
    help_run = shell(helped(line), workdir, timeout=60)
    assert help_run.returncode == 0 and help_run.stdout.startswith("usage: "), (
        line, help_run.stderr)
    typed = as_run(line)
    assert "--port 8080" in typed, typed
    argv = shlex.split(typed.replace("--port 8080", f"--port {free_port()}"), comments=True)
    proc = subprocess.Popen([str(BIN / argv[0]), *argv[1:]], cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        started = proc.stdout.readline()
        assert "meterwax api: serving" in started, (
            started, proc.stderr.read() if proc.stderr else "")
        url = re.search(r"(http://\S+)", started)
        assert url, started
        base = url.group(1)
        deadline = 60
        for _ in range(deadline * 10):
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=5).read()
                break
            except OSError:
                import time

                time.sleep(0.1)
        assert urllib.request.urlopen(f"{base}/readyz", timeout=30).status == 200
        request = urllib.request.Request(f"{base}/v1/customers/acme/charges",
                                         headers={"Authorization": f"Bearer {token}"})
        body = urllib.request.urlopen(request, timeout=30).read()
        assert b'"customer_id":"acme"' in body
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def serve_for_real(line: str, workdir: Path) -> None:
    help_run = shell(helped(line), workdir, timeout=60)
    assert help_run.returncode == 0 and help_run.stdout.startswith("usage: "), (
        line, help_run.stderr)
    typed = as_run(line)
    assert "--port 8123" in typed, typed
    argv = shlex.split(typed.replace("--port 8123", f"--port {free_port()}"), comments=True)
    proc = subprocess.Popen([str(BIN / argv[0]), *argv[1:]], cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        started = proc.stdout.readline()
        assert " over ClickHouse HTTP at " in started, (
            started, proc.stderr.read() if proc.stderr else "")
        url = started.rsplit(" at ", 1)[1].split()[0]
        query = urllib.parse.urlencode({"query": "SELECT 1"})
        assert urllib.request.urlopen(f"{url}/?{query}", timeout=30).read() == b"1\n"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
