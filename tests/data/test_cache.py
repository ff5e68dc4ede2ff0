"""llmkit.data.cache: keys follow the content, builds are atomic, corrupt entries are rebuilt, ranks build once."""

import json
import subprocess
import sys
import textwrap

import pytest

from llmkit.data.cache import MARKER, cached_entry, entry_key


@pytest.fixture(scope="module")
def tokenizers(bpe_dir, wordpiece_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bpe_dir)), AutoTokenizer.from_pretrained(str(wordpiece_dir))


def test_the_key_changes_with_the_file_the_tokenizer_and_the_settings(tmp_path, tokenizers):
    bpe, wordpiece = tokenizers
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "one"}\n')

    def key(tokenizer=bpe, **settings):
        return entry_key("tokens", sources=[str(data)], tokenizer=tokenizer, settings={"eos": 2, **settings})

    first = key()
    assert key() == first                                 # same inputs: the same entry
    assert key(tokenizer=wordpiece) != first
    assert key(eos=3) != first
    data.write_text('{"text": "two"}\n')
    assert key() != first
    assert entry_key("sft", sources=[str(data)], tokenizer=bpe, settings={"eos": 2}) != key()


def test_one_added_token_is_another_tokenizer(bpe_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(bpe_dir))
    before = entry_key("tokens", sources=[], tokenizer=tokenizer, settings={})
    tokenizer.add_tokens(["<zz_new>"])
    assert entry_key("tokens", sources=[], tokenizer=tokenizer, settings={}) != before


def test_a_glob_is_keyed_by_the_files_it_matches(tmp_path):
    (tmp_path / "a.jsonl").write_text("1")
    source = str(tmp_path / "*.jsonl")
    first = entry_key("tokens", sources=[source], settings={})
    (tmp_path / "a.jsonl").write_text("2")
    assert entry_key("tokens", sources=[source], settings={}) != first


def _build(text: str, calls: list):
    def build(scratch):
        calls.append(1)
        (scratch / "data.txt").write_text(text)
        return {"chars": len(text)}
    return build


def _intact(entry, info):
    return len((entry / "data.txt").read_text()) == info["chars"]


def test_an_entry_is_built_once_then_reused(tmp_path):
    calls = []
    entry, reused = cached_entry("tokens", "k1", _build("hello", calls), check=_intact, cache_dir=str(tmp_path))
    assert not reused and (entry / "data.txt").read_text() == "hello"
    assert json.loads((entry / MARKER).read_text())["key"] == "k1"
    again, reused = cached_entry("tokens", "k1", _build("other", calls), check=_intact, cache_dir=str(tmp_path))
    assert reused and again == entry and (entry / "data.txt").read_text() == "hello" and calls == [1]


def test_an_interrupted_build_leaves_no_entry(tmp_path):
    def broken(scratch):
        (scratch / "data.txt").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached_entry("tokens", "k1", broken, check=_intact, cache_dir=str(tmp_path))
    assert [p.name for p in (tmp_path / "tokens").iterdir()] == []   # no entry, no scratch, no lock
    calls = []
    entry, reused = cached_entry("tokens", "k1", _build("whole", calls), check=_intact, cache_dir=str(tmp_path))
    assert not reused and calls == [1] and (entry / "data.txt").read_text() == "whole"


@pytest.mark.parametrize("damage", ["truncate", "marker"])
def test_a_corrupt_entry_is_rebuilt_never_trusted(tmp_path, damage):
    calls = []
    entry, _ = cached_entry("tokens", "k1", _build("hello", calls), check=_intact, cache_dir=str(tmp_path))
    if damage == "truncate":
        (entry / "data.txt").write_text("he")
    else:
        (entry / MARKER).write_text("{not json")
    again, reused = cached_entry("tokens", "k1", _build("hello", calls), check=_intact, cache_dir=str(tmp_path))
    assert not reused and again == entry and calls == [1, 1] and (entry / "data.txt").read_text() == "hello"


def test_two_processes_build_one_entry_once(tmp_path):
    log = tmp_path / "builds.log"
    script = textwrap.dedent(f"""
        import sys, time
        from llmkit.data.cache import cached_entry

        def build(scratch):
            with open({str(log)!r}, "a") as f:
                f.write("built\\n")
            time.sleep(1.5)   # the other process asks meanwhile
            (scratch / "data.txt").write_text("x")
            return {{}}

        entry, reused = cached_entry("tokens", "shared", build, cache_dir={str(tmp_path / "cache")!r})
        print(entry, reused)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=60)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert log.read_text() == "built\n"
    assert outputs[0][0] == outputs[1][0] and sorted(o[1] for o in outputs) == ["False", "True"]
