"""`llmkit sft`: supervised fine-tuning on instructions or conversations, through the shared training core.

Loss only on the assistant replies (their end-of-turn / eos token included) unless --train-on-prompt; padding is
masked by attention, never by token id, so the eos stays trained when pad == eos. --pack concatenates examples into
blocks (best-fit decreasing) whose position ids restart per example: no example attends to another, and the loss is
the unpacked one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from llmkit.config import SFTConfig
from llmkit.data import sft as sftdata
from llmkit.data import sft_store
from llmkit.training.data import split_eval
from llmkit.training.objectives import NUM_TOKENS, BatchCollator, make_loss
from llmkit.training.run import ModelAdapter, Run, RunResult
from llmkit.training.tasks import TaskResult, run_task
from llmkit.training.trainer import LlmkitTrainer, eval_rows
from llmkit.ui import Reporter


# -------------------------------------------------------------------------------------------------- collators

class SFTCollator(BatchCollator):
    """Right padding; labels -100 on padding (by position: pad may equal eos)."""

    def __call__(self, features: list[dict]) -> dict:
        ids = [list(f["input_ids"]) for f in features]
        input_ids = self._pad(ids, self.pad_id)
        attention_mask = self._pad([[1] * len(s) for s in ids], 0)
        labels = self._pad([list(f["labels"]) for f in features], sftdata.IGNORE)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
                NUM_TOKENS: int(attention_mask.sum())}


class PackedSFTCollator(BatchCollator):
    """Packed blocks, one row each: position ids restart per example, so transformers builds a block-diagonal causal
    mask (no attention across examples; only without a KV cache, hence use_cache=False). A block shorter than the
    longest in the batch is topped up with pad tokens that form their own segment (positions from 0, label -100): no
    attention mask is passed, and no real token attends to them. Attention stays per block (seq_len^2), not per
    flattened batch. The first token of each example is never a target (it would be predicted from the previous
    example)."""

    def __call__(self, features: list[dict]) -> dict:
        width = max(len(f["input_ids"]) for f in features)
        ids, positions, labels = [], [], []
        for f in features:
            tail = width - len(f["input_ids"])
            ids.append(list(f["input_ids"]) + [self.pad_id] * tail)
            positions.append(list(f["position_ids"]) + list(range(tail)))
            labels.append(list(f["labels"]) + [sftdata.IGNORE] * tail)
        input_ids = torch.as_tensor(ids, dtype=torch.long)
        position_ids = torch.as_tensor(positions, dtype=torch.long)
        labels = torch.as_tensor(labels, dtype=torch.long).masked_fill(position_ids == 0, sftdata.IGNORE)
        return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels, "use_cache": False,
                NUM_TOKENS: sum(len(f["input_ids"]) for f in features)}


# ------------------------------------------------------------------------------------------------------ results

@dataclass(kw_only=True)
class SFTResult(RunResult):
    format: str
    template: str
    multi_turn: str
    packed: bool
    examples: int
    dropped: dict[str, int]
    truncated: int
    trained_tokens: int                  # tokens with a label, per epoch of the training examples
    trained_tokens_per_second: float


@dataclass
class PreviewExample:
    row: int
    input_ids: list[int]
    labels: list[int]
    tokens: list[str]                    # each token decoded


@dataclass
class CheckFinding:
    check: str
    level: str                           # "error", "warning" or "info"
    message: str


@dataclass
class CheckResult:
    ok: bool                             # no finding at level error
    format: str
    template: str
    examples: int
    trained_tokens: int
    dropped: dict[str, int]
    findings: list[CheckFinding] = field(default_factory=list)


# -------------------------------------------------------------------------------------------------- tokenizer

def _tokenizer(cfg: SFTConfig):
    from llmkit.modeling import load_tokenizer

    return load_tokenizer(cfg.tokenizer or cfg.model, trust_remote_code=cfg.trust_remote_code)


def _prepare(cfg: SFTConfig, tokenizer) -> tuple[str, str, list[str]]:
    name, template = sftdata.resolve_template(cfg, tokenizer)
    added = sftdata.prepare_tokenizer(tokenizer, name)
    return name, template, added


def preview_sft(cfg: SFTConfig, warn=None) -> list[PreviewExample]:
    """The first --preview N encoded examples; nothing is trained, no model is loaded. Warnings go to `warn`."""
    import transformers

    transformers.logging.set_verbosity_error()
    tokenizer = _tokenizer(cfg)
    name, template, _ = _prepare(cfg, tokenizer)
    encoded = sftdata.encode_source(cfg, tokenizer, name, template, cfg.data, limit=cfg.preview)
    for warning in encoded.warnings:
        if warn is not None:
            warn(warning)
    return [PreviewExample(row=e.row, input_ids=e.input_ids, labels=e.labels,
                           tokens=[tokenizer.decode([i]) for i in e.input_ids])
            for e in encoded.examples[:cfg.preview]]


def check_sft(cfg: SFTConfig) -> CheckResult:
    """Lints before training: pad == eos, the end-of-turn token against eos and generation_config, a double BOS,
    truncation that cuts every answer, examples with no trained token, special-token text inside messages, padding
    side."""
    import transformers

    transformers.logging.set_verbosity_error()
    tokenizer = _tokenizer(cfg)
    name, template, added = _prepare(cfg, tokenizer)
    encoded = sftdata.encode_source(cfg, tokenizer, name, template, cfg.data, require=False)
    findings: list[CheckFinding] = []

    def add(check: str, level: str, message: str) -> None:
        findings.append(CheckFinding(check, level, message))

    eos, pad, bos = tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id
    if pad is not None and pad == eos:
        eos_trained = any(eos in e.labels for e in encoded.examples)
        add("pad_eos", "info" if eos_trained or encoded.end_token_id != eos else "error",
            f"pad == eos ({tokenizer.eos_token!r}): llmkit masks padding by attention, not by id, so the eos that "
            "ends each answer stays trained" + ("" if eos_trained or encoded.end_token_id != eos else
                                                 " -- but no trained eos was found in the examples"))
    end = encoded.end_token_id
    gen_eos = _generation_eos(cfg)
    if end is None:
        if encoded.examples:
            add("end_token", "error", "the template ends an assistant reply with no special token (no end-of-turn "
                "or eos), so the model cannot learn where an answer stops")
    else:
        end_text = tokenizer.convert_ids_to_tokens(end)
        stops = ({eos} if eos is not None else set()) | set(gen_eos)
        if end not in stops:
            add("end_token", "warning",
                f"the template ends a reply with {end_text!r} (id {end}), which is neither the tokenizer's eos "
                f"({tokenizer.eos_token!r}) nor in generation_config's eos_token_id {sorted(gen_eos) or 'none'}: "
                "generation would not stop there; llmkit sft adds it to the saved generation_config")
        else:
            add("end_token", "info", f"replies end with {end_text!r} (id {end}), a stop token for generation")
        if gen_eos and end not in gen_eos:
            names = ", ".join(f"{tokenizer.convert_ids_to_tokens(i)!r} (id {i})" for i in sorted(gen_eos))
            add("generation_eos", "warning",
                f"the model's generation_config.json stops generation at {names}, not at the template's end token "
                f"{end_text!r} (id {end}): `generate` with this model would run past the end of a reply; "
                "llmkit sft makes it a stop token in the saved generation_config")
    if added:
        add("added_tokens", "info", f"the template's tokens {', '.join(added)} are not in the vocabulary: they are "
            "added and the embeddings grow (new rows start untrained)")
    if bos is not None and encoded.examples:
        ids = encoded.examples[0].input_ids
        if ids[:2] == [bos, bos]:
            add("double_bos", "error", f"the rendered example starts with two BOS tokens ({tokenizer.bos_token!r})")
        else:
            text = sftdata.render(tokenizer, template, [{"role": "user", "content": "hi"},
                                                        {"role": "assistant", "content": "hello"}], False,
                                  "a probe conversation")
            with_specials = tokenizer(text, add_special_tokens=True)["input_ids"]
            if with_specials[:2] == [bos, bos]:
                add("double_bos", "warning", f"the template already writes {tokenizer.bos_token!r} and the tokenizer "
                    "adds another when tokenizing with special tokens: a double BOS; llmkit sft tokenizes the "
                    "rendered text without added special tokens (as `llmkit generate` does), other tools may not")
    cut = encoded.dropped.get("every answer token cut by --seq-len", 0)
    if cut:
        level = "error" if not encoded.examples else "warning"
        add("truncation", level, f"--seq-len {cfg.seq_len} cuts every answer token of {cut:,} example(s)"
            + (" (all of them)" if not encoded.examples else "") + "; raise --seq-len")
    if encoded.truncated:
        add("truncation", "info", f"{encoded.truncated:,} example(s) are cut to --seq-len {cfg.seq_len} "
            + ("(the earliest context dropped, final replies kept whole)" if cfg.multi_turn == "last"
               else "(their answers partly)"))
    untrained = sum(n for why, n in encoded.dropped.items() if why != "every answer token cut by --seq-len")
    if untrained:
        add("no_trained_token", "warning" if encoded.examples else "error",
            f"{untrained:,} example(s) have no token to train on and are dropped "
            f"({', '.join(f'{n:,} {why}' for why, n in encoded.dropped.items())})")
    if encoded.special_text:
        row, turn, text = encoded.special_text[0]
        add("special_text", "warning",
            f"{len(encoded.special_text):,} conversation(s) have a special token's text inside a message (first: "
            f"{cfg.data} row {row + 1}, message {turn} holds {text!r}): llmkit encodes it as text, not as the token, "
            "so the model does not learn to stop or start a turn there; other tools may not, so check the data")
    if tokenizer.padding_side == "left":
        add("padding_side", "warning", "the tokenizer pads on the left; llmkit sft pads training batches on the "
            "right (masks by attention), and saves the tokenizer as it is: left padding suits batched generation")
    for warning in encoded.warnings:
        add("data", "warning", warning)
    return CheckResult(ok=not any(f.level == "error" for f in findings), format=encoded.format, template=name,
                       examples=len(encoded.examples), trained_tokens=encoded.trained_tokens,
                       dropped=encoded.dropped, findings=findings)


def _generation_eos(cfg: SFTConfig) -> set[int]:
    path = Path(cfg.model).expanduser() / "generation_config.json"
    if not path.is_file():
        return set()
    value = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    return set(value) if isinstance(value, list) else ({value} if value is not None else set())


# ------------------------------------------------------------------------------------------------------- train

def run_sft(cfg: SFTConfig, reporter: Reporter | None = None, callbacks: list | None = None,
            adapt_model: ModelAdapter | None = None) -> SFTResult | TaskResult:
    """Train; `callbacks` are extra TrainerCallbacks (tests use one to interrupt at a known step); `adapt_model`
    (llmkit peft) loads the base its way and wraps it with an adapter before anything trains.
    --task seq-cls|token-cls|extractive-qa|seq2seq trains a task head or an encoder-decoder instead
    (llmkit.training.tasks.run_task)."""
    if cfg.task != "chat":
        return run_task(cfg, reporter=reporter, callbacks=callbacks, adapt_model=adapt_model)
    with Run(cfg, "llmkit sft", reporter, callbacks, adapt_model) as run:
        return train_sft(run)


def train_sft(run: Run) -> SFTResult:
    """The recipe: model and tokenizer with the chat template's tokens, the encoded conversations, the model checked
    and adapted; then the run directory, training (the template and stop tokens saved with the model), the
    record."""
    cfg = run.cfg
    model, tokenizer, fields = run.load_model_and_tokenizer()
    name, template, added = _prepare(cfg, tokenizer)
    if added:
        run.warnings.append(f"added the template's tokens {', '.join(added)} to the tokenizer (embeddings grow)")

    store = sft_store.stored_examples(cfg, tokenizer, name, template, cfg.data, run.reporter)
    encoded = store.summary
    run.warnings.extend(encoded.warnings)
    train_examples, eval_stores = np.arange(len(store)), {}
    if cfg.eval_split is not None:
        train_examples, eval_examples = split_conversations(store.rows, cfg.eval_split, cfg.seed)
        eval_stores[None] = (store, eval_examples)
    elif cfg.eval_data:
        for eval_name, source in run.eval_sources().items():
            eval_store = sft_store.stored_examples(cfg, tokenizer, name, template, source, run.reporter)
            run.warnings.extend(eval_store.summary.warnings)
            eval_stores[eval_name] = (eval_store, np.arange(len(eval_store)))

    model = run.build_or_grow(model, tokenizer, fields)
    run.check_model(model, "--pack" if cfg.pack else None)
    model = run.adapt(model)
    run.start()   # every input problem has been reported: only now touch the run directory

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    collator = PackedSFTCollator(pad) if cfg.pack else SFTCollator(pad)
    train_set = (sft_store.PackedSFTRows(store, train_examples, cfg.seq_len) if cfg.pack
                 else sft_store.SFTRows(store, train_examples))
    # --eval-data a,b: each source evaluated on its own
    named = {eval_name: sft_store.SFTRows(*stored) for eval_name, stored in eval_stores.items()}
    eval_set = named if len(named) > 1 else next(iter(named.values()), None)
    args = run.training_arguments(has_eval=eval_set is not None)
    trained_tokens = int(store.trained[train_examples].sum())
    total, trainable = run.parameters
    run.reporter.info(f"sft ({encoded.format}, template {name}, multi-turn {cfg.multi_turn}): "
                      f"{type(model).__name__} with {total:,} parameters ({trainable:,} trainable); "
                      f"{len(train_examples):,} examples, {trained_tokens:,} trained of "
                      f"{int(store.lengths[train_examples].sum()):,} tokens"
                      + (" (cached)" if store.reused else "")
                      + (f" in {len(train_set):,} packed blocks" if cfg.pack else ""))
    run.forecast_memory(model, args)
    trainer = LlmkitTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                            data_collator=collator, processing_class=tokenizer,
                            compute_loss_func=make_loss("causal-lm"), objective="causal-lm")
    if eval_set is not None:   # evaluation pads (one loop for both modes)
        trainer.get_eval_dataloader = _padded_eval_loader(trainer, eval_set, pad)

    def before_save(trainer) -> None:
        tokenizer.chat_template = template          # `llmkit generate` renders with the template trained on
        stops = [i for i in (encoded.end_token_id, tokenizer.eos_token_id) if i is not None]
        gc = trainer.model.generation_config
        if stops:
            gc.eos_token_id = sorted(set(stops), key=stops.index) if len(set(stops)) > 1 else stops[0]
        if gc.pad_token_id is None and tokenizer.pad_token_id is not None:
            gc.pad_token_id = tokenizer.pad_token_id

    outcome = run.train(trainer, collator, tokenizer, before_save=before_save)
    epochs_done = float(trainer.state.epoch or 0.0)
    trained_rate = trained_tokens * epochs_done / outcome.train_seconds if outcome.train_seconds > 0 else 0.0
    return run.finish(
        SFTResult, trainer, outcome,
        data=run.data_record(format=encoded.format, template=name, examples=len(train_examples),
                             dropped=encoded.dropped, truncated=encoded.truncated, trained_tokens=trained_tokens,
                             train_rows=len(train_set), eval_source=run.eval_source(),
                             eval_rows=eval_rows(eval_set), mix=store.mix),
        manifest={"trained_tokens_per_second": round(trained_rate, 1)}, data_mix=store.mix,
        format=encoded.format, template=name, multi_turn=cfg.multi_turn, packed=cfg.pack,
        examples=len(train_examples), dropped=encoded.dropped, truncated=encoded.truncated,
        trained_tokens=trained_tokens, trained_tokens_per_second=round(trained_rate, 1))


def split_conversations(rows, eval_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """--eval-split holds out whole conversations: (train, eval) indices into `rows` (each example's source row),
    so every example of a record (the replies --multi-turn expand makes of it) lands on the same side and no
    held-out turn is trained on."""
    rows = np.asarray(rows, dtype=np.int64)
    _, eval_rows = split_eval(list(dict.fromkeys(rows.tolist())), eval_split, seed)
    held = np.isin(rows, np.asarray(eval_rows, dtype=np.int64))
    return np.flatnonzero(~held), np.flatnonzero(held)


def _padded_eval_loader(trainer, eval_set, pad: int):
    from torch.utils.data import DataLoader

    def loader(eval_dataset=None):
        return DataLoader(eval_dataset or eval_set, batch_size=trainer.args.per_device_eval_batch_size,
                          collate_fn=SFTCollator(pad), shuffle=False)

    return loader
