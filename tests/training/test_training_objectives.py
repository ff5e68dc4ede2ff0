"""The training core's numbers: each objective's labels, per-token loss, packing, grad accumulation, levers."""

import math

import pytest
import torch

from helpers import TINY_BERT, TINY_LLAMA, TINY_T5


def _tok(path):
    from llmkit.modeling import load_tokenizer

    return load_tokenizer(str(path))


def _llama(vocab, seed=0):
    from llmkit.modeling import build_model

    return build_model(dict(TINY_LLAMA), "causal-lm", vocab_size=vocab, seed=seed)


def _docs(tok, texts, n=6):
    eos = tok.eos_token_id
    return [tok(t, add_special_tokens=False)["input_ids"][:20] + [eos] for t in texts[:n]]


# ------------------------------------------------------------------------------------------------- causal-lm

def test_causal_collator_masks_padding_and_loss_is_per_token(bpe_dir, corpus_texts):
    from llmkit.training.objectives import CausalLMCollator, token_loss

    tok = _tok(bpe_dir)
    docs = _docs(tok, corpus_texts, 3)
    batch = CausalLMCollator(tok.pad_token_id)([{"input_ids": d} for d in docs])
    assert batch.pop('num_tokens') > 0
    lengths = [len(d) for d in docs]
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert ((batch["labels"] == -100) == (batch["attention_mask"] == 0)).all()
    model = _llama(len(tok))
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ours = token_loss(logits, batch["labels"], shift=True)
    theirs = model(**batch).loss  # transformers' own causal-LM loss: the mean over target tokens
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_packed_padding_free_equals_unpacked_loss(bpe_dir, corpus_texts):
    """Packing that does not cross documents (position ids restart) gives the unpacked loss on the same documents."""
    from llmkit.training.data import pack_padding_free
    from llmkit.training.objectives import CausalLMCollator, token_loss

    tok = _tok(bpe_dir)
    docs = _docs(tok, corpus_texts, 4)
    model = _llama(len(tok)).eval()
    collate = CausalLMCollator(tok.pad_token_id)
    unpacked = collate([{"input_ids": d} for d in docs])
    assert unpacked.pop('num_tokens') > 0
    rows, dropped = pack_padding_free(docs, sum(map(len, docs)), "docs")
    assert dropped == 0 and len(rows) == 1
    packed = collate(rows)
    assert packed.pop('num_tokens') > 0
    assert "attention_mask" not in packed and packed["position_ids"][0].tolist().count(0) == len(docs)
    with torch.no_grad():
        loss_unpacked = token_loss(model(input_ids=unpacked["input_ids"],
                                         attention_mask=unpacked["attention_mask"]).logits, unpacked["labels"], True)
        loss_packed = token_loss(model(**{k: v for k, v in packed.items() if k != "labels"}).logits,
                                 packed["labels"], True)
        # the cross-attending pack (--pack) sees other documents, so it differs
        crossing = token_loss(model(input_ids=packed["input_ids"]).logits, packed["labels"], True)
    assert unpacked["labels"][:, 1:].ne(-100).sum() == packed["labels"][:, 1:].ne(-100).sum()
    assert torch.allclose(loss_packed, loss_unpacked, atol=1e-5), (loss_packed, loss_unpacked)
    assert not torch.allclose(crossing, loss_unpacked, atol=1e-4)


def test_pack_fills_blocks_without_padding():
    from llmkit.training.data import pack

    docs = [[1] * n + [2] for n in (3, 17, 8, 40, 5, 11)]
    rows, dropped = pack(docs, 16, "x")
    assert all(len(r["input_ids"]) == 16 for r in rows)
    assert len(rows) * 16 + dropped == sum(map(len, docs))


# ------------------------------------------------------------------------------------------------- masked-lm

