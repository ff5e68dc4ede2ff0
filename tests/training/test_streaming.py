"""`pretrain --streaming`: the rows are the documents cut by hand; training equals a hand-written SGD loop; a
resumed run equals an uninterrupted one across passes over the stream; two ranks under `launch` train what one
process does; every source kind streams; bad input is one line, with nothing written."""

import gzip
import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import TINY_LLAMA, assert_clean_error, base_config, ctrl_c_at, write_config


def _write(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


@pytest.fixture
def texts(corpus_texts):
    return [t[:200] for t in corpus_texts[:10]] + [""]   # an empty document is skipped, as on the mapped path


def _hand_documents(tokenizer, texts, add_special_tokens=False, eos=True):
    docs = [tokenizer(t, add_special_tokens=add_special_tokens)["input_ids"] for t in texts]
    return [d + [tokenizer.eos_token_id] if eos else d for d in docs if d]


def _rows(stream_source, tokenizer, layout, seq_len, **fields):
    from llmkit.data.streaming import open_stream
    from llmkit.training.streaming import StreamingRows

    settings = dict(min_len=2, add_special_tokens=False, append_eos=True, shuffle_buffer=1, seed=0, **fields)
    rows = StreamingRows(open_stream(str(stream_source), "text"), "text", tokenizer, seq_len=seq_len, layout=layout,
                         source=str(stream_source), **settings)
    return list(rows.rows_of_pass(0))


# ------------------------------------------------------------------------------------------------- the rows

def test_packed_blocks_are_the_documents_concatenated_and_cut(bpe_dir, texts, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bpe_dir)
    flat = [i for d in _hand_documents(tokenizer, texts) for i in d]
    expected = [flat[k:k + 32] for k in range(0, len(flat) - 31, 32)]
    rows = _rows(_write(tmp_path / "d.jsonl", texts), tokenizer, "packed", 32)
    assert [r["input_ids"] for r in rows] == expected and len(expected) > 5


def test_padding_free_positions_restart_at_every_document_and_block(bpe_dir, texts, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bpe_dir)
    documents = _hand_documents(tokenizer, texts)
    positions = [p for d in documents for p in range(len(d))]
    flat = [i for d in documents for i in d]
    rows = _rows(_write(tmp_path / "d.jsonl", texts), tokenizer, "padding-free", 32)
    assert len(rows) > 5
    for k, row in enumerate(rows):
        block = positions[32 * k:32 * k + 32]
        # the document running into the block restarts at 0 there; the ones that start in it keep their positions
        first_start = block.index(0) if 0 in block else len(block)
        assert row["position_ids"] == [p - block[0] for p in block[:first_start]] + block[first_start:]
        assert row["input_ids"] == flat[32 * k:32 * k + 32]


def test_unpacked_rows_are_documents_cut_into_pieces(bpe_dir, texts, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bpe_dir)
    expected = [d[k:k + 16] for d in _hand_documents(tokenizer, texts) for k in range(0, len(d), 16)
                if len(d[k:k + 16]) >= 2]
    rows = _rows(_write(tmp_path / "d.jsonl", texts), tokenizer, "rows", 16)
    assert [r["input_ids"] for r in rows] == expected


@pytest.mark.parametrize("kind", ["jsonl.gz", "txt", "parquet-row-groups", "parquet-shards", "weighted-mix"])
def test_every_source_kind_streams_its_texts(kind, texts, tmp_path):
    import datasets

    from llmkit.data.streaming import open_stream, stream_texts

    texts = [t for t in texts if t]
    if kind == "jsonl.gz":
        source = tmp_path / "d.jsonl.gz"
        with gzip.open(source, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts))
        expected = texts
    elif kind == "txt":
        source = tmp_path / "d.txt"
        source.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n")
        expected = [t.replace("\n", " ") for t in texts]
    elif kind == "parquet-row-groups":   # read a row group at a time: every group, in order
        import pyarrow as pa
        import pyarrow.parquet as pq

        source = tmp_path / "d.parquet"
        pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), source, row_group_size=2)
        assert pq.ParquetFile(source).metadata.num_row_groups > 2
        expected = texts
    elif kind == "parquet-shards":
        (tmp_path / "shards").mkdir()
        for k in range(2):
            datasets.Dataset.from_dict({"text": texts[k::2]}).to_parquet(str(tmp_path / "shards" / f"{k}.parquet"))
        source, expected = tmp_path / "shards", texts[0::2] + texts[1::2]
    else:
        a, b = _write(tmp_path / "a.jsonl", texts[:3]), _write(tmp_path / "b.jsonl", texts[3:])
        source = f"{a}:0.5,{b}:0.5"
        reference = datasets.interleave_datasets(
            [datasets.Dataset.from_dict({"text": texts[:3]}), datasets.Dataset.from_dict({"text": texts[3:]})],
            probabilities=[0.5, 0.5], seed=4, stopping_strategy="all_exhausted")
        expected = reference["text"]
    stream = open_stream(str(source), "text", seed=4)
    assert list(stream_texts(stream, "text", str(source))) == expected


