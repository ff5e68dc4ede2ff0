"""One frozen dataclass per command. Defaults live here and only here; validation messages name the flag.

Commands build these through `llmkit.configio.resolve` (defaults < preset < file < flags). Configs are made of
blocks (training: model, data, optimisation, training run, objectives, adapter; the other commands: model loading,
decoding, tokenizer, output...) whose fields are declared with `opt()`: default, help text and flag in one place;
`llmkit.commands._options.config_command` generates the CLI options from them (a block's PANEL groups its options
in --help).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, get_args

from llmkit.configio import comma_list, validate
from llmkit.errors import ConfigError

TokenizerType = Literal["bpe", "wordpiece", "unigram"]
Padding = Literal["longest", "max_length", "none"]
Mode = Literal["train", "inference"]
Task = Literal["causal-lm", "masked-lm", "seq2seq", "seq-cls"]
Precision = Literal["fp32", "bf16", "fp16"]                 # the dtype weights are stored in
MixedPrecision = Literal[("no", *get_args(Precision)[1:])]   # autocast over fp32 weights
QuantMethod = Literal["int8", "nf4", "fp4"]             # bitsandbytes weight formats
Quant = Literal[("none", *get_args(QuantMethod))]   # memory-estimate, peft: none or one of them
Optimizer = Literal["adamw", "adamw-fused", "adamw-8bit", "paged-adamw-8bit", "adafactor", "sgd", "sgd-momentum"]
PeftMethod = Literal["lora", "ia3", "prompt-tuning", "p-tuning", "prefix-tuning"]
Peft = Literal[("none", *get_args(PeftMethod))]   # memory-estimate: a full fine-tune or an adapter
FLOAT32_MAX = 3.4028234663852886e38   # training hyperparameters reach the optimizer as float32
SUPPORTED_4BIT_BLOCKSIZES = (64, 128, 256, 512, 1024, 2048, 4096)   # bitsandbytes' 4-bit blocksizes
Attention = Literal["eager", "sdpa", "flash"]
EstimateDevice = Literal["cuda", "cpu"]
Offload = Literal["none", "optimizer", "optimizer+params"]
FitLever = Literal["batch", "seq-len"]
ZeroStage = Literal[0, 1, 2, 3]
# `llmkit launch`'s strategies as (ZeRO stage, offload): the distributed layouts llmkit runs, so the only ones a plan
# may name (FSDP FULL_SHARD partitions like ZeRO-3; memory-estimate models its memory apart: --strategy fsdp)
STRATEGY_ZERO = {"ddp": (0, "none"), "zero1": (1, "none"), "zero2": (2, "none"), "zero3": (3, "none"),
                 "zero2-offload": (2, "optimizer"), "zero3-offload": (3, "optimizer+params"), "fsdp": (3, "none")}
LaunchStrategy = Literal[(*STRATEGY_ZERO, "auto")]
Dtype = Literal[("auto", *get_args(Precision))]   # auto: the checkpoint's own
Device = Literal["auto", "cpu", "cuda"]
GenerateTask = Literal["text-generation", "summarization", "translation", "fill-mask", "text-classification",
                       "token-classification", "question-answering", "feature-extraction"]


# Every command's --help imports this module: frozen dataclasses without generated __eq__/__repr__ build in half the
# time (about 17 ms instead of 37 ms here), and configs are never compared or printed by repr (dump_yaml shows them).
config_class = dataclass(frozen=True, eq=False, repr=False)


def opt(default: Any, help: str, *, short: str | None = None, flag: str | None = None, panel: str | None = None,
        negatable: bool | str = False, aliases: tuple[str, ...] = (), repeatable: bool = False,
        positional: bool = False, path: bool = False, parse: Callable[[str], Any] | None = None,
        source: str | None = None):
    """A config field that is also a command-line option: its default, its help (the default is added to it when
    the options are generated), its flag (default: --field-name), a one-letter alias and other names (another
    command's name for the same idea), the --help panel (default: its block's PANEL, or that of the block that
    includes it), and whether a --no-FLAG form exists (or the off form's name, such as "--greedy").

    A list field is one comma-separated flag unless `repeatable` (the flag once per item) or `positional` (the
    command's arguments); `path` lets the shell complete file names; `parse` reads a flag's text (each text of a
    repeatable flag) where the resolver's own reading does not fit; `source` (model, tokenizer, adapter, data) marks
    an input that, given as a local path, must exist (llmkit.preflight checks it before any heavy import)."""
    return field(default=default, metadata={"help": help, "short": short, "flag": flag, "panel": panel,
                                            "negatable": negatable, "aliases": aliases, "repeatable": repeatable,
                                            "positional": positional, "path": path, "parse": parse,
                                            "source": source})


def redefault(block: type, name: str, default: Any):
    """`block`'s field `name` (help, flag and all) with the default of the command that redeclares it."""
    return field(default=default, metadata=block.__dataclass_fields__[name].metadata)


def _comma(flag: str, kind: type = str) -> Callable[[str], list]:
    """`--flag a,b,c` read item by item, text items keeping their spaces (" " can be a token)."""
    return lambda text: comma_list(text, flag, kind)


def unescape(text: str) -> str:
    """`--stop '\\n\\n'` means two newlines: \\n, \\t and \\\\ are read as escapes (shells pass them literally)."""
    return re.sub(r"\\\\|\\n|\\t", lambda m: {"\\\\": "\\", "\\n": "\n", "\\t": "\t"}[m.group(0)], text)


_SIZE_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12,
               "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str | int, flag: str) -> int:
    """'24GiB' -> 25769803776; '8GB' = 8e9 bytes, '80G' = 80e9, plain numbers are bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = float(text)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*", str(text))
        unit = match.group(2).lower() if match else None
        if not match or unit not in _SIZE_UNITS:
            raise ConfigError(f"{flag}: cannot read {text!r} as a size",
                              hint=f"e.g. {flag} 24GiB (GiB/MiB are powers of 2, GB/MB powers of 10)")
        value = float(match.group(1)) * _SIZE_UNITS[unit]
    if value < 0:
        raise ConfigError(f"{flag} must not be negative (got {text!r})")
    return int(round(value))


# memory.total (MiB) that nvidia-smi reports for the cards sold under each whole-GB size; where several cards share
# a size, the smallest: 16 T4, 24 RTX 3090/4090, 40 A100-40GB, 48 L40S, 80 H100 (A100-80GB: 81,920), 94 H100 NVL,
# 141 H200
GPU_CARD_MIB = {16: 15360, 24: 24564, 40: 40960, 48: 46068, 80: 81559, 94: 95830, 141: 143771}


def gpu_memory_size(text: str | int) -> tuple[int, str | None]:
    """--gpu-memory in bytes, and how it was read: a whole number of GB that a card is sold as (80GB, 24G) means that
    card's memory (80GB -> 81,559 MiB = 79.6 GiB, not 80e9 bytes = 74.5 GiB); GiB/MiB and other sizes are exact."""
    value = parse_size(text, "--gpu-memory")
    match = re.fullmatch(r"\s*(\d+)\s*(gb|g)\s*", str(text), re.IGNORECASE)
    if match and int(match.group(1)) in GPU_CARD_MIB:
        card_mib = GPU_CARD_MIB[int(match.group(1))]
        note = f"{text} read as a {match.group(1)} GB card: {card_mib:,} MiB ({card_mib / 1024:.2f} GiB)"
        return card_mib * 2**20, note
    return value, None


def _positive(problems: list[str], flag: str, value: int | float | None) -> None:
    if value is not None and value <= 0:
        problems.append(f"{flag} must be greater than 0 (got {value})")


# ---------------------------------------- blocks shared across commands (the training blocks redeclare their fields)

@config_class
class RemoteCodeArgs:
    """Every command that loads from the hub."""

    trust_remote_code: bool = opt(False, "Allow a hub repo's own Python code to run (only for authors you trust).")


@config_class
class SeedArgs:
    seed: int | None = opt(None, "Random seed.")


@config_class
class OutputArgs:
    output_dir: str | None = opt(None, "Where results are written.", short="-o", path=True)
    overwrite: bool = opt(False, "Replace a non-empty --output-dir.")

    def _output_problems(self, problems: list[str]) -> None:
        if not self.output_dir:
            problems.append("--output-dir is required")


@config_class
class TextFieldArgs:
    text_field: str = opt("text", "The field that holds the text.")   # jsonl, json, csv and parquet files


@config_class
class TokenizerArgs:
    tokenizer: str = opt("", "Tokenizer: a local dir, a tokenizer.json file or a hub id.", short="-t",
                         source="tokenizer")

    def _tokenizer_problems(self, problems: list[str]) -> None:
        if not self.tokenizer:
            problems.append("--tokenizer is required")


@config_class
class ModelDeviceArgs:
    """The model an inference command loads and where it runs (generate, quantize; a future serve)."""

    model: str = opt("", "The model: a local dir or hub id.", short="-m", source="model")
    device: Device = opt("auto", "Where the model runs (default auto: cuda when available).")


@config_class
class ModelLoadArgs(ModelDeviceArgs):
    """How generate (and a future serve) loads its model: adapter, task head, dtype, bitsandbytes weights."""

    PANEL: ClassVar[str] = "Model loading"
    adapter: str | None = opt(None, "A PEFT adapter dir trained on --model (whose base it must name).",
                              source="adapter")
    task: GenerateTask | None = opt(None, "What the model does (default: from the architecture and its head).")
    dtype: Dtype = opt("auto", "The weights' dtype (default auto: the checkpoint's).")
    load_in_8bit: bool = opt(False, "bitsandbytes int8 weights.")
    load_in_4bit: bool = opt(False, "bitsandbytes NF4 weights.")

    def _load_problems(self, problems: list[str]) -> None:
        if self.load_in_8bit and self.load_in_4bit:
            problems.append("give one of --load-in-8bit and --load-in-4bit")


@config_class
class TokenizeShowConfig(RemoteCodeArgs, TokenizerArgs):
    preset_kind: ClassVar[str] = "tokenize"
    texts: tuple[str, ...] = opt((), "Text(s) to tokenize.", positional=True)
    pair: str | None = opt(None, "Second segment of a text pair (sets token_type_ids).")
    max_length: int | None = opt(None, "Most tokens per sequence, special tokens included.")
    padding: Padding = opt("none", "How shorter sequences are padded.")
    truncation: bool | None = opt(None, "Cut to --max-length (default: on when it is given).", negatable=True)
    add_special_tokens: bool = opt(True, "Add the template's special tokens (default: on).", flag="--special-tokens",
                                   negatable=True)
    slow: bool = opt(False, "Use the Python tokenizer, where transformers still has one.")

    def __post_init__(self) -> None:
        problems: list[str] = []
        self._tokenizer_problems(problems)
        if not self.texts:
            problems.append("give at least one TEXT to tokenize")
        _positive(problems, "--max-length", self.max_length)
        if self.padding == "max_length" and self.max_length is None:
            problems.append("--padding max_length needs --max-length")
        validate(problems)

    @property
    def truncate(self) -> bool:
        return self.truncation if self.truncation is not None else self.max_length is not None


@config_class
class TokenizeVocabConfig(RemoteCodeArgs, TokenizerArgs):
    preset_kind: ClassVar[str] = "tokenize"
    search: str | None = opt(None, "List tokens that contain this text.")
    ids: tuple[int, ...] = opt((), "Comma-separated ids to look up.", parse=_comma("--ids", int))
    tokens: tuple[str, ...] = opt((), "Comma-separated tokens to look up.", parse=_comma("--tokens"))
    limit: int = opt(50, "Most --search matches shown.")

    def __post_init__(self) -> None:
        problems: list[str] = []
        self._tokenizer_problems(problems)
        _positive(problems, "--limit", self.limit)
        if any(i < 0 for i in self.ids):
            problems.append("--ids must be non-negative integers")
        validate(problems)


@config_class
class TokenizeTrainConfig(TextFieldArgs, OutputArgs):
    preset_kind: ClassVar[str] = "tokenize"
    corpus: tuple[str, ...] = opt((), "Text, jsonl, json, csv or parquet file (repeat for several).", repeatable=True,
                                  source="data")
    type: TokenizerType = opt("bpe", "bpe (byte-level: lossless, no unknown tokens) | wordpiece | unigram.")
    vocab_size: int = opt(8000, "Tokens, special tokens included.")
    min_frequency: int = opt(2, "Least count of a merge (or piece).")
    lowercase: bool = opt(False, "Lowercase before training.")

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.corpus:
            problems.append("--corpus is required (one or more files)")
        self._output_problems(problems)
        _positive(problems, "--vocab-size", self.vocab_size)
        if self.vocab_size is not None and 0 < self.vocab_size < 16:
            problems.append(f"--vocab-size must be at least 16 (got {self.vocab_size})")
        _positive(problems, "--min-frequency", self.min_frequency)
        validate(problems)


@config_class
class TokenizeDatasetConfig(RemoteCodeArgs, TextFieldArgs, OutputArgs, TokenizerArgs):
    """`tokenize dataset`, and `tokenize stats` (no --output-dir: statistics only)."""

    preset_kind: ClassVar[str] = "tokenize"
    data: str = opt("", "jsonl, json, csv, parquet, txt (.gz/.zst too), a directory or glob of shards, a saved "
                        "dataset dir or a hub dataset (NAME[:CONFIG[:SPLIT]]); a mix: a.jsonl,b.jsonl or weighted "
                        "a.jsonl:0.7,b.jsonl:0.3.", source="data")
    data_revision: str | None = opt(None, "The hub dataset's revision: a branch, tag or commit.")
    max_length: int | None = opt(None, "Most tokens per sequence (longer ones are truncated); with --pack, the block "
                                       "length.")
    pack: bool = opt(False, "Concatenate documents with eos between them and cut blocks of --max-length.")
    num_proc: int | None = opt(None, "Tokenizer threads (default: all cores).")

    def __post_init__(self) -> None:
        problems: list[str] = []
        self._tokenizer_problems(problems)
        if not self.data:
            problems.append("--data is required")
        from llmkit.data.sources import revision_problems, spec_problems

        problems += spec_problems(self.data, "--data") + revision_problems(self.data_revision, self.data)
        _positive(problems, "--max-length", self.max_length)
        _positive(problems, "--num-proc", self.num_proc)
        if self.pack and self.max_length is None:
            problems.append("--pack needs --max-length (the block length)")
        validate(problems)


@config_class
class QuickstartConfig(SeedArgs, OutputArgs):
    preset_kind: ClassVar[str] = "quickstart"
    output_dir: str = redefault(OutputArgs, "output_dir", "runs/quickstart")
    seed: int = redefault(SeedArgs, "seed", 0)
    fast: bool = opt(False, "The small version (about a minute).")
    vocab_size: int = 4096           # not a flag: the tokenizer the stages are sized for

    def __post_init__(self) -> None:
        problems: list[str] = []
        _positive(problems, "--vocab-size", self.vocab_size)
        validate(problems)


@config_class
class MemoryEstimateConfig:
    preset_kind: ClassVar[str] = "memory-estimate"
    PANEL: ClassVar[str] = "The run"
    params: str | None = opt(None, "Total parameter count (1.4B, 330M, 7e9); the architecture follows a documented "
                                   "rule.", panel="Model")
    model: str | None = opt(None, "A model preset (see `llmkit presets`), a dir or config.json, or a hub id.",
                            short="-m", panel="Model")
    mode: Mode = opt("train", "Training or inference.")
    task: Task | None = opt(None, "What the model trains as (default: from the architecture).")
    precision: Precision | None = opt(None, "The dtype the weights are stored and trained in (default fp32; bf16 for "
                                            "inference; QLoRA: fp32, as peft's k-bit preparation upcasts); "
                                            "--base-dtype as in `llmkit peft`.",
                                      aliases=("--base-dtype",))
    mixed_precision: MixedPrecision = opt("no", "Autocast over fp32 weights, as the HF Trainer does it.")
    quant: Quant = opt("none", "bitsandbytes, linear layers only (QLoRA with --method lora).", panel="Adapter")
    double_quant: bool = opt(False, "Quantize the 4-bit absmax constants too.", panel="Adapter")
    optimizer: Optimizer = opt("adamw-fused", "The optimizer (8-bit ones: bitsandbytes); the training commands' "
                                              "default.")
    peft: Peft = opt("none", "The adapter trained on a frozen base (none: full fine-tuning); --method as in "
                             "`llmkit peft`.", aliases=("--method",), panel="Adapter")
    lora_rank: int = opt(8, "LoRA rank r.", panel="Adapter")
    lora_targets: tuple[str, ...] = opt(("q_proj", "v_proj"), "Comma-separated module names, or all-linear.",
                                        panel="Adapter")
    num_virtual_tokens: int = opt(20, "prompt-, p- and prefix-tuning: virtual tokens.", panel="Adapter")
    freeze_base: bool = opt(False, "Train only the task head.")
    trainable_layers: int | None = opt(None, "Train only the last N blocks.")
    batch_size: int = opt(1, "Micro-batch per GPU, in sequences.", short="-b")
    seq_len: int = opt(512, "Tokens per sequence.")
    grad_accum: int = opt(1, "Micro-batches per optimizer step.")
    grad_checkpointing: bool = opt(False, "Recompute activations in backward.", negatable=True)
    attention: Attention = opt("sdpa", "The attention kernel.")
    strategy: str | None = opt(None, "A `llmkit launch` strategy (ddp, zero1, zero2, zero3, zero2-offload, "
                                     "zero3-offload, fsdp): sets --zero and --offload.", panel="Distribution")
    zero: ZeroStage = opt(0, "DeepSpeed ZeRO stage (0 = plain DDP).", panel="Distribution")
    offload: Offload = opt("none", "DeepSpeed CPU offload.", panel="Distribution")
    gpus: int = opt(1, "GPUs (processes) per node; --num-processes as in `llmkit launch`.",
                    aliases=("--num-processes",), panel="Distribution")
    nodes: int = opt(1, "Nodes.", panel="Distribution")
    gpu_memory: str | None = opt(None, "Memory of one GPU for the fit check. A card size (16/24/40/48/80/94/141GB) "
                                       "means that card's real memory (80GB = 79.6 GiB); GiB/MiB are exact.",
                                 panel="Budget")
    device: EstimateDevice = opt("cuda", "What runs it: cuda (CUDA autocast rules) or cpu (CPU autocast rules).")
    overhead: str | None = opt(None, "Per-process constant replacing the default: the CUDA context (512MiB) plus "
                                     "the caching allocator's reserve (10% of the tensors); 0 on CPU. Uncalibrated.",
                               panel="Budget")
    layers: int | None = opt(None, "Override the number of blocks.", panel="Model")
    hidden: int | None = opt(None, "Override the hidden size.", panel="Model")
    heads: int | None = opt(None, "Override the attention heads.", panel="Model")
    kv_heads: int | None = opt(None, "Override the key/value heads (GQA).", panel="Model")
    vocab: int | None = opt(None, "Override the vocabulary size.", panel="Model")
    intermediate: int | None = opt(None, "Override the MLP size.", panel="Model")
    plan: bool = opt(False, "When it does not fit, list the cheapest configurations that do.", panel="Budget")
    fit: FitLever | None = opt(None, "Find the largest micro-batch (batch) or sequence length (seq-len) that fits "
                                     "--gpu-memory, the rest as given.", panel="Budget")
    explain: bool = opt(False, "Show the formula and numbers behind every row.")

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.strategy is not None:
            if self.strategy not in STRATEGY_ZERO:
                problems.append(f"--strategy {self.strategy!r} is not one of {', '.join(STRATEGY_ZERO)}")
            elif (self.zero, self.offload) not in ((0, "none"), STRATEGY_ZERO[self.strategy]):
                problems.append(f"--strategy {self.strategy} already sets --zero and --offload: give one of them")
            else:
                zero, offload = STRATEGY_ZERO[self.strategy]
                object.__setattr__(self, "zero", zero)
                object.__setattr__(self, "offload", offload)
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
            # peft documents QLoRA + ZeRO-3, but only with bnb_4bit_quant_storage set to the compute dtype (so the
            # packed 4-bit weights are bf16 tensors ZeRO-3 can partition) and DeepSpeed's zero3_init; llmkit's QLoRA
            # keeps bitsandbytes' uint8 storage and launch loads without zero3_init
            problems.append(f"--zero 3 with --quant {self.quant}: DeepSpeed ZeRO-3 partitions parameters, which it "
                            "cannot do to llmkit's bitsandbytes-quantized weights (uint8 storage); use --zero 2 "
                            "(or plain DDP) with QLoRA")
        if self.double_quant and self.quant not in ("nf4", "fp4"):
            problems.append("--double-quant applies to 4-bit weights: add --quant nf4 or --quant fp4")
        if self.offload != "none" and self.zero == 0:
            problems.append(f"--offload {self.offload} needs DeepSpeed ZeRO: add --zero 1, 2 or 3 "
                            "(parameters offload only with --zero 3)")
        elif self.offload == "optimizer+params" and self.zero != 3:
            problems.append("--offload optimizer+params needs --zero 3: only ZeRO-3 partitions (and offloads) "
                            "parameters")
        if self.uses_fsdp and self.device == "cpu":
            problems.append("--strategy fsdp with --device cpu: accelerate's FSDP needs a GPU per process (`llmkit "
                            "launch` refuses it on CPUs); use --strategy zero3, the same partitioning on DeepSpeed")
        if self.plan and self.gpu_memory is None:
            problems.append("--plan needs --gpu-memory: the budget the plans must fit")
        if self.fit is not None and self.gpu_memory is None:
            problems.append(f"--fit {self.fit} needs --gpu-memory: the budget to fit")
        validate(problems)

    @property
    def effective_precision(self) -> str:
        """Training on a quantized base (QLoRA): fp32, whatever is given, because llmkit's runs call peft's
        prepare_model_for_kbit_training, which casts every parameter bitsandbytes left alone (embeddings, norms, lm
        head) to fp32; bitsandbytes' layers return outputs in their input's dtype, so activations and logits are fp32
        too unless autocast is on. Otherwise, unless given: bf16 for inference, fp32 for training (under
        --mixed-precision too: autocast runs over fp32 weights)."""
        if self.mode == "train" and self.quant != "none":
            return "fp32"
        if self.precision is not None:
            return self.precision
        return "bf16" if self.mode == "inference" else "fp32"

    @property
    def uses_fsdp(self) -> bool:
        """--strategy fsdp: --zero 3's partitioning, but PyTorch FSDP's memory (llmkit.memory._fsdp_estimate)."""
        return self.strategy == "fsdp"

    @property
    def gpu_memory_bytes(self) -> int | None:
        return None if self.gpu_memory is None else gpu_memory_size(self.gpu_memory)[0]

    @property
    def architecture_overrides(self) -> dict[str, int | None]:
        return dict(layers=self.layers, hidden=self.hidden, heads=self.heads, kv_heads=self.kv_heads,
                    vocab=self.vocab, intermediate=self.intermediate)


# ------------------------------------------------------------------ training: blocks shared by pretrain, sft, peft

Objective = Literal["causal-lm", "masked-lm", "seq2seq", "prefix-lm"]
Scheduler = Literal["linear", "cosine", "constant", "constant-with-warmup"]
ReportTo = Literal["none", "tensorboard", "wandb", "mlflow"]


def report_targets(report_to: str) -> list[str]:
    """--report-to's trackers in the order given: [] for none, else the comma list's names (checked by TrainArgs)."""
    names = [name.strip() for name in report_to.split(",")]
    return [] if names == ["none"] else names


@config_class
class ModelArgs:
    PANEL: ClassVar[str] = "Model"

    model: str = opt("", "A model dir or hub id (continued training); with --from-scratch a model preset (`llmkit "
                         "presets`) or a config.json.", short="-m", source="model")
    tokenizer: str | None = redefault(TokenizerArgs, "tokenizer", None)
    from_scratch: bool = opt(False, "Random initialisation from --model's architecture (needs --tokenizer).")
    trust_remote_code: bool = redefault(RemoteCodeArgs, "trust_remote_code", False)
    attention: Attention | None = opt(None, "The attention kernel: eager | sdpa | flash (flash-attention 2: a CUDA GPU "
                                            "and the flash-attn package); default: transformers' choice for the "
                                            "model (sdpa where it has it).")

    def _model_problems(self, problems: list[str]) -> None:
        if not self.model:
            problems.append("--model is required (a model dir, a hub id, or a preset/config.json with "
                            "--from-scratch)")
        if self.from_scratch and not self.tokenizer:
            problems.append("--from-scratch needs --tokenizer (a random model has no tokenizer of its own)")


@config_class
class DataArgs:
    PANEL: ClassVar[str] = "Data"

    data: str = opt("", "Training data: jsonl, json, csv, parquet, txt (.gz/.zst too), a directory or glob of "
                        "shards, a `llmkit tokenize dataset` dir, or a hub dataset (NAME[:CONFIG[:SPLIT]]); a mix: "
                        "a.jsonl,b.parquet or weighted a.jsonl:0.7,org/name:0.3.", source="data")
    data_revision: str | None = redefault(TokenizeDatasetConfig, "data_revision", None)
    text_field: str = opt("text", "The field that holds the text; sft --task seq-cls: the text column.")
    eval_data: str | None = opt(None, "A separate evaluation set (same formats as --data).", source="data")
    eval_split: float | None = opt(None, "Hold out this share (0-1) or this many documents (>= 1) of --data for "
                                         "evaluation.")
    seq_len: int = opt(512, "Tokens per training row.")
    pack: bool = opt(False, "Concatenate documents (eos between them) into --seq-len blocks; attention crosses "
                            "document boundaries.")
    padding_free: bool = opt(False, "Pack, but each document attends only to itself (position ids restart per "
                                    "document; causal-lm).")
    num_proc: int | None = opt(None, "Tokenizing workers (default: all cores).")
    data_cache: str | None = opt(None, "Where tokenized data is cached, keyed by the data's content, the tokenizer "
                                       "and the settings (default: $LLMKIT_CACHE or ~/.cache/llmkit).")

    def _data_problems(self, problems: list[str]) -> None:
        from llmkit.data.sources import eval_spec_problems, revision_problems, spec_problems

        if not self.data:
            problems.append("--data is required")
        problems += spec_problems(self.data, "--data") + eval_spec_problems(self.eval_data)
        problems += revision_problems(self.data_revision, self.data, self.eval_data)
        _positive(problems, "--num-proc", self.num_proc)
        _positive(problems, "--seq-len", self.seq_len)
        if self.seq_len is not None and 0 < self.seq_len < 4:
            problems.append(f"--seq-len must be at least 4 (got {self.seq_len})")
        if self.eval_data and self.eval_split is not None:
            problems.append("give one of --eval-data and --eval-split")
        if self.eval_split is not None:
            if self.eval_split <= 0:
                problems.append(f"--eval-split must be greater than 0 (got {self.eval_split})")
            elif self.eval_split >= 1 and not float(self.eval_split).is_integer():
                problems.append(f"--eval-split is a share below 1 or a whole number of documents "
                                f"(got {self.eval_split})")


@config_class
class OptimArgs:
    PANEL: ClassVar[str] = "Optimisation"

    batch_size: int = opt(8, "Sequences per micro-batch.", short="-b")
    grad_accum: int = opt(1, "Micro-batches per optimizer step.")
    lr: float = opt(3e-4, "Peak learning rate.")
    epochs: float = opt(1.0, "Passes over the data.")
    max_steps: int | None = opt(None, "Optimizer steps; overrides --epochs.")
    warmup_ratio: float = opt(0.0, "Share of steps spent warming up.")
    scheduler: Scheduler = opt("cosine", "The learning-rate schedule.")
    weight_decay: float = opt(0.0, "AdamW weight decay.")
    max_grad_norm: float = opt(1.0, "Gradient clipping; 0 turns it off.")
    # torch's fused AdamW: the same update as adamw (to fp32 rounding), a single kernel with no foreach sqrt(v)
    # buffer, faster on GPU and ~5x faster per step on CPU here (benchmarks/RESULTS.md); transformers 5's default
    optimizer: Optimizer = opt("adamw-fused", "The optimizer (8-bit ones: bitsandbytes; adamw: torch's foreach "
                                              "AdamW).")

    def _optim_problems(self, problems: list[str]) -> None:
        for flag, value in (("--batch-size", self.batch_size), ("--grad-accum", self.grad_accum), ("--lr", self.lr),
                            ("--epochs", self.epochs), ("--max-steps", self.max_steps)):
            _positive(problems, flag, value)
        for flag, value in (("--lr", self.lr), ("--weight-decay", self.weight_decay),
                            ("--max-grad-norm", self.max_grad_norm), ("--warmup-ratio", self.warmup_ratio),
                            ("--epochs", self.epochs)):
            if isinstance(value, float) and not (math.isfinite(value) and abs(value) <= FLOAT32_MAX):
                problems.append(f"{flag} must be a finite number within float32's range (got {value})")
        if self.warmup_ratio is not None and not 0 <= self.warmup_ratio < 1:
            problems.append(f"--warmup-ratio must be in [0, 1) (got {self.warmup_ratio})")
        if self.weight_decay is not None and self.weight_decay < 0:
            problems.append(f"--weight-decay must not be negative (got {self.weight_decay})")
        if self.max_grad_norm is not None and self.max_grad_norm < 0:
            problems.append(f"--max-grad-norm must not be negative (got {self.max_grad_norm})")


@config_class
class TrainArgs:
    PANEL: ClassVar[str] = "Training run"

    mixed_precision: MixedPrecision = opt("no", "Autocast over fp32 weights (fp16 needs a GPU).")
    grad_checkpointing: bool = opt(False, "Recompute activations in backward: less memory, more compute.")
    freeze_base: bool = opt(False, "Train only the output head.")
    trainable_layers: int | None = opt(None, "Train only the last N blocks (and the head).")
    eval_steps: int | None = opt(None, "Evaluate every N steps (default: before and after).")
    save_steps: int = opt(500, "Checkpoint every N steps.")
    save_total_limit: int | None = opt(2, "Keep this many checkpoints.")
    logging_steps: int = opt(10, "A metrics row and progress line every N steps.")
    seed: int = redefault(SeedArgs, "seed", 0)
    output_dir: str = redefault(OutputArgs, "output_dir", "")
    overwrite: bool = redefault(OutputArgs, "overwrite", False)
    resume: str | None = opt(None, "auto (the last intact checkpoint in --output-dir) or a checkpoint dir.")
    # text, not a ReportTo: several trackers can be given as a comma list, which _train_problems checks
    report_to: str = opt("none", "none | tensorboard | wandb | mlflow, or several as a comma list (default none): "
                                 "where metrics go besides metrics.jsonl (tensorboard: OUTPUT/tensorboard; wandb: project "
                                 "$WANDB_PROJECT (default llmkit), run named after OUTPUT, files in $WANDB_DIR or "
                                 "OUTPUT, offline with WANDB_MODE=offline; mlflow: $MLFLOW_TRACKING_URI, else a file "
                                 "store in OUTPUT/mlruns, experiment $MLFLOW_EXPERIMENT_NAME (default llmkit)).")
    deepspeed: str | None = opt(None, "A DeepSpeed JSON config, passed to the Trainer as is.")

    def _train_problems(self, problems: list[str]) -> None:
        if not self.output_dir:
            problems.append("--output-dir is required")
        for flag, value in (("--trainable-layers", self.trainable_layers), ("--eval-steps", self.eval_steps),
                            ("--save-steps", self.save_steps), ("--save-total-limit", self.save_total_limit),
                            ("--logging-steps", self.logging_steps)):
            _positive(problems, flag, value)
        if self.freeze_base and self.trainable_layers is not None:
            problems.append("give one of --freeze-base (only the head trains) and --trainable-layers N")
        if self.overwrite and self.resume:
            problems.append("--overwrite deletes the checkpoints --resume needs: give one of them")
        if self.deepspeed is not None and not self.deepspeed.endswith(".json"):
            problems.append(f"--deepspeed takes a DeepSpeed JSON config file (got {self.deepspeed!r})")
        targets = report_targets(self.report_to)
        if len(set(targets)) != len(targets) or not set(targets) <= set(get_args(ReportTo)[1:]):
            problems.append(f"--report-to takes none, or one or more of tensorboard, wandb, mlflow separated by "
                            f"commas (got {self.report_to!r})")


@config_class
class ObjectiveArgs:
    """The pretraining objectives' knobs, shared by `pretrain` and `peft --objective`."""

    PANEL: ClassVar[str] = "Pretraining objectives"

    mlm_probability: float = opt(0.15, "masked-lm: share of tokens to predict.")
    mask_replace_prob: float = opt(0.8, "masked-lm: of those, share replaced by the mask token.")
    random_replace_prob: float = opt(0.1, "masked-lm: share replaced by a random token.")
    whole_word_masking: bool = opt(False, "masked-lm: mask whole words.")
    noise_density: float = opt(0.15, "seq2seq: share of tokens corrupted.")
    mean_span_length: float = opt(3.0, "seq2seq: mean corrupted span in tokens.")

    def _objective_problems(self, problems: list[str]) -> None:
        for flag, value in (("--mlm-probability", self.mlm_probability), ("--noise-density", self.noise_density)):
            if value is not None and not 0 < value < 1:
                problems.append(f"{flag} must be between 0 and 1 (got {value})")
        for flag, value in (("--mask-replace-prob", self.mask_replace_prob),
                            ("--random-replace-prob", self.random_replace_prob)):
            if value is not None and not 0 <= value <= 1:
                problems.append(f"{flag} must be between 0 and 1 (got {value})")
        if self.mask_replace_prob + self.random_replace_prob > 1:
            problems.append("--mask-replace-prob plus --random-replace-prob must not exceed 1 "
                            f"(got {self.mask_replace_prob} + {self.random_replace_prob})")
        if self.mean_span_length is not None and self.mean_span_length < 1:
            problems.append(f"--mean-span-length must be at least 1 (got {self.mean_span_length})")


# the transformers Auto class family each pretraining objective trains
OBJECTIVE_FAMILY = {"causal-lm": "causal-lm", "prefix-lm": "causal-lm", "masked-lm": "masked-lm", "seq2seq": "seq2seq"}


@config_class
class PretrainConfig(ObjectiveArgs, TrainArgs, OptimArgs, DataArgs, ModelArgs):
    PANEL: ClassVar[str] = "Pretraining objectives"

    preset_kind: ClassVar[str] = "pretrain"
    objective: Objective = opt("causal-lm", "causal-lm | masked-lm | seq2seq (T5 span corruption) | prefix-lm.")
    streaming: bool = opt(False, "Read --data as a stream, tokenized and packed as training goes, never whole (for "
                                 "corpora larger than disk or RAM); needs --max-steps.")
    shuffle_buffer: int = opt(10_000, "--streaming: documents in the shuffle buffer (1: the stream's order).")

    def __post_init__(self) -> None:
        problems: list[str] = []
        self._model_problems(problems)
        self._data_problems(problems)
        self._optim_problems(problems)
        self._train_problems(problems)
        _positive(problems, "--shuffle-buffer", self.shuffle_buffer)
        if self.streaming and self.max_steps is None:
            problems.append("--streaming needs --max-steps: a stream has no length to count epochs by")
        if self.streaming and self.eval_split is not None:
            problems.append("--eval-split cannot hold documents out of a stream: give --eval-data")
        if (self.pack or self.padding_free) and self.objective in ("seq2seq", "prefix-lm"):
            problems.append(f"--pack/--padding-free apply to causal-lm and masked-lm, not {self.objective}")
        if self.padding_free and self.objective != "causal-lm":
            problems.append("--padding-free (position ids restart per document) is for --objective causal-lm")
        self._objective_problems(problems)
        validate(problems)

    @property
    def model_task(self) -> str:
        """The Auto class family (llmkit.modeling.AUTO_CLASSES key): the same name across training configs."""
        return OBJECTIVE_FAMILY[self.objective]


SFTFormat = Literal["auto", "alpaca", "messages", "sharegpt", "prompt-completion"]
SFTTask = Literal["chat", "seq-cls", "token-cls", "extractive-qa", "seq2seq"]
TASK_PANEL = "Task heads (--task)"
MultiTurn = Literal["all", "last", "expand"]


@config_class
class SFTConfig(TrainArgs, OptimArgs, DataArgs, ModelArgs):
    """`llmkit sft`: loss only on the assistant replies (and their end-of-turn token) unless --train-on-prompt."""

    PANEL: ClassVar[str] = "Instructions and chat templates"
    preset_kind: ClassVar[str] = "sft"
    objective: ClassVar[str] = "causal-lm"
    lr: float = opt(2e-5, "Peak learning rate.")
    format: SFTFormat = opt("auto", "The data format (auto: detected from the columns).")
    template: str | None = opt(None, "A built-in chat template: chatml | plain (default: the tokenizer's own).")
    chat_template: str | None = opt(None, "A Jinja chat template file.")
    multi_turn: MultiTurn = opt("all", "all (every reply, one pass) | last (only the final reply; past --seq-len the "
                                       "earliest context is cut, the reply kept whole) | expand (one example per "
                                       "reply).")
    train_on_prompt: bool = opt(False, "Loss on every token (masking off).")
    pack: bool = opt(False, "Pack examples into --seq-len blocks without attention across examples (padding-free; "
                            "position ids restart per example).")
    messages_field: str | None = opt(None, "Column name (default messages, then conversations).")
    prompt_field: str = opt("prompt", "Column name.")
    completion_field: str = opt("completion", "Column name.")
    instruction_field: str = opt("instruction", "Column name.")
    input_field: str = opt("input", "Column name.")
    output_field: str = opt("output", "Column name.")
    system_field: str = opt("system", "Column name.")
    preview: int | None = opt(None, "Show N encoded examples with the trained tokens highlighted and exit.")
    check: bool = opt(False, "Lint template, tokenizer and data, then exit (1 on errors).")
    # ---- task heads (#10): --task seq-cls | token-cls | extractive-qa; --task chat (default) ignores this block.
    # seq-cls reads DataArgs' --text-field (default text); --seq-len is the longest input (longer is truncated).
    task: SFTTask = opt("chat", "chat (instruction tuning, default) | seq-cls (classification, regression) | token-"
                                "cls (NER) | extractive-qa (SQuAD-style) | seq2seq (source -> target on an encoder-"
                                "decoder: summarization, translation).", panel=TASK_PANEL)
    text_pair_field: str | None = opt(None, "seq-cls: a second text column (NLI pairs).", panel=TASK_PANEL)
    label_field: str = opt("label", "seq-cls: the label column: names, class ids, or floats for a regression.",
                           panel=TASK_PANEL)
    labels: tuple[str, ...] = opt((), "seq-cls/token-cls: comma-separated label names in id order (default: the "
                                      "training data's, sorted).", panel=TASK_PANEL)
    tokens_field: str = opt("tokens", "token-cls: the list-of-words column.", panel=TASK_PANEL)
    tags_field: str = opt("tags", "token-cls: the list-of-tags column, one per word.", panel=TASK_PANEL)
    label_all_subtokens: bool = opt(False, "token-cls: label every sub-token of a word (B-X continues as I-X), not "
                                           "only the first.", panel=TASK_PANEL)
    question_field: str = opt("question", "extractive-qa: the question column.", panel=TASK_PANEL)
    context_field: str = opt("context", "extractive-qa: the context column.", panel=TASK_PANEL)
    answers_field: str = opt("answers", "extractive-qa: {text: [...], answer_start: [...]} per example; empty = "
                                        "unanswerable.", panel=TASK_PANEL)
    doc_stride: int | None = opt(None, "extractive-qa: tokens shared by the overlapping windows of a long context "
                                       "(default 128, at most a quarter of --seq-len).", panel=TASK_PANEL)
    max_answer_length: int = opt(30, "extractive-qa evaluation: longest answer, tokens.")
    # seq2seq: --seq-len is the longest source (prefix included), longer sources and targets are truncated
    source_field: str = opt("source", "seq2seq: the source text column.", panel=TASK_PANEL)
    target_field: str = opt("target", "seq2seq: the target text column.", panel=TASK_PANEL)
    source_lang: str | None = opt(None, "seq2seq: fills {source_lang} in --source-prefix; rows shaped {translation: "
                                        "{LANG: text, ...}} take the source from this key.", panel=TASK_PANEL)
    target_lang: str | None = opt(None, "seq2seq: fills {target_lang} in --source-prefix; the target's key in "
                                        "{translation: {...}} rows.", panel=TASK_PANEL)
    source_prefix: str | None = opt(None, "seq2seq: text put before every source, as T5 was trained ('summarize: ', "
                                          "'translate {source_lang} to {target_lang}: ').", panel=TASK_PANEL)
    max_target_len: int = opt(128, "seq2seq: longest target, tokens (eos included).", panel=TASK_PANEL)
    # the decoding of the evaluation, spelled as `llmkit generate` spells it, and saved in the model's
    # generation_config so that generate decodes the trained model the same way
    max_new_tokens: int | None = opt(None, "seq2seq evaluation: most tokens generated (default: --max-target-len).",
                                     panel=TASK_PANEL)
    num_beams: int | None = opt(None, "seq2seq evaluation: beam search with this many beams (default: greedy).",
                                panel=TASK_PANEL)

    def __post_init__(self) -> None:
        problems: list[str] = []
        self._model_problems(problems)
        self._data_problems(problems)
        self._optim_problems(problems)
        self._train_problems(problems)
        if self.preview is not None or self.check:
            problems[:] = [p for p in problems if not p.startswith("--output-dir")]
        if self.padding_free:
            problems.append("sft --pack is already padding-free (position ids restart per example): drop "
                            "--padding-free")
        if self.template is not None and self.chat_template is not None:
            problems.append("give one of --template NAME (built in) and --chat-template FILE")
        if self.preview is not None and self.preview <= 0:
            problems.append(f"--preview must be greater than 0 (got {self.preview})")
        if self.preview is not None and self.check:
            problems.append("give one of --preview N and --check")
        self._task_problems(problems)
        validate(problems)

    def _task_problems(self, problems: list[str]) -> None:
        if self.task == "chat":
            return
        if self.preview is not None or self.check:
            problems.append(f"--preview and --check inspect chat templates; --task {self.task} has none")
        if self.pack:
            problems.append(f"--pack applies to --task chat, not {self.task} (one example per row)")
        if self.template is not None or self.chat_template is not None or self.train_on_prompt:
            problems.append(f"--template/--chat-template/--train-on-prompt apply to --task chat, not {self.task}")
        if len(set(self.labels)) != len(self.labels):
            problems.append("--labels must not repeat a label")
        if self.labels and self.task in ("extractive-qa", "seq2seq"):
            problems.append(f"--labels applies to seq-cls and token-cls, not {self.task}")
        if self.task == "seq2seq":
            for flag, value in (("--max-target-len", self.max_target_len), ("--max-new-tokens", self.max_new_tokens),
                                ("--num-beams", self.num_beams)):
                _positive(problems, flag, value)
            for name, value in (("source_lang", self.source_lang), ("target_lang", self.target_lang)):
                if "{" + name + "}" in (self.source_prefix or "") and not value:
                    problems.append(f"--source-prefix {self.source_prefix!r} names {{{name}}}: give "
                                    f"--{name.replace('_', '-')}")
        if self.task == "extractive-qa":
            _positive(problems, "--doc-stride", self.doc_stride)
            _positive(problems, "--max-answer-length", self.max_answer_length)
            if self.doc_stride is not None and self.seq_len is not None and 0 < self.seq_len <= self.doc_stride:
                problems.append(f"--doc-stride {self.doc_stride} must be smaller than --seq-len {self.seq_len} "
                                "(windows overlap by --doc-stride tokens and must move forward)")

    @property
    def model_task(self) -> str:
        """The transformers Auto class family this run trains (llmkit.modeling.AUTO_CLASSES key)."""
        return "causal-lm" if self.task == "chat" else self.task


PeftObjective = Literal[("sft", *get_args(Objective))]
PromptInit = Literal["random", "text"]
PromptEncoder = Literal["mlp", "lstm"]
PROMPT_METHODS = ("prompt-tuning", "p-tuning", "prefix-tuning")
# the usual starting points (peft's examples and papers): adapters want far larger steps than full fine-tuning
DEFAULT_PEFT_LR = {"lora": 2e-4, "ia3": 3e-3, "prompt-tuning": 3e-2, "p-tuning": 1e-3, "prefix-tuning": 1e-2}


@config_class
class PeftArgs:
    PANEL: ClassVar[str] = "Adapter"

    method: PeftMethod = opt("lora", "The adapter.")
    lora_rank: int = opt(8, "LoRA rank r.")
    lora_alpha: float = opt(16.0, "LoRA scaling alpha; updates scale by alpha/r.")
    lora_dropout: float = opt(0.05, "Dropout on LoRA's input.")
    lora_targets: tuple[str, ...] = opt((), "Comma-separated module names (q_proj,v_proj) or all-linear; default: "
                                            "peft's choice for the architecture (shown).")
    modules_to_save: tuple[str, ...] = opt((), "Modules trained in full and saved with the adapter (comma-separated, "
                                               "e.g. lm_head).")
    use_rslora: bool = opt(False, "Rank-stabilised LoRA (scale alpha/sqrt(r)).")
    use_dora: bool = opt(False, "Weight-decomposed LoRA (DoRA).")
    ia3_targets: tuple[str, ...] = opt((), "IA3 modules (key, value, feed-forward); default: detected for the "
                                           "architecture.")
    ia3_feedforward: tuple[str, ...] = opt((), "Which IA3 targets are feed-forward (scaled on their input).")
    num_virtual_tokens: int = opt(20, "prompt-, p- and prefix-tuning: virtual tokens.")
    prompt_init: PromptInit | None = opt(None, "prompt-tuning: how the soft prompt starts (default: text when "
                                               "--prompt-init-text is given).")
    prompt_init_text: str | None = opt(None, "prompt-tuning: a hard prompt whose token embeddings start the soft "
                                             "prompt.")
    encoder: PromptEncoder = opt("mlp", "p-tuning: the prompt encoder.")
    encoder_hidden_size: int | None = opt(None, "p-tuning / prefix projection: hidden size (default: the model's).")
    prefix_projection: bool = opt(False, "prefix-tuning: learn the prefix through an MLP.", negatable=True)
    quant: Quant = opt("none", "Load the base through bitsandbytes (QLoRA, with --method lora).", panel="QLoRA")
    double_quant: bool = opt(False, "nf4/fp4: quantize the block constants too (4.127 instead of 4.5 bits per "
                                    "weight).", panel="QLoRA")
    compute_dtype: Dtype = opt("auto", "4-bit matmuls (auto: bf16 on a GPU that has it, else fp32).",
                                      panel="QLoRA")
    base_dtype: Precision = opt("fp32", "The frozen base's weights (adapters stay fp32); bf16 halves the base's "
                                        "memory.")

    def _peft_problems(self, problems: list[str]) -> None:
        for flag, value in (("--lora-rank", self.lora_rank), ("--lora-alpha", self.lora_alpha),
                            ("--num-virtual-tokens", self.num_virtual_tokens),
                            ("--encoder-hidden-size", self.encoder_hidden_size)):
            _positive(problems, flag, value)
        if self.lora_dropout is not None and not 0 <= self.lora_dropout < 1:
            problems.append(f"--lora-dropout must be in [0, 1) (got {self.lora_dropout})")
        if self.prompt_init == "text" and not self.prompt_init_text:
            problems.append("--prompt-init text needs --prompt-init-text \"...\" (the hard prompt to start from)")
        if self.prompt_init == "random" and self.prompt_init_text:
            problems.append("--prompt-init-text is the text initialisation: drop it or use --prompt-init text")
        if self.quant != "none" and self.method != "lora":
            problems.append(f"--quant {self.quant} (QLoRA) trains LoRA adapters on a quantized base: use --method lora "
                            f"(not {self.method})")
        if self.double_quant and self.quant not in ("nf4", "fp4"):
            problems.append("--double-quant applies to 4-bit bases: add --quant nf4 or --quant fp4")
        if self.base_dtype != "fp32" and self.quant != "none":
            problems.append(f"--base-dtype {self.base_dtype} is for an unquantized base: with --quant, peft keeps "
                            "the parts bitsandbytes leaves alone in fp32 for stable training")
        ia3_extra = set(self.ia3_feedforward) - set(self.ia3_targets)
        if self.ia3_targets and ia3_extra:
            problems.append(f"--ia3-feedforward {', '.join(sorted(ia3_extra))} must also be in --ia3-targets "
                            "(peft scales feed-forward targets on their input)")
        if "all-linear" in self.lora_targets and len(self.lora_targets) > 1:
            problems.append("--lora-targets all-linear already names every linear layer: give it alone")


@config_class
class PeftConfig(PeftArgs, ObjectiveArgs, SFTConfig):
    """`llmkit peft`: the sft (or pretraining) run with the base frozen and only an adapter trained.

    The training itself is `sft` (`--objective sft`, the default, with every --task) or `pretrain` (any other
    objective: continued pretraining through an adapter); `training_config()` is that command's config."""

    PANEL: ClassVar[str] = "Adapter"

    preset_kind: ClassVar[str] = "peft"
    objective: PeftObjective = opt("sft", "sft (instruction data, the default) | causal-lm | masked-lm | seq2seq | "
                                          "prefix-lm (continued pretraining through the adapter).")
    lr: float | None = opt(None, "Peak learning rate (default by method: lora 2e-4, ia3 3e-3, prompt-tuning 3e-2, "
                                 "p-tuning 1e-3, prefix-tuning 1e-2).")

    def __post_init__(self) -> None:
        if self.lr is None and self.method in DEFAULT_PEFT_LR:   # resolved here, so configs show the value used
            object.__setattr__(self, "lr", DEFAULT_PEFT_LR[self.method])
        problems: list[str] = []
        self._peft_problems(problems)
        if self.from_scratch:
            problems.append("--from-scratch: adapters train on a pretrained base; train the model first with "
                            "`llmkit pretrain`")
        if self.freeze_base or self.trainable_layers is not None:
            problems.append("--freeze-base/--trainable-layers choose what full fine-tuning trains; with peft only "
                            "the adapter (and --modules-to-save) trains")
        if self.objective != "sft" and self.task != "chat":
            problems.append(f"--task {self.task} trains with --objective sft (got --objective {self.objective})")
        if self.method in PROMPT_METHODS and self.objective == "masked-lm":
            problems.append(f"{self.method} needs a peft task type, and peft has none for masked-LM models: use "
                            "--method lora or ia3 for a masked LM")
        if self.method in PROMPT_METHODS and (self.pack or self.padding_free):
            problems.append(f"--pack/--padding-free restart position ids inside a row, which {self.method}'s "
                            "virtual tokens cannot follow: drop --pack")
        try:
            self.training_config()
        except ConfigError as exc:
            problems.extend(exc.problems)
        validate(problems)

    def training_config(self) -> "SFTConfig | PretrainConfig":
        """The config of the run the adapter trains in (sft for --objective sft, else pretrain)."""
        from dataclasses import fields

        target = SFTConfig if self.objective == "sft" else PretrainConfig
        values = {f.name: getattr(self, f.name) for f in fields(target) if hasattr(self, f.name)}
        if target is PretrainConfig:
            values["objective"] = self.objective
        return target(**values)

    @property
    def model_task(self) -> str:
        return SFTConfig.model_task.fget(self) if self.objective == "sft" else OBJECTIVE_FAMILY[self.objective]


ANALYSIS_TASKS = ("text-classification", "token-classification", "question-answering", "feature-extraction")
Pooling = Literal["mean", "cls"]
Aggregation = Literal["simple", "first"]


@config_class
class PromptArgs:
    """What generate generates from: a prompt, a chat message, a chat, or a JSONL batch."""

    PANEL: ClassVar[str] = "What to generate from"
    prompt: str | None = opt(None, "Text sent as it is (completion); with fill-mask, text with mask tokens.",
                             short="-p")
    message: str | None = opt(None, "One user turn, rendered with the chat template.")
    system: str | None = opt(None, "System message for --message, --chat and `messages` lines.")
    chat_template: str | None = opt(None, "Jinja chat template file (default: the tokenizer's own, e.g. saved with a "
                                          "run).", path=True)
    input: str | None = opt(None, "Batch: JSONL with a `prompt` or a `messages` list per line.", path=True,
                            source="data")
    output: str | None = opt(None, "Batch: JSONL results in input order; lines already there are skipped (resume).",
                             path=True)
    chat: bool = opt(False, "Interactive chat (/help lists its commands); reads one turn per line when stdin is not "
                            "a terminal.")
    overwrite: bool = opt(False, "Batch: replace an --output that llmkit did not write, or wrote with other settings "
                                 "(else it is refused).")
    batch_size: int = opt(8, "Prompts per forward pass in batch mode.")


@config_class
class DecodingArgs:
    """How text is generated (generate; a future serve). A value left at None comes from the model's
    generation_config (transformers' defaults where it has none); `max_new_tokens` falls back to
    DEFAULT_MAX_NEW_TOKENS."""

    PANEL: ClassVar[str] = "Decoding (default: the model's generation_config)"
    DEFAULT_MAX_NEW_TOKENS: ClassVar[int] = 128
    max_new_tokens: int | None = opt(None, "Most tokens generated (default: the model's, else 128).")
    min_new_tokens: int | None = opt(None, "Fewest tokens generated (eos held back until then).")
    max_length: int | None = opt(None, "Most tokens, prompt included.")
    min_length: int | None = opt(None, "Fewest tokens, prompt included.")
    do_sample: bool | None = opt(None, "Sample, or take the most likely token.", negatable="--greedy")
    num_beams: int | None = opt(None, "Beam search with this many beams.")
    num_return_sequences: int | None = opt(None, "Sequences per prompt (sampling, or ≤ --num-beams).")
    length_penalty: float | None = opt(None, "Beam search: > 1 favours longer outputs.")
    early_stopping: bool | None = opt(None, "Beam search: stop when num_beams candidates are done.", negatable=True)
    no_repeat_ngram_size: int | None = opt(None, "No n-gram of this size occurs twice.")
    temperature: float | None = opt(None, "Sampling: > 0; below 1 sharpens, above flattens.")
    top_k: int | None = opt(None, "Sampling: keep the k most likely tokens (0: off); fill-mask: candidates shown "
                                  "(default 5); text-classification, question-answering: the k best labels/answers.")
    top_p: float | None = opt(None, "Sampling: nucleus mass in (0, 1].")
    min_p: float | None = opt(None, "Sampling: drop tokens below min-p × the top probability.")
    typical_p: float | None = opt(None, "Sampling: locally typical mass in (0, 1].")
    repetition_penalty: float | None = opt(None, "> 1 discourages tokens already present.")
    stop: tuple[str, ...] = opt((), "Stop sequence (repeatable; \\n and \\t are escapes); the output ends before it.",
                                repeatable=True, parse=unescape)

    def _decoding_problems(self, problems: list[str]) -> None:
        for flag, value in (("--max-new-tokens", self.max_new_tokens), ("--max-length", self.max_length),
                            ("--num-beams", self.num_beams), ("--num-return-sequences", self.num_return_sequences),
                            ("--no-repeat-ngram-size", self.no_repeat_ngram_size),
                            ("--repetition-penalty", self.repetition_penalty)):
            _positive(problems, flag, value)
        for flag, value in (("--min-new-tokens", self.min_new_tokens), ("--min-length", self.min_length)):
            if value is not None and value < 0:
                problems.append(f"{flag} must be 0 or more (got {value})")
        for low, high, low_flag, high_flag in ((self.min_new_tokens, self.max_new_tokens, "--min-new-tokens",
                                                "--max-new-tokens"),
                                               (self.min_length, self.max_length, "--min-length", "--max-length")):
            if low is not None and high is not None and low > high:
                problems.append(f"{low_flag} {low} is more than {high_flag} {high}")
        if self.temperature is not None:
            if self.temperature < 0:
                problems.append(f"--temperature must be 0 or more (got {self.temperature})")
            elif self.temperature == 0 and self.do_sample:
                problems.append("--temperature 0 with --do-sample: sampling divides the logits by the temperature, "
                                "so 0 is undefined; use --greedy (what temperature 0 means elsewhere) or a small "
                                "positive temperature such as 0.1")
        if self.top_k is not None and self.top_k < 0:
            problems.append(f"--top-k must be 0 or more (got {self.top_k}); 0 turns top-k filtering off")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            problems.append(f"--top-p must be in (0, 1] (got {self.top_p}); 1 turns nucleus filtering off")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            problems.append(f"--min-p must be in [0, 1] (got {self.min_p})")
        if self.typical_p is not None and not 0 < self.typical_p <= 1:
            problems.append(f"--typical-p must be in (0, 1] (got {self.typical_p}); 1 turns it off")
        if any(not s for s in self.stop):
            problems.append("--stop must not be empty")


@config_class
class TaskHeadArgs:
    """generate's analysis tasks (#10): text-classification, token-classification, question-answering,
    feature-extraction."""

    PANEL: ClassVar[str] = "Classification, NER, extractive QA, embeddings"
    text_pair: str | None = opt(None, "text-classification: the second text of a pair (NLI); batch lines: "
                                      "`text_pair`.")
    question: str | None = opt(None, "question-answering: the question.")
    context: str | None = opt(None, "question-answering: the text the answer is a span of.")
    doc_stride: int | None = opt(None, "question-answering: tokens shared by a long context's windows (default 128; "
                                       "windows are --max-length tokens, default 384).")
    max_answer_length: int | None = opt(None, "question-answering: longest answer in tokens (default 15).")
    allow_no_answer: bool = opt(False, "question-answering: the empty answer competes (models trained with "
                                       "unanswerable questions).")
    aggregation: Aggregation = opt("simple", "token-classification: simple (adjacent tokens) | first (a word takes "
                                             "its first sub-token's label).")
    pooling: Pooling = opt("mean", "feature-extraction: mean (over the attention mask, default) | cls (the first "
                                   "token).")
    normalize: bool = opt(False, "feature-extraction: unit-length vectors.")


Backend = Literal["torch", "onnxruntime"]


@config_class
class BackendArgs:
    """What runs the loaded model (generate, serve): PyTorch, or ONNX Runtime on a `llmkit export` dir."""

    PANEL: ClassVar[str] = ModelLoadArgs.PANEL
    backend: Backend = opt("torch", "What runs the model; onnxruntime takes the dir `llmkit export --format onnx` "
                                    "wrote (-m EXPORT_DIR).")

    def _backend_problems(self, problems: list[str]) -> None:
        """What the exported graph cannot do: its weights are fixed fp32, with no adapter, and it is a generator."""
        if self.backend != "onnxruntime":
            return
        given = [flag for flag, value in (("--adapter", self.adapter), ("--load-in-4bit", self.load_in_4bit),
                                          ("--load-in-8bit", self.load_in_8bit),
                                          (f"--dtype {self.dtype}", self.dtype not in ("auto", "fp32"))) if value]
        if given:
            problems.append(f"--backend onnxruntime runs the exported fp32 graph as it is: {', '.join(given)} "
                            "apply to --backend torch (merge an adapter with `llmkit merge` before exporting)")
        if self.task in ANALYSIS_TASKS:
            problems.append(f"--backend onnxruntime generates text; --task {self.task} runs on --backend torch")


@config_class
class GenerateConfig(BackendArgs, TaskHeadArgs, DecodingArgs, PromptArgs, RemoteCodeArgs, SeedArgs, ModelLoadArgs):
    """`llmkit generate`: the model (with --adapter, default: the adapter's base), what to generate from, how."""

    preset_kind: ClassVar[str] = "generate"

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.model and not self.adapter:
            problems.append("--model is required")
        self._backend_problems(problems)
        if self.task in ANALYSIS_TASKS:
            self._analysis_problems(problems)
            validate(problems)
            return
        if self.question is not None or self.context is not None:
            problems.append("--question and --context are for --task question-answering")
        modes = [flag for flag, given in (("--prompt", self.prompt is not None), ("--message", self.message is not None),
                                          ("--input", self.input is not None), ("--chat", self.chat)) if given]
        if len(modes) != 1:
            problems.append("give exactly one of --prompt, --message, --input (with --output) or --chat"
                            + (f" (got {', '.join(modes)})" if modes else ""))
        if (self.input is None) != (self.output is None):
            problems.append("--input and --output go together (batch mode)")
        if self.system is not None and self.prompt is not None:
            problems.append("--system applies to --message, --chat and `messages` lines; --prompt is sent as it is")
        if self.task == "fill-mask" and (self.message is not None or self.chat):
            problems.append("--task fill-mask takes --prompt or --input with a mask token, not --message or --chat")
        _positive(problems, "--batch-size", self.batch_size)
        self._decoding_problems(problems)
        if self.task == "fill-mask" and self.top_k is not None and self.top_k < 1:
            problems.append(f"--top-k is how many candidates fill-mask shows: at least 1 (got {self.top_k})")
        self._load_problems(problems)
        validate(problems)

    def _analysis_problems(self, problems: list[str]) -> None:
        task = self.task
        qa = task == "question-answering"
        if self.message is not None or self.chat or self.system is not None or self.chat_template is not None:
            problems.append(f"--task {task} takes " + ("--question and --context" if qa else "--prompt TEXT")
                            + " or --input; --message, --chat, --system and --chat-template are for chat models")
        if qa:
            if self.prompt is not None:
                problems.append("--task question-answering takes --question and --context, not --prompt")
            if self.input is None and (self.question is None or self.context is None):
                missing = " and ".join(f for f, v in (("--question", self.question), ("--context", self.context))
                                       if v is None)
                problems.append(f"--task question-answering needs {missing} (the answer is a span of --context), "
                                "or --input with `question` and `context` per line")
            empty = [f for f, v in (("--question", self.question), ("--context", self.context))
                     if v is not None and not v.strip()]
            if empty:
                problems.append(f"--task question-answering needs text to read: {' and '.join(empty)} "
                                f"{'is' if len(empty) == 1 else 'are'} empty")
        else:
            if self.question is not None or self.context is not None:
                problems.append(f"--question and --context are for --task question-answering, not {task}")
            if self.input is None and self.prompt is None:
                problems.append(f"--task {task} needs --prompt TEXT, or --input with a `text` per line")
            elif self.prompt is not None and not self.prompt.strip():
                problems.append(f"--task {task} needs text to read: --prompt is empty")
        if self.input is not None and (self.prompt is not None or self.question is not None):
            problems.append("give --input (batch) or a single input, not both")
        if (self.input is None) != (self.output is None):
            problems.append("--input and --output go together (batch mode)")
        if self.output is not None and self.output.endswith(".npy") and task != "feature-extraction":
            problems.append(f"--output .npy holds embeddings (--task feature-extraction); {task} writes JSONL")
        if self.text_pair is not None and task != "text-classification":
            problems.append("--text-pair is for --task text-classification")
        for flag, value, owner in (("--doc-stride", self.doc_stride, "question-answering"),
                                   ("--max-answer-length", self.max_answer_length, "question-answering"),
                                   ("--allow-no-answer", self.allow_no_answer or None, "question-answering"),
                                   ("--aggregation", None if self.aggregation == "simple" else self.aggregation,
                                    "token-classification"),
                                   ("--pooling", None if self.pooling == "mean" else self.pooling,
                                    "feature-extraction"),
                                   ("--normalize", self.normalize or None, "feature-extraction")):
            if value is not None and task != owner:
                problems.append(f"{flag} is for --task {owner}, not {task}")
        if self.top_k is not None and task in ("token-classification", "feature-extraction"):
            problems.append(f"--top-k applies to text-classification and question-answering, not {task}")
        if self.top_k is not None and self.top_k < 1:
            problems.append(f"--top-k must be at least 1 for --task {task} (got {self.top_k})")
        decoding = [flag for flag, value in (
            ("--max-new-tokens", self.max_new_tokens), ("--min-new-tokens", self.min_new_tokens),
            ("--min-length", self.min_length), ("--do-sample/--greedy", self.do_sample),
            ("--num-beams", self.num_beams), ("--num-return-sequences", self.num_return_sequences),
            ("--temperature", self.temperature), ("--top-p", self.top_p), ("--min-p", self.min_p),
            ("--typical-p", self.typical_p), ("--repetition-penalty", self.repetition_penalty),
            ("--length-penalty", self.length_penalty), ("--early-stopping", self.early_stopping),
            ("--no-repeat-ngram-size", self.no_repeat_ngram_size)) if value is not None]
        if decoding or self.stop:
            problems.append(f"{', '.join(decoding + (['--stop'] if self.stop else []))}: decoding flags do not "
                            f"apply to --task {task} (nothing is generated)")
        for flag, value in (("--batch-size", self.batch_size), ("--max-length", self.max_length),
                            ("--doc-stride", self.doc_stride), ("--max-answer-length", self.max_answer_length)):
            _positive(problems, flag, value)
        if self.doc_stride is not None and self.max_length is not None and self.doc_stride >= self.max_length:
            problems.append(f"--doc-stride {self.doc_stride} must be smaller than --max-length {self.max_length}")


@config_class
class ServerArgs:
    """Where `llmkit serve` listens, who may call it, and how much one request and the queue may hold."""

    PANEL: ClassVar[str] = "Server"
    host: str = opt("127.0.0.1", "Address to listen on (0.0.0.0: every interface; mind --api-key).")
    port: int = opt(8000, "TCP port.")
    api_key: str | None = opt(None, "Clients must send `Authorization: Bearer KEY` (default: $LLMKIT_API_KEY; "
                                    "unset: no key).")
    max_tokens: int = opt(1024, "Most new tokens one request may ask for (more: HTTP 400).")
    max_body_bytes: int = opt(1_000_000, "Largest request body in bytes (larger: HTTP 413).")
    request_timeout: float = opt(300.0, "Seconds a request may wait and generate (then HTTP 504, or the stream "
                                        "ends).")
    max_batch_size: int = opt(8, "Waiting requests generated together in one batch (1: one at a time).")
    max_queue: int = opt(64, "Requests that may wait for the model (more: HTTP 503).")
    ui: bool = opt(False, "Also serve a Gradio web demo at /ui (and / leads there): a chat for a model with a chat "
                          "template, a completion box otherwise; with an API key, it is the demo's password.")


SERVED_TASKS = ("text-generation", "summarization", "translation", "text-classification", "feature-extraction")


@config_class
class ServeConfig(ServerArgs, BackendArgs, DecodingArgs, RemoteCodeArgs, SeedArgs, ModelLoadArgs):
    """`llmkit serve`: a generation model behind an OpenAI-compatible HTTP API. Model loading and decoding are the
    blocks of generate: a request's own values (max_tokens, temperature, top_p, stop, seed) go over these. A
    classifier or an embedding model (--task, or its head) is served at /v1/classify or /v1/embeddings."""

    preset_kind: ClassVar[str] = "serve"
    chat_template: str | None = redefault(PromptArgs, "chat_template", None)
    pooling: Pooling = redefault(TaskHeadArgs, "pooling", "mean")
    normalize: bool = redefault(TaskHeadArgs, "normalize", False)

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.model and not self.adapter:
            problems.append("--model is required")
        if self.task is not None and self.task not in SERVED_TASKS:
            problems.append(f"--task {self.task}: serve runs {', '.join(SERVED_TASKS)}")
        if not 0 <= self.port <= 65535:
            problems.append(f"--port must be in 0..65535 (got {self.port})")
        for flag, value in (("--max-tokens", self.max_tokens), ("--max-body-bytes", self.max_body_bytes),
                            ("--request-timeout", self.request_timeout), ("--max-batch-size", self.max_batch_size),
                            ("--max-queue", self.max_queue)):
            _positive(problems, flag, value)
        if self.max_new_tokens is not None and self.max_new_tokens > self.max_tokens:
            problems.append(f"--max-new-tokens {self.max_new_tokens} is more than --max-tokens {self.max_tokens} "
                            "(the most a request may ask for)")
        self._decoding_problems(problems)
        self._load_problems(problems)
        self._backend_problems(problems)
        validate(problems)


ExplainMethod = Literal["absmax-int8", "vector-int8", "llm-int8", "nf4", "fp4"]


@config_class
class QuantizeExplainConfig:
    preset_kind: ClassVar[str] = "quantize"
    method: ExplainMethod = opt("nf4", "The quantization shown step by step.")
    values: tuple[float, ...] = opt((), "Comma-separated numbers.", parse=_comma("--values", float))
    shape: tuple[int, ...] = opt((), "ROWS,COLS for vector-int8 and llm-int8 (default: one row).",
                                 parse=_comma("--shape", int))
    blocksize: int = opt(64, "Values per absmax block (nf4, fp4).")
    double_quant: bool = opt(False, "Quantize the block absmax values too (nf4, fp4).")
    threshold: float = opt(6.0, "LLM.int8 outlier threshold (|x| at or above it stays 16-bit).")

    def __post_init__(self) -> None:
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


COMPARE_METHODS = ("int8", "nf4", "fp4", "nf4+dq")


@config_class
class QuantEvalArgs(RemoteCodeArgs, TextFieldArgs, ModelDeviceArgs):
    """What `quantize model` and `quantize compare` share: the model, the 4-bit layout, the perplexity check."""

    blocksize: int | None = opt(None, "Values per absmax block for nf4/fp4: 64 (default), 128, …, 4096.")
    compute_dtype: Dtype = opt("auto", "The 4-bit matmul dtype (default auto: bf16 on a CUDA GPU that has it, else "
                                       "fp32).")
    eval_data: str | None = opt(None, "Perplexity text: a .jsonl/.json/.csv/.parquet/.txt file or dataset dir "
                                      "(default: held-out topics of the embedded corpus).")
    eval_tokens: int = opt(4096, "Use at most this many tokens of eval text.")
    seq_len: int | None = opt(None, "Tokens per perplexity window (default: min(context, 512)).")
    skip_modules: tuple[str, ...] = opt((), "Comma-separated layer names kept in full precision (the output head "
                                            "always is).", parse=_comma("--skip-modules"))
    threshold: float = opt(6.0, "LLM.int8 outlier threshold: input features with |x| >= it stay 16-bit.")

    def _quant_problems(self, problems: list[str]) -> None:
        if not self.model:
            problems.append("--model is required: a model dir or hub id")
        if self.blocksize is not None and self.blocksize not in SUPPORTED_4BIT_BLOCKSIZES:
            problems.append(f"--blocksize {self.blocksize} is not supported by bitsandbytes for 4-bit; choose one of "
                            f"{', '.join(map(str, SUPPORTED_4BIT_BLOCKSIZES))}")
        _positive(problems, "--eval-tokens", self.eval_tokens)
        _positive(problems, "--seq-len", self.seq_len)
        _positive(problems, "--threshold", self.threshold)
        if self.seq_len is not None and self.seq_len < 2:
            problems.append(f"--seq-len must be at least 2 (got {self.seq_len}): perplexity needs a next token")

    @property
    def block(self) -> int:
        return self.blocksize or 64


@config_class
class QuantizeModelConfig(OutputArgs, QuantEvalArgs):
    preset_kind: ClassVar[str] = "quantize"
    method: QuantMethod = opt("nf4", "The quantization.")
    double_quant: bool = opt(False, "Quantize the 4-bit block constants too (4.127 bits at block 64).",
                             negatable=True)

    def __post_init__(self) -> None:
        problems: list[str] = []
        self._quant_problems(problems)
        self._output_problems(problems)
        if self.method == "int8" and self.blocksize is not None:
            problems.append("--blocksize applies to nf4 and fp4; int8 scales each output row (no blocks)")
        if self.method == "int8" and self.double_quant:
            problems.append("--double-quant applies to nf4 and fp4 (their block constants), not int8")
        validate(problems)


@config_class
class QuantizeCompareConfig(QuantEvalArgs):
    preset_kind: ClassVar[str] = "quantize"
    methods: tuple[str, ...] = opt(COMPARE_METHODS, "Comma-separated: int8, nf4, fp4, nf4+dq, fp4+dq (nf4+dq: nf4 "
                                                    "with double quantization).", parse=_comma("--methods"))

    def __post_init__(self) -> None:
        problems: list[str] = []
        self._quant_problems(problems)
        unknown = [m for m in self.methods if m not in COMPARE_METHODS + ("fp4+dq",)]
        if unknown:
            problems.append(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(COMPARE_METHODS)}, fp4+dq")
        if not self.methods:
            problems.append("--methods must name at least one method")
        validate(problems)


_SHARD_SIZE = re.compile(r"[0-9]+(GiB|MiB|KiB|GB|MB|KB)", re.IGNORECASE)   # transformers' convert_file_size_to_int
MergeStrategy = Literal["dequantize", "original", "requantize"]
# Default --tolerance (max |Δlogit| relative to the largest |logit|) by the dtype the merged model is saved in.
MERGE_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}


@config_class
class MergeSourceArgs:
    """What merge folds together (first in --print-config: what the merged model is made of)."""

    adapter: str = opt("", "The PEFT adapter dir (LoRA or IA3; from `llmkit peft` or peft).", short="-a",
                       source="adapter")
    base: str | None = opt(None, "The base model: dir or hub id (default: the one the adapter records).", short="-m",
                           source="model")


@config_class
class MergeConfig(RemoteCodeArgs, OutputArgs, MergeSourceArgs):
    preset_kind: ClassVar[str] = "merge"
    dtype: Dtype = opt("auto", "Dtype of the saved weights (default auto: the base's).")
    strategy: MergeStrategy | None = opt(None, "For adapters trained on a 4-bit/8-bit base (default dequantize).")
    verify: bool = opt(True, "Check the merged model against base + adapter on probe prompts (on by default).",
                       negatable=True)
    tolerance: float | None = opt(None, "Largest allowed max |Δlogit| / max |logit| (default: 1e-4 fp32, 1e-2 fp16, "
                                        "5e-2 bf16).")
    probes: tuple[str, ...] = opt((), "A verification prompt (repeatable; default: four built-in sentences).",
                                  flag="--probe", repeatable=True)
    max_shard_size: str = opt("2GB", "Largest safetensors shard.")

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.adapter:
            problems.append("--adapter is required: a PEFT adapter dir")
        self._output_problems(problems)
        if self.tolerance is not None and not self.tolerance >= 0:
            problems.append(f"--tolerance must be 0 or more (got {self.tolerance})")
        if any(not p.strip() for p in self.probes):
            problems.append("--probe must not be empty")
        if not _SHARD_SIZE.fullmatch(str(self.max_shard_size)) or not int(re.sub(r"\D", "", str(self.max_shard_size))):
            problems.append(f"--max-shard-size {self.max_shard_size!r} is not a size save_pretrained takes: a whole "
                            "number and a unit, e.g. 2GB, 500MB, 4GiB")
        validate(problems)


# ----------------------------------------------------------------------------------------------------- export

ExportFormat = Literal["onnx"]


@config_class
class ExportSourceArgs:
    """What export reads (first in --help and --print-config)."""

    model: str = redefault(ModelDeviceArgs, "model", "")


@config_class
class ExportConfig(RemoteCodeArgs, OutputArgs, ExportSourceArgs):
    preset_kind: ClassVar[str] = "export"
    format: ExportFormat = opt("onnx", "The runtime format to export to.")
    opset: int = opt(17, "The ONNX opset the graph is written in.")
    atol: float = opt(1e-4, "Largest allowed max |Δlogit| between ONNX Runtime and PyTorch; over it, the export fails "
                            "and nothing is written.")

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.model:
            problems.append("--model is required: a model dir or hub id")
        self._output_problems(problems)
        if not 7 <= self.opset <= 20:   # the opsets torch's TorchScript exporter writes (torch.onnx._constants)
            problems.append(f"--opset must be from 7 to 20 (got {self.opset})")
        if not self.atol >= 0:
            problems.append(f"--atol must be 0 or more (got {self.atol})")
        validate(problems)


# ------------------------------------------------------------------------------------------------------- eval

# each metric and the model tasks (generate --task names) it fits; the first that fits a model is its default
EVAL_METRICS = {"perplexity": ("text-generation",), "accuracy": ("text-classification",),
                "entity-f1": ("token-classification",), "squad": ("question-answering",),
                "rouge": ("summarization", "translation", "text-generation"),
                "bleu": ("translation", "summarization", "text-generation"),
                "chrf": ("translation", "summarization", "text-generation"),
                "exact-match": ("text-generation", "summarization", "translation")}
GENERATION_METRICS = ("rouge", "bleu", "chrf", "exact-match")


@config_class
class EvalConfig(DecodingArgs, RemoteCodeArgs, SeedArgs, TextFieldArgs, ModelLoadArgs):
    """`llmkit eval`: one model (or two, --compare A B) on a dataset. Its model loading and decoding blocks are
    those of generate, so the model is loaded, and generates, exactly as `llmkit generate` would."""

    PANEL: ClassVar[str] = "What is evaluated"
    preset_kind: ClassVar[str] = "eval"
    models: tuple[str, ...] = opt((), "--compare: the two models (dirs, hub ids, or adapter dirs).", positional=True,
                                  source="model")
    compare: bool = opt(False, "Evaluate the two models given as arguments side by side, with the deltas.")
    data: str = opt("", "Evaluation data: jsonl, json, csv, parquet, txt, a directory, a `llmkit tokenize dataset` "
                        "dir or a hub dataset (NAME[:CONFIG[:SPLIT]]).", source="data")
    metric: tuple[str, ...] = opt((), f"Comma-separated: {', '.join(EVAL_METRICS)} (default: perplexity for a "
                                      "causal LM, the head's metrics for a classifier, NER or QA model, rouge for "
                                      "an encoder-decoder).", parse=_comma("--metric"))
    limit: int | None = opt(None, "Evaluate only the first N documents or rows.")
    batch_size: int = opt(8, "Windows, rows or prompts per forward pass.", short="-b")
    harness: tuple[str, ...] = opt((), "Comma-separated lm-eval harness tasks run on the same loaded model (needs "
                                       "lm-eval).", parse=_comma("--harness"))
    seq_len: int | None = opt(None, "perplexity: tokens per window (default: the model's context, at most 1024); "
                                    "task heads: the longest input (default 512, as sft).")
    stride: int | None = opt(None, "perplexity: a sliding window that moves this many tokens, so every token is "
                                   "scored once with up to --seq-len minus --stride tokens of context (default: "
                                   "packed --seq-len blocks, as pretrain --pack).")
    chat_template: str | None = redefault(PromptArgs, "chat_template", None)
    system: str | None = opt(None, "Generation metrics: a system message for models with a chat template.")
    prompt_field: str = redefault(SFTConfig, "prompt_field", "prompt")
    completion_field: str = opt("completion", "Generation metrics: the reference column.")
    text_pair_field: str | None = redefault(SFTConfig, "text_pair_field", None)
    label_field: str = redefault(SFTConfig, "label_field", "label")
    tokens_field: str = redefault(SFTConfig, "tokens_field", "tokens")
    tags_field: str = redefault(SFTConfig, "tags_field", "tags")
    label_all_subtokens: bool = redefault(SFTConfig, "label_all_subtokens", False)
    question_field: str = redefault(SFTConfig, "question_field", "question")
    context_field: str = redefault(SFTConfig, "context_field", "context")
    answers_field: str = redefault(SFTConfig, "answers_field", "answers")
    doc_stride: int | None = redefault(SFTConfig, "doc_stride", None)
    max_answer_length: int = redefault(SFTConfig, "max_answer_length", 30)

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.compare:
            if len(self.models) != 2:
                problems.append(f"--compare takes two models: llmkit eval --compare A B (got {len(self.models)})")
            if self.model or self.adapter:
                problems.append("--compare names both models as arguments: drop -m/--model and --adapter")
        elif self.models:
            problems.append(f"unexpected argument(s) {' '.join(self.models)}: give the model with -m, or two "
                            "models with --compare A B")
        elif not self.model and not self.adapter:
            problems.append("--model is required")
        if not self.data and not self.harness:
            problems.append("--data is required (or --harness TASKS)")
        unknown = [m for m in self.metric if m not in EVAL_METRICS]
        if unknown:
            problems.append(f"--metric: unknown {', '.join(unknown)}; choose from {', '.join(EVAL_METRICS)}")
        for flag, value in (("--batch-size", self.batch_size), ("--limit", self.limit), ("--stride", self.stride),
                            ("--doc-stride", self.doc_stride), ("--max-answer-length", self.max_answer_length)):
            _positive(problems, flag, value)
        if self.seq_len is not None and self.seq_len < 2:
            problems.append(f"--seq-len must be at least 2 (got {self.seq_len}): perplexity needs a next token")
        if self.stride is not None and self.seq_len is not None and self.stride > self.seq_len:
            problems.append(f"--stride {self.stride} is more than --seq-len {self.seq_len}: tokens between the "
                            "windows would never be scored")
        self._decoding_problems(problems)
        self._load_problems(problems)
        validate(problems)


OffloadDevice = Literal["cpu", "nvme"]


NODES_PANEL = "Processes and nodes"
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.\-]{0,252})|\[?[0-9A-Fa-f:.]+\]?")   # a host name, IPv4 or IPv6


