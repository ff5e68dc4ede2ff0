"""The one Output object: under --json a command writes exactly one JSON document on stdout and none on stderr."""

import dataclasses
import json
from pathlib import Path

import pytest


def _documents(text: str) -> list:
    """Every JSON document in `text`, read back to back (whitespace between them allowed)."""
    decoder, documents, at = json.JSONDecoder(), [], 0
    while text[at:].strip():
        at += len(text[at:]) - len(text[at:].lstrip())
        document, at = decoder.raw_decode(text, at)
        documents.append(document)
    return documents


def _json_lines(text: str) -> list[str]:
    found = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, (dict, list)):
            found.append(line)
    return found


@pytest.mark.parametrize("args, key", [
    (["env", "--json"], "packages"),
    (["memory-estimate", "--params", "1.4B", "--json"], "per_device"),
    (["presets", "--json"], "tokenize"),
    (["tokenize", "vocab", "-t", "{bpe_dir}", "--json"], "vocab_size"),
])
def test_json_mode_writes_one_document_on_stdout_and_none_on_stderr(cli, bpe_dir, args, key):
    result = cli(*(a.format(bpe_dir=bpe_dir) for a in args))
    assert result.exit_code == 0, (result.stdout, result.stderr)
    documents = _documents(result.stdout)
    assert len(documents) == 1, result.stdout
    assert isinstance(documents[0], dict) and key in documents[0]
    assert _json_lines(result.stderr) == [], result.stderr


def test_result_twice_is_a_programming_error():
    from llmkit.commands._runtime import Output

    for json_mode in (True, False):
        out = Output(json_mode)
        out.result({"first": 1}, lambda value: None)
        with pytest.raises(AssertionError):
            out.result({"second": 2}, lambda value: None)


@dataclasses.dataclass
class _Saved:
    path: Path
    sizes: tuple[int, ...]


class _Shaped:
    def to_json(self):
        return {"kept": _Saved(Path("a/b"), (1, 2))}


def test_result_serialises_once_for_scripts_and_renders_once_for_people(capsys):
    from llmkit.commands._runtime import Output

    Output(True).result(_Saved(Path("runs/x"), (3, 4)), lambda value: pytest.fail("rendered under --json"))
    Output(True).result(_Shaped())   # a result that shapes its own document
    assert capsys.readouterr().out.splitlines() == ['{"path": "runs/x", "sizes": [3, 4]}',
                                                    '{"kept": {"path": "a/b", "sizes": [1, 2]}}']
    rendered = []
    Output(False).result(_Saved(Path("runs/x"), (3, 4)), rendered.append)
    assert rendered == [_Saved(Path("runs/x"), (3, 4))]
    assert capsys.readouterr().out == ""
