"""The Grafana dashboard (k8s/grafana-dashboard.json): every metric a Prometheus panel uses is
one meterwax exports, and every ClickHouse panel's SQL runs against the real schema (a demo's
embedded store, Grafana's time macros filled with the demo's months) and returns rows."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

import flows.metrics  # noqa: F401  (registers the stream's metrics)
import meterwax.api.app  # noqa: F401  (registers the API's metrics)
from sinks.clickhouse import ChdbStore

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = json.loads((ROOT / "k8s" / "grafana-dashboard.json").read_text())
PANELS = DASHBOARD["panels"]
# The demo rejects at its clock, 2026-12-01T00:00Z: the range ends after it.
FROM, TO = "2026-10-01 00:00:00", "2026-12-02 00:00:00"


def exported() -> set[str]:
    names: set[str] = set()
    for family in REGISTRY.collect():
        if not family.name.startswith("meterwax_"):
            continue
        if family.type == "counter":
            names |= {f"{family.name}_total", family.name}
        elif family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
        else:
            names.add(family.name)
    return names


def targets(kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [(p["title"], t) for p in PANELS for t in p["targets"]
            if t["datasource"]["type"] == kind]


def test_the_dashboard_covers_what_operators_and_finance_ask() -> None:
    titles = {p["title"] for p in PANELS}
    assert {"Usage per meter (events)", "Usage per customer and meter",
            "Rated usage charges this month", "Rejections by cause", "Consumer lag",
            "Event time to queryable (p50, p99)"} <= titles
    assert len({p["id"] for p in PANELS}) == len(PANELS)


def test_every_prometheus_panel_uses_exported_metrics() -> None:
    known = exported()
    used = {(title, name) for title, t in targets("prometheus")
            for name in re.findall(r"\bmeterwax_[a-z_]+", t["expr"])}
    assert used
    assert sorted((t, n) for t, n in used if n not in known) == []


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("grafana") / "demo"
    proc = subprocess.run([sys.executable, "-m", "meterwax.cli", "demo", "--size", "5000",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    with ChdbStore(str(out / "clickhouse")) as s:
        yield s


def _filled(sql: str) -> str:
    # Grafana's ClickHouse plugin macros, as the plugin expands them for a fixed range; `now()`
    # is the demo's last month, so "this month" has data.
    sql = re.sub(r"\$__timeFilter\((\w+)\)",
                 lambda m: f"{m.group(1)} >= toDateTime64('{FROM}', 6, 'UTC') AND "
                           f"{m.group(1)} < toDateTime64('{TO}', 6, 'UTC')", sql)
    return sql.replace("now()", "toDateTime('2026-11-15 00:00:00', 'UTC')")


@pytest.mark.parametrize(("title", "target"), targets("grafana-clickhouse-datasource"),
                         ids=[t for t, _ in targets("grafana-clickhouse-datasource")])
def test_every_clickhouse_panel_runs_against_the_schema(store: Any, title: str,
                                                        target: dict[str, Any]) -> None:
    sql = target["rawSql"]
    assert "$__" not in _filled(sql)
    rows = store.query(_filled(sql))
    assert rows, title
