"""The shipped completion scripts are generated from the app; a stale one fails here."""

import pytest
from helpers import ROOT

from llmkit.commands.completion import SHELLS, generate

FILES = {"bash": "llmkit.bash", "zsh": "_llmkit", "fish": "llmkit.fish"}


@pytest.mark.parametrize("shell", SHELLS)
def test_completion_files_are_fresh(shell):
    from typer.main import get_command

    from llmkit.commands import app

    shipped = (ROOT / "completions" / FILES[shell]).read_text(encoding="utf-8")
    assert shipped == generate(shell, get_command(app)), (
        f"completions/{FILES[shell]} is stale: run `llmkit completion {shell} > completions/{FILES[shell]}`")


def test_bash_script_completes_subcommands_and_options(tmp_path):
    import shutil
    import subprocess

    if not shutil.which("bash"):
        pytest.skip("no bash")
    script = (ROOT / "completions" / "llmkit.bash").read_text()
    probe = script + '\nCOMP_WORDS=(llmkit tokenize sh); COMP_CWORD=2; _llmkit; echo "${COMPREPLY[@]}"\n' \
                     'COMP_WORDS=(llmkit tokenize show --max); COMP_CWORD=3; _llmkit; echo "${COMPREPLY[@]}"\n'
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "show"
    assert out[1] == "--max-length"


def test_completion_command_rejects_unknown_shells(cli):
    result = cli("completion", "tcsh")
    assert result.exit_code == 2 and "unknown shell" in result.stderr
