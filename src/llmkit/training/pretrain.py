"""`llmkit pretrain`: train a model from scratch or continue pretraining, with any of the four objectives."""

from __future__ import annotations

from dataclasses import dataclass

from llmkit.config import PretrainConfig
from llmkit.errors import ConfigError, DataError
from llmkit.training import data, rundir
from llmkit.training import objectives as o
from llmkit.training import trainer as t
from llmkit.training.run import ModelAdapter, Run, RunResult
from llmkit.ui import Reporter


@dataclass(kw_only=True)
class PretrainResult(RunResult):
    objective: str
    perplexity: float | None
    initial_perplexity: float | None     # before training (not on resume)


# -------------------------------------------------------------------------------------------------------- data

def read_documents(cfg: PretrainConfig, tokenizer, source: str, run: Run) -> data.Documents:
    documents = data.read_documents(source, cfg.text_field, tokenizer, add_special_tokens=cfg.objective == "masked-lm",
                                    append_eos=cfg.objective in ("causal-lm", "prefix-lm"), num_proc=cfg.num_proc,
                                    cache_dir=cfg.data_cache, revision=cfg.data_revision, seed=cfg.seed)
    run.warnings.extend(documents.warnings)
    return documents


MIN_ROW = {"causal-lm": 2, "prefix-lm": 2, "masked-lm": 1, "seq2seq": 2}   # tokens an unpacked row needs


def _row_len(cfg: PretrainConfig) -> int:
    """Tokens of an unpacked row (seq2seq keeps one for the decoder's eos)."""
    return cfg.seq_len - 1 if cfg.objective == "seq2seq" else cfg.seq_len


def build_rows(cfg: PretrainConfig, docs, source: str, warnings: list[str], prepacked: bool = False):
    """The training rows of these documents for --pack / --padding-free / unpacked (a pre-packed dir: its rows)."""
    seq_len = cfg.seq_len
    dropped = 0
    if prepacked:
        rows = data.DocumentRows(docs, None)
    elif cfg.padding_free or cfg.pack:
        rows = data.BlockRows(docs, seq_len, source, positions=cfg.padding_free)
        dropped = rows.dropped
    else:
        min_len = MIN_ROW[cfg.objective]
        rows = data.DocumentRows(docs, _row_len(cfg), min_len)
        if not len(rows):
            raise DataError(f"{source}: every document is shorter than {min_len} tokens, too short for "
                            f"{cfg.objective}", hint="give longer documents")
    if dropped:
        warnings.append(f"{source}: the last {dropped:,} tokens do not fill a block of {seq_len} and were dropped")
    return rows


def _eval_rows(cfg: PretrainConfig, tokenizer, run: Run, origins: list[str]) -> dict | None:
    """--eval-data's rows by source name (run.eval_sources), memory-mapped; None without it."""
    if not cfg.eval_data:
        return None
    rows = {}
    for name, source in run.eval_sources().items():
        evaluation = read_documents(cfg, tokenizer, source, run)
        rows[name] = build_rows(cfg, evaluation.docs, source, run.warnings, evaluation.prepacked)
        origins.append(evaluation.origin)
    return rows


def stream_rows(cfg: PretrainConfig, tokenizer):
    """--streaming: the endless rows of --data read as a stream, checked to make at least one."""
    from llmkit.data.streaming import open_stream
    from llmkit.training.streaming import StreamingRows

    layout = "padding-free" if cfg.padding_free else "packed" if cfg.pack else "rows"
    stream = open_stream(cfg.data, cfg.text_field, revision=cfg.data_revision, seed=cfg.seed)
    rows = StreamingRows(stream, cfg.text_field, tokenizer, seq_len=cfg.seq_len if layout != "rows" else _row_len(cfg),
                         layout=layout, min_len=MIN_ROW[cfg.objective],
                         add_special_tokens=cfg.objective == "masked-lm",
                         append_eos=cfg.objective in ("causal-lm", "prefix-lm"), source=cfg.data,
                         shuffle_buffer=cfg.shuffle_buffer, seed=cfg.seed)
    rows.check()
    return rows


def make_collator(cfg: PretrainConfig, tokenizer, model):
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if cfg.objective == "causal-lm":
        return o.CausalLMCollator(pad)
    if cfg.objective == "prefix-lm":
        return o.PrefixLMCollator(pad, dtype=next(model.parameters()).dtype, seed=cfg.seed)
    if cfg.objective == "masked-lm":
        return o.MaskedLMCollator(tokenizer, cfg.mlm_probability, cfg.mask_replace_prob, cfg.random_replace_prob,
                                  cfg.whole_word_masking, seed=cfg.seed)
    start = getattr(model.config, "decoder_start_token_id", None)
    return o.Seq2SeqCollator(tokenizer, cfg.noise_density, cfg.mean_span_length, pad if start is None else start,
                             seed=cfg.seed)


# ---------------------------------------------------------------------------------------------------- the run

