"""The workbench page in a real headless Chromium (Debian's, driven by Playwright), served by a
real `meterwax api --out DIR` process over a demo's folder: it shows what the API says, and a
customer token sees only its own figures. Retry from the page against a stream deployment is
in tests/test_api_stream.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The README's screenshot: written there only when asked (METERWAX_UPDATE_SCREENSHOT=1), so a
# test run leaves the working tree as it found it.
SCREENSHOT = ROOT / "docs" / "workbench.png"


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Debian's chromium is needed (scripts/test.sh installs it with apt-get)"
    return path


def meterwax(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meterwax.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_api(*args: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "meterwax.cli", "api", "--port", str(port),
                             *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{base}/healthz", timeout=2).read()
            return proc, base
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read() if proc.stderr else "api exited") from None
            time.sleep(0.1)
    raise AssertionError("meterwax api did not answer")


def get(base: str, path: str, token: str) -> Any:
    request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
    return json.loads(urllib.request.urlopen(request, timeout=30).read())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    out = tmp_path_factory.mktemp("workbench") / "demo"
    assert meterwax("demo", "--size", "20000", "--out", str(out)).returncode == 0
    finance = meterwax("tokens", "create", "--scope", "finance", "--out", str(out))
    customer = meterwax("tokens", "create", "--scope", "customer:globex", "--out", str(out))
    proc, base = start_api("--out", str(out))
    try:
        yield (base, finance.stdout.strip().splitlines()[-1],
               customer.stdout.strip().splitlines()[-1])
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        yield b
        b.close()


def open_page(browser: Any, base: str, token: str) -> tuple[Any, list[str]]:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("requestfailed", lambda r: problems.append(f"failed {r.url}"))
    page.on("request", lambda r: None if r.url.startswith(base) or r.url.startswith("data:")
            else problems.append(f"left the server: {r.url}"))
    page.goto(base + "/")
    page.fill("#token", token)
    page.click("#login button[type=submit]")
    page.wait_for_selector("body[data-ready=true]", timeout=60_000)
    return page, problems


def test_the_page_shows_what_the_api_says(browser: Any, served: tuple[str, str, str],
                                          tmp_path: Path) -> None:
    base, finance, _ = served
    page, problems = open_page(browser, base, finance)
    summary = get(base, "/v1/exceptions/summary", finance)
    assert page.inner_text("#rejected-total") == str(summary["total"])
    shown = {tr.get_attribute("data-reason"): tr.query_selector("td.num").inner_text()
             for tr in page.query_selector_all("#rejected-rows tr")}
    assert shown == {r: str(n) for r, n in summary["by_reason"].items()}
    # examples carry the original payload as text, never as markup
    assert page.locator("#rejected-rows pre").count() >= len(summary["by_reason"])
    held = get(base, "/v1/invoice-exceptions?limit=500", finance)["items"]
    assert page.locator("#held-rows tr").count() == len(held)
    month = get(base, "/v1/me", finance)["previous_period"]
    assert page.input_value("#month") == month
    chain = get(base, f"/v1/reconciliation?month={month}", finance)
    assert page.locator("#recon-rows tr").count() == len(chain["chain"])
    assert page.inner_text("#recon-verdict") == f"{month} balances"
    assert page.locator("td.variance").count() == 0
    customers = get(base, "/v1/customers", finance)["customers"]
    assert [tr.get_attribute("data-customer")
            for tr in page.query_selector_all("#charges-rows tr")] == customers
    acme = get(base, "/v1/customers/acme/charges", finance)
    row = page.inner_text("#charges-rows tr[data-customer=acme]")
    assert all(f"{t['total']} {t['currency']}" in row for t in acme["totals"])
    assert page.locator("#usage-charts svg").count() >= 1
    assert not problems, problems  # every request answered, none left this server
    # a retry from a folder says why it cannot be done, on the page
    page.click("#rejected-rows button[data-reason=UNKNOWN_SUBJECT]")
    page.wait_for_selector("#retry-result.bad")
    assert "stream deployment" in page.inner_text("#retry-result")
    page.reload()
    page.wait_for_selector("body[data-ready=true]", timeout=60_000)
    shot = SCREENSHOT if os.environ.get("METERWAX_UPDATE_SCREENSHOT") == "1" else (
        tmp_path / "workbench.png")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    page.close()


def test_a_customer_token_sees_only_its_own_charges_and_usage(
        browser: Any, served: tuple[str, str, str]) -> None:
    base, _, customer = served
    page, problems = open_page(browser, base, customer)
    for section in ("rejected", "held", "recon"):
        assert page.is_hidden(f"#{section}"), section
    assert [tr.get_attribute("data-customer")
            for tr in page.query_selector_all("#charges-rows tr")] == ["globex"]
    assert page.locator("#usage-customer option").all_inner_texts() == ["globex"]
    assert "customer:globex" in page.inner_text("#who")
    assert not problems, problems  # the page asked for nothing the token may not read
    # the finance data is not merely hidden: the API refuses it to this token
    status = page.evaluate("""async (t) => (await fetch('/v1/exceptions/summary',
        {headers: {Authorization: 'Bearer ' + t}})).status""", customer)
    assert status == 403
    other = page.evaluate("""async (t) => (await fetch('/v1/customers/acme/charges',
        {headers: {Authorization: 'Bearer ' + t}})).status""", customer)
    assert other == 404
    page.close()


def test_a_bad_token_is_told_so_and_sees_nothing(browser: Any,
                                                 served: tuple[str, str, str]) -> None:
    base, _, _ = served
    page = browser.new_page()
    page.goto(base + "/")
    page.fill("#token", "mwx_0000000000000000_" + "A" * 43)
    page.click("#login button[type=submit]")
    page.wait_for_selector("#error:not([hidden])")
    assert re.search(r"not valid", page.inner_text("#error"))
    assert page.is_hidden("#charges") and page.is_hidden("#rejected")
    page.close()


def test_the_page_loads_nothing_from_elsewhere(served: tuple[str, str, str]) -> None:
    base, _, _ = served
    with urllib.request.urlopen(base + "/", timeout=30) as r:
        html = r.read().decode()
        policy = r.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy
    assert not re.search(r"(src|href)=\"(https?:)?//", html)
