"""Start-up stays light: --help, every command's --help and config printing never import the heavy libraries."""

import pytest
from helpers import all_command_paths, heavy_modules_after


def test_root_help_imports_nothing_heavy():
    code, heavy, out = heavy_modules_after(["--help"])
    assert code == 0 and "tokenize" in out
    assert heavy == []


@pytest.mark.parametrize("path", all_command_paths(), ids=lambda p: " ".join(p))
def test_command_help_imports_nothing_heavy(path):
    code, heavy, _ = heavy_modules_after(path + ["--help"])
    assert code == 0
    assert heavy == []


def test_print_config_imports_nothing_heavy():
    code, heavy, out = heavy_modules_after(["tokenize", "train", "--corpus", "x.txt", "-o", "out", "--print-config"])
    assert code == 0 and "vocab_size: 8000" in out
    assert heavy == []


def test_root_help_imports_no_command_module():
    """`llmkit --help` is drawn from the COMMANDS table: no command module, no config, no typer.rich_utils."""
    import subprocess
    import sys

    script = ("import sys, contextlib, io\nsys.argv = ['llmkit', '--help']\nfrom llmkit.commands import main\n"
              "with contextlib.redirect_stdout(io.StringIO()):\n    try:\n        main()\n    except SystemExit:\n"
              "        pass\n"
              "print(sorted(m for m in sys.modules if m.startswith('llmkit.commands.') or m in "
              "('llmkit.config', 'typer.rich_utils')))")
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60).stdout
    assert loaded.strip().splitlines()[-1] == "['llmkit.commands._help', 'llmkit.commands._runtime']"
