"""One frozen dataclass per command. Defaults live here and only here; validation messages name the flag.

Commands build these through `llmkit.configio.resolve` (defaults < preset < file < flags).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from llmkit.configio import validate

TokenizerType = Literal["bpe", "wordpiece", "unigram"]
Padding = Literal["longest", "max_length", "none"]


def _positive(problems: list[str], flag: str, value: int | float | None) -> None:
    if value is not None and value <= 0:
        problems.append(f"{flag} must be greater than 0 (got {value})")


@dataclass(frozen=True)
class TokenizeShowConfig:
    preset_kind: ClassVar[str] = "tokenize"
    tokenizer: str = ""
    texts: tuple[str, ...] = ()
    pair: str | None = None          # second segment of a text pair (sets token_type_ids)
    max_length: int | None = None    # tokens, special tokens included
    padding: Padding = "none"
    truncation: bool | None = None   # default: on when --max-length is given
    add_special_tokens: bool = True
    slow: bool = False               # the Python tokenizer, where transformers still has one
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.tokenizer:
            problems.append("--tokenizer is required")
        if not self.texts:
            problems.append("give at least one TEXT to tokenize")
        _positive(problems, "--max-length", self.max_length)
        if self.padding == "max_length" and self.max_length is None:
            problems.append("--padding max_length needs --max-length")
        validate(problems)

    @property
    def truncate(self) -> bool:
        return self.truncation if self.truncation is not None else self.max_length is not None


@dataclass(frozen=True)
class TokenizeVocabConfig:
    preset_kind: ClassVar[str] = "tokenize"
    tokenizer: str = ""
    search: str | None = None        # tokens containing this text
    ids: tuple[int, ...] = ()        # id -> token lookups
    tokens: tuple[str, ...] = ()     # token -> id lookups
    limit: int = 50                  # most search matches shown
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.tokenizer:
            problems.append("--tokenizer is required")
        _positive(problems, "--limit", self.limit)
        if any(i < 0 for i in self.ids):
            problems.append("--ids must be non-negative integers")
        validate(problems)


@dataclass(frozen=True)
class TokenizeTrainConfig:
    preset_kind: ClassVar[str] = "tokenize"
    corpus: tuple[str, ...] = ()
    output_dir: str = ""
    type: TokenizerType = "bpe"      # bpe is byte-level (lossless, no unknown tokens)
    vocab_size: int = 8000           # tokens, special tokens included
    min_frequency: int = 2           # a merge/piece must occur this often
    text_field: str = "text"         # for jsonl/json/csv/parquet corpora
    lowercase: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.corpus:
            problems.append("--corpus is required (one or more files)")
        if not self.output_dir:
            problems.append("--output-dir is required")
        _positive(problems, "--vocab-size", self.vocab_size)
        if self.vocab_size is not None and 0 < self.vocab_size < 16:
            problems.append(f"--vocab-size must be at least 16 (got {self.vocab_size})")
        _positive(problems, "--min-frequency", self.min_frequency)
        validate(problems)


@dataclass(frozen=True)
class TokenizeDatasetConfig:
    preset_kind: ClassVar[str] = "tokenize"
    tokenizer: str = ""
    data: str = ""
    text_field: str = "text"
    output_dir: str | None = None    # None: statistics only (`tokenize stats`)
    max_length: int | None = None    # truncate to this many tokens; with --pack, the block length
    pack: bool = False               # concatenate documents with eos between them, cut fixed blocks
    num_proc: int | None = None      # tokenizer threads; default: all cores
    overwrite: bool = False
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.tokenizer:
            problems.append("--tokenizer is required")
        if not self.data:
            problems.append("--data is required")
        _positive(problems, "--max-length", self.max_length)
        _positive(problems, "--num-proc", self.num_proc)
        if self.pack and self.max_length is None:
            problems.append("--pack needs --max-length (the block length)")
        validate(problems)


@dataclass(frozen=True)
class QuickstartConfig:
    preset_kind: ClassVar[str] = "quickstart"
    output_dir: str = "runs/quickstart"
    fast: bool = False               # the small version (tests, a first look)
    vocab_size: int = 4096
    seed: int = 0
    overwrite: bool = True           # the quickstart dir is a scratch area: rerunning replaces it

    def __post_init__(self) -> None:
        problems: list[str] = []
        _positive(problems, "--vocab-size", self.vocab_size)
        validate(problems)
