"""Helpers shared by test modules (import as `from helpers import ...`)."""

import json
import subprocess
import sys

from conftest import HEAVY_MODULES


def heavy_modules_after(argv: list[str]) -> tuple[int, list[str], str]:
    """Run `llmkit ARGV` in a fresh interpreter; return (exit code, heavy modules imported, stdout)."""
    script = (
        "import io, json, sys, contextlib\n"
        f"sys.argv = ['llmkit'] + {argv!r}\n"
        "from llmkit.commands import main\n"
        "out = io.StringIO(); code = 0\n"
        "with contextlib.redirect_stdout(out):\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit as exc:\n"
        "        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)\n"
        f"heavy = sorted(m for m in {list(HEAVY_MODULES)!r} if m in sys.modules)\n"
        "print(json.dumps({'code': code, 'heavy': heavy, 'stdout': out.getvalue()}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return report["code"], report["heavy"], report["stdout"]
