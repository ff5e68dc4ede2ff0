"""`quantize model` and `quantize compare`: bitsandbytes through transformers, measured.

Heavy module (torch, transformers, bitsandbytes at the top): reached only from inside a command body.

What is measured, per method:
* sizes before and after, on disk (the weight files) and in memory (parameters and buffers);
* bits per parameter of the quantized linears: the theory (codes + constants per value), what the quantized
  tensors hold (`achieved`) and what the saved file holds for them (`on_disk`: also the per-layer lookup tables and
  the serialized quant state);
* per-layer reconstruction error of the quantized linears: ‖W − Ŵ‖_F / ‖W‖_F and max |W − Ŵ|, Ŵ dequantized with
  bitsandbytes.functional;
* for int8, the LLM.int8 outlier statistics: input features whose |x| reaches the threshold on the eval text
  (those columns go through a 16-bit matmul);
* perplexity on an eval text before and after.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from llmkit.config import QuantizeCompareConfig, QuantizeModelConfig
from llmkit.errors import ConfigError, LlmkitError, ModelLoadError
from llmkit.runtime import free_memory, quiet_quantization
from llmkit.ui import Reporter, SilentReporter

WEIGHT_SUFFIXES = (".safetensors", ".bin")
DEFAULT_BLOCKSIZE = 64


# --------------------------------------------------------------------------------------------------- results

@dataclass
class LayerError:
    name: str
    shape: list[int]
    rel_frobenius: float   # ‖W − Ŵ‖_F / ‖W‖_F
    max_abs: float         # max |W − Ŵ|


@dataclass
class OutlierLayer:
    name: str
    columns: int                # input features of the layer
    outlier_columns: int        # features with any |x| >= threshold on the eval text
    outlier_share: float        # outlier_columns / columns
    max_abs_input: float


@dataclass
class QuantizeReport:
    """One method on one model: the numbers `quantize model` prints and `quantize compare` puts side by side."""

    method: str                      # int8 | nf4 | fp4
    double_quant: bool
    blocksize: int | None            # None for int8
    compute_dtype: str
    quantized_layers: int
    params_total: int
    params_quantized: int            # weights of the quantized linears
    size: dict                       # disk_before, disk_after, memory_before, memory_after (bytes), *_ratio
    bits_per_param: dict             # theory, achieved, on_disk (quantized linears); model (whole model, on disk)
    error: dict                      # mean_rel_frobenius, max_rel_frobenius, max_abs
    layers: list[LayerError]
    perplexity: dict                 # before, after, change, change_pct, tokens
    outliers: dict | None            # int8: threshold, outlier_columns, columns, share, layers
    reload: dict                     # quantized (bool), layers, max_abs_logit_diff
    seconds: float                   # quantize (load + quantize) time


@dataclass
class QuantizeModelResult:
    model: str
    output_dir: str
    eval_source: str
    skipped_modules: list[str]       # linear layers kept in full precision
    report: QuantizeReport
    seconds: float                   # the whole command


@dataclass
class QuantizeCompareResult:
    model: str
    eval_source: str
    skipped_modules: list[str]
    perplexity_before: float
    eval_tokens: int
    reports: list[QuantizeReport] = field(default_factory=list)
    seconds: float = 0.0


# --------------------------------------------------------------------------------------------------- entry points

def quantize_model(cfg: QuantizeModelConfig, reporter: Reporter | None = None) -> QuantizeModelResult:
    """Quantize `cfg.model`, measure it, save it to `cfg.output_dir` (whole or not at all) and check the reload."""
    from llmkit.outputs import atomic_output_dir, check_output_dir

    reporter = reporter or SilentReporter()
    started = time.perf_counter()
    check_output_dir(cfg.output_dir, cfg.overwrite)
    spec = QuantSpec(cfg.method, cfg.double_quant, cfg.block if cfg.method != "int8" else None,
                     resolve_compute_dtype(cfg.compute_dtype, resolve_device(cfg.device)))
    source = prepare_source(cfg.model, cfg, reporter, [spec])
    with atomic_output_dir(cfg.output_dir, cfg.overwrite) as scratch:
        report = run_method(source, spec, scratch, reporter)
        source.close()
        source.tokenizer.save_pretrained(scratch)
        (scratch / "llmkit_quantize.json").write_text(json.dumps(
            {"source_model": cfg.model, "method": spec.method, "double_quant": spec.double_quant,
             "blocksize": spec.blocksize, "compute_dtype": spec.compute_dtype,
             "skipped_modules": source.skipped, "perplexity": report.perplexity}, indent=2) + "\n", encoding="utf-8")
    return QuantizeModelResult(model=cfg.model, output_dir=str(Path(cfg.output_dir).expanduser()),
                               eval_source=source.eval_source, skipped_modules=source.skipped, report=report,
                               seconds=round(time.perf_counter() - started, 3))


def compare_methods(cfg: QuantizeCompareConfig, reporter: Reporter | None = None) -> QuantizeCompareResult:
    """The quantize report for each method on the same model and eval text (nothing is kept on disk)."""
    reporter = reporter or SilentReporter()
    started = time.perf_counter()
    specs = []
    for name in cfg.methods:
        method, _, dq = name.partition("+")
        specs.append(QuantSpec(method, bool(dq), cfg.block if method != "int8" else None,
                               resolve_compute_dtype(cfg.compute_dtype, resolve_device(cfg.device))))
    source = prepare_source(cfg.model, cfg, reporter, specs)
    result = QuantizeCompareResult(model=cfg.model, eval_source=source.eval_source, skipped_modules=source.skipped,
                                   perplexity_before=source.ppl_before, eval_tokens=source.eval_tokens)
    for spec in specs:
        with tempfile.TemporaryDirectory(prefix="llmkit-quantize-compare-") as tmp:
            result.reports.append(run_method(source, spec, Path(tmp), reporter))
    source.close()
    result.seconds = round(time.perf_counter() - started, 3)
    return result


# --------------------------------------------------------------------------------------------------- the source

@dataclass
class QuantSpec:
    method: str                # int8 | nf4 | fp4
    double_quant: bool
    blocksize: int | None
    compute_dtype: str         # fp32 | bf16 | fp16

    @property
    def label(self) -> str:
        return self.method + ("+dq" if self.double_quant else "")


def resolve_compute_dtype(name: str, device: str) -> str:
    if name != "auto":
        return name
    return "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def resolve_device(name: str) -> str:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available", hint="use --device cpu (bitsandbytes runs "
                          "4-bit and 8-bit on CPU too)")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


class Source:
    """The full-precision model, its tokenizer, eval tokens, the linears to quantize and the numbers before."""

    def __init__(self, name: str, cfg, reporter: Reporter, specs: list[QuantSpec]) -> None:
        from llmkit.modeling import check_model_source, load_model, load_tokenizer

        self.name = name
        self.cfg = cfg
        self.reporter = reporter
        self.device = resolve_device(cfg.device)
        check_model_source(name)
        refuse_quantized(name, cfg.trust_remote_code)
        # Everything that can be refused is refused on a weightless (meta) copy, before any loading.
        skeleton = meta_model(name, cfg.trust_remote_code)
        refuse_task_heads(name, skeleton.config)
        self.skip = skip_modules(skeleton, cfg.skip_modules)
        shapes = {n: tuple(weight_matrix(m).shape) for n, m in quantizable_linears(skeleton, self.skip).items()}
        if not shapes:
            raise ConfigError(f"{name} has no linear layers to quantize"
                              + (f" (skipped: {', '.join(cfg.skip_modules)})" if cfg.skip_modules else ""),
                              hint="bitsandbytes quantizes nn.Linear layers (and GPT-2's Conv1D); the output head "
                                   "and --skip-modules stay in full precision")
        for spec in specs:
            check_blocksize(spec, shapes, self.device)
        self.skipped = sorted(n for n, m in skeleton.named_modules() if _is_linear(m) and n not in shapes)
        del skeleton
        self.tokenizer = load_tokenizer(name, trust_remote_code=cfg.trust_remote_code)
        reporter.info(f"Loading {name} …")
        # fp32 on CPU (it has no fast bf16/fp16 math); the checkpoint's dtype on a GPU.
        with quiet_quantization():
            self.model = load_model(name, dtype="fp32" if self.device == "cpu" else None, device=self.device,
                                    trust_remote_code=cfg.trust_remote_code).eval()
        self.targets = quantizable_linears(self.model, self.skip)
        # The original weights, for the errors and a non-default blocksize: views into the model, not copies, so the
        # peak is this model plus one quantized model.
        self.weights = {n: weight_matrix(m).detach() for n, m in self.targets.items()}
        self.params_total = sum(p.numel() for p in self.model.parameters())
        self.memory_before = memory_bytes(self.model)
        self.disk_before = weight_file_bytes(name)
        self.eval_source, self.eval_ids = eval_tokens(cfg, self.tokenizer)
        self.eval_tokens = int(self.eval_ids.numel())
        self.seq_len = window(cfg.seq_len, self.model)
        self.probe = self.eval_ids[: min(32, self.eval_tokens)].unsqueeze(0)
        with outlier_hooks(self.model, self.targets, cfg.threshold) as self.outlier_stats:
            reporter.info(f"Perplexity before, on {self.eval_tokens} tokens of {self.eval_source} …")
            self.ppl_before = perplexity(self.model, self.eval_ids, self.seq_len)

    def close(self) -> None:
        self.weights.clear()
        self.targets.clear()
        del self.model
        free_memory()


def check_blocksize(spec: QuantSpec, shapes: dict, device: str) -> None:
    """bitsandbytes' CPU 4-bit kernels compute wrong results for a layer whose input size is not a multiple of the
    blocksize (0.50, checked against the reference quantizer): refuse instead of saving a broken model."""
    if spec.method == "int8" or device != "cpu":
        return
    bad = [(n, shape[1]) for n, shape in shapes.items() if shape[1] % spec.blocksize]
    if bad:
        shown = ", ".join(f"{n} ({cols} inputs)" for n, cols in bad[:3]) + (" …" if len(bad) > 3 else "")
        divisors = [b for b in (64, 128, 256) if all(shape[1] % b == 0 for shape in shapes.values())]
        raise ConfigError(
            f"--blocksize {spec.blocksize} is not supported by bitsandbytes on CPU for {len(bad)} layer(s) whose "
            f"input size is not a multiple of it: {shown}",
            hint=(f"use --blocksize {divisors[-1]}" if divisors else
                  "keep those layers in full precision with --skip-modules") + ", or quantize on a CUDA GPU")


def meta_model(name: str, trust_remote_code: bool = False, task: str = "causal-lm", **config_fields):
    """The model's modules without weights (meta device): names and shapes for checks before loading."""
    import transformers

    from llmkit.modeling import AUTO_CLASSES

    config = transformers.AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code, **config_fields)
    with torch.device("meta"):
        try:
            return getattr(transformers, AUTO_CLASSES[task]).from_config(config, trust_remote_code=trust_remote_code)
        except ValueError as exc:
            raise ConfigError(f"{name} cannot be loaded as a {task} model: {str(exc).splitlines()[0]}",
                              hint="quantize works on causal LMs; merge on the task the adapter was trained "
                                   "for") from None


