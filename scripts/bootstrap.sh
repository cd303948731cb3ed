#!/usr/bin/env bash
# Create .venv with a Python that Bytewax 0.21 has wheels for (3.11 or 3.12) and install meterwax
# into it. Usage: scripts/bootstrap.sh [extra], e.g. "test". Re-running is cheap.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
pick_python() {
  for candidate in python3.11 python3.12 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then
      version=$("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
      case "$version" in 3.11|3.12) echo "$candidate"; return 0 ;; esac
    fi
  done
  echo "meterwax needs Python 3.11 or 3.12 (Bytewax 0.21 publishes no wheels for others)" >&2
  return 1
}
if [ ! -x .venv/bin/python ]; then
  "$(pick_python)" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
if [ -n "$extra" ]; then
  .venv/bin/python -m pip install --quiet -e ".[$extra]"
else
  .venv/bin/python -m pip install --quiet -e .
fi
