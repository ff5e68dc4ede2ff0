#!/usr/bin/env bash
# Install llmkit and everything it needs into .venv inside the repo. Safe to run again: it skips what is done.
#
# The traps it handles: torch goes in first (an unpinned torch pulls a multi-GB CUDA build), and DeepSpeed is
# installed with DS_BUILD_OPS=0 --no-build-isolation (its isolated build would fetch a torch of its own).
#   LLMKIT_TORCH        the torch requirement (default torch==2.13.0)
#   LLMKIT_TORCH_INDEX  a PyTorch wheel index, e.g. https://download.pytorch.org/whl/cu128 on a CUDA machine
#   PYTHON              the interpreter that creates the venv (default python3; needs 3.10+)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${LLMKIT_TORCH:-torch==2.13.0}"
EXTRAS="${1:-}"   # "test" also installs the test dependencies

"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "llmkit needs Python 3.10 or newer")'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PY=.venv/bin/python
STAMP=".venv/.llmkit-installed${EXTRAS:+-$EXTRAS}"
WANT="$(cat pyproject.toml scripts/install.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    exit 0
fi

pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }
pip_install --upgrade pip setuptools wheel
if ! "$PY" -c 'import torch' 2>/dev/null; then
    echo "installing $TORCH_SPEC ..." >&2
    pip_install ${LLMKIT_TORCH_INDEX:+--index-url "$LLMKIT_TORCH_INDEX"} "$TORCH_SPEC"
fi
if ! "$PY" -c 'import importlib.metadata as m; m.version("deepspeed")' 2>/dev/null; then
    echo "installing deepspeed (no compiled ops) ..." >&2
    DS_BUILD_OPS=0 pip_install --no-build-isolation deepspeed
fi
echo "installing llmkit and its dependencies ..." >&2
pip_install --no-build-isolation -e ".${EXTRAS:+[$EXTRAS]}"
echo "$WANT" > "$STAMP"
