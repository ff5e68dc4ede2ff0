"""Tokenizers: inspect one (show, vocab), train one, pre-tokenize and pack a dataset."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmkit.config import TokenizeDatasetConfig, TokenizeShowConfig, TokenizeTrainConfig, TokenizeVocabConfig
from llmkit.configio import dump_yaml
from llmkit.errors import ConfigError, DataError, ModelLoadError
from llmkit.hub import absolute_if_local
from llmkit.modeling import load_tokenizer
from llmkit.outputs import atomic_output_dir, check_output_dir
from llmkit.ui import Reporter, SilentReporter

DATASET_META = "llmkit_dataset.json"


# ---------------------------------------------------------------------------------------------------------- show

@dataclass
class EncodedText:
    text: str
    pair: str | None
    tokens: list[str]
    input_ids: list[int]
    attention_mask: list[int]
    special_tokens_mask: list[int]
    offsets: list[list[int]] | None       # character span of each token in the original text (fast tokenizers)
    word_ids: list[int | None] | None     # fast tokenizers
    token_type_ids: list[int] | None      # where the tokenizer has them
    sequence_ids: list[int | None] | None  # which segment (0, 1) each token came from; None for special tokens
    decoded: str


@dataclass
class ShowResult:
    tokenizer: str
    tokenizer_class: str
    is_fast: bool
    encodings: list[EncodedText]


def has_pair_template(tokenizer) -> bool:
    if not getattr(tokenizer, "is_fast", False):
        return True
    processor = json.loads(tokenizer.backend_tokenizer.to_str()).get("post_processor")

    def supports_pairs(p) -> bool:
        if not p:
            return False
        if p.get("type") == "Sequence":
            return any(supports_pairs(q) for q in p.get("processors", []))
        return p.get("type") in ("TemplateProcessing", "BertProcessing", "RobertaProcessing")

    return supports_pairs(processor)


def show(cfg: TokenizeShowConfig) -> ShowResult:
    tokenizer = load_tokenizer(cfg.tokenizer, slow=cfg.slow, trust_remote_code=cfg.trust_remote_code)
    if cfg.pair is not None and not has_pair_template(tokenizer):
        raise ConfigError(f"tokenizer {cfg.tokenizer} has no template for text pairs, so --pair has no defined meaning",
                          hint="use a tokenizer with a pair template (BERT-style, e.g. `tokenize train --type wordpiece`)")
    padding = False if cfg.padding == "none" else cfg.padding
    if padding and tokenizer.pad_token is None:
        raise ConfigError(f"tokenizer {cfg.tokenizer} has no pad token, so it cannot pad",
                          hint="drop --padding, or use a tokenizer with a pad token")
    texts = list(cfg.texts)
    pairs = [cfg.pair] * len(texts) if cfg.pair is not None else None
    encoding = tokenizer(texts, pairs, padding=padding, truncation=cfg.truncate, max_length=cfg.max_length,
                         add_special_tokens=cfg.add_special_tokens, return_special_tokens_mask=True,
                         return_offsets_mapping=tokenizer.is_fast, return_attention_mask=True)
    results = []
    for i, text in enumerate(texts):
        ids = list(encoding["input_ids"][i])
        results.append(EncodedText(
            text=text, pair=cfg.pair,
            tokens=tokenizer.convert_ids_to_tokens(ids),
            input_ids=ids,
            attention_mask=list(encoding["attention_mask"][i]),
            special_tokens_mask=list(encoding["special_tokens_mask"][i]),
            offsets=[list(span) for span in encoding["offset_mapping"][i]] if tokenizer.is_fast else None,
            word_ids=encoding.word_ids(i) if tokenizer.is_fast else None,
            token_type_ids=list(encoding["token_type_ids"][i]) if "token_type_ids" in encoding else None,
            sequence_ids=encoding.sequence_ids(i) if tokenizer.is_fast else None,
            decoded=tokenizer.decode(ids, skip_special_tokens=False),
        ))
    return ShowResult(tokenizer=cfg.tokenizer, tokenizer_class=type(tokenizer).__name__, is_fast=tokenizer.is_fast,
                      encodings=results)


# --------------------------------------------------------------------------------------------------------- vocab

@dataclass
class VocabResult:
    tokenizer: str
    vocab_size: int                      # len(tokenizer): base vocabulary plus added tokens
    base_vocab_size: int
    special_tokens: dict[str, dict]      # name -> {"token", "id"}
    added_tokens: list[dict]
    search: list[dict] | None
    ids: list[dict]
    tokens: list[dict]


def vocab(cfg: TokenizeVocabConfig) -> VocabResult:
    tokenizer = load_tokenizer(cfg.tokenizer, trust_remote_code=cfg.trust_remote_code)
    size = len(tokenizer)
    special = {}
    for name, token in tokenizer.special_tokens_map.items():
        if isinstance(token, str):
            special[name] = {"token": token, "id": tokenizer.convert_tokens_to_ids(token)}
    added = [{"id": i, "token": str(t), "special": bool(getattr(t, "special", False))}
             for i, t in sorted(tokenizer.added_tokens_decoder.items())]
    search = None
    if cfg.search is not None:
        matches = sorted((i, t) for t, i in tokenizer.get_vocab().items() if cfg.search in t)
        search = [{"id": i, "token": t} for i, t in matches[: cfg.limit]]
    bad = [i for i in cfg.ids if i >= size]
    if bad:
        raise ConfigError(f"--ids {', '.join(map(str, bad))}: outside the vocabulary (ids run from 0 to {size - 1})",
                          hint="pass ids below the vocabulary size")
    ids = [{"id": i, "token": tokenizer.convert_ids_to_tokens(i)} for i in cfg.ids]
    vocabulary = tokenizer.get_vocab()
    tokens = [{"token": t, "id": vocabulary.get(t)} for t in cfg.tokens]
    return VocabResult(tokenizer=cfg.tokenizer, vocab_size=size, base_vocab_size=tokenizer.vocab_size,
                       special_tokens=special, added_tokens=added, search=search, ids=ids, tokens=tokens)


# --------------------------------------------------------------------------------------------------------- train

SPECIAL_TOKENS = {
    "bpe": {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>"},
    "unigram": {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
                "mask_token": "<mask>"},
    "wordpiece": {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                  "mask_token": "[MASK]", "bos_token": "[CLS]", "eos_token": "[SEP]"},
}


@dataclass
class TrainTokenizerResult:
    output_dir: str
    type: str
    vocab_size: int
    requested_vocab_size: int
    special_tokens: dict[str, str]
    documents: int
    characters: int
    tokens_per_word: float
    seconds: float
    sample_text: str
    sample_tokens: list[str]


def read_corpus(paths: tuple[str, ...] | list[str], text_field: str) -> list[str]:
    from llmkit.data.loading import read_text_column

    texts: list[str] = []
    for path in paths:
        texts.extend(read_text_column(path, text_field))
    return texts


def build_trainable_tokenizer(kind: str, vocab_size: int, min_frequency: int, lowercase: bool):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    specials = list(dict.fromkeys(SPECIAL_TOKENS[kind].values()))
    if kind == "bpe":
        tokenizer = Tokenizer(models.BPE())
        if lowercase:
            tokenizer.normalizer = normalizers.Lowercase()
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    elif kind == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase, clean_text=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece(prefix="##")
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=specials, show_progress=False)
    else:
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.normalizer = normalizers.Sequence(
            [normalizers.NFKC(), normalizers.Lowercase()] if lowercase else [normalizers.NFKC()])
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>",
                                          show_progress=False)
    return tokenizer, trainer


def _add_post_processor(tokenizer, kind: str) -> None:
    from tokenizers import processors

    if kind == "wordpiece":
        cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    elif kind == "unigram":
        eos_id = tokenizer.token_to_id("</s>")
        tokenizer.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B:1 </s>:1", special_tokens=[("</s>", eos_id)])


def tokens_per_word(tokenizer, texts: list[str]) -> float:
    sample = texts[:2000]
    words = sum(len(t.split()) for t in sample)
    tokens = sum(len(e.ids) for e in tokenizer.encode_batch(sample, add_special_tokens=False))
    return tokens / words if words else 0.0


def train_tokenizer(cfg: TokenizeTrainConfig, reporter: Reporter | None = None,
                    texts: list[str] | None = None) -> TrainTokenizerResult:
    """Train with the `tokenizers` library and save a directory that `AutoTokenizer.from_pretrained` loads."""
    from transformers import PreTrainedTokenizerFast

    reporter = reporter or SilentReporter()
    check_output_dir(cfg.output_dir, cfg.overwrite)
    if texts is None:
        texts = read_corpus(cfg.corpus, cfg.text_field)
    if not any(t.strip() for t in texts):
        raise DataError("the corpus holds no text", hint="give --corpus files with some text in them")
    started = time.perf_counter()
    tokenizer, trainer = build_trainable_tokenizer(cfg.type, cfg.vocab_size, cfg.min_frequency, cfg.lowercase)
    with reporter.progress(f"training a {cfg.type} tokenizer on {len(texts):,} documents") as advance:
        tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
        advance(1)
    _add_post_processor(tokenizer, cfg.type)
    seconds = time.perf_counter() - started
    specials = SPECIAL_TOKENS[cfg.type]
    input_names = ["input_ids", "token_type_ids", "attention_mask"] if cfg.type == "wordpiece" else \
        ["input_ids", "attention_mask"]
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, clean_up_tokenization_spaces=False,
                                      model_input_names=input_names, **specials)
    with atomic_output_dir(cfg.output_dir, cfg.overwrite) as scratch:
        wrapped.save_pretrained(str(scratch))
        (scratch / "resolved_config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
    sample_text = next((t for t in texts if len(t.split()) >= 6), texts[0])[:160]
    return TrainTokenizerResult(
        output_dir=str(cfg.output_dir), type=cfg.type, vocab_size=tokenizer.get_vocab_size(),
        requested_vocab_size=cfg.vocab_size, special_tokens=specials, documents=len(texts),
        characters=sum(len(t) for t in texts), tokens_per_word=round(tokens_per_word(tokenizer, texts), 4),
        seconds=round(seconds, 3), sample_text=sample_text,
        sample_tokens=wrapped.convert_ids_to_tokens(tokenizer.encode(sample_text, add_special_tokens=False).ids))


# ------------------------------------------------------------------------------------------------ dataset, stats

@dataclass
class LengthStats:
    documents: int
    tokens: int                  # before truncation or packing
    mean: float
    p50: int
    p90: int
    p99: int
    max: int
    min: int
    truncated_share: float       # documents longer than --max-length (unpacked); 0 without it
    tokens_kept: int             # tokens written: after truncation, or in whole packed blocks
    packing_efficiency: float | None  # packed: share of tokens that land in a block (the rest is the cut tail)
    padding_efficiency: float | None  # unpacked: real tokens / tokens of a batch padded to the longest row
    blocks: int | None


@dataclass
class TokenizeDatasetResult:
    data: str
    output_dir: str | None
    packed: bool
    max_length: int | None
    rows: int
    stats: LengthStats
    seconds: float
    tokens_per_second: float
    warnings: list[str] = field(default_factory=list)
    sources: list[SourcePreview] = field(default_factory=list)   # `tokenize stats`: each source's format


FORMAT_NAMES = {"text": "plain text field", "messages": "chat messages", "sharegpt": "sharegpt conversations",
                "alpaca": "alpaca instruction", "prompt-completion": "prompt-completion",
                "conversational-prompt-completion": "TRL conversational prompt-completion",
                "tool-calls": "tool calls", "input_ids": "pre-tokenized input_ids"}


@dataclass
class SourcePreview:
    """One source of --data: its detected format and its first example as training sees it."""
    source: str
    format: str                  # a FORMAT_NAMES key
    format_name: str
    records: int
    columns: list[str]
    template: str | None         # chat formats: the chat template that renders them
    example: list[dict]          # {"text", "trained"} pieces: the loss is taken on the trained ones
    example_tokens: int
    example_trained_tokens: int


def _sft_settings(max_length: int | None):
    """sft's data settings at their defaults (field names, --multi-turn...), as `llmkit sft` reads a source."""
    import dataclasses
    from types import SimpleNamespace

    from llmkit.config import SFTConfig

    defaults = {f.name: f.default for f in dataclasses.fields(SFTConfig)}
    return SimpleNamespace(**{**defaults, "seq_len": max_length or 2**62})


