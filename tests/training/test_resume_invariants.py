"""Resumed run = uninterrupted run, for every training objective, with dropout on and across an epoch boundary.

Each run trains 6 steps: 2 epochs of 3 batches. The interrupted run is stopped by Ctrl-C twice (checkpoints at
steps 2 and 4) and resumed with --resume auto each time: once in the first epoch, training across the epoch boundary
(steps 3 -> 4), once inside the second epoch (steps 5 -> 6). Its losses at every step, its evals and its final
weights must equal those of one uninterrupted run. The reference is that uninterrupted run (the invariant is
self-consistency); a run with another seed shows the randomness is live, not switched off.
"""

import json

import pytest
import torch

from helpers import TINY_BERT, TINY_LLAMA, TINY_T5, base_config, ctrl_c_at, write_config

STEPS, CUTS = 6, (2, 4)


@pytest.fixture(scope="module")
def dropout_configs(tmp_path_factory):
    """The tiny models with dropout on: the Trainer's restored RNG must stay in step with the uninterrupted run."""
    root = tmp_path_factory.mktemp("dropout-configs")
    return {"llama": write_config(root / "llama.json", {**TINY_LLAMA, "attention_dropout": 0.1}),
            "bert": write_config(root / "bert.json", {**TINY_BERT, "hidden_dropout_prob": 0.1,
                                                       "attention_probs_dropout_prob": 0.1}),
            "t5": write_config(root / "t5.json", {**TINY_T5, "dropout_rate": 0.1})}


def _long_texts(corpus_texts):
    return [t[:240] for t in corpus_texts if len(t) >= 240][:8]


@pytest.fixture(scope="module")
def one_row_docs(tmp_path_factory, corpus_texts):
    """8 documents of one row each (57-104 tokens, under --seq-len 128): 2 held out for eval, 6 = 3 batches of 2.
    Long enough for T5 span corruption to place several spans (a single span always ends the row: no randomness)."""
    texts = _long_texts(corpus_texts)
    path = tmp_path_factory.mktemp("resume-data") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def _curves(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return ([(r["step"], r["loss"]) for r in rows if "loss" in r],
            [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r])


def _weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model" / "model.safetensors"))


def _interrupted_and_resumed(train, out):
    """`train(output_dir, resume, callbacks)` stopped at each of CUTS and resumed, then run to the end."""
    from llmkit.training.run import TrainingInterrupted

    resume = None
    for cut in CUTS:
        with pytest.raises(TrainingInterrupted) as stop:
            train(str(out), resume, [ctrl_c_at(cut)])
        assert stop.value.result.steps == cut and (out / "checkpoints" / f"checkpoint-{cut}").is_dir()
        resume = "auto"
    result = train(str(out), resume, [])
    assert result.resumed_from.endswith(f"checkpoint-{CUTS[-1]}") and result.steps == STEPS
    return result


def _check_resume_invariant(train, tmp_path):
    """`train(output_dir, resume, callbacks, seed=0)` interrupted and resumed = uninterrupted != another seed."""
    full = train(str(tmp_path / "full"), None, [])
    assert full.steps == STEPS and full.epochs == 2
    _interrupted_and_resumed(train, tmp_path / "cut")
    (full_loss, full_eval), (cut_loss, cut_eval) = _curves(tmp_path / "full"), _curves(tmp_path / "cut")
    assert [s for s, _ in cut_loss] == list(range(1, STEPS + 1))
    assert [loss for _, loss in cut_loss] == pytest.approx([loss for _, loss in full_loss], abs=1e-6)
    assert [s for s, _ in cut_eval] == [s for s, _ in full_eval]
    assert [loss for _, loss in cut_eval] == pytest.approx([loss for _, loss in full_eval], abs=1e-6)
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)
    train(str(tmp_path / "seed1"), None, [], seed=1)
    other_seed = _curves(tmp_path / "seed1")[0]
    assert [loss for _, loss in other_seed] != pytest.approx([loss for _, loss in full_loss], abs=1e-6)


PRETRAIN_CASES = {
    "causal-lm": dict(model="llama", tokenizer="bpe_dir", objective="causal-lm"),
    "masked-lm": dict(model="bert", tokenizer="wordpiece_dir", objective="masked-lm"),
    "whole-word-masking": dict(model="bert", tokenizer="wordpiece_dir", objective="masked-lm",
                               whole_word_masking=True),
    "prefix-lm": dict(model="llama", tokenizer="bpe_dir", objective="prefix-lm"),
    "seq2seq": dict(model="t5", tokenizer="unigram_dir", objective="seq2seq"),
}


