#!/usr/bin/env bash
# The test suite: lint, then every test (unit, real-kernel network namespaces, the VM, the example plugin).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
