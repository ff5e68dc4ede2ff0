"""Invariants on every architecture family llmkit names, each against a reference computed here from plain forwards
of one example at a time (tiny random models, 2 layers, no dropout):

- loss: the loss llmkit's Trainer computes for a padded batch of rows of unequal length is the mean cross-entropy
  over the real targets (shifted for causal LMs, unshifted for masked-LM and T5), and one SGD step moves the weights
  by exactly that loss's gradient: with batch 4, and with gradient accumulation 2x2 and 4x1 (k x b = batch k*b);
- packing: a packed row as `sft --pack` and `pretrain --padding-free` build it gives the examples' own logits, loss
  and gradients; or both commands refuse the model before writing anything, and then the packed forward really
  differs (so a transformers release that changes either side makes a test fail).
"""

import copy
import dataclasses
import json

import pytest
import torch

from helpers import assert_clean_error


DROPOUT_FREE = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
CAUSAL = {
    "llama": dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2),
    "mistral": dict(model_type="mistral", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2),
    "qwen2": dict(model_type="qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2),
    "qwen3": dict(model_type="qwen3", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8),
    "gemma": dict(model_type="gemma", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8),
    "phi3": dict(model_type="phi3", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2),
    "gpt2": dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=4, **DROPOUT_FREE),
    "gpt_neo": dict(model_type="gpt_neo", hidden_size=32, num_layers=2, num_heads=4, window_size=8,
                    attention_types=[[["global", "local"], 1]], resid_dropout=0.0, embed_dropout=0.0,
                    attention_dropout=0.0),
    "gptj": dict(model_type="gptj", n_embd=32, n_layer=2, n_head=4, rotary_dim=4, **DROPOUT_FREE),
    "gpt_neox": dict(model_type="gpt_neox", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4),
    "falcon": dict(model_type="falcon", hidden_size=32, num_hidden_layers=2, num_attention_heads=4),
    "falcon-alibi": dict(model_type="falcon", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         alibi=True),
    "opt": dict(model_type="opt", hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                word_embed_proj_dim=32, dropout=0.0, attention_dropout=0.0),
    "bloom": dict(model_type="bloom", hidden_size=32, n_layer=2, n_head=4),
    "biogpt": dict(model_type="biogpt", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
    "xglm": dict(model_type="xglm", d_model=32, ffn_dim=64, num_layers=2, attention_heads=4, dropout=0.0,
                 attention_dropout=0.0, activation_dropout=0.0),
    "mpt": dict(model_type="mpt", d_model=32, n_layers=2, n_heads=4),
}
LEAKING = ("opt", "biogpt", "xglm", "bloom", "mpt", "falcon-alibi")   # packed examples see each other: refused
OTHER = {
    "bert": dict(model_type="bert", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
    "t5": dict(model_type="t5", d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
               dropout_rate=0.0, feed_forward_proj="relu", decoder_start_token_id=0),
}
OBJECTIVE = {"bert": "masked-lm", "t5": "seq2seq"}
LENGTHS = (3, 9, 5, 12)          # the rows of one optimizer step: unequal, so a wrong weighting shows
PACKED_DOCS = (5, 7, 3, 9)       # pretrain --padding-free blocks of 12: [5 + 7], [3 + 9], no document cut
# Falcon's ALiBi biases are absolute positions times slopes rounded to bfloat16: short rows hide the difference
PACKED_DOCS_LONG = {"falcon-alibi": (700, 300)}


@pytest.fixture(autouse=True)
def frozen_heap():
    """Trainer.train() starts with a full gc.collect(), most of a tiny step's time in a test process holding
    millions of objects: the objects alive before each test are kept out of collection while it runs."""
    import gc

    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="module")
def tok(bpe_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bpe_dir)


def _fields(family: str, tok) -> dict:
    fields = {**CAUSAL, **OTHER}[family]
    specials = dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return {**fields, **specials, "vocab_size": len(tok)}


def _model(family: str, tok):
    import transformers

    fields = dict(_fields(family, tok))
    config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
    auto = {"bert": transformers.AutoModelForMaskedLM, "t5": transformers.AutoModelForSeq2SeqLM}.get(
        family, transformers.AutoModelForCausalLM)
    torch.manual_seed(0)
    return auto.from_config(config)


def _ids(lengths, vocab: int, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, vocab, (n,), generator=g).tolist() for n in lengths]   # 0..4: the specials


# ------------------------------------------------------------------------------------ the reference, by hand

def _reference_loss(model, family: str, rows: list[dict]) -> torch.Tensor:
    """Sum of every target's cross-entropy, each row run alone (no padding), over the number of targets."""
    total, count = torch.zeros(()), 0
    for row in rows:
        ids = torch.tensor([row["input_ids"]])
        if family == "t5":
            targets = torch.tensor(row["targets"])
            decoder_in = torch.tensor([[model.config.decoder_start_token_id, *row["targets"][:-1]]])
            logits = model(input_ids=ids, decoder_input_ids=decoder_in).logits[0]
        elif family == "bert":
            logits = model(input_ids=ids).logits[0]
            chosen = torch.tensor(row["chosen"])
            logits, targets = logits[chosen], ids[0, chosen]
        else:
            logits, targets = model(input_ids=ids).logits[0, :-1], ids[0, 1:]
        total = total + torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
        count += len(targets)
    return total / count


