#!/usr/bin/env bash
# One command on a fresh machine: install meterwax into .venv and run the embedded demo.
# Extra arguments go to `meterwax demo` (e.g. --size 1000000 --workers 2).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/meterwax demo "$@"
