"""`llmkit merge`: fold a LoRA or IA3 adapter into its base model with peft, save it whole, and prove it equal.

Heavy module (torch, transformers, peft at the top): reached only from inside a command body.

Order of work: everything that can be refused is refused before a model is loaded (method, an adapter still at its
initialisation, base name, module names and shapes, output dir). Then, by strategy:

* an adapter trained on a full-precision base ("plain"): base + adapter → `merge_and_unload`;
* an adapter trained on a 4-bit/8-bit base (QLoRA), `--strategy`
  - `dequantize` (default): the base is loaded quantized exactly as in training and dequantized; the adapter is
    merged into those dequantized weights — the weights it was trained against;
  - `original`: merged into the original full-precision weights (the quantization error of training is gone, and
    with it the exact match to the model that was trained);
  - `requantize`: as `dequantize`, then the merged model is quantized again with the adapter's settings (small
    on disk; the sum W + ΔW picks up a new quantization error).

Verification (default on): probe prompts go through the unmerged model the strategy merges into (base + adapter)
and through the merged model as saved (reloaded from disk, in its saved dtype); the merge must agree within
`--tolerance` (max |Δlogit| / max |logit|), else nothing is left at the output path. For QLoRA adapters the
difference between the saved model and the model as trained (quantized base + adapter) is reported as
`drift_from_trained`: that is what the strategy costs.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from llmkit.config import MERGE_TOLERANCE, MergeConfig
from llmkit.errors import ConfigError, LlmkitError, ModelLoadError
from llmkit.modeling import ADAPTER_INFO, adapter_base, read_json_file
from llmkit.quantize_model import (QuantSpec, check_blocksize, load_quantized, meta_model, quantizable_linears,
                                   quantized_modules, read_model_config, skip_modules, weight_matrix)
from llmkit.runtime import free_memory, quiet_quantization
from llmkit.ui import Reporter, SilentReporter

MERGEABLE = {"LORA": "lora", "IA3": "ia3", "ADALORA": "adalora", "LOHA": "loha", "LOKR": "lokr"}
VIRTUAL_TOKENS = {"PROMPT_TUNING": "prompt-tuning", "P_TUNING": "p-tuning", "PREFIX_TUNING": "prefix-tuning"}
DEFAULT_PROBES = (
    "The for statement is used to iterate over the elements of a sequence.",
    "A function definition defines a user-defined function object.",
    "Exceptions are a means of breaking out of the normal flow of control.",
    "What does the `while` statement do?",
)
ADAPTER_PREFIX = "base_model.model."
TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
CLASSIFIER_HEADS = ("score.weight", "classifier.weight", "classifier.out_proj.weight")
# peft's task_type -> llmkit's task (the transformers Auto class, llmkit.modeling.AUTO_CLASSES)
PEFT_TASKS = {"CAUSAL_LM": "causal-lm", "SEQ_CLS": "seq-cls", "TOKEN_CLS": "token-cls", "QUESTION_ANS": "extractive-qa",
              "SEQ_2_SEQ_LM": "seq2seq", "FEATURE_EXTRACTION": "feature-extraction"}


@dataclass
class AdapterInfo:
    path: Path
    peft_type: str                   # peft's name: LORA, IA3, ...
    method: str                      # llmkit's: lora, ia3, ...
    quant: str | None                # nf4 | fp4 | int8 when trained on a quantized base (llmkit_adapter.json)
    double_quant: bool
    blocksize: int
    compute_dtype: str
    task: str                        # causal-lm, seq-cls, ... (the Auto class the base is loaded with)
    tensors: dict

    @property
    def model_kwargs(self) -> dict:
        """A classification head trained with the adapter (modules_to_save) sets the number of labels."""
        if self.task not in ("seq-cls", "token-cls"):
            return {}
        for key, shape in self.tensors.items():
            name = key[len(ADAPTER_PREFIX):] if key.startswith(ADAPTER_PREFIX) else key
            if name in CLASSIFIER_HEADS and len(shape) == 2:
                return {"num_labels": shape[0]}
        return {}                    # key -> shape, from adapter_model.safetensors


@dataclass
class Agreement:
    reference: str                   # what the merged model was compared with
    probes: int
    tokens: int
    max_abs_logit_diff: float
    max_rel_logit_diff: float        # max |Δlogit| / max |reference logit|
    kl_mean: float                   # mean over positions of KL(reference ‖ merged), nats
    kl_max: float


@dataclass
class MergeResult:
    adapter: str
    base: str
    output_dir: str
    method: str                      # lora | ia3 | ...
    quantized_base: str | None       # the base the adapter was trained on: nf4 | fp4 | int8 | None
    strategy: str                    # plain | dequantize | original | requantize
    dtype: str                       # of the saved weights (requantize: of the non-quantized parts)
    saved_quantized: bool            # requantize: the output is a bitsandbytes model
    merged_modules: int              # base layers that had an adapter
    params: int
    files: list[str]                 # weight files written
    tolerance: float | None
    verification: Agreement | None   # the merge itself; None with --no-verify
    drift_from_trained: Agreement | None  # QLoRA: saved model vs quantized base + adapter
    seconds: float


# --------------------------------------------------------------------------------------------------- entry point

def merge_adapter(cfg: MergeConfig, reporter: Reporter | None = None) -> MergeResult:
    from llmkit.modeling import check_model_source
    from llmkit.outputs import atomic_output_dir, check_output_dir

    reporter = reporter or SilentReporter()
    started = time.perf_counter()
    info = read_adapter(cfg.adapter)
    check_trained(info)
    base = adapter_base(cfg.adapter, cfg.base, "--base")
    check_output_dir(cfg.output_dir, cfg.overwrite)
    check_model_source(base)
    base_config = read_model_config(base, cfg.trust_remote_code)
    if base_config.get("quantization_config"):
        raise ConfigError(f"--base {base} is a quantized model",
                          hint="pass the full-precision base; for an adapter trained on a 4-bit base, llmkit "
                               "quantizes it again itself (--strategy)")
    check_fits(info, base, cfg.trust_remote_code)
    if info.quant:  # the quantized base must be one bitsandbytes computes right here (see check_blocksize)
        skeleton = meta_model(base, cfg.trust_remote_code, info.task, **info.model_kwargs)
        shapes = {n: tuple(weight_matrix(m).shape)
                  for n, m in quantizable_linears(skeleton, skip_modules(skeleton, ())).items()}
        check_blocksize(quant_spec(info), shapes, "cpu")  # merge runs on CPU
    strategy = resolve_strategy(cfg, info, reporter)
    dtype = resolve_dtype(cfg.dtype, base_config)
    tolerance = cfg.tolerance if cfg.tolerance is not None else MERGE_TOLERANCE[dtype]
    tokenizer = load_merge_tokenizer(info, base, cfg.trust_remote_code)
    probes = probe_ids(tokenizer, cfg.probes or DEFAULT_PROBES)

    with atomic_output_dir(cfg.output_dir, cfg.overwrite) as scratch:
        trained_logits = None
        if info.quant and cfg.verify:
            reporter.info(f"Running the model as trained ({info.quant} base + adapter) on {len(probes)} probes …")
            trained = attach(load_quantized(base, quant_spec(info), skip_for(base, cfg, info), task=info.task,
                                            trust_remote_code=cfg.trust_remote_code, **info.model_kwargs), info)
            trained_logits = logits_of(trained, probes)
            del trained
            free_memory()
        reporter.info(f"Merging the {info.method} adapter ({strategy}) …")
        model = load_base_for(strategy, base, info, cfg)
        peft_model = attach(model, info)
        merged_modules = count_adapted(peft_model)
        reference = logits_of(peft_model, probes) if cfg.verify else None
        merged = peft_model.merge_and_unload()
        del peft_model
        _clear_quantization(merged)
        params = sum(p.numel() for p in merged.parameters())

        verification = None
        saved_quantized = strategy == "requantize"
        if strategy == "requantize":
            if cfg.verify:  # the merge itself, before the new quantization error
                verification = agreement(reference, logits_of(merged, probes), "base (dequantized) + adapter")
                _check(verification, tolerance)
            with tempfile.TemporaryDirectory(prefix="llmkit-merge-", dir=scratch.parent) as tmp:
                with quiet_quantization():
                    merged.save_pretrained(tmp)
                del merged
                free_memory()
                # the parts that stay unquantized (embeddings, norms, head) in --dtype
                requantized = load_quantized(tmp, quant_spec(info), skip_for(base, cfg, info), task=info.task,
                                             dtype=getattr(torch, TORCH_DTYPES[dtype]))
                with quiet_quantization():
                    requantized.save_pretrained(scratch, max_shard_size=cfg.max_shard_size)
                del requantized
                free_memory()
        else:
            merged = merged.to(getattr(torch, TORCH_DTYPES[dtype]))
            with quiet_quantization():
                merged.save_pretrained(scratch, max_shard_size=cfg.max_shard_size)
            del merged
            free_memory()
        save_extras(scratch, tokenizer, info, base)

        drift = None
        if cfg.verify:
            reporter.info("Verifying: the saved model against base + adapter …")
            saved = reload_saved(scratch, saved_quantized, cfg.trust_remote_code, info.task)
            saved_logits = logits_of(saved, probes)
            del saved
            free_memory()
            if verification is None:
                verification = agreement(reference, saved_logits, reference_name(strategy))
                _check(verification, tolerance)
            if trained_logits is not None:
                drift = agreement(trained_logits, saved_logits, f"{info.quant} base + adapter")
        files = sorted(f.name for f in scratch.iterdir() if f.name.endswith(".safetensors"))
        (scratch / "llmkit_merge.json").write_text(json.dumps(
            {"adapter": cfg.adapter, "base": base, "method": info.method, "quantized_base": info.quant,
             "strategy": strategy, "dtype": dtype, "tolerance": tolerance,
             "verification": verification.__dict__ if verification else None,
             "drift_from_trained": drift.__dict__ if drift else None}, indent=2) + "\n", encoding="utf-8")
    return MergeResult(adapter=cfg.adapter, base=base, output_dir=str(Path(cfg.output_dir).expanduser()),
                       method=info.method, quantized_base=info.quant, strategy=strategy, dtype=dtype,
                       saved_quantized=saved_quantized, merged_modules=merged_modules, params=params, files=files,
                       tolerance=tolerance if cfg.verify else None, verification=verification,
                       drift_from_trained=drift, seconds=round(time.perf_counter() - started, 3))


# --------------------------------------------------------------------------------------------------- checks first

def read_adapter(path_text: str) -> AdapterInfo:
    path = Path(path_text).expanduser()
    config_file = path / "adapter_config.json"
    if not path.is_dir():
        raise ModelLoadError(f"no such adapter directory: {path_text}", hint="pass the dir `llmkit peft` or peft's "
                             "save_pretrained wrote")
    if not config_file.is_file():
        raise ModelLoadError(f"{path_text} has no adapter_config.json, so it is not a PEFT adapter dir",
                             hint="pass the dir `llmkit peft` or peft's save_pretrained wrote")
    config = read_json_file(config_file)
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type in VIRTUAL_TOKENS:
        raise ConfigError(
            f"a {VIRTUAL_TOKENS[peft_type]} adapter cannot be merged: it adds learned virtual tokens in front of "
            "every input (or learned keys and values in every layer), not a change to any weight, so there is "
            "nothing to fold into the base",
            hint=f"keep the adapter and run it with `llmkit generate --model BASE --adapter {path_text}`")
    if peft_type not in MERGEABLE:
        raise ConfigError(f"{path_text} is a {peft_type or 'unknown'} adapter; llmkit merges "
                          f"{', '.join(v for v in MERGEABLE.values())}",
                          hint=f"keep the adapter and run it with `llmkit generate --adapter {path_text}`")
    meta_file = path / ADAPTER_INFO
    meta = read_json_file(meta_file) if meta_file.is_file() else {}
    quant = meta.get("quant") or None
    if quant not in (None, "nf4", "fp4", "int8"):
        raise ModelLoadError(f"{meta_file}: unknown quant {quant!r}", hint="expected null, nf4, fp4 or int8")
    return AdapterInfo(path=path, peft_type=peft_type, method=MERGEABLE[peft_type],
                       quant=quant, double_quant=bool(meta.get("double_quant", False)),
                       blocksize=int(meta.get("blocksize") or 64), compute_dtype=meta.get("compute_dtype") or "fp32",
                       task=adapter_task(meta, config, path_text), tensors=adapter_tensor_shapes(path))


def adapter_task(meta: dict, config: dict, where: str) -> str:
    from llmkit.modeling import AUTO_CLASSES

    task = meta.get("task") or PEFT_TASKS.get(str(config.get("task_type") or "CAUSAL_LM").upper())
    if task not in AUTO_CLASSES:
        raise ConfigError(f"{where}: cannot tell which model the adapter belongs to "
                          f"(task {task or config.get('task_type')!r})",
                          hint=f"set task_type in adapter_config.json to one of {', '.join(PEFT_TASKS)}")
    return task


def adapter_tensor_shapes(path: Path) -> dict[str, list[int]]:
    file = path / "adapter_model.safetensors"
    if file.is_file():
        from safetensors import safe_open

        with safe_open(str(file), "pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    return {k: list(v.shape) for k, v in adapter_tensors(path).items()}


def adapter_tensors(path: Path) -> dict[str, torch.Tensor]:
    file = path / "adapter_model.safetensors"
    if file.is_file():
        from safetensors.torch import load_file

        return load_file(str(file))
    legacy = path / "adapter_model.bin"
    if legacy.is_file():
        return torch.load(legacy, map_location="cpu", weights_only=True)
    raise ModelLoadError(f"{path} has no adapter_model.safetensors (or adapter_model.bin)",
                         hint="the adapter dir is incomplete: re-save it")


def check_trained(info: AdapterInfo) -> None:
    """Refuse an adapter that is still its initialisation: LoRA with every B zero, IA3 with every vector all ones.
    It changes nothing, so the merge would save a copy of the base that verifies trivially; it is what a run that
    trained nothing saves. Any other tensor (modules_to_save, DoRA magnitudes) may change the model: not refused."""
    if info.method not in ("lora", "ia3"):
        return
    # (tensors whose value does not matter while the others are initial: LoRA's A is random and multiplies B,
    #  tensors that must hold their initial value, that value)
    ignored, checked, initial = {"lora": (("lora_A", "lora_embedding_A"), ("lora_B", "lora_embedding_B"), 0.0),
                                 "ia3": ((), ("ia3_l",), 1.0)}[info.method]
    for key, tensor in adapter_tensors(info.path).items():
        parts = key.split(".")
        if any(name in parts for name in ignored):
            continue
        if not any(name in parts for name in checked) or bool((tensor != initial).any()):
            return
    what = "every lora_B is zero" if info.method == "lora" else "every IA3 vector is all ones"
    raise LlmkitError(f"the {info.method} adapter {info.path} is still its initialisation ({what}): it changes "
                      "nothing, so the merged model would be the base itself",
                      hint="its training changed nothing (see loss and grad_norm in the run's metrics.jsonl): "
                           "train it again, or use the base model as it is")


def check_fits(info: AdapterInfo, base: str, trust_remote_code: bool) -> None:
    """Every adapter tensor must name a module of the base with matching sizes (no weights are loaded)."""
    skeleton = meta_model(base, trust_remote_code, info.task, **info.model_kwargs)
    modules = dict(skeleton.named_modules())
    params = {n: list(p.shape) for n, p in skeleton.named_parameters()}
    problems = []
    for key, shape in info.tensors.items():
        name = key[len(ADAPTER_PREFIX):] if key.startswith(ADAPTER_PREFIX) else key
        problem = _fit_problem(name, shape, modules, params)
        if problem:
            problems.append(problem)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ConfigError(f"the adapter {info.path} does not fit {base}: {'; '.join(problems[:3])}{more}",
                          hint="pass the base the adapter was trained on (see base_model_name_or_path in its "
                               "adapter_config.json)")


def _fit_problem(name: str, shape: list[int], modules: dict, params: dict) -> str | None:
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):  # the longest prefix that is a module of the base
        owner = ".".join(parts[:cut])
        if owner in modules:
            break
    else:
        return f"{name}: no such module in the base"
    module = modules[owner]
    rest = parts[cut:]
    weight = getattr(module, "weight", None)
    out_f, in_f = (list(weight.shape[:2]) + [None, None])[:2] if weight is not None and weight.dim() >= 2 else (None,
                                                                                                               None)
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, Conv1D):
        out_f, in_f = in_f, out_f
    if isinstance(module, torch.nn.Embedding):
        out_f, in_f = module.embedding_dim, module.num_embeddings
    kind = rest[0]
    if kind in ("lora_A", "lora_embedding_A") and in_f is not None:
        got = shape[1]
        return None if got == in_f else f"{owner} takes {in_f} inputs, the adapter's {kind} {got}"
    if kind in ("lora_B", "lora_embedding_B") and out_f is not None:
        got = shape[0]
        return None if got == out_f else f"{owner} gives {out_f} outputs, the adapter's {kind} {got}"
    if kind == "ia3_l" and in_f is not None:
        size = max(shape)
        return None if size in (out_f, in_f) else f"{owner} is {out_f}×{in_f}, the adapter's ia3 vector {size}"
    full = ".".join([owner] + [r for r in rest if r not in ("modules_to_save", "default", "original_module")])
    if full in params and params[full] != shape:
        return f"{full} is {'×'.join(map(str, params[full]))} in the base, {'×'.join(map(str, shape))} in the adapter"
    return None


def resolve_strategy(cfg: MergeConfig, info: AdapterInfo, reporter: Reporter) -> str:
    if info.quant is None:
        if cfg.strategy is not None:
            reporter.warn(f"--strategy {cfg.strategy} applies to adapters trained on a quantized base; this one was "
                          "trained on a full-precision base, so it is merged plainly")
        return "plain"
    return cfg.strategy or "dequantize"


def resolve_dtype(name: str, base_config: dict) -> str:
    if name != "auto":
        return name
    stored = str(base_config.get("dtype") or base_config.get("torch_dtype") or "float32")
    return {"float16": "fp16", "bfloat16": "bf16"}.get(stored, "fp32")


def quant_spec(info: AdapterInfo) -> QuantSpec:
    # fp32 compute: the same weights as in training, without slow 16-bit math on CPU
    return QuantSpec(info.quant, info.double_quant, info.blocksize if info.quant != "int8" else None, "fp32")


def skip_for(base: str, cfg: MergeConfig, info: AdapterInfo) -> list[str]:
    return skip_modules(meta_model(base, cfg.trust_remote_code, info.task, **info.model_kwargs), ())


# --------------------------------------------------------------------------------------------------- models

def load_base_for(strategy: str, base: str, info: AdapterInfo, cfg: MergeConfig):
    from llmkit.modeling import load_model

    if strategy in ("plain", "original"):
        with quiet_quantization():
            return load_model(base, info.task, dtype="fp32", trust_remote_code=cfg.trust_remote_code,
                              **info.model_kwargs).eval()
    quantized = load_quantized(base, quant_spec(info), skip_for(base, cfg, info), task=info.task,
                               trust_remote_code=cfg.trust_remote_code, **info.model_kwargs)
    with quiet_quantization():  # no forward has run on it: its 4-bit weights are still in the saved layout
        return quantized.dequantize(dtype=torch.float32).eval()


def _clear_quantization(model) -> None:
    """A model dequantized by transformers still carries its quantization config: drop it so the merged model saves
    and reloads as a plain full-precision model."""
    for attr in ("quantization_config",):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    for attr in ("hf_quantizer", "is_quantized", "quantization_method"):
        if attr in model.__dict__:
            try:
                delattr(model, attr)
            except AttributeError:
                pass
    for attr in ("is_loaded_in_4bit", "is_loaded_in_8bit"):
        if getattr(model, attr, False):
            setattr(model, attr, False)


def attach(model, info: AdapterInfo):
    from peft import PeftModel

    try:
        with quiet_quantization():
            return PeftModel.from_pretrained(model, str(info.path)).eval()
    except Exception as exc:
        raise ModelLoadError(f"cannot load the adapter {info.path}: {str(exc).splitlines()[0]}",
                             hint="check that it was saved by peft for this base") from None


def count_adapted(peft_model) -> int:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(1 for m in peft_model.modules() if isinstance(m, BaseTunerLayer))


def reload_saved(path: Path, quantized: bool, trust_remote_code: bool, task: str):
    import transformers

    from llmkit.modeling import AUTO_CLASSES

    options = {"device_map": {"": "cpu"}, "dtype": torch.float32} if quantized else {"dtype": torch.float32}
    with quiet_quantization():
        try:
            auto = getattr(transformers, AUTO_CLASSES[task])
            model = auto.from_pretrained(path, trust_remote_code=trust_remote_code, **options).eval()
        except Exception as exc:
            raise LlmkitError(f"the merged model does not reload: {str(exc).splitlines()[0]}",
                              hint="nothing was written; report this with `llmkit env`") from None
    if quantized and not quantized_modules(model):
        raise LlmkitError("the requantized model reloads without quantized layers",
                          hint="nothing was written; report this with `llmkit env`")
    return model


def load_merge_tokenizer(info: AdapterInfo, base: str, trust_remote_code: bool):
    """The adapter's own tokenizer (it carries the chat template it was trained with), else the base's."""
    from llmkit.modeling import TOKENIZER_FILES, load_tokenizer

    source = str(info.path) if any((info.path / f).exists() for f in TOKENIZER_FILES) else base
    return load_tokenizer(source, trust_remote_code=trust_remote_code)


def save_extras(out: Path, tokenizer, info: AdapterInfo, base: str) -> None:
    """Tokenizer (with its chat template) and the generation config (the adapter's, if it saved one)."""
    tokenizer.save_pretrained(out)
    adapter_generation = info.path / "generation_config.json"
    if adapter_generation.is_file():
        shutil.copyfile(adapter_generation, out / "generation_config.json")
    elif not (out / "generation_config.json").exists():
        try:
            from transformers import GenerationConfig

            GenerationConfig.from_pretrained(base).save_pretrained(out)
        except OSError:  # the base has none: transformers' defaults apply
            pass


# --------------------------------------------------------------------------------------------------- verification

def probe_ids(tokenizer, probes) -> list[torch.Tensor]:
    ids = []
    for text in probes:
        encoded = tokenizer(text, add_special_tokens=True)["input_ids"][:64]
        if encoded:
            ids.append(torch.tensor([encoded], dtype=torch.long))
    if not ids:
        raise ConfigError("the probe prompts tokenize to nothing", hint="pass --probe with some text")
    return ids


def logits_of(model, probes: list[torch.Tensor]) -> list[torch.Tensor]:
    """The output scores per probe as [positions, classes] (QA: start and end logits side by side; an
    encoder-decoder gets the probe as its decoder input too)."""
    device = next(model.parameters()).device
    seq2seq = getattr(model.config, "is_encoder_decoder", False)
    outputs = []
    with torch.inference_mode(), quiet_quantization():
        for p in probes:
            ids = p.to(device)
            out = model(input_ids=ids, decoder_input_ids=ids) if seq2seq else model(input_ids=ids)
            if getattr(out, "logits", None) is not None:
                scores = out.logits
            elif getattr(out, "start_logits", None) is not None:
                scores = torch.stack([out.start_logits, out.end_logits], dim=-1)
            else:
                scores = out.last_hidden_state
            scores = scores.float().cpu()[0]
            outputs.append(scores.reshape(-1, scores.shape[-1]) if scores.dim() else scores.reshape(1, 1))
    return outputs


def agreement(reference: list[torch.Tensor], other: list[torch.Tensor], what: str) -> Agreement:
    diffs, scale, kls, tokens = 0.0, 0.0, [], 0
    for ref, got in zip(reference, other):
        diffs = max(diffs, float((ref - got).abs().max()))
        scale = max(scale, float(ref.abs().max()))
        log_p, log_q = ref.log_softmax(-1), got.log_softmax(-1)
        kls.append((log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0))
        tokens += ref.shape[0]
    kl = torch.cat(kls)
    return Agreement(reference=what, probes=len(reference), tokens=tokens, max_abs_logit_diff=diffs,
                     max_rel_logit_diff=diffs / scale if scale else diffs, kl_mean=float(kl.mean()),
                     kl_max=float(kl.max()))


def reference_name(strategy: str) -> str:
    return {"plain": "base + adapter", "dequantize": "base (dequantized) + adapter",
            "original": "base (original weights) + adapter"}[strategy]


def _check(result: Agreement, tolerance: float) -> None:
    if not result.max_rel_logit_diff <= tolerance:
        raise LlmkitError(
            f"verification failed: the merged model differs from {result.reference} by max |Δlogit| "
            f"{result.max_abs_logit_diff:.3g} ({result.max_rel_logit_diff:.3g} of the largest logit; tolerance "
            f"{tolerance:g}), KL {result.kl_mean:.3g} nats; nothing was written",
            hint="a 16-bit --dtype rounds the merged weights: try --dtype fp32, or raise --tolerance if the "
                 "difference is acceptable")