# ------------------------------------------------------------------------------------------------- training

def _sgd_loop(model_dir, blocks, batch_size, steps, lr):
    """Plain torch: each step the token-mean cross-entropy of the next `batch_size` blocks, an SGD update."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for step in range(steps):
        ids = torch.tensor(blocks[step * batch_size:(step + 1) * batch_size])
        logits = model(input_ids=ids).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.state_dict()


def test_streamed_training_equals_a_hand_written_sgd_loop(cli, llama_dir, texts, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    data = _write(tmp_path / "d.jsonl", texts)
    out = tmp_path / "run"
    result = cli("pretrain", "-m", llama_dir, "--data", data, "--streaming", "--shuffle-buffer", "1", "--pack",
                 "--seq-len", "32", "--batch-size", "2", "--max-steps", "3", "--optimizer", "sgd", "--lr", "0.5",
                 "--max-grad-norm", "0", "--scheduler", "constant", "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["steps"] == 3 and report["train_rows"] == 6
    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    flat = [i for d in _hand_documents(tokenizer, texts) for i in d]
    blocks = [flat[k:k + 32] for k in range(0, len(flat) - 31, 32)]
    expected = _sgd_loop(llama_dir, blocks, 2, 3, 0.5)
    trained = load_file(str(out / "model" / "model.safetensors"))
    moved = [k for k in trained if not torch.equal(trained[k], expected[k])]
    assert all(torch.allclose(trained[k], expected[k], atol=1e-5) for k in trained), moved
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["streaming"] is True and manifest["data"]["train_rows"] == 6


def test_a_resumed_stream_equals_the_uninterrupted_run_across_passes(bpe_dir, texts, tmp_path):
    from safetensors.torch import load_file

    from llmkit.training.pretrain import run_pretrain
    from llmkit.training.run import TrainingInterrupted

    data = _write(tmp_path / "d.jsonl", texts)
    dropout = write_config(tmp_path / "llama.json", {**TINY_LLAMA, "attention_dropout": 0.1})
    # ~11 blocks of 48 a pass: 8 steps of 3 rows cross into the third pass, reshuffled each time
    common = dict(model=str(dropout), tokenizer=str(bpe_dir), data=str(data), streaming=True, shuffle_buffer=4,
                  pack=True, seq_len=48, batch_size=3, max_steps=8, save_steps=100, lr=3e-3)

    def train(out, resume=None, callbacks=(), seed=0):
        return run_pretrain(base_config(output_dir=str(tmp_path / out), resume=resume, seed=seed, **common),
                            callbacks=list(callbacks))

    full = train("full")
    for cut in (3, 5):
        with pytest.raises(TrainingInterrupted):
            train("cut", "auto" if cut == 5 else None, [ctrl_c_at(cut)])
    resumed = train("cut", "auto")
    assert resumed.resumed_from.endswith("checkpoint-5") and resumed.steps == 8
    assert resumed.loss_curve == pytest.approx(full.loss_curve, abs=1e-6)
    a, b = (load_file(str(tmp_path / d / "model" / "model.safetensors")) for d in ("full", "cut"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)
    assert train("seed1", seed=1).loss_curve != pytest.approx(full.loss_curve, abs=1e-6)


def test_two_ranks_under_launch_train_what_one_process_does(configs, bpe_dir, docs_file, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")

    def train(out, batch_size):
        return ["pretrain", "--model", str(configs["llama"]), "--from-scratch", "-t", str(bpe_dir), "--data",
                str(docs_file), "-o", str(tmp_path / out), "--streaming", "--pack", "--seq-len", "32",
                "--batch-size", str(batch_size), "--max-steps", "6", "--lr", "3e-3", "--scheduler", "constant",
                "--logging-steps", "1", "--json"]

    def report(args):
        proc = subprocess.run([sys.executable, "-m", "llmkit", *args], capture_output=True, text=True, env=env,
                              timeout=400)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    two = report(["launch", "--strategy", "ddp", "--cpu", "--num-processes", "2", "--json", "--", "llmkit",
                  *train("two", 2)])
    one = report(train("one", 4))
    assert len(two["loss_curve"]) == 6
    assert two["loss_curve"] == pytest.approx(one["loss_curve"], abs=1e-4)
    assert two["tokens"] == one["tokens"] == 6 * 4 * 32


# ------------------------------------------------------------------------------------------------ bad input

def _pretrain(cli, configs, bpe_dir, data, out, *extra):
    return cli("pretrain", "--model", configs["llama"], "--from-scratch", "-t", bpe_dir, "--data", data, "-o", out,
               "--streaming", "--seq-len", "32", *extra)


@pytest.mark.parametrize("extra, code, message", [
    ((), 2, "--streaming needs --max-steps"),
    (("--max-steps", "2", "--eval-split", "0.1"), 2, "give --eval-data"),
    (("--max-steps", "2", "--shuffle-buffer", "0"), 2, "--shuffle-buffer must be greater than 0"),
    (("--max-steps", "2", "--text-field", "body"), 1, "has no field 'body'"),
    (("--max-steps", "2", "--seq-len", "100000", "--pack"), 1, "the stream ended before one --seq-len 100000 block"),
])
def test_bad_streaming_input_is_one_line_and_writes_nothing(cli, configs, bpe_dir, docs_file, tmp_path, extra, code,
                                                            message):
    out = tmp_path / "run"
    result = _pretrain(cli, configs, bpe_dir, docs_file, out, *extra)
    assert_clean_error(result, code, message)
    assert not out.exists()


def test_a_corrupt_line_mid_stream_names_the_source(cli, configs, bpe_dir, texts, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"text": texts[0]}) + "\n{not json\n")
    result = _pretrain(cli, configs, bpe_dir, data, tmp_path / "run", "--max-steps", "2")
    assert_clean_error(result, 1, str(data))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("bad", ["mixed-schema", "corrupt"])
def test_a_bad_parquet_shard_is_refused_before_the_run(cli, configs, bpe_dir, texts, tmp_path, bad):
    import datasets

    shards = tmp_path / "shards"
    shards.mkdir()
    datasets.Dataset.from_dict({"text": texts}).to_parquet(str(shards / "0.parquet"))
    if bad == "mixed-schema":
        datasets.Dataset.from_dict({"body": texts}).to_parquet(str(shards / "1.parquet"))
    else:
        (shards / "1.parquet").write_bytes(b"PAR1 not really parquet")
    result = _pretrain(cli, configs, bpe_dir, shards, tmp_path / "run", "--max-steps", "2")
    assert_clean_error(result, 1, "the shards mix schemas" if bad == "mixed-schema" else "1.parquet is not a readable")
    assert not (tmp_path / "run").exists()


def test_a_pre_tokenized_dir_is_refused_with_the_reason(cli, configs, bpe_dir, docs_file, tmp_path):
    tokenized = tmp_path / "tok"
    made = cli("tokenize", "dataset", "-t", bpe_dir, "--data", docs_file, "-o", tokenized)
    assert made.exit_code == 0, made.stderr
    result = _pretrain(cli, configs, bpe_dir, tokenized, tmp_path / "run", "--max-steps", "2")
    assert_clean_error(result, 1, "drop --streaming")
