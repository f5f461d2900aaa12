#!/usr/bin/env bash
# The README's test command: install with test extras, then run every test, unit and
# integration (`pytest` alone runs tests/unit only).
# pytest exits 5 when it collects no test; that must fail, and it does (set -e).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e '.[test]'
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=2"
export HVAE_DATA_DIR="${HVAE_DATA_DIR:-$(cd .. && pwd)/shared/data}"
# Every test unless an argument names a file or folder (`bash scripts/test.sh tests/unit/x.py`).
targets=(tests/unit tests/integration)
for arg in "$@"; do
  if [[ -e "${arg%%::*}" ]]; then targets=(); fi
done
python -m pytest "${targets[@]}" "$@"
