"""Bad input on every command, generated from the commands themselves: a value that is not a number for each
numeric option, a value outside each option's list, an unknown flag, an unknown preset, a missing or wrong config
file. Each, with and without --json: the documented exit code, one `Error:` line and a `Hint:` (one JSON object
on stderr under --json), no traceback, nothing on stdout, nothing written in the working directory."""

import json
import typing

import pytest
from helpers import all_command_paths


def _command(path):
    import typer.main

    from llmkit.commands import app

    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return command


def _literal_values(hint) -> tuple | None:
    for candidate in (hint, *typing.get_args(hint)):
        if typing.get_origin(candidate) is typing.Literal:
            return typing.get_args(candidate)
    return None


def _cases() -> list[tuple[str, list[str], str]]:
    cases = []
    for path in all_command_paths():
        command = _command(path)
        cases.append((" ".join(path), [*path, "--no-such-flag"], "No such option: --no-such-flag"))
        cls = getattr(command.callback, "config_class", None)
        if cls is None:
            continue
        hints = typing.get_type_hints(cls)
        for param in command.params:
            if param.param_type_name != "option" or param.is_flag or param.name not in hints:
                continue
            flag = param.opts[0]
            if param.type.name in ("integer", "float"):
                cases.append((" ".join(path), [*path, flag, "x1"], f"'{flag}': 'x1' is not a valid"))
            values = _literal_values(hints[param.name])
            if values and all(isinstance(v, str) for v in values):
                cases.append((" ".join(path), [*path, flag, "no-such-value"], f"{flag}: 'no-such-value' is not one of"))
        cases.append((" ".join(path), [*path, "--preset", "no-such-preset"], "preset 'no-such-preset'"))
        cases.append((" ".join(path), [*path, "--config", "missing.yaml"], "config file not found: missing.yaml"))
        cases.append((" ".join(path), [*path, "--config", "unknown-key.yaml"], "unknown key 'no_such_setting'"))
        cases.append((" ".join(path), [*path, "--config", "not-a-mapping.yaml"], "not-a-mapping.yaml"))
    return cases


CASES = _cases()


def test_the_matrix_covers_every_command_and_enough_cases():
    assert {name for name, _, _ in CASES} == {" ".join(p) for p in all_command_paths()}
    assert len(CASES) * 2 >= 300


@pytest.mark.parametrize("json_mode", [False, True], ids=["human", "json"])
@pytest.mark.parametrize("name, argv, fragment", CASES, ids=[" ".join(c[1]) for c in CASES])
def test_bad_input(cli, tmp_path, monkeypatch, name, argv, fragment, json_mode):
    (tmp_path / "unknown-key.yaml").write_text("no_such_setting: 1\n")
    (tmp_path / "not-a-mapping.yaml").write_text("- a list\n- not settings\n")
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = cli(*argv, *(["--json"] if json_mode else []))
    assert result.exit_code == 2, (argv, result.exit_code, result.stderr, result.exception)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    if json_mode:
        error = json.loads(result.stderr)   # exactly one JSON object
        assert error["exit_code"] == 2 and fragment in error["error"] and error["hint"], error
    else:
        lines = result.stderr.splitlines()
        assert lines[0].startswith("Error: ") and sum(line.startswith("Error:") for line in lines) == 1, lines
        assert sum(line.startswith("Hint: ") for line in lines) == 1 and lines[-1].startswith("Hint: "), lines
        assert fragment in result.stderr, (fragment, result.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
