"""One frozen dataclass per command. Defaults live here and only here; validation messages name the flag.

Commands build these through `llmkit.configio.resolve` (defaults < preset < file < flags).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from llmkit.configio import validate
from llmkit.errors import ConfigError

TokenizerType = Literal["bpe", "wordpiece", "unigram"]
Padding = Literal["longest", "max_length", "none"]
Mode = Literal["train", "inference"]
Task = Literal["causal-lm", "masked-lm", "seq2seq", "seq-cls"]
Precision = Literal["fp32", "fp16", "bf16"]
MixedPrecision = Literal["no", "fp16", "bf16"]
Quant = Literal["none", "int8", "nf4", "fp4"]
Optimizer = Literal["adamw", "adamw-fused", "adamw-8bit", "paged-adamw-8bit", "adafactor", "sgd", "sgd-momentum"]
Peft = Literal["none", "lora", "ia3", "prompt-tuning", "p-tuning", "prefix-tuning"]
Attention = Literal["eager", "sdpa", "flash"]
Offload = Literal["none", "optimizer", "optimizer+params"]
ZeroStage = Literal[0, 1, 2, 3]


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


@dataclass(frozen=True)
class MemoryEstimateConfig:
    preset_kind: ClassVar[str] = "memory-estimate"
    params: str | None = None          # total parameter count: 1.4B, 330M, 7e9
    model: str | None = None           # a model preset, a dir or config.json, or a hub id
    mode: Mode = "train"
    task: Task | None = None           # default: from the architecture (causal-lm with --params)
    precision: Precision | None = None  # dtype the weights are stored and trained in; default fp32
    mixed_precision: MixedPrecision = "no"  # autocast over fp32 weights, as the HF Trainer does it
    quant: Quant = "none"              # bitsandbytes, linear layers only
    double_quant: bool = False
    optimizer: Optimizer = "adamw"
    peft: Peft = "none"
    lora_rank: int = 8
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")  # module names, or ("all-linear",)
    num_virtual_tokens: int = 20
    freeze_base: bool = False          # train only the task head
    trainable_layers: int | None = None  # train only the last N blocks
    batch_size: int = 1                # micro-batch per GPU, sequences
    seq_len: int = 512                 # tokens per sequence
    grad_accum: int = 1
    grad_checkpointing: bool = False
    attention: Attention = "sdpa"
    zero: ZeroStage = 0                # DeepSpeed ZeRO stage; 0 = plain DDP
    offload: Offload = "none"
    gpus: int = 1                      # per node
    nodes: int = 1
    gpu_memory: str | None = None      # one GPU's memory, for the fit check: 24GiB, 80GB
    overhead: str | None = None        # per-process constant; default memory.DEFAULT_OVERHEAD_BYTES (uncalibrated)
    layers: int | None = None          # architecture overrides
    hidden: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    vocab: int | None = None
    intermediate: int | None = None
    plan: bool = False
    explain: bool = False

    def __post_init__(self) -> None:
        problems: list[str] = []
        if (self.params is None) == (self.model is None):
            problems.append("give exactly one of --params and --model")
        if self.params is not None:
            from llmkit.modelspec import parse_param_count

            try:
                parse_param_count(self.params)
            except ConfigError as exc:
                problems.append(exc.message)
        for flag, value in (("--lora-rank", self.lora_rank), ("--num-virtual-tokens", self.num_virtual_tokens),
                            ("--batch-size", self.batch_size), ("--seq-len", self.seq_len),
                            ("--grad-accum", self.grad_accum), ("--gpus", self.gpus), ("--nodes", self.nodes),
                            ("--trainable-layers", self.trainable_layers), ("--layers", self.layers),
                            ("--hidden", self.hidden), ("--heads", self.heads), ("--kv-heads", self.kv_heads),
                            ("--vocab", self.vocab), ("--intermediate", self.intermediate)):
            _positive(problems, flag, value)
        for flag, value in (("--gpu-memory", self.gpu_memory), ("--overhead", self.overhead)):
            if value is not None:
                from llmkit.memory import parse_size

                try:
                    parse_size(value, flag)
                except ConfigError as exc:
                    problems.append(exc.message)
        if self.mixed_precision != "no" and self.precision not in (None, "fp32"):
            problems.append(f"--mixed-precision {self.mixed_precision} autocasts over fp32 weights, but --precision "
                            f"is {self.precision}: drop --mixed-precision for pure {self.precision} training, "
                            "or use --precision fp32")
        if self.quant != "none" and self.peft == "none" and self.mode == "train":
            problems.append(f"--quant {self.quant} with full fine-tuning: bitsandbytes {self.quant} weights are "
                            "frozen integer codes with no gradient, so only adapters can train on a quantized base; "
                            "add --peft lora (QLoRA), or train unquantized")
        if self.quant != "none" and self.zero == 3:
            problems.append(f"--zero 3 with --quant {self.quant}: DeepSpeed ZeRO-3 partitions parameters, which it "
                            "cannot do to bitsandbytes-quantized weights; use --zero 2 (or plain DDP) with QLoRA")
        if self.double_quant and self.quant not in ("nf4", "fp4"):
            problems.append("--double-quant applies to 4-bit weights: add --quant nf4 or --quant fp4")
        if self.offload != "none" and self.zero == 0:
            problems.append(f"--offload {self.offload} needs DeepSpeed ZeRO: add --zero 1, 2 or 3 "
                            "(parameters offload only with --zero 3)")
        elif self.offload == "optimizer+params" and self.zero != 3:
            problems.append("--offload optimizer+params needs --zero 3: only ZeRO-3 partitions (and offloads) "
                            "parameters")
        if self.plan and self.gpu_memory is None:
            problems.append("--plan needs --gpu-memory: the budget the plans must fit")
        validate(problems)

    @property
    def effective_precision(self) -> str:
        """Unless given: bf16 for inference and for a quantized base (QLoRA keeps the unquantized parts in bf16),
        fp32 for training (under --mixed-precision too: autocast runs over fp32 weights)."""
        if self.precision is not None:
            return self.precision
        if self.mode == "inference" or (self.quant != "none" and self.mixed_precision == "no"):
            return "bf16"
        return "fp32"

    @property
    def gpu_memory_bytes(self) -> int | None:
        from llmkit.memory import parse_size

        return None if self.gpu_memory is None else parse_size(self.gpu_memory, "--gpu-memory")

    @property
    def overhead_bytes(self) -> int:
        from llmkit.memory import DEFAULT_OVERHEAD_BYTES, parse_size

        return DEFAULT_OVERHEAD_BYTES if self.overhead is None else parse_size(self.overhead, "--overhead")

    @property
    def architecture_overrides(self) -> dict[str, int | None]:
        return dict(layers=self.layers, hidden=self.hidden, heads=self.heads, kv_heads=self.kv_heads,
                    vocab=self.vocab, intermediate=self.intermediate)


ExplainMethod = Literal["absmax-int8", "vector-int8", "llm-int8", "nf4", "fp4"]


@dataclass(frozen=True)
class QuantizeExplainConfig:
    preset_kind: ClassVar[str] = "quantize"
    method: ExplainMethod = "nf4"
    values: tuple[float, ...] = ()
    shape: tuple[int, ...] = ()        # rows,cols for vector-int8 / llm-int8 (default: one row)
    blocksize: int = 64                # values per absmax block (nf4, fp4)
    double_quant: bool = False         # quantize the block absmax values too (nf4, fp4)
    threshold: float = 6.0             # LLM.int8 outlier threshold (|x| at or above it stays 16-bit)

    def __post_init__(self) -> None:
        from llmkit.quantize import SUPPORTED_4BIT_BLOCKSIZES

        problems: list[str] = []
        if not self.values:
            problems.append("--values is required: comma-separated numbers, e.g. --values 0.1,-0.5,2.0")
        if self.shape:
            if len(self.shape) != 2 or any(n <= 0 for n in self.shape):
                problems.append(f"--shape must be two positive numbers ROWS,COLS (got {','.join(map(str, self.shape))})")
            elif self.shape[0] * self.shape[1] != len(self.values):
                problems.append(f"--shape {self.shape[0]},{self.shape[1]} holds {self.shape[0] * self.shape[1]} values "
                                f"but --values has {len(self.values)}")
            elif self.method not in ("vector-int8", "llm-int8"):
                problems.append(f"--shape applies to vector-int8 and llm-int8, not {self.method}")
        if self.method in ("nf4", "fp4") and self.blocksize not in SUPPORTED_4BIT_BLOCKSIZES:
            problems.append(f"--blocksize {self.blocksize} is not supported by bitsandbytes for 4-bit; choose one of "
                            f"{', '.join(map(str, SUPPORTED_4BIT_BLOCKSIZES))}")
        if self.double_quant and self.method not in ("nf4", "fp4"):
            problems.append(f"--double-quant applies to nf4 and fp4 (their block constants), not {self.method}")
        _positive(problems, "--threshold", self.threshold)
        if any(v != v or v in (float("inf"), float("-inf")) for v in self.values):
            problems.append("--values must be finite numbers (no nan or inf)")
        validate(problems)