@pytest.mark.parametrize("case", list(PRETRAIN_CASES))
def test_pretrain_resumed_equals_uninterrupted(case, request, dropout_configs, one_row_docs, tmp_path):
    from llmkit.training.pretrain import run_pretrain

    fields = dict(PRETRAIN_CASES[case])
    model, tokenizer = dropout_configs[fields.pop("model")], request.getfixturevalue(fields.pop("tokenizer"))
    common = dict(model=str(model), tokenizer=str(tokenizer), data=str(one_row_docs), eval_split=2, eval_steps=2,
                  seq_len=128, batch_size=2, epochs=2, max_steps=None, lr=3e-3, scheduler="cosine",
                  warmup_ratio=0.2, **fields)

    def train(output_dir, resume, callbacks, seed=0):
        return run_pretrain(base_config(output_dir=output_dir, resume=resume, seed=seed, **common),
                            callbacks=callbacks)

    _check_resume_invariant(train, tmp_path)


def test_sft_resumed_equals_uninterrupted(dropout_configs, bpe_dir, tmp_path):
    from llmkit.config import SFTConfig
    from llmkit.training.sft import run_sft

    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"What is {i} plus one?"},
                                                     {"role": "assistant", "content": f"It is {i + 1}."}]}) + "\n"
                            for i in range(6)), encoding="utf-8")
    common = dict(model=str(dropout_configs["llama"]), from_scratch=True, tokenizer=str(bpe_dir), data=str(data),
                  template="chatml", epochs=2, batch_size=2, lr=3e-3, scheduler="cosine", warmup_ratio=0.2,
                  logging_steps=1, save_steps=100)

    def train(output_dir, resume, callbacks, seed=0):
        return run_sft(SFTConfig(output_dir=output_dir, resume=resume, seed=seed, **common), callbacks=callbacks)

    _check_resume_invariant(train, tmp_path)


def _collator(objective, seed, bpe_dir, wordpiece_dir, unigram_dir):
    from llmkit.modeling import load_tokenizer
    from llmkit.training import objectives as o

    if objective in ("masked-lm", "whole-word-masking"):
        tok = load_tokenizer(str(wordpiece_dir))
        return tok, o.MaskedLMCollator(tok, whole_word_masking=objective == "whole-word-masking", seed=seed)
    if objective == "prefix-lm":
        tok = load_tokenizer(str(bpe_dir))
        return tok, o.PrefixLMCollator(tok.pad_token_id, seed=seed)
    tok = load_tokenizer(str(unigram_dir))
    o.ensure_sentinels(tok, 20)
    return tok, o.Seq2SeqCollator(tok, 0.15, 3.0, tok.pad_token_id, seed=seed)


@pytest.mark.parametrize("objective", ["masked-lm", "whole-word-masking", "prefix-lm", "seq2seq"])
def test_a_rows_random_choices_depend_on_seed_epoch_and_row_only(objective, bpe_dir, wordpiece_dir, unigram_dir,
                                                                 corpus_texts):
    """What makes resume exact: collating a row never touches the global RNG and gives the same choices whatever
    was drawn before and whichever rows share its batch; they change with the epoch, the seed and the split."""
    from llmkit.training.data import IndexedRows

    tok, collate = _collator(objective, 0, bpe_dir, wordpiece_dir, unigram_dir)
    rows = [{"input_ids": tok(t)["input_ids"]} for t in _long_texts(corpus_texts)[:4]]
    train = IndexedRows(rows, "train")
    before = torch.get_rng_state()
    batch = collate([train[i] for i in range(4)])
    assert torch.equal(torch.get_rng_state(), before)          # collation leaves the global RNG (dropout's) alone
    torch.rand(100)
    again = collate([train[i] for i in range(4)])
    assert all(torch.equal(batch[k], again[k]) for k in batch if torch.is_tensor(batch[k]))
    alone = collate([train[2]])["labels"][0]                    # the same row, batched with other rows or not
    assert torch.equal(batch["labels"][2, :len(alone)], alone) and (batch["labels"][2, len(alone):] == -100).all()
    train.epoch = 1
    assert not torch.equal(collate([train[i] for i in range(4)])["labels"], batch["labels"])
    train.epoch = 0
    _, other_seed = _collator(objective, 1, bpe_dir, wordpiece_dir, unigram_dir)
    assert not torch.equal(other_seed([train[i] for i in range(4)])["labels"], batch["labels"])
    evaluation = IndexedRows(rows, "eval")
    assert not torch.equal(collate([evaluation[i] for i in range(4)])["labels"], batch["labels"])


def test_the_epoch_callback_gives_the_dataset_the_trainers_epoch():
    from transformers import TrainerState

    from llmkit.training.data import IndexedRows
    from llmkit.training.trainer import EpochCallback

    rows = IndexedRows([{"input_ids": [1, 2]}], "train")
    callback = EpochCallback(rows)
    for epoch, expected in ((None, 0), (0.0, 0), (1.0, 1), (1 + 2 / 3, 1)):   # fresh; begins; resumed mid-epoch
        callback.on_epoch_begin(None, TrainerState(epoch=epoch), None)
        assert rows.epoch == expected and rows[0]["row_key"] == (0, expected, 0)