def _rows(family: str, vocab: int) -> list[dict]:
    rows = [{"input_ids": ids} for ids in _ids(LENGTHS, vocab)]
    for i, row in enumerate(rows):
        if family == "bert":     # the positions that carry a target: every other one, a different phase per row
            row["chosen"] = list(range(i % 2, len(row["input_ids"]), 2))
        if family == "t5":       # decoder targets of their own unequal lengths
            row["targets"] = _ids([len(row["input_ids"]) // 2 + 1], vocab, seed=10 + i)[0]
    return rows


class FixedTargets:
    """Pads a batch of `_rows`; the targets are fixed (not drawn), so every batching of the rows trains the same
    targets. Causal rows go through llmkit's own CausalLMCollator instead."""

    def __init__(self, family: str, pad: int, start: int | None):
        self.family, self.pad, self.start, self.tokens_seen = family, pad, start, 0

    @staticmethod
    def _padded(seqs, value):
        out = torch.full((len(seqs), max(map(len, seqs))), value, dtype=torch.long)
        for i, s in enumerate(seqs):
            out[i, :len(s)] = torch.tensor(s)
        return out

    def __call__(self, features):
        ids = [f["input_ids"] for f in features]
        batch = {"input_ids": self._padded(ids, self.pad),
                 "attention_mask": self._padded([[1] * len(s) for s in ids], 0)}
        if self.family == "bert":
            batch["labels"] = self._padded([[t if j in f["chosen"] else -100 for j, t in enumerate(f["input_ids"])]
                                            for f in features], -100)
        else:
            labels = self._padded([f["targets"] for f in features], -100)
            decoder_in = torch.cat([torch.full((len(ids), 1), self.start), labels[:, :-1]], dim=1)
            batch.update(labels=labels, decoder_input_ids=decoder_in.masked_fill(decoder_in == -100, self.pad),
                         decoder_attention_mask=(labels != -100).long())
        return batch


def _train_one_step(model, family: str, rows, tok, batch_size: int, grad_accum: int, tmp_path):
    """One optimizer step (SGD, lr 1, no clipping) through llmkit's Trainer, with llmkit's training arguments."""
    from llmkit.config import PretrainConfig
    from llmkit.training.data import RowDataset
    from llmkit.training.objectives import CausalLMCollator, make_loss
    from llmkit.training.trainer import LlmkitTrainer, training_arguments

    objective = OBJECTIVE.get(family, "causal-lm")
    cfg = PretrainConfig(model="m", data="d", output_dir=str(tmp_path), objective=objective, batch_size=batch_size,
                         grad_accum=grad_accum, max_steps=1, optimizer="sgd", lr=1.0, max_grad_norm=0.0,
                         weight_decay=0.0, scheduler="constant", logging_steps=1)
    args = dataclasses.replace(training_arguments(cfg, tmp_path / "checkpoints", False), save_strategy="no")
    collator = CausalLMCollator(tok.pad_token_id) if objective == "causal-lm" else \
        FixedTargets(family, tok.pad_token_id, getattr(model.config, "decoder_start_token_id", None))
    trainer = LlmkitTrainer(model=model, args=args, train_dataset=RowDataset(rows), data_collator=collator,
                            compute_loss_func=make_loss(objective), objective=objective)
    trainer.train()
    return trainer.state.log_history[0]["loss"]


@pytest.mark.parametrize("family", [*CAUSAL, *OTHER])
def test_loss_is_the_token_mean_and_grad_accumulation_equals_the_big_batch(family, tok, tmp_path):
    model = _model(family, tok)
    rows = _rows(family, len(tok))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    reference = copy.deepcopy(model).train()
    loss = _reference_loss(reference, family, rows)
    loss.backward()
    loss = loss.item()
    lr = 1.0
    expected = {k: before[k] - lr * p.grad for k, p in reference.named_parameters() if p.grad is not None}
    assert len(expected) > len(before) // 2
    for k, b in ((1, 4), (2, 2), (4, 1)):
        trained = copy.deepcopy(model)
        logged = _train_one_step(trained, family, rows, tok, batch_size=b, grad_accum=k, tmp_path=tmp_path / f"{k}x{b}")
        assert logged == pytest.approx(loss, rel=1e-5), (k, b)
        weights = dict(trained.named_parameters())
        for name, want in expected.items():
            assert torch.allclose(weights[name].detach(), want, atol=2e-6, rtol=1e-5), (k, b, name)


# ------------------------------------------------------------------------------------------------ packing

def _packed_batches(tok, docs: list[list[int]]):
    """The batches `pretrain --padding-free` and `sft --pack` train on for these documents / examples."""
    from llmkit.data.sft import Example, pack_examples
    from llmkit.training.data import pack_padding_free
    from llmkit.training.objectives import NUM_TOKENS, CausalLMCollator
    from llmkit.training.sft import PackedSFTCollator

    blocks, dropped = pack_padding_free(docs, len(docs[0]) + len(docs[1]), "docs")
    assert dropped == 0
    pretrain = CausalLMCollator(tok.pad_token_id)(blocks)
    # sft: the first third of every example is its prompt (no loss)
    examples = [Example(d, [-100] * (len(d) // 3) + d[len(d) // 3:], i) for i, d in enumerate(docs)]
    sft = PackedSFTCollator(tok.pad_token_id)(pack_examples(examples, max(map(len, docs)) * 2))
    for batch in (pretrain, sft):
        batch.pop(NUM_TOKENS)
    return {"pretrain --padding-free": (pretrain, [[True] * len(d) for d in docs]),
            "sft --pack": (sft, [[label != -100 for label in e.labels] for e in examples])}


def _per_example(model, docs, trained):
    """Each example run alone: its logits, and the summed cross-entropy and count of its (shifted) targets."""
    logits, total, count = [], torch.zeros(()), 0
    for doc, keep in zip(docs, trained):
        out = model(input_ids=torch.tensor([doc])).logits[0]
        logits.append(out)
        mask = torch.tensor(keep[1:])
        total = total + torch.nn.functional.cross_entropy(out[:-1][mask], torch.tensor(doc[1:])[mask], reduction="sum")
        count += int(mask.sum())
    return logits, total / count


def _packed_logits_by_example(model, batch, docs):
    """Run the packed batch (position_ids only where the model takes them); cut its logits back into examples."""
    import inspect

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if "position_ids" not in inspect.signature(model.forward).parameters:
        inputs.pop("position_ids")
    logits = model(**inputs).logits
    found = {}
    for row, positions in enumerate(batch["position_ids"].tolist()):
        starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
        for a, b in zip(starts, starts[1:]):
            found[tuple(batch["input_ids"][row, a:b].tolist())] = logits[row, a:b]
    return [found[tuple(d)] for d in docs], logits


def _refusal(model):
    from llmkit.errors import ConfigError
    from llmkit.training.packing import check_packing_support

    try:
        check_packing_support(model, "--pack")
    except ConfigError as exc:
        return exc
    return None


@pytest.mark.parametrize("family", list(CAUSAL))
def test_packed_equals_unpacked_or_is_refused(family, tok):
    from llmkit.training.objectives import make_loss

    model = _model(family, tok)
    docs = _ids(PACKED_DOCS_LONG.get(family, PACKED_DOCS), len(tok))
    refused = _refusal(model)
    for command, (batch, trained) in _packed_batches(tok, docs).items():
        model.zero_grad()
        reference_logits, reference_loss = _per_example(model, docs, trained)
        reference_loss.backward()
        reference_grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        packed, logits = _packed_logits_by_example(model, batch, docs)
        gap = max((p - r).abs().max().item() for p, r in zip(packed, reference_logits))
        if refused is not None:
            # the refusal is justified: the packed forward differs from the examples run alone
            assert gap > 1e-3, (command, gap, refused.message)
            continue
        assert gap < 1e-5, (command, gap)
        loss = make_loss("causal-lm")({"logits": logits}, batch["labels"])
        assert loss.item() == pytest.approx(reference_loss.item(), rel=1e-5), command
        loss.backward()
        for name, want in reference_grads.items():
            assert torch.allclose(dict(model.named_parameters())[name].grad, want, atol=1e-6, rtol=1e-4), name


def test_every_architecture_llmkit_packs_is_checked_here():
    from llmkit.training.packing import EXACT, REFUSED

    assert EXACT <= {f["model_type"] for f in CAUSAL.values()}
    assert set(REFUSED) <= {f["model_type"] for f in CAUSAL.values()}


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("family-data")
    chats = root / "chat.jsonl"
    chats.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"What is {i} plus one?"},
                                                      {"role": "assistant", "content": f"It is {i + 1}."}]}) + "\n"
                             for i in range(8)), encoding="utf-8")
    docs = root / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": f"Document {i} says {'many words ' * (i + 2)}."}) + "\n"
                            for i in range(8)), encoding="utf-8")
    return {"chat": chats, "docs": docs}


@pytest.mark.parametrize("family", LEAKING)
def test_both_packing_commands_refuse_before_writing_anything(family, tok, bpe_dir, data_files, cli, tmp_path):
    refused = _refusal(_model(family, tok))
    assert refused is not None
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CAUSAL[family]), encoding="utf-8")
    common = ("-m", config, "--from-scratch", "-t", bpe_dir, "--seq-len", "64", "--max-steps", "1")
    runs = {"--pack": ("sft", *common, "--data", data_files["chat"], "--template", "plain", "--pack"),
            "--padding-free": ("pretrain", *common, "--data", data_files["docs"], "--padding-free")}
    kind = CAUSAL[family]["model_type"]
    for flag, args in runs.items():
        out = tmp_path / flag.strip("-")
        result = cli(*args, "-o", out)
        assert_clean_error(result, 2, f"{flag}: ", f"(model type {kind})", refused.message.split(": ", 1)[1],
                           "drop --pack/--padding-free (examples are then padded per batch)")
        assert not out.exists()