def prepare_source(name: str, cfg, reporter: Reporter, specs: list[QuantSpec]) -> Source:
    return Source(name, cfg, reporter, specs)


def refuse_task_heads(name: str, config) -> None:
    """`quantize model` measures a causal LM (perplexity, logits through AutoModelForCausalLM): a checkpoint with
    another head would load as a causal LM with a new, random head whose layers bitsandbytes never quantized.
    `config` is the checkpoint's (its `architectures` name the head it was saved with)."""
    from llmkit.inference.tasks import head_task

    task = head_task(config)
    archs = list(getattr(config, "architectures", None) or [])
    if task is not None or (archs and not any(a.endswith(("CausalLM", "LMHeadModel")) for a in archs)):
        raise ConfigError(f"{name} is a {', '.join(archs)} checkpoint ({task or 'not a causal LM'}): `quantize "
                          "model` measures causal LMs",
                          hint=f"load it quantized where it runs: llmkit generate -m {name} --load-in-8bit (or "
                               "--load-in-4bit)")


def refuse_quantized(name: str, trust_remote_code: bool = False) -> None:
    config = read_model_config(name, trust_remote_code)
    quant = config.get("quantization_config")
    if quant:
        what = quant.get("quant_method", "quantized")
        kind = ("int8" if quant.get("load_in_8bit") else quant.get("bnb_4bit_quant_type", "4-bit")
                if quant.get("load_in_4bit") else what)
        raise ConfigError(f"{name} is already quantized ({what}: {kind})",
                          hint="quantize the full-precision model it came from; quantizing quantized weights again "
                               "only adds error")