@config_class
class LaunchConfig:
    """`llmkit launch`: run a training command on several processes/nodes (accelerate, DeepSpeed)."""

    preset_kind: ClassVar[str] = "launch"
    PANEL: ClassVar[str] = "Strategy"
    strategy: LaunchStrategy = opt("ddp", "How the processes share the work (auto: the cheapest that fits "
                                          "--gpu-memory).")
    num_processes: int | None = opt(None, "Processes per node (default: the visible GPUs, or 2 with --cpu).",
                                    panel=NODES_PANEL)
    nodes: int = opt(1, "Nodes (machines) in the job.", panel=NODES_PANEL)
    node_rank: int = opt(0, "This node's rank, 0..nodes-1.", panel=NODES_PANEL)
    main_ip: str | None = opt(None, "Node 0's address, which every node connects to (needed with --nodes > 1).",
                              panel=NODES_PANEL)
    main_port: int | None = opt(None, "Node 0's port (default 29500; one node: a free one if that is taken).",
                                panel=NODES_PANEL)
    hostfile: str | None = opt(None, "`host slots=N` per line: the nodes, the main address (the first host) and the "
                                     "processes per node.", panel=NODES_PANEL)
    mixed_precision: MixedPrecision | None = opt(None, "Autocast (default: the training command's own; fp16 needs "
                                                       "GPUs).")
    offload_device: OffloadDevice | None = opt(None, "Where the *-offload strategies put optimizer state (and "
                                                     "parameters) (default cpu).")
    nvme_path: str | None = opt(None, "A directory on a local NVMe disk, for --offload-device nvme.")
    cpu: bool = opt(False, "Processes on CPUs with gloo: for machines without GPUs, and for tests.", panel=NODES_PANEL)
    gpu_memory: str | None = opt(None, "One GPU's memory (with --cpu: one process's budget), e.g. 80GiB: --strategy "
                                       "auto chooses the cheapest strategy that fits it.")
    threads_per_process: int | None = opt(None, "OMP_NUM_THREADS of every process (default with --cpu: cores // "
                                                "processes).", panel=NODES_PANEL)
    timeout: float = opt(120.0, "Seconds a node other than 0 waits for node 0's address.", panel=NODES_PANEL)
    write_config: str | None = opt(None, "Write the accelerate config, the DeepSpeed JSON and (several nodes) a "
                                         "hostfile, one command per node and a SLURM script into DIR, and exit.")
    dry_run: bool = opt(False, "Print the exact command(s) and the per-rank memory, and exit.")
    overwrite: bool = opt(False, "Let --write-config write into a non-empty directory.")
    check_sources: bool = opt(True, "Check the training command's model, tokenizer, adapter and data (local paths "
                                    "exist, hub ids cached or reachable) before planning or starting; "
                                    "--no-check-sources when they exist only on the nodes.",
                              negatable=True)

    def __post_init__(self) -> None:
        problems: list[str] = []
        for flag, value in (("--num-processes", self.num_processes), ("--nodes", self.nodes),
                            ("--threads-per-process", self.threads_per_process), ("--timeout", self.timeout)):
            _positive(problems, flag, value)
        if self.node_rank is not None and self.node_rank < 0:
            problems.append(f"--node-rank must be 0 or more (got {self.node_rank})")
        if self.main_ip is not None and not _HOST.fullmatch(self.main_ip):
            problems.append(f"--main-ip {self.main_ip!r} is not a host name or IP address (it is written into "
                            "configs and command lines)")
        if self.main_port is not None and not 1 <= self.main_port <= 65535:
            problems.append(f"--main-port must be a TCP port, 1-65535 (got {self.main_port})")
        if self.gpu_memory is not None:
            try:
                parse_size(self.gpu_memory, "--gpu-memory")
            except ConfigError as exc:
                problems.append(exc.message)
        validate(problems)