def test_masked_lm_labels_only_on_chosen_positions(wordpiece_dir, corpus_texts):
    from llmkit.modeling import build_model
    from llmkit.training.objectives import MaskedLMCollator, token_loss

    tok = _tok(wordpiece_dir)
    docs = [tok(t)["input_ids"][:40] for t in corpus_texts[:8]]
    torch.manual_seed(0)
    batch = MaskedLMCollator(tok, mlm_probability=0.3, mask_replace_prob=1.0, random_replace_prob=0.0)(
        [{"input_ids": d} for d in docs])
    assert batch.pop('num_tokens') > 0
    chosen = batch["labels"] != -100
    assert chosen.any()
    assert (batch["input_ids"][chosen] == tok.mask_token_id).all()          # 100 % of chosen -> [MASK]
    assert not (batch["input_ids"][~chosen] == tok.mask_token_id).any()
    specials = torch.tensor(tok.all_special_ids)
    assert not torch.isin(batch["labels"][chosen], specials).any()           # never [CLS]/[SEP]/[PAD]
    share = chosen.sum() / batch["attention_mask"].sum()
    assert 0.2 < share < 0.4
    model = build_model(dict(TINY_BERT), "masked-lm", vocab_size=len(tok), seed=0)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    manual = torch.nn.functional.cross_entropy(logits[chosen], batch["labels"][chosen])
    assert torch.allclose(token_loss(logits, batch["labels"], shift=False), manual, atol=1e-5)


def test_masked_lm_80_10_10_rule(wordpiece_dir, corpus_texts):
    from llmkit.training.objectives import MaskedLMCollator

    tok = _tok(wordpiece_dir)
    docs = [tok(t)["input_ids"][:64] for t in corpus_texts[:64]]
    torch.manual_seed(1)
    batch = MaskedLMCollator(tok)([{"input_ids": d} for d in docs])
    assert batch.pop('num_tokens') > 0
    chosen = batch["labels"] != -100
    masked = (batch["input_ids"] == tok.mask_token_id) & chosen
    same = (batch["input_ids"] == batch["labels"]) & chosen
    n = chosen.sum().item()
    assert abs(masked.sum().item() / n - 0.8) < 0.05
    assert abs(same.sum().item() / n - 0.1) < 0.05 + 1 / len(tok)


def test_token_masking_is_transformers_collator_seeded_per_row(wordpiece_dir, corpus_texts):
    import numpy as np
    from transformers import DataCollatorForLanguageModeling

    from llmkit.training.data import ROW_KEY
    from llmkit.training.objectives import MaskedLMCollator

    tok = _tok(wordpiece_dir)
    docs = [tok(t)["input_ids"][:48] for t in corpus_texts[:6]]
    features = [{"input_ids": d, ROW_KEY: (0, 1, 10 + i)} for i, d in enumerate(docs)]
    batch = MaskedLMCollator(tok, seed=3)(features)
    reference = DataCollatorForLanguageModeling(tok, mlm_probability=0.15, return_tensors="pt")
    for i, d in enumerate(docs):
        reference.generator = torch.Generator().manual_seed(int(np.random.default_rng([3, 0, 1, 10 + i])
                                                                .integers(2**63)))
        row = torch.tensor([d])
        special = torch.tensor([tok.get_special_tokens_mask(d, already_has_special_tokens=True)], dtype=torch.bool)
        inputs, labels = reference.torch_mask_tokens(row, special_tokens_mask=special)
        assert batch["input_ids"][i, :len(d)].tolist() == inputs[0].tolist()
        assert batch["labels"][i, :len(d)].tolist() == labels[0].tolist()
        assert (batch["labels"][i, len(d):] == -100).all()


def test_whole_word_masking_masks_whole_words(wordpiece_dir, corpus_texts):
    from llmkit.training.objectives import MaskedLMCollator, continuation_table

    tok = _tok(wordpiece_dir)
    docs = [tok(t)["input_ids"][:64] for t in corpus_texts[:16]]
    torch.manual_seed(2)
    collate = MaskedLMCollator(tok, mlm_probability=0.3, whole_word_masking=True)
    batch = collate([{"input_ids": d} for d in docs])
    assert batch.pop('num_tokens') > 0
    cont = continuation_table(tok)
    assert cont.any()
    chosen = batch["labels"] != -100
    ids = torch.where(chosen, batch["labels"], batch["input_ids"])
    continuation = cont[ids] & (batch["attention_mask"] == 1)
    # a continuation token (##x) is chosen exactly when the token before it is
    rows, cols = torch.nonzero(continuation[:, 1:], as_tuple=True)
    assert len(rows) > 10
    assert (chosen[rows, cols + 1] == chosen[rows, cols]).all()