def read_model_config(name: str, trust_remote_code: bool = False) -> dict:
    path = Path(name).expanduser() / "config.json"
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ModelLoadError(f"{path}: invalid JSON: {exc.msg}", hint="re-save the model") from None
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code).to_dict()


def _is_linear(module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D) or type(module) is torch.nn.Linear  # replace_with_bnb_linear's own rule


def weight_matrix(module):
    """The weight as [out, in] (GPT-2's Conv1D stores it transposed)."""
    from transformers.pytorch_utils import Conv1D

    return module.weight.t() if isinstance(module, Conv1D) else module.weight


def skip_modules(model, extra: tuple[str, ...]) -> list[str]:
    """What transformers keeps in full precision by default (the output head, tied weights) plus --skip-modules."""
    from transformers.quantizers.base import get_keys_to_not_convert

    keep_fp32 = getattr(model, "_keep_in_fp32_modules", None) or []
    return sorted(set(get_keys_to_not_convert(model)) | set(keep_fp32) | set(extra))


def quantizable_linears(model, skip: list[str]) -> dict:
    """The linear layers transformers' replace_with_bnb_linear will convert, by the same name rule."""
    from transformers.quantizers.quantizers_utils import should_convert_module

    return {name: module for name, module in model.named_modules()
            if _is_linear(module) and should_convert_module(name, skip)}


