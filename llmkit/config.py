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


# ------------------------------------------------------------------ training: blocks shared by pretrain, sft, peft

Objective = Literal["causal-lm", "masked-lm", "seq2seq", "prefix-lm"]
TrainOptimizer = Literal["adamw", "adamw-8bit", "paged-adamw-8bit", "adafactor", "sgd"]
Scheduler = Literal["linear", "cosine", "constant", "constant-with-warmup"]
ReportTo = Literal["none", "tensorboard"]


@dataclass(frozen=True)
class ModelArgs:
    model: str = ""                  # a local dir or hub id (continued training), a model preset or config.json
    tokenizer: str | None = None     # default: the model dir's own tokenizer (required with --from-scratch)
    from_scratch: bool = False       # random initialisation from the architecture of --model
    trust_remote_code: bool = False

    def _model_problems(self, problems: list[str]) -> None:
        if not self.model:
            problems.append("--model is required (a model dir, a hub id, or a preset/config.json with "
                            "--from-scratch)")
        if self.from_scratch and not self.tokenizer:
            problems.append("--from-scratch needs --tokenizer (a random model has no tokenizer of its own)")


@dataclass(frozen=True)
class DataArgs:
    data: str = ""                   # jsonl, json, csv, parquet, txt, a `llmkit tokenize dataset` dir, a hub name
    text_field: str = "text"
    eval_data: str | None = None     # a separate evaluation set
    eval_split: float | None = None  # hold out this share (0-1) or this many documents (>= 1) of --data for eval
    seq_len: int = 512               # tokens per training row
    pack: bool = False               # concatenate documents (eos between) into --seq-len blocks; attention crosses
    padding_free: bool = False       # pack, but each document attends only to itself (position ids restart)

    def _data_problems(self, problems: list[str]) -> None:
        if not self.data:
            problems.append("--data is required")
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


@dataclass(frozen=True)
class OptimArgs:
    batch_size: int = 8              # sequences per micro-batch (per device)
    grad_accum: int = 1              # micro-batches per optimizer step
    lr: float = 3e-4                 # peak learning rate
    epochs: float = 1.0              # passes over the data (ignored when --max-steps is given)
    max_steps: int | None = None     # optimizer steps; overrides --epochs
    warmup_ratio: float = 0.0        # share of the steps spent warming up
    scheduler: Scheduler = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0       # gradient clipping; 0 turns it off
    optimizer: TrainOptimizer = "adamw"

    def _optim_problems(self, problems: list[str]) -> None:
        for flag, value in (("--batch-size", self.batch_size), ("--grad-accum", self.grad_accum), ("--lr", self.lr),
                            ("--epochs", self.epochs), ("--max-steps", self.max_steps)):
            _positive(problems, flag, value)
        if self.warmup_ratio is not None and not 0 <= self.warmup_ratio < 1:
            problems.append(f"--warmup-ratio must be in [0, 1) (got {self.warmup_ratio})")
        if self.weight_decay is not None and self.weight_decay < 0:
            problems.append(f"--weight-decay must not be negative (got {self.weight_decay})")
        if self.max_grad_norm is not None and self.max_grad_norm < 0:
            problems.append(f"--max-grad-norm must not be negative (got {self.max_grad_norm})")


@dataclass(frozen=True)
class TrainArgs:
    mixed_precision: MixedPrecision = "no"  # autocast over fp32 weights (fp16 needs a GPU)
    grad_checkpointing: bool = False   # recompute activations in backward: less memory, ~30 % more compute
    freeze_base: bool = False          # train only the output head
    trainable_layers: int | None = None  # train only the last N blocks (and the head and final norm)
    eval_steps: int | None = None      # evaluate every N steps (default: before and after training only)
    save_steps: int = 500              # checkpoint every N steps
    save_total_limit: int | None = 2   # keep this many checkpoints (None: all)
    logging_steps: int = 10            # a metrics.jsonl row and a progress line every N steps
    seed: int = 0
    output_dir: str = ""               # the run directory
    overwrite: bool = False            # replace a non-empty --output-dir
    resume: str | None = None          # "auto" (the last checkpoint in --output-dir) or a checkpoint dir
    report_to: ReportTo = "none"
    deepspeed: str | None = None       # a DeepSpeed JSON config, passed to the Trainer as is

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


@dataclass(frozen=True)
class PretrainConfig(TrainArgs, OptimArgs, DataArgs, ModelArgs):
    preset_kind: ClassVar[str] = "pretrain"
    objective: Objective = "causal-lm"
    mlm_probability: float = 0.15      # masked-lm: share of tokens chosen for prediction
    mask_replace_prob: float = 0.8     # masked-lm: of the chosen, replaced by the mask token
    random_replace_prob: float = 0.1   # masked-lm: of the chosen, replaced by a random token (the rest unchanged)
    whole_word_masking: bool = False   # masked-lm: choose whole words, not single tokens
    noise_density: float = 0.15        # seq2seq: share of tokens corrupted (T5 span corruption)
    mean_span_length: float = 3.0      # seq2seq: mean corrupted span, tokens

    def __post_init__(self) -> None:
        problems: list[str] = []
        self._model_problems(problems)
        self._data_problems(problems)
        self._optim_problems(problems)
        self._train_problems(problems)
        if (self.pack or self.padding_free) and self.objective in ("seq2seq", "prefix-lm"):
            problems.append(f"--pack/--padding-free apply to causal-lm and masked-lm, not {self.objective}")
        if self.padding_free and self.objective != "causal-lm":
            problems.append("--padding-free (position ids restart per document) is for --objective causal-lm")
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
        validate(problems)

    @property
    def task(self) -> str:
        """The transformers Auto class family the objective trains."""
        return {"causal-lm": "causal-lm", "prefix-lm": "causal-lm", "masked-lm": "masked-lm",
                "seq2seq": "seq2seq"}[self.objective]


