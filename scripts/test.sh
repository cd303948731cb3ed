#!/usr/bin/env bash
# One command on a fresh machine: install meterwax with its test tools into .venv, start the
# services the tests need (a Kafka broker and Redis, scripts/services.sh), lint, type-check and run
# the whole test suite. Services this script started are stopped (and their data deleted) on exit,
# whatever the outcome; ones already running before are left as they were. The exit code is the
# first failing step's (pytest's when the tests fail).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test

# The workbench page is tested in Debian's Chromium (Playwright's own browser download needs
# the internet); tests/test_workbench.py finds it on PATH.
if ! command -v chromium >/dev/null 2>&1; then
  echo "== installing chromium (apt-get)"
  sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo"
  $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || {
    $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1 || true
    $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
  }
fi

echo "== services"
started=()
for service in kafka redis; do
  scripts/services.sh status "$service" >/dev/null || started+=("$service")
done
finish() {
  local rc=$?
  trap - EXIT INT TERM
  if [ ${#started[@]} -gt 0 ]; then
    scripts/services.sh clean "${started[@]}" || echo "test.sh: stopping services failed" >&2
  fi
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
scripts/services.sh start
eval "$(scripts/services.sh env)"
echo "METERWAX_KAFKA_BOOTSTRAP=$METERWAX_KAFKA_BOOTSTRAP METERWAX_REDIS_URL=$METERWAX_REDIS_URL"

echo "== ruff"
.venv/bin/ruff check meterwax flows operators sinks schemas tests bench
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/pytest -q -p no:cacheprovider "$@"