def memory_bytes(model) -> int:
    return int(sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers())))


def weight_file_bytes(name: str | Path) -> int | None:
    """Bytes of the weight files of a local dir or a cached hub snapshot (None when they cannot be found)."""
    path = Path(name).expanduser()
    if not path.is_dir():
        try:
            from transformers.utils import cached_file

            config = cached_file(str(name), "config.json")
        except Exception:
            return None
        if config is None:
            return None
        path = Path(config).parent
    files = [f for f in path.iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES)
             and not f.name.startswith("training_args")]
    return sum(f.stat().st_size for f in files) or None


# --------------------------------------------------------------------------------------------------- eval text

def eval_tokens(cfg, tokenizer) -> tuple[str, torch.Tensor]:
    """The eval text as one token stream (documents joined by eos), at most cfg.eval_tokens long."""
    if cfg.eval_data:
        from llmkit.data.loading import read_text_column

        texts = read_text_column(cfg.eval_data, cfg.text_field)
        source = cfg.eval_data
    else:
        from llmkit import corpus

        texts = [r["text"] for r in corpus.documents()[1]]
        source = "the embedded corpus (held-out topics)"
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for text in texts:
        if not text or not text.strip():
            continue
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
        if len(ids) >= cfg.eval_tokens:
            break
    ids = ids[: cfg.eval_tokens]
    if len(ids) < 2:
        from llmkit.errors import DataError

        raise DataError(f"the eval text ({source}) has fewer than 2 tokens", hint="pass a longer --eval-data")
    return source, torch.tensor(ids, dtype=torch.long)


def window(seq_len: int | None, model) -> int:
    context = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    limit = min(context, 512) if context else 512
    return min(seq_len, context) if seq_len and context else seq_len or limit


