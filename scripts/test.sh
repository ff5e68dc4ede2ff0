#!/usr/bin/env bash
# Quick start, step 2: install everything (with the test dependencies) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh test
exec .venv/bin/python -m pytest "$@"
