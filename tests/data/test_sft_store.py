"""SFT examples cached as Arrow and read memory-mapped (llmkit.data.sft_store): rows equal the tokenizer's own
assistant masks, a rerun maps the entry without rendering and trains the same, other templates and tokenizers get
their own entries, a corrupt entry is rebuilt, and a worker's error keeps its hint."""

import json

import numpy as np
import pytest

# chatml (llmkit's built-in) with generation tags, so transformers itself marks the trained tokens
CHATML_GENERATION = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' + '\n' }}{% endgeneration %}"
    "{%- else -%}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}")


def _conversations(n: int) -> list[list[dict]]:
    words = "the loop repeats a block while the test holds and then it stops returning".split()
    chats = []
    for i in range(n):
        messages = [{"role": "system", "content": "Be brief."}] if i % 3 == 0 else []
        for turn in range(1 + i % 3):
            messages.append({"role": "user", "content": f"Question {i}.{turn}: what does {words[i % 13]} do?"})
            messages.append({"role": "assistant", "content": " ".join(words[(i + turn) % 5:(i + turn) % 5 + 4 + i % 4])})
        chats.append(messages)
    return chats


@pytest.fixture(scope="module")
def chats_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sft-store") / "chats.jsonl"
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in _conversations(40)), encoding="utf-8")
    return path


def _tok(bpe_dir, template="chatml"):
    from transformers import AutoTokenizer

    from llmkit.data import sft

    tokenizer = AutoTokenizer.from_pretrained(bpe_dir)
    sft.prepare_tokenizer(tokenizer, template)
    return tokenizer


def _store(tokenizer, data, cache, template="chatml", **fields):
    from llmkit.config import SFTConfig
    from llmkit.data import sft, sft_store

    cfg = SFTConfig(**{"model": "m", "data": str(data), "preview": 1, "data_cache": str(cache), "num_proc": 2,
                       "template": template, **fields})
    return sft_store.stored_examples(cfg, tokenizer, template, sft.builtin_template(template), str(data))


def _reference(tokenizer, messages) -> tuple[list[int], list[int]]:
    encoded = tokenizer.apply_chat_template(messages, chat_template=CHATML_GENERATION, tokenize=True,
                                            return_dict=True, return_assistant_tokens_mask=True)
    ids = list(encoded["input_ids"])
    return ids, [t if trained else -100 for t, trained in zip(ids, encoded["assistant_masks"])]


def test_stored_rows_equal_the_templates_own_assistant_masks(bpe_dir, chats_file, tmp_path, monkeypatch):
    from llmkit.data import sft_store

    monkeypatch.setattr(sft_store, "CHUNK_RECORDS", 7)    # several chunks, encoded by a pool of two workers
    monkeypatch.setattr(sft_store, "BATCH_TOKENS", 300)   # and several record batches in the file
    tok = _tok(bpe_dir)
    store = _store(tok, chats_file, tmp_path)
    chats = _conversations(40)
    references = [_reference(tok, m) for m in chats]
    assert len(store) == 40 and not store.reused and list(store.rows) == list(range(40))
    rows = sft_store.SFTRows(store, np.arange(len(store)))
    assert [(r["input_ids"], r["labels"]) for r in (rows[i] for i in range(len(rows)))] == references
    assert store.summary.format == "messages" and store.summary.end_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert int(store.trained.sum()) == sum(sum(label != -100 for label in labels) for _, labels in references)

    width = int(store.lengths.max()) + 10
    packed = sft_store.PackedSFTRows(store, np.arange(len(store)), width)
    seen = []
    for b in range(len(packed)):
        block = packed[b]
        assert len(block["input_ids"]) <= width
        starts = [k for k, p in enumerate(block["position_ids"]) if p == 0] + [len(block["input_ids"])]
        for a, z in zip(starts[:-1], starts[1:]):
            seen.append(references.index((block["input_ids"][a:z], block["labels"][a:z])))
    assert sorted(seen) == list(range(40)) and len(packed) < 40