def _chat_format(records: list[dict], columns: list[str], settings, source: str) -> str | None:
    """The sft format of a source (refined: sharegpt, TRL conversational, tool calls), or None when it is none."""
    from llmkit.data import sft as sftdata

    try:
        fmt = sftdata.detect_format(settings, columns, records, source)
    except ConfigError:
        return None
    first = records[0]
    conversation = sftdata.to_conversation(first, fmt, settings, 0, source)
    if conversation.tools or any(m.get("tool_calls") or m["role"] == "tool" for m in conversation.messages):
        return "tool-calls"
    if fmt == "prompt-completion" and isinstance(first.get(settings.prompt_field), (list, tuple)):
        return "conversational-prompt-completion"
    if fmt == "messages":
        key = next(c for c in sftdata.MESSAGE_FIELDS if c in first)
        turns = first.get(key) or [{}]
        if key == "conversations" or (isinstance(turns[0], dict) and "from" in turns[0]):
            return "sharegpt"
    return fmt


def source_format(records: list[dict], text_field: str, settings, source: str) -> tuple[str, str | None]:
    """(format, the sft format that encodes it or None): a text field first (what pretraining reads), then the
    chat and instruction formats sft detects, then pre-tokenized input_ids."""
    columns = list(dict.fromkeys(c for r in records for c in r))
    if isinstance(records[0].get(text_field), str):
        return "text", None
    chat = _chat_format(records, columns, settings, source)
    if chat is not None:
        from llmkit.data import sft as sftdata

        return chat, sftdata.detect_format(settings, columns, records, source)
    if "input_ids" in columns:
        return "input_ids", None
    raise DataError(f"{source} has no field '{text_field}'; fields found: {', '.join(columns) or 'none'} (and no "
                    "chat or instruction columns)",
                    hint="choose the text field with --text-field (chat data: messages, conversations, "
                         "instruction/output or prompt/completion columns)")