def run_pretrain(cfg: PretrainConfig, reporter: Reporter | None = None, callbacks: list | None = None,
                 eval_before: bool = True, adapt_model: ModelAdapter | None = None) -> PretrainResult:
    """Train; returns the result, or raises TrainingInterrupted (a KeyboardInterrupt) after Ctrl-C's checkpoint.
    `adapt_model` (llmkit peft) loads the base its way and wraps it before anything trains."""
    with Run(cfg, "llmkit pretrain", reporter, callbacks, adapt_model) as run:
        return train_pretrain(run, eval_before)


def train_pretrain(run: Run, eval_before: bool = True) -> PretrainResult:
    """The recipe: model and tokenizer, rows for the objective, the model checked and adapted; then the run
    directory, training, the record."""
    cfg = run.cfg
    model, tokenizer, fields = run.load_model_and_tokenizer()
    if cfg.objective == "seq2seq":
        added = o.ensure_sentinels(tokenizer, o.max_spans(cfg.seq_len, cfg.noise_density, cfg.mean_span_length))
        if added:
            run.warnings.append(f"added {added} sentinel tokens <extra_id_N> to the tokenizer for span corruption")
    if cfg.objective == "masked-lm" and tokenizer.mask_token_id is None:
        raise ConfigError("--objective masked-lm needs a mask token, and this tokenizer has none",
                          hint="add one: tokenizer.add_special_tokens({'mask_token': '[MASK]'}) (or '<mask>'), "
                               "save it, and pass it with --tokenizer")

    streamed = documents = None
    if cfg.streaming:
        streamed = stream_rows(cfg, tokenizer)
        origins = [f"{cfg.data}: streamed, tokenized as training reads it"
                   + (f" (shuffle buffer of {cfg.shuffle_buffer:,} documents)" if cfg.shuffle_buffer > 1 else "")]
    else:
        documents = read_documents(cfg, tokenizer, cfg.data, run)
        origins = [documents.origin]   # reported once the run starts (before, stderr is an error's alone)
    eval_rows = None
    if streamed is not None:
        eval_rows = _eval_rows(cfg, tokenizer, run, origins)
    elif cfg.eval_split is not None:
        # the split re-cuts a pre-packed dir's blocks as --pack / --seq-len say, as any documents
        train_docs, eval_docs = (documents.docs.subset(i) for i in
                                 data.split_eval_indices(len(documents.docs), cfg.eval_split, cfg.seed))
        train_rows = build_rows(cfg, train_docs, cfg.data, run.warnings)
        eval_rows = build_rows(cfg, eval_docs, f"{cfg.data} (eval split)", run.warnings)
    else:
        train_rows = build_rows(cfg, documents.docs, cfg.data, run.warnings, documents.prepacked)
        eval_rows = _eval_rows(cfg, tokenizer, run, origins)

    model = run.build_or_grow(model, tokenizer, fields)
    run.check_model(model, "--padding-free" if cfg.padding_free else None)
    model = run.adapt(model)
    run.start()   # every input problem has been reported: only now touch the run directory

    for origin in origins:
        run.reporter.info(origin)
    collator = make_collator(cfg, tokenizer, model)
    # rows with their (split, epoch, index): the objectives' randomness is a function of them (exact resume)
    train_set = streamed if streamed is not None else data.IndexedRows(train_rows, "train")
    eval_set = None
    if isinstance(eval_rows, dict):   # --eval-data: each source evaluated on its own when it lists several
        named = {name: data.IndexedRows(rows, "eval") for name, rows in eval_rows.items()}
        eval_set = named if len(named) > 1 else next(iter(named.values()))
    elif eval_rows is not None and len(eval_rows):
        eval_set = data.IndexedRows(eval_rows, "eval")
    args = run.training_arguments(has_eval=eval_set is not None)
    total, trainable = run.parameters
    rows = ("rows streamed" if streamed is not None
            else f"{len(train_set):,} training rows ({train_set.tokens:,} tokens)")
    run.reporter.info(f"{cfg.objective}: {type(model).__name__} with {total:,} parameters ({trainable:,} trainable); "
                      f"{rows}" + (f", {t.eval_rows(eval_set):,} eval rows" if eval_set else ""))
    run.forecast_memory(model, args)
    trainer = t.LlmkitTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                              data_collator=collator, processing_class=tokenizer,
                              compute_loss_func=o.make_loss(cfg.objective), objective=cfg.objective)
    epochs = [] if streamed is not None else [t.EpochCallback(train_set)]   # a stream counts its own passes
    outcome = run.train(trainer, collator, tokenizer, eval_before=eval_before, callbacks=epochs)
    initial, final_eval = outcome.initial_eval, outcome.final_eval
    mix = documents.mix if documents is not None else None
    return run.finish(
        PretrainResult, trainer, outcome,
        data=run.data_record(train_rows=t.train_rows(trainer),
                             train_tokens=None if streamed is not None else train_set.tokens,
                             streaming=cfg.streaming, eval_source=run.eval_source(),
                             eval_fingerprint=rundir.fingerprint(cfg.eval_data) if cfg.eval_data else None,
                             eval_rows=t.eval_rows(eval_set), mix=mix),
        data_mix=mix, objective=cfg.objective,
        perplexity=None if final_eval is None else round(t.perplexity(final_eval), 4),
        initial_perplexity=None if initial is None else round(t.perplexity(initial), 4))