def test_masked_lm_needs_a_mask_token(bpe_dir, tmp_path):
    from transformers import PreTrainedTokenizerFast

    from llmkit.errors import ConfigError
    from llmkit.training.objectives import MaskedLMCollator

    tok = PreTrainedTokenizerFast(tokenizer_file=str(bpe_dir / "tokenizer.json"), pad_token="<pad>",
                                  eos_token="</s>")
    with pytest.raises(ConfigError, match="mask token"):
        MaskedLMCollator(tok)


# -------------------------------------------------------------------------------------------------- seq2seq

def test_t5_span_corruption_with_sentinels(unigram_dir, corpus_texts):
    from llmkit.modeling import build_model
    from llmkit.training.objectives import Seq2SeqCollator, ensure_sentinels, token_loss

    tok = _tok(unigram_dir)
    assert ensure_sentinels(tok, 5) == 5 and ensure_sentinels(tok, 5) == 0
    docs = [tok(t, add_special_tokens=False)["input_ids"][:60] for t in corpus_texts[:4]]
    torch.manual_seed(0)
    collate = Seq2SeqCollator(tok, noise_density=0.15, mean_span_length=3.0, decoder_start_token_id=tok.pad_token_id)
    batch = collate([{"input_ids": d} for d in docs])
    assert batch.pop('num_tokens') > 0
    sentinels = {tok.convert_tokens_to_ids(f"<extra_id_{i}>"): i for i in range(5)}
    for row, doc in enumerate(docs):
        inputs = [t for t in batch["input_ids"][row].tolist() if t != tok.pad_token_id]
        labels = [t for t in batch["labels"][row].tolist() if t != -100]
        assert inputs[-1] == tok.eos_token_id and labels[-1] == tok.eos_token_id
        assert labels[0] == next(iter(sentinels))   # targets start with <extra_id_0>
        # filling each sentinel of the input with its span from the target gives the document back
        spans, current = {}, None
        for t in labels[:-1]:
            if t in sentinels:
                current = sentinels[t]
                spans[current] = []
            else:
                spans[current].append(t)
        rebuilt = [x for t in inputs[:-1] for x in (spans[sentinels[t]] if t in sentinels else [t])]
        assert rebuilt == doc
        corrupted = sum(len(s) for s in spans.values())
        assert 0.05 < corrupted / len(doc) < 0.3
    assert (batch["decoder_input_ids"][:, 0] == tok.pad_token_id).all()
    assert (batch["decoder_input_ids"][:, 1:] == batch["labels"][:, :-1].masked_fill(
        batch["labels"][:, :-1] == -100, tok.pad_token_id)).all()
    model = build_model(dict(TINY_T5), "seq2seq", vocab_size=len(tok), seed=0,
                        overrides={"decoder_start_token_id": tok.pad_token_id, "pad_token_id": tok.pad_token_id})
    out = model(**{k: v for k, v in batch.items() if k != "labels"})
    ref = model(**batch).loss    # T5's own loss: decoder side, mean over label tokens
    assert torch.allclose(token_loss(out.logits, batch["labels"], shift=False), ref, atol=1e-5)


# ------------------------------------------------------------------------------------------------ prefix-lm