def _pieces(backend, ids: list[int], trained: list[bool]) -> list[dict]:
    """Runs of trained and untrained tokens, each decoded on its own."""
    pieces, start = [], 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or trained[end] != trained[start]:
            pieces.append({"text": backend.decode(ids[start:end], skip_special_tokens=False),
                           "trained": trained[start]})
            start = end
    return pieces


def preview_sources(cfg: TokenizeDatasetConfig) -> tuple[list[SourcePreview], list[list[list[int]] | None]]:
    """Each source of cfg.data: its format and first example, and the token ids of the examples of each source
    that is not plain text (the chat formats rendered through the chat template, as sft trains them; None for a
    text source). Chat formats load the transformers tokenizer for its chat template."""
    from llmkit.data import sft as sftdata
    from llmkit.data.loading import read_records
    from llmkit.data.sources import parse_spec

    settings = _sft_settings(cfg.max_length)
    backend = _backend_tokenizer(cfg)
    tokenizer = template_name = template = None
    previews, ids = [], []
    for source in parse_spec(cfg.data):
        records = read_records(source.name, cfg.data_revision)
        fmt, sft_format = source_format(records, cfg.text_field, settings, source.name)
        source_ids = None
        if sft_format is not None:
            if tokenizer is None:
                tokenizer = load_tokenizer(cfg.tokenizer, trust_remote_code=cfg.trust_remote_code)
            if template is None:
                try:
                    template_name, template = sftdata.resolve_template(settings, tokenizer)
                except ConfigError:   # stats has no --template: show what sft --template chatml would train
                    template_name, template = "chatml", sftdata.builtin_template("chatml")
                sftdata.prepare_tokenizer(tokenizer, template_name)
            encoded = sftdata.encode_records(records, sft_format, tokenizer, template_name, template, settings,
                                             source.name)
            if not encoded.examples:
                raise DataError(f"{source.name}: no example has a token to train on",
                                hint="each example needs an assistant reply")
            source_ids = [e.input_ids for e in encoded.examples]
            first = source_ids[0]
            trained = [label != sftdata.IGNORE for label in encoded.examples[0].labels]
        elif fmt == "input_ids":
            source_ids = [list(map(int, r["input_ids"])) for r in records]
            first, trained = source_ids[0], [True] * len(source_ids[0])
        else:   # pretraining trains on every token of a text
            first = backend.encode(records[0][cfg.text_field], add_special_tokens=True).ids
            trained = [True] * len(first)
        previews.append(SourcePreview(
            source=source.name, format=fmt, format_name=FORMAT_NAMES[fmt], records=len(records),
            columns=list(dict.fromkeys(c for r in records for c in r)),
            template=template_name if sft_format is not None else None,
            example=_pieces(tokenizer.backend_tokenizer if sft_format is not None else backend, first, trained),
            example_tokens=len(first), example_trained_tokens=sum(trained)))
        ids.append(source_ids)
    return previews, ids