def perplexity(model, ids: torch.Tensor, seq_len: int) -> float:
    """exp(mean next-token NLL) over non-overlapping windows of seq_len tokens."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.inference_mode(), quiet_quantization():
        for start in range(0, ids.numel() - 1, seq_len):
            chunk = ids[start:start + seq_len].unsqueeze(0).to(device)
            if chunk.shape[1] < 2:
                break
            logits = model(input_ids=chunk).logits.float()
            nll = torch.nn.functional.cross_entropy(logits[0, :-1], chunk[0, 1:], reduction="sum")
            total += float(nll)
            count += chunk.shape[1] - 1
    return math.exp(total / count) if count else float("nan")


@contextlib.contextmanager
def outlier_hooks(model, targets: dict, threshold: float):
    """Per quantized linear: which input features reach |x| >= threshold on the text run through the model."""
    stats: dict[str, dict] = {}

    def hook(name):
        def record(module, args):
            x = args[0].detach()
            per_feature = x.reshape(-1, x.shape[-1]).abs().amax(dim=0).float().cpu()
            seen = stats.setdefault(name, {"max": torch.zeros_like(per_feature)})
            seen["max"] = torch.maximum(seen["max"], per_feature)
        return record

    handles = [module.register_forward_pre_hook(hook(name)) for name, module in targets.items()]
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()
        for entry in stats.values():
            entry["threshold"] = threshold


def outlier_summary(stats: dict, threshold: float) -> dict:
    layers = []
    for name, entry in stats.items():
        per_feature = entry["max"]
        n = int((per_feature >= threshold).sum())
        layers.append(OutlierLayer(name=name, columns=int(per_feature.numel()), outlier_columns=n,
                                   outlier_share=round(n / per_feature.numel(), 6),
                                   max_abs_input=round(float(per_feature.max()), 4)))
    columns = sum(layer.columns for layer in layers)
    outliers = sum(layer.outlier_columns for layer in layers)
    return {"threshold": threshold, "columns": columns, "outlier_columns": outliers,
            "share": round(outliers / columns, 6) if columns else 0.0,
            "layers_with_outliers": sum(1 for layer in layers if layer.outlier_columns),
            "layers": [asdict(layer) for layer in layers]}


# --------------------------------------------------------------------------------------------------- one method

def bnb_config(spec: QuantSpec, skip: list[str], threshold: float = 6.0):
    from transformers import BitsAndBytesConfig

    from llmkit.modeling import DTYPES

    if spec.method == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=threshold, llm_int8_skip_modules=skip or None)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=spec.method,
                              bnb_4bit_use_double_quant=spec.double_quant,
                              bnb_4bit_compute_dtype=getattr(torch, DTYPES[spec.compute_dtype]),
                              llm_int8_skip_modules=skip or None)


def load_quantized(name: str, spec: QuantSpec, skip: list[str], *, device: str = "cpu", threshold: float = 6.0,
                   trust_remote_code: bool = False, fp_weights: dict | None = None, task: str = "causal-lm",
                   dtype=None, **model_kwargs):
    """`from_pretrained` with a BitsAndBytesConfig; a blocksize other than 64 (which transformers cannot pass) is
    applied by quantizing each layer again from its full-precision weight."""
    import transformers

    from llmkit.modeling import AUTO_CLASSES

    with quiet_quantization():
        model = getattr(transformers, AUTO_CLASSES[task]).from_pretrained(
            name, quantization_config=bnb_config(spec, skip, threshold), device_map={"": device},
            dtype=dtype or (torch.float32 if device == "cpu" else "auto"), trust_remote_code=trust_remote_code,
            **model_kwargs)
    if spec.method != "int8" and spec.blocksize not in (None, DEFAULT_BLOCKSIZE):
        requantize_blocksize(model, spec, fp_weights)
    return model.eval()


def requantize_blocksize(model, spec: QuantSpec, fp_weights: dict | None) -> None:
    import bitsandbytes as bnb

    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            old = module.weight
            weight = fp_weights[name] if fp_weights else dequantized_weight(module)
            module.weight = bnb.nn.Params4bit(
                weight.to(old.device if old.device.type != "meta" else "cpu", torch.float32).clone(),
                requires_grad=False, blocksize=spec.blocksize, compress_statistics=spec.double_quant,
                quant_type=spec.method, quant_storage=old.quant_storage).to(old.device)


def quantized_modules(model) -> dict:
    import bitsandbytes as bnb

    return {n: m for n, m in model.named_modules() if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))}


def dequantized_weight(module) -> torch.Tensor:
    """Ŵ of a bitsandbytes layer as fp32 [out, in], dequantized with bitsandbytes.functional."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    weight = module.weight
    if isinstance(module, bnb.nn.Linear4bit):
        return F.dequantize_4bit(weight.data, weight.quant_state).float()
    scb = weight.SCB if getattr(weight, "SCB", None) is not None else module.state.SCB
    return F.int8_vectorwise_dequant(weight.data, scb).float()


