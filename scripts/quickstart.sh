#!/usr/bin/env bash
# Quick start, step 1: install everything into .venv and run `llmkit quickstart` on the embedded corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
exec .venv/bin/llmkit quickstart "$@"