def _backend_tokenizer(cfg: TokenizeDatasetConfig):
    plain = _plain_backend_tokenizer(cfg.tokenizer)
    tokenizer = plain or load_tokenizer(cfg.tokenizer, trust_remote_code=cfg.trust_remote_code)
    return tokenizer.backend_tokenizer


def tokenize_stats(cfg: TokenizeDatasetConfig, reporter: Reporter | None = None) -> TokenizeDatasetResult:
    """`tokenize dataset` without output, plus each source's format and first example. With a chat source the
    statistics are those of the examples sft would train (each source counted once)."""
    import dataclasses

    import numpy as np

    started = time.perf_counter()
    previews, ids = preview_sources(cfg)
    if all(p.format == "text" for p in previews):
        return dataclasses.replace(tokenize_dataset(cfg, reporter), sources=previews)
    chat = next(p for p in previews if p.format != "text")
    if cfg.pack:
        raise ConfigError(f"--pack: {chat.source} holds {chat.format_name} examples, which sft packs whole "
                          "(`llmkit sft --pack`), not cut into blocks", hint="drop --pack")
    from llmkit.data.loading import read_text_column

    backend = _backend_tokenizer(cfg)
    for k, preview in enumerate(previews):
        if ids[k] is None:
            ids[k] = [e.ids for e in backend.encode_batch(read_text_column(preview.source, cfg.text_field,
                                                                           cfg.data_revision))]
    lengths = np.fromiter((len(x) for source_ids in ids for x in source_ids), dtype=np.int64)
    kept = np.minimum(lengths, cfg.max_length) if cfg.max_length else lengths
    ordered = np.sort(lengths)
    stats = LengthStats(
        documents=len(lengths), tokens=int(lengths.sum()), mean=round(float(lengths.mean()), 3),
        p50=_percentile(ordered, 50), p90=_percentile(ordered, 90), p99=_percentile(ordered, 99),
        max=int(ordered[-1]), min=int(ordered[0]),
        truncated_share=round(float((lengths > cfg.max_length).mean()) if cfg.max_length else 0.0, 6),
        tokens_kept=int(kept.sum()), packing_efficiency=None,
        padding_efficiency=round(float(kept.sum()) / (len(kept) * int(kept.max())), 6), blocks=None)
    seconds = time.perf_counter() - started
    return TokenizeDatasetResult(data=cfg.data, output_dir=None, packed=False, max_length=cfg.max_length,
                                 rows=len(lengths), stats=stats, seconds=round(seconds, 4),
                                 tokens_per_second=round(stats.tokens / seconds, 1) if seconds else 0.0,
                                 sources=previews)