def test_prefix_lm_mask_and_labels(bpe_dir, corpus_texts):
    from llmkit.training.objectives import PrefixLMCollator, prefix_lm_mask

    mask = prefix_lm_mask([5], [3], 6)[0, 0] == 0     # allowed (query, key)
    expected = torch.tensor([[1, 1, 1, 0, 0, 0],      # prefix queries see the whole prefix (bidirectional)
                             [1, 1, 1, 0, 0, 0],
                             [1, 1, 1, 0, 0, 0],
                             [1, 1, 1, 1, 0, 0],      # targets: prefix + causal
                             [1, 1, 1, 1, 1, 0],
                             [1, 1, 1, 1, 1, 1]], dtype=torch.bool)  # a padding query: no loss; padding keys
    assert not mask[:5, 5].any()                                           # are never seen by real tokens
    assert (mask == expected).all()
    tok = _tok(bpe_dir)
    docs = _docs(tok, corpus_texts, 4)
    torch.manual_seed(0)
    batch = PrefixLMCollator(tok.pad_token_id)([{"input_ids": d} for d in docs])
    assert batch.pop('num_tokens') > 0
    for row, doc in enumerate(docs):
        labels = batch["labels"][row].tolist()
        targets = [t for t in labels if t != -100]
        first = next(i for i, t in enumerate(labels) if t != -100)
        assert 1 <= first < len(doc) and targets == doc[first:] and targets[-1] == tok.eos_token_id
        assert all(t == -100 for t in labels[:first])
    # the mask works in the model: a later prefix token changes an earlier prefix position's output, a target
    # token does not change anything before it
    model = _llama(len(tok)).eval()
    ids = torch.tensor([docs[0][:8]])
    m = prefix_lm_mask([8], [4], 8)
    changed = ids.clone()
    changed[0, 3] = (changed[0, 3] + 1) % len(tok)     # last prefix token
    changed_target = ids.clone()
    changed_target[0, 6] = (changed_target[0, 6] + 1) % len(tok)
    with torch.no_grad():
        base = model(input_ids=ids, attention_mask=m).logits
        a = model(input_ids=changed, attention_mask=m).logits
        b = model(input_ids=changed_target, attention_mask=m).logits
    assert not torch.allclose(a[0, 0], base[0, 0])        # bidirectional prefix
    assert torch.allclose(b[0, :6], base[0, :6], atol=1e-6)  # causal targets


# ------------------------------------------------------------------------------------------- memory levers

def test_gradient_checkpointing_gives_same_loss_and_grads(bpe_dir, corpus_texts):
    from llmkit.training.objectives import CausalLMCollator

    tok = _tok(bpe_dir)
    batch = CausalLMCollator(tok.pad_token_id)([{"input_ids": d} for d in _docs(tok, corpus_texts, 3)])
    assert batch.pop('num_tokens') > 0
    results = []
    for checkpointing in (False, True):
        model = _llama(len(tok), seed=0).train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        loss = model(**batch).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (l0, g0), (l1, g1) = results
    assert torch.allclose(l0, l1)
    assert all(torch.allclose(g0[n], g1[n], atol=1e-6) for n in g0)


def test_freezing_levers_leave_no_grad(bpe_dir, corpus_texts):
    from llmkit.training.objectives import CausalLMCollator
    from llmkit.training.trainer import apply_freezing, parameter_counts

    tok = _tok(bpe_dir)
    batch = CausalLMCollator(tok.pad_token_id)([{"input_ids": d} for d in _docs(tok, corpus_texts, 2)])
    assert batch.pop('num_tokens') > 0
    model = _llama(len(tok))
    apply_freezing(model, freeze_base=True, trainable_layers=None)
    model(**batch).loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"lm_head.weight"}
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)
    model = _llama(len(tok))
    apply_freezing(model, freeze_base=False, trainable_layers=1)
    total, n_trainable = parameter_counts(model)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith(("model.layers.1.", "lm_head", "model.norm")) for n in names)
    assert any(n.startswith("model.layers.1.") for n in names) and 0 < n_trainable < total


def test_sparkline_and_png(tmp_path):
    import zlib

    from llmkit.training.rundir import sparkline, write_loss_png

    assert sparkline([5, 4, 3, 2, 1]) == "█▆▅▃▁"
    assert len(sparkline([math.sin(i / 9) for i in range(500)], width=40)) == 40
    path = tmp_path / "c.png"
    write_loss_png(path, [(i, 5 - i / 10) for i in range(30)], [(10, 4.2), (29, 3.0)])
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    idat = data.index(b"IDAT")
    length = int.from_bytes(data[idat - 4:idat], "big")
    raw = zlib.decompress(data[idat + 4:idat + 4 + length])
    assert len(raw) == 360 * (1 + 640 * 3)
