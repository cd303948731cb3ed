#!/usr/bin/env bash
# One command on a fresh machine: install meterwax with its test tools into .venv, lint, type-check
# and run the whole test suite. Services the tests need are started here (none yet: file mode and
# the embedded ClickHouse engine run in-process).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
echo "== ruff"
.venv/bin/ruff check flows operators sinks schemas tests bench
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/pytest -q -p no:cacheprovider "$@"