def _percentile(sorted_lengths, q: float) -> int:
    import numpy as np

    return int(np.percentile(sorted_lengths, q, method="nearest")) if len(sorted_lengths) else 0


def tokenize_dataset(cfg: TokenizeDatasetConfig, reporter: Reporter | None = None) -> TokenizeDatasetResult:
    """Pre-tokenize (and optionally pack) a text dataset into an Arrow dir; statistics only without output_dir."""
    reporter = reporter or SilentReporter()
    started = time.perf_counter()
    if cfg.output_dir is not None:
        check_output_dir(cfg.output_dir, cfg.overwrite)
    import numpy as np

    from llmkit.data import tokens as tk
    from llmkit.data.loading import read_text_column

    tk.set_tokenizer_threads(cfg.num_proc)
    tokenizer = _plain_backend_tokenizer(cfg.tokenizer)
    if tokenizer is None:
        tokenizer = load_tokenizer(cfg.tokenizer, trust_remote_code=cfg.trust_remote_code)
        if not tokenizer.is_fast:
            raise ModelLoadError(f"{cfg.tokenizer} has no fast (Rust) tokenizer",
                                 hint="use a tokenizer with tokenizer.json")
    eos = tokenizer.eos_token_id
    if cfg.pack and eos is None:
        raise ConfigError(f"tokenizer {cfg.tokenizer} has no eos token to separate packed documents",
                          hint="use a tokenizer with an eos token, or drop --pack")
    texts = read_text_column(cfg.data, cfg.text_field, cfg.data_revision)
    batches = (texts[i:i + tk.BATCH_ROWS] for i in range(0, len(texts), tk.BATCH_ROWS))
    warnings: list[str] = []
    with contextlib.ExitStack() as stack:
        # documents go to the output dir as they are encoded (packed: to a scratch file there, cut into blocks next)
        scratch = None if cfg.output_dir is None else stack.enter_context(atomic_output_dir(cfg.output_dir,
                                                                                           cfg.overwrite))
        # (in a folder of its own: datasets refuses to save a dataset into the folder its own file is in)
        encoded_file = None if scratch is None else scratch / ".encoded" / tk.TOKENS_FILE
        if encoded_file is not None:
            encoded_file.parent.mkdir()
        with reporter.progress(f"tokenizing {len(texts):,} documents") as advance:
            written = tk.write_tokens(batches, tokenizer, encoded_file, add_special_tokens=True,
                                      append_eos=eos if cfg.pack else None,
                                      truncate=None if cfg.pack else cfg.max_length)
            advance(1)
        lengths, kept_lengths = written.raw_lengths, written.stored_lengths
        total = int(lengths.sum())
        if total == 0:
            raise DataError(f"{cfg.data}: every document is empty after tokenization", hint="check --text-field")
        truncated_share = 0.0
        packing_efficiency = padding_efficiency = n_blocks = None
        stream = int(kept_lengths.sum())
        if cfg.pack:
            block = cfg.max_length
            n_blocks = stream // block
            if n_blocks == 0:
                raise DataError(f"{cfg.data}: the documents hold {stream:,} tokens with eos, fewer than one block of "
                                f"--max-length {block}", hint="lower --max-length or add data")
            kept = n_blocks * block
            if stream - kept:
                warnings.append(f"the last {stream - kept:,} tokens do not fill a block of {block} and were dropped")
            packing_efficiency = kept / stream
            rows = n_blocks
        else:
            if cfg.max_length is not None:
                truncated_share = float((lengths > cfg.max_length).mean())
            kept = stream
            longest = int(kept_lengths.max())
            padding_efficiency = kept / (len(texts) * longest) if longest else None
            rows = len(texts)

        ordered = np.sort(lengths)
        stats = LengthStats(
            documents=len(texts), tokens=total, mean=round(float(lengths.mean()), 3), p50=_percentile(ordered, 50),
            p90=_percentile(ordered, 90), p99=_percentile(ordered, 99), max=int(ordered[-1]), min=int(ordered[0]),
            truncated_share=round(truncated_share, 6), tokens_kept=kept,
            packing_efficiency=None if packing_efficiency is None else round(packing_efficiency, 6),
            padding_efficiency=None if padding_efficiency is None else round(padding_efficiency, 6), blocks=n_blocks)

        if scratch is not None:
            _save_token_dataset(scratch, encoded_file, cfg.max_length if cfg.pack else None)
            meta = {"tokenizer": absolute_if_local(cfg.tokenizer), "text_field": cfg.text_field, "packed": cfg.pack,
                    "max_length": cfg.max_length, "eos_token_id": eos, "pad_token_id": tokenizer.pad_token_id,
                    "source": absolute_if_local(cfg.data), "stats": asdict(stats)}
            (scratch / DATASET_META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
            (scratch / "resolved_config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
    seconds = time.perf_counter() - started
    return TokenizeDatasetResult(data=cfg.data, output_dir=cfg.output_dir, packed=cfg.pack, max_length=cfg.max_length,
                                 rows=rows, stats=stats, seconds=round(seconds, 4),
                                 tokens_per_second=round(total / seconds, 1) if seconds else 0.0, warnings=warnings)


def _save_token_dataset(scratch: Path, encoded_file: Path, block: int | None) -> None:
    """The encoded documents (cut into blocks of `block`, when given) as a saved `datasets` dir in `scratch`,
    which `datasets.load_from_disk` and the training commands read memory-mapped."""
    import datasets

    from llmkit.data import tokens as tk

    if block is not None:
        blocks_file = encoded_file.with_name(f"blocks-{tk.TOKENS_FILE}")
        tk.write_blocks(tk.read_stream(encoded_file).column(tk.COLUMN), block, blocks_file)
        encoded_file = blocks_file
    datasets.Dataset.from_file(str(encoded_file)).save_to_disk(str(scratch))
    shutil.rmtree(encoded_file.parent)


class _PlainBackendTokenizer:
    """A tokenizer.json plus its special tokens, without importing transformers (seconds saved per run).

    Used only for directories whose tokenizer_config.json names the generic fast class, where transformers runs
    the backend exactly as saved; model-specific classes may rewrite the post-processor, so they go through
    transformers.
    """

    is_fast = True

    def __init__(self, backend, config: dict):
        self.backend_tokenizer = backend

        def token_id(name: str) -> int | None:
            token = config.get(name)
            if isinstance(token, dict):
                token = token.get("content")
            return backend.token_to_id(token) if isinstance(token, str) else None

        self.eos_token_id = token_id("eos_token")
        self.pad_token_id = token_id("pad_token")


GENERIC_FAST_CLASSES = ("PreTrainedTokenizerFast", "TokenizersBackend")


def _plain_backend_tokenizer(name: str) -> _PlainBackendTokenizer | None:
    path = Path(name).expanduser()
    config_file, tokenizer_file = path / "tokenizer_config.json", path / "tokenizer.json"
    if not (config_file.is_file() and tokenizer_file.is_file()):
        return None
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if config.get("tokenizer_class") not in GENERIC_FAST_CLASSES or config.get("add_bos_token") or \
            config.get("add_eos_token"):
        return None
    from tokenizers import Tokenizer

    return _PlainBackendTokenizer(Tokenizer.from_file(str(tokenizer_file)), config)


def saved_dataset_meta(path: str | Path) -> dict | None:
    meta = Path(path) / DATASET_META
    return json.loads(meta.read_text(encoding="utf-8")) if meta.exists() else None
