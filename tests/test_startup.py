"""Start-up stays light: --help, every command's --help and config printing never import the heavy libraries."""

import pytest
from helpers import heavy_modules_after
from test_cli import all_command_paths


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
