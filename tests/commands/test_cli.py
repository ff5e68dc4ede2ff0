"""The CLI contract: help, version, exit codes, JSON on stdout, error lines, `python -m llmkit`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, all_command_paths, assert_clean_error

from llmkit import __version__


def test_root_help_lists_commands_and_exit_codes(cli):
    result = cli("--help")
    assert result.exit_code == 0
    for name in ("tokenize", "quickstart", "env"):
        assert name in result.stdout
    assert "Exit codes" in result.stdout and "130" in result.stdout and "LLMKIT_DEBUG" in result.stdout


def test_root_help_lists_every_command_with_its_own_summary(cli):
    """The root help is drawn from a table (so it imports no command module); each row must say what the command's
    own help says, and every command must be listed."""
    from llmkit.commands import COMMANDS, load_command

    shown = " ".join(cli("--help").stdout.split())   # rich wraps the rows
    for name, (_, summary) in COMMANDS.items():
        own = " ".join(load_command(name).help.split("\n\n")[0].split())
        assert own.startswith(summary.rstrip(".")), (name, own, summary)
        assert f"{name} {summary.split()[0]}" in shown
    modules = {p.stem for p in (ROOT / "src" / "llmkit" / "commands").glob("[a-z]*.py")}
    assert modules == {module for module, _ in COMMANDS.values()}, "a command module missing from COMMANDS"


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"llmkit {__version__}"


@pytest.mark.parametrize("path", all_command_paths(), ids=lambda p: " ".join(p))
def test_every_command_help_ends_with_real_examples(cli, path):
    result = cli(*path, "--help")
    assert result.exit_code == 0, result.stdout
    assert "Examples:" in result.stdout
    tail = result.stdout.split("Examples:")[1]
    count = tail.count("$ llmkit ")
    assert 2 <= count <= 4, tail
    assert f"$ llmkit {path[0]}" in tail


def test_unknown_command_is_a_usage_error(cli):
    result = cli("no-such-command")
    assert_clean_error(result, 2, "No such command 'no-such-command'", "Hint: see `llmkit --help`")


def test_unknown_flag_is_a_usage_error(cli):
    result = cli("tokenize", "show", "--no-such-flag")
    assert_clean_error(result, 2, "No such option: --no-such-flag", "Hint: see `llmkit tokenize show --help`")
    assert "╭" not in result.stderr   # one line, not click's box


def test_usage_errors_under_json_are_one_json_line(cli):
    result = cli("sft", "--json", "--batch-size", "many")
    assert result.exit_code == 2 and result.stdout == ""
    [line] = result.stderr.splitlines()
    payload = json.loads(line)
    assert payload["exit_code"] == 2 and "--batch-size" in payload["error"] and "sft --help" in payload["hint"]


def test_an_output_path_that_cannot_be_a_directory_is_an_error_not_a_traceback(cli, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("hello world\n" * 20)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = cli("tokenize", "train", "--corpus", corpus, "--vocab-size", "300", "-o", blocker / "tok")
    assert_clean_error(result, 1, str(blocker))


def test_python_dash_m_behaves_like_the_console_script(tmp_path):
    env = dict(os.environ, COLUMNS="100")
    module = subprocess.run([sys.executable, "-m", "llmkit", "--version"], capture_output=True, text=True, env=env)
    script = Path(sys.executable).with_name("llmkit")
    console = subprocess.run([str(script), "--version"], capture_output=True, text=True, env=env)
    assert module.returncode == console.returncode == 0
    assert module.stdout == console.stdout == f"llmkit {__version__}\n"
    bad_module = subprocess.run([sys.executable, "-m", "llmkit", "tokenize", "vocab"], capture_output=True, text=True)
    bad_console = subprocess.run([str(script), "tokenize", "vocab"], capture_output=True, text=True)
    assert bad_module.returncode == bad_console.returncode == 2
    assert bad_module.stderr == bad_console.stderr


def test_error_lines_and_json_error(cli, tmp_path):
    result = cli("tokenize", "vocab", "--tokenizer", tmp_path / "missing")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0].startswith("Error: no such tokenizer directory")
    assert result.stderr.splitlines()[1].startswith("Hint: ")
    result = cli("tokenize", "vocab", "--tokenizer", tmp_path / "missing", "--json")
    assert result.exit_code == 1 and result.stdout == ""
    payload = json.loads(result.stderr.strip())
    assert payload["exit_code"] == 1 and "no such tokenizer" in payload["error"] and payload["hint"]


def test_llmkit_debug_shows_traceback(tmp_path):
    env = dict(os.environ, LLMKIT_DEBUG="1")
    proc = subprocess.run([sys.executable, "-m", "llmkit", "tokenize", "vocab", "-t", str(tmp_path / "nope")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "Error: no such tokenizer directory" in proc.stderr


def test_interrupt_exits_130(cli, monkeypatch, bpe_dir):
    import llmkit.tokenization

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(llmkit.tokenization, "vocab", interrupted)
    result = cli("tokenize", "vocab", "-t", bpe_dir)
    assert result.exit_code == 130


def test_sigint_in_a_real_process_exits_130(tmp_path):
    """A real SIGINT while a command works: exit 130, one line, no traceback."""
    import signal

    script = (
        "import sys, time\n"
        "import llmkit.tokenization as t\n"
        "def slow(cfg):\n"
        "    print('working', file=sys.stderr, flush=True)\n"
        "    time.sleep(60)\n"
        "t.vocab = slow\n"
        f"sys.argv = ['llmkit', 'tokenize', 'vocab', '-t', {str(tmp_path)!r}]\n"
        "from llmkit.commands import main\n"
        "main()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr.readline().strip() == "working"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Interrupted" in stderr


def test_env_json(cli):
    result = cli("env", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    for key in ("llmkit", "python", "packages", "cuda_available", "devices", "bf16_supported",
                "bitsandbytes_backend", "deepspeed_accelerator"):
        assert key in report
    assert report["packages"]["torch"].startswith("2.")
    assert report["packages"]["transformers"] is not None


def test_presets_listing_and_show(cli):
    listing = json.loads(cli("presets", "--json").stdout)
    assert "bpe-4k" in listing["tokenize"]
    shown = cli("presets", "tokenize/bpe-4k")
    assert shown.exit_code == 0 and shown.stdout.startswith("# llmkit tokenize train")
    bad = cli("presets", "tokenize/bpe-4")
    assert bad.exit_code == 2 and "did you mean bpe-4k" in bad.stderr