def storage_bits(module) -> tuple[float, float]:
    """(bits of the codes and their constants, bits of the per-layer lookup tables) held by a quantized layer."""
    import bitsandbytes as bnb

    weight = module.weight
    nbytes = lambda t: t.numel() * t.element_size() if t is not None else 0  # noqa: E731
    if isinstance(module, bnb.nn.Linear4bit):
        state = weight.quant_state
        values = nbytes(weight.data) + nbytes(state.absmax)
        tables = nbytes(state.code)
        if state.nested:
            values += nbytes(state.state2.absmax) + nbytes(state.offset)
            tables += nbytes(state.state2.code)
        return values * 8, tables * 8
    scb = weight.SCB if getattr(weight, "SCB", None) is not None else module.state.SCB
    return (nbytes(weight.data) + nbytes(scb)) * 8, 0


def theory_bits(spec: QuantSpec, shape: tuple[int, int]) -> float:
    """Bits per value by construction: int8 = 8 + one fp32 scale per output row; 4-bit = 4 + fp32 absmax per block
    (double quant: an 8-bit absmax per block + an fp32 constant per 256 blocks)."""
    out_features, in_features = shape
    if spec.method == "int8":
        return 8 + 32 / in_features
    if spec.double_quant:
        return 4 + 8 / spec.blocksize + 32 / (spec.blocksize * 256)
    return 4 + 32 / spec.blocksize


def run_method(source: Source, spec: QuantSpec, out_dir: Path, reporter: Reporter) -> QuantizeReport:
    """Quantize, measure, save into out_dir and check that it reloads quantized with the same outputs."""
    reporter.info(f"Quantizing to {spec.label} …")
    started = time.perf_counter()
    model = load_quantized(source.name, spec, source.skip, device=source.device, threshold=source.cfg.threshold,
                           trust_remote_code=source.cfg.trust_remote_code, fp_weights=source.weights)
    seconds = time.perf_counter() - started
    layers_q = quantized_modules(model)
    # Save before any forward pass: on CPUs with AVX512-BF16, bitsandbytes 0.50 repacks 4-bit weights on the first
    # inference forward, and saving a repacked layer converts it back with a small loss (absmax ~2e-4 off).
    with quiet_quantization():
        model.save_pretrained(out_dir)
    missing = sorted(set(source.targets) - set(layers_q))
    if missing:
        raise LlmkitError(f"bitsandbytes left {len(missing)} linear layer(s) unquantized: {', '.join(missing[:3])}",
                          hint="report this with `llmkit env`")

    errors, numel, achieved, tables, theory_weighted = [], 0, 0.0, 0.0, 0.0
    for name, module in layers_q.items():
        w = source.weights[name].float()
        w_hat = dequantized_weight(module).to(w.device).reshape(w.shape)
        diff = (w - w_hat)
        norm = float(w.norm())
        errors.append(LayerError(name=name, shape=list(w.shape),
                                 rel_frobenius=round(float(diff.norm()) / norm, 6) if norm else 0.0,
                                 max_abs=round(float(diff.abs().max()), 6)))
        values, table = storage_bits(module)
        achieved += values
        tables += table
        numel += w.numel()
        theory_weighted += theory_bits(spec, tuple(w.shape)) * w.numel()

    # bitsandbytes keeps the block constants (absmax, SCB) and lookup tables outside parameters and buffers
    memory_after = memory_bytes(model) + int((achieved + tables) / 8) - sum(
        m.weight.data.numel() * m.weight.data.element_size() for m in layers_q.values())

    reporter.info(f"Perplexity after {spec.label} …")
    ppl_after = perplexity(model, source.eval_ids, source.seq_len)
    with torch.inference_mode(), quiet_quantization():
        probe_logits = model(input_ids=source.probe.to(source.device)).logits.float().cpu()

    del model
    free_memory()
    reload = check_reload(out_dir, probe_logits, source, len(layers_q))
    disk_after = weight_file_bytes(out_dir) or 0
    on_disk = saved_quantized_bits(out_dir, layers_q)

    ppl_before = source.ppl_before
    rel = [e.rel_frobenius for e in errors]
    size = {"disk_before": source.disk_before, "disk_after": disk_after,
            "disk_ratio": round(disk_after / source.disk_before, 4) if source.disk_before else None,
            "memory_before": source.memory_before, "memory_after": memory_after,
            "memory_ratio": round(memory_after / source.memory_before, 4) if source.memory_before else None}
    return QuantizeReport(
        method=spec.method, double_quant=spec.double_quant, blocksize=spec.blocksize,
        compute_dtype=spec.compute_dtype, quantized_layers=len(layers_q), params_total=source.params_total,
        params_quantized=numel, size=size,
        bits_per_param={"theory": round(theory_weighted / numel, 4), "achieved": round(achieved / numel, 4),
                        "with_tables": round((achieved + tables) / numel, 4),
                        "on_disk": round(on_disk / numel, 4) if on_disk else None,
                        "model": round(disk_after * 8 / source.params_total, 4)},
        error={"mean_rel_frobenius": round(sum(rel) / len(rel), 6), "max_rel_frobenius": max(rel),
               "max_abs": max(e.max_abs for e in errors)},
        layers=errors,
        perplexity={"before": round(ppl_before, 4), "after": round(ppl_after, 4),
                    "change": round(ppl_after - ppl_before, 4),
                    "change_pct": round(100 * (ppl_after / ppl_before - 1), 3), "tokens": source.eval_tokens},
        outliers=outlier_summary(source.outlier_stats, source.cfg.threshold) if spec.method == "int8" else None,
        reload=reload, seconds=round(seconds, 3))