def test_a_rerun_maps_the_entry_without_rendering_and_trains_the_same(cli, configs, bpe_dir, chats_file, tmp_path,
                                                                      monkeypatch):
    from llmkit.data import sft

    def run(out):
        result = cli("sft", "-m", configs["llama"], "--from-scratch", "-t", bpe_dir, "--data", chats_file,
                     "--template", "chatml", "--data-cache", tmp_path / "cache", "-o", out, "--max-steps", "3",
                     "--batch-size", "4", "--lr", "1e-3", "--logging-steps", "1", "--seed", "3", "--json")
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)

    first = run(tmp_path / "first")
    entries = sorted((tmp_path / "cache" / "sft").iterdir())

    def no_rendering(*args, **kwargs):
        raise AssertionError("rendered although the cache holds the examples")

    monkeypatch.setattr(sft, "render", no_rendering)
    second = run(tmp_path / "second")
    assert sorted((tmp_path / "cache" / "sft").iterdir()) == entries
    assert second["loss_curve"] == first["loss_curve"] and len(first["loss_curve"]) == 3
    assert (second["examples"], second["trained_tokens"]) == (first["examples"], first["trained_tokens"]) == \
        (40, first["trained_tokens"])
    from safetensors.torch import load_file

    weights = [load_file(tmp_path / name / "model" / "model.safetensors") for name in ("first", "second")]
    assert all((weights[0][k] == weights[1][k]).all() for k in weights[0])


def test_another_template_tokenizer_or_setting_gets_its_own_entry(bpe_dir, unigram_dir, chats_file, tmp_path):
    tok = _tok(bpe_dir)
    base = _store(tok, chats_file, tmp_path)
    again = _store(_tok(bpe_dir), chats_file, tmp_path)
    assert again.reused and again.directory == base.directory
    others = [_store(_tok(bpe_dir, "plain"), chats_file, tmp_path, template="plain"),
              _store(_tok(unigram_dir), chats_file, tmp_path),
              _store(tok, chats_file, tmp_path, seq_len=48),
              _store(tok, chats_file, tmp_path, train_on_prompt=True)]
    assert not any(o.reused for o in others)
    assert len({base.directory, *(o.directory for o in others)}) == 5
    ids, labels = others[3].example(0)
    assert (labels == ids).all() and max(others[2].lengths) <= 48


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "edit the marker"])
def test_a_corrupt_entry_is_rebuilt(bpe_dir, chats_file, tmp_path, damage):
    from llmkit.data.cache import MARKER

    tok = _tok(bpe_dir)
    built = _store(tok, chats_file, tmp_path)
    expected = [built.example(i)[1].tolist() for i in range(len(built))]
    examples = built.directory / "examples.arrow"
    if damage == "flip a byte":   # inside the token ids: the file still opens, only its digest tells
        raw = bytearray(examples.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        examples.write_bytes(bytes(raw))
    elif damage == "truncate":
        examples.write_bytes(examples.read_bytes()[:-100])
    else:
        marker = json.loads((built.directory / MARKER).read_text())
        marker["info"]["examples"] += 1
        (built.directory / MARKER).write_text(json.dumps(marker))
    rebuilt = _store(tok, chats_file, tmp_path)
    assert not rebuilt.reused and rebuilt.directory == built.directory
    assert [rebuilt.example(i)[1].tolist() for i in range(len(rebuilt))] == expected
    assert [rebuilt.example(i)[1].tolist() for i in range(40)] == [_reference(tok, m)[1] for m in _conversations(40)]


def test_an_error_in_a_worker_names_the_row_and_keeps_its_hint(bpe_dir, tmp_path, monkeypatch):
    from llmkit.data import sft_store

    monkeypatch.setattr(sft_store, "CHUNK_RECORDS", 4)
    chats = _conversations(12)
    chats[9][-1]["role"] = "wizard"
    data = tmp_path / "bad.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in chats), encoding="utf-8")
    with pytest.raises(Exception) as raised:
        _store(_tok(bpe_dir), data, tmp_path)
    from llmkit.errors import DataError

    assert isinstance(raised.value, DataError)
    assert "row 10, message" in raised.value.message and "unknown role 'wizard'" in raised.value.message
    assert raised.value.hint and "roles are system, user, assistant" in raised.value.hint
    assert [p.name for p in (tmp_path / "sft").iterdir() if p.suffix != ".lock"] == []   # nothing half-written