SFTFormat = Literal["auto", "alpaca", "messages", "sharegpt", "prompt-completion"]
MultiTurn = Literal["all", "last", "expand"]


@dataclass(frozen=True)
class SFTConfig(TrainArgs, OptimArgs, DataArgs, ModelArgs):
    """`llmkit sft`: loss only on the assistant replies (and their end-of-turn token) unless --train-on-prompt."""

    preset_kind: ClassVar[str] = "sft"
    objective: ClassVar[str] = "causal-lm"
    lr: float = 2e-5                   # peak learning rate (fine-tuning: lower than pretraining)
    format: SFTFormat = "auto"         # detected from the columns when auto
    template: str | None = None        # a built-in chat template (chatml, plain); default: the tokenizer's own
    chat_template: str | None = None   # a Jinja file; overrides --template and the tokenizer's template
    multi_turn: MultiTurn = "all"      # all: every reply in one pass; last: only the final one; expand: one per reply
    train_on_prompt: bool = False      # loss on every token (masking off)
    messages_field: str | None = None  # default: messages, then conversations
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    instruction_field: str = "instruction"
    input_field: str = "input"
    output_field: str = "output"
    system_field: str = "system"
    preview: int | None = None         # show N encoded examples and exit (nothing is trained)
    check: bool = False                # lint data, template and tokenizer, then exit

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
        validate(problems)

    @property
    def task(self) -> str:
        return "causal-lm"


GenerateTask = Literal["text-generation", "summarization", "translation", "fill-mask"]
GenerateDtype = Literal["auto", "fp32", "fp16", "bf16"]
GenerateDevice = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class GenerateConfig:
    """`llmkit generate`. Decoding values left at None come from the model's generation_config (transformers'
    defaults where it has none); `max_new_tokens` falls back to DEFAULT_MAX_NEW_TOKENS."""

    preset_kind: ClassVar[str] = "generate"
    DEFAULT_MAX_NEW_TOKENS: ClassVar[int] = 128
    model: str = ""                    # a model dir or hub id; with --adapter, default: the adapter's base
    adapter: str | None = None         # a PEFT adapter dir trained on --model
    task: GenerateTask | None = None   # default: inferred from the model's architecture
    prompt: str | None = None          # completion: the text as it is
    message: str | None = None         # one user turn through the chat template
    system: str | None = None          # system message for --message, --chat and `messages` lines
    chat_template: str | None = None   # a Jinja file; default: the tokenizer's own
    input: str | None = None           # batch: JSONL with `prompt` or `messages` per line
    output: str | None = None          # batch: JSONL results, appended (resumable)
    chat: bool = False
    batch_size: int = 8                # prompts per forward pass in batch mode
    max_new_tokens: int | None = None  # tokens generated, prompt excluded
    min_new_tokens: int | None = None
    max_length: int | None = None      # prompt + generated tokens
    min_length: int | None = None
    do_sample: bool | None = None      # --do-sample / --greedy
    num_beams: int | None = None
    num_return_sequences: int | None = None
    length_penalty: float | None = None
    early_stopping: bool | None = None
    no_repeat_ngram_size: int | None = None
    temperature: float | None = None
    top_k: int | None = None           # 0 turns top-k filtering off
    top_p: float | None = None         # in (0, 1]
    min_p: float | None = None         # in [0, 1]
    typical_p: float | None = None     # in (0, 1]
    repetition_penalty: float | None = None  # > 0; 1.0 = none
    seed: int | None = None
    stop: tuple[str, ...] = ()         # stop strings: the output is cut before the first one
    dtype: GenerateDtype = "auto"      # auto = the checkpoint's dtype
    device: GenerateDevice = "auto"    # auto = cuda when available
    load_in_8bit: bool = False
    load_in_4bit: bool = False
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.model and not self.adapter:
            problems.append("--model is required")
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
        for flag, value in (("--batch-size", self.batch_size), ("--max-new-tokens", self.max_new_tokens),
                            ("--max-length", self.max_length), ("--num-beams", self.num_beams),
                            ("--num-return-sequences", self.num_return_sequences),
                            ("--no-repeat-ngram-size", self.no_repeat_ngram_size),
                            ("--repetition-penalty", self.repetition_penalty)):
            _positive(problems, flag, value)
        for flag, value in (("--min-new-tokens", self.min_new_tokens), ("--min-length", self.min_length)):
            if value is not None and value < 0:
                problems.append(f"{flag} must be 0 or more (got {value})")
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
        if self.load_in_8bit and self.load_in_4bit:
            problems.append("give one of --load-in-8bit and --load-in-4bit")
        validate(problems)


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