def check_reload(out_dir: Path, probe_logits: torch.Tensor, source: Source, expected_layers: int) -> dict:
    """`AutoModelForCausalLM.from_pretrained(out_dir)` must give a quantized model with the same outputs."""
    from transformers import AutoModelForCausalLM

    with quiet_quantization():
        try:
            reloaded = AutoModelForCausalLM.from_pretrained(out_dir, device_map={"": source.device},
                                                            trust_remote_code=source.cfg.trust_remote_code)
        except Exception as exc:
            raise LlmkitError(f"the quantized model does not reload: {str(exc).splitlines()[0]}",
                              hint="report this with `llmkit env`; nothing was written") from None
        layers = len(quantized_modules(reloaded))
        with torch.inference_mode():
            logits = reloaded(input_ids=source.probe.to(source.device)).logits.float().cpu()
    diff = float((logits - probe_logits).abs().max())
    del reloaded
    if layers != expected_layers or not diff <= 1e-3 * max(1.0, float(probe_logits.abs().max())):
        raise LlmkitError(f"the saved model reloads with {layers} of {expected_layers} quantized layers and max "
                          f"|Δlogit| {diff:.3g}", hint="report this with `llmkit env`; nothing was written")
    return {"quantized": True, "layers": layers, "max_abs_logit_diff": diff}


def saved_quantized_bits(out_dir: Path, layers_q: dict) -> float:
    """Bits the saved files spend on the quantized linears' weights (codes, constants, tables, quant state)."""
    from safetensors import safe_open

    prefixes = tuple(f"{name}.weight" for name in layers_q) + tuple(f"{name}.SCB" for name in layers_q)
    total = 0
    for path in sorted(out_dir.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                if key.startswith(prefixes):
                    t = f.get_slice(key)
                    shape = t.get_shape()
                    count = math.prod(shape) if shape else 1
                    total += count * _dtype_bytes(t.get_dtype())
    return total * 8


def _dtype_bytes(name: str) -> int:
    return {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2, "U8": 1, "I8": 1, "BOOL": 1}.get(
        name, 4)

