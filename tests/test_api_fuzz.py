"""schemathesis over the committed OpenAPI document, against a live `meterwax api` process
serving a demo's folder, with a finance token and with a customer token: no 5xx, every status
code, content type, header and body as documented, and no route that answers without a token
(the probes aside, which the document declares open).

Left out on purpose: the "schema-valid request accepted" check. A cursor is opaque (only one
this API returned is valid), and a usage query is bounded in buckets, so some schema-valid
values are rightly refused with 400, as documented."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_workbench import meterwax, start_api

ROOT = Path(__file__).resolve().parents[1]
CHECKS = ",".join(("not_a_server_error", "status_code_conformance", "content_type_conformance",
                   "response_headers_conformance", "response_schema_conformance",
                   "unsupported_method", "missing_required_header", "ignored_auth"))


TOKENS: list[str] = []  # every token this module sent, for the last test
SERVER: list[subprocess.Popen[str]] = []


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    out = tmp_path_factory.mktemp("fuzz") / "demo"
    assert meterwax("demo", "--size", "3000", "--out", str(out)).returncode == 0
    proc, base = start_api("--out", str(out), "--rate-limit", "100000")
    SERVER.append(proc)
    try:
        yield base, out
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)


@pytest.mark.parametrize("scope", ["finance", "customer:acme"])
def test_the_live_server_keeps_to_its_openapi_document(served: tuple[str, Path],
                                                       scope: str) -> None:
    base, out = served
    made = meterwax("tokens", "create", "--scope", scope, "--out", str(out))
    token = made.stdout.strip().splitlines()[-1]
    TOKENS.append(token)
    schemathesis = Path(sys.executable).with_name("schemathesis")
    proc = subprocess.run(
        [str(schemathesis), "run", str(ROOT / "schemas" / "openapi.json"), "--url", base,
         "-H", f"Authorization: Bearer {token}", "--checks", CHECKS, "--max-examples", "25",
         "--seed", "7", "--no-color"],
        cwd=out.parent, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "passed" in proc.stdout


def test_the_server_never_wrote_a_token_anywhere(served: tuple[str, Path]) -> None:
    """After every request above (errors and 500-free fuzzing alike), nothing the server wrote
    holds a token or its secret."""
    assert TOKENS, "runs after the fuzzing"
    proc = SERVER[0]
    proc.terminate()
    out, err = proc.communicate(timeout=30)
    for token in TOKENS:
        secret = token.split("_", 2)[2]
        assert token not in out + err and secret not in out + err
