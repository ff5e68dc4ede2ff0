"""`llmkit export --format onnx`: a model as ONNX graphs, checked in ONNX Runtime against PyTorch.

Heavy module (torch, transformers at the top): reached only from inside a command body.

Optimum's ONNX exporter does not install beside transformers 5, so the graphs are written with torch's TorchScript
exporter (`torch.onnx.export(dynamo=False)`; the dynamo exporter needs onnxscript) from the model loaded with eager
attention, in Optimum's layout (llmkit.inference.onnx_backend describes it), so ONNX Runtime users recognise it:

* causal LM: model.onnx, one decoder graph with past key values (length 0 for the prompt). transformers' forward
  takes its past as a Cache object, so a small wrapper turns the flat tensors into a DynamicCache and the cache it
  returns back into tensors.
* encoder-decoder (T5, BART): encoder_model.onnx and decoder_model.onnx, the decoder with its self-attention past;
  its cross-attention keys and values are computed from the encoder's output at every step (one graph, no
  branch on whether they are cached yet).
* sequence classifier: model.onnx, input_ids, attention_mask (and token_type_ids when the model takes them) ->
  logits.

Batch, sequence and past lengths are dynamic axes. Before the output dir appears, ONNX Runtime runs on probe
batches (padding; with a past, a decoding step) and its logits must be within --atol of PyTorch's; a generator's
greedy generation on ONNX Runtime must also equal transformers' `generate` token for token. Else nothing is written.
export.json beside the graphs records their inputs and outputs and what was checked.
"""

from __future__ import annotations

import inspect
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from llmkit.config import ExportConfig
from llmkit.errors import ConfigError, LlmkitError
from llmkit.inference.onnx_backend import DECODER_FILE, ENCODER_FILE, ONNX_FILE, OnnxGenerator, ort_session
from llmkit.ui import Reporter, SilentReporter

EXPORT_REPORT = "export.json"
PROBE_BATCH, PROBE_LENGTH, PROBE_PADDING = 2, 7, 3   # the first probe row has PROBE_PADDING padding tokens
GENERATION_CHECK_TOKENS = 8


@dataclass
class Check:
    what: str
    max_abs_diff: float


@dataclass
class GenerationCheck:
    prompt_tokens: int
    new_tokens: int
    equal: bool


@dataclass
class GraphInfo:
    file: str
    inputs: list[dict]               # name, dtype, shape (axis names for dynamic axes)
    outputs: list[dict]


@dataclass
class ExportResult:
    model: str
    output_dir: str
    format: str
    task: str                        # causal-lm | seq2seq | seq-cls
    architecture: str
    opset: int
    graphs: list[GraphInfo]
    atol: float
    checks: list[Check]              # ONNX Runtime logits (and encoder outputs) against PyTorch's
    max_abs_diff: float
    generation: GenerationCheck | None   # generators: ONNX Runtime greedy = transformers' generate greedy
    tokenizer: bool                  # a tokenizer was copied beside the graphs
    files: list[str]
    seconds: float


def export_model(cfg: ExportConfig, reporter: Reporter | None = None) -> ExportResult:
    from transformers.utils import logging as hf_logging

    from llmkit.inference.loading import has_tokenizer, load_model_config
    from llmkit.modeling import load_model, load_tokenizer
    from llmkit.outputs import atomic_output_dir, check_output_dir

    reporter = reporter or SilentReporter()
    started = time.perf_counter()
    check_output_dir(cfg.output_dir, cfg.overwrite)
    model_config = load_model_config(cfg.model, cfg.trust_remote_code)
    architecture, task = exportable(model_config, cfg.model)
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code) \
        if has_tokenizer(cfg.model) else None
    if tokenizer is None:
        reporter.warn(f"{cfg.model} has no tokenizer files: the export dir holds the graphs and config only")
    hf_logging.disable_progress_bar()  # "Loading weights" bars; llmkit reports through its Reporter
    hf_logging.set_verbosity_error()   # transformers' notes on the traced forward and generate's defaults
    # eager attention: the TorchScript exporter traces its plain matmul/softmax; fp32, so the check compares like
    model = load_model(cfg.model, task, dtype="fp32", trust_remote_code=cfg.trust_remote_code,
                       attn_implementation="eager").eval()
    exporter = EXPORTERS[task](model)

    with atomic_output_dir(cfg.output_dir, cfg.overwrite) as scratch:
        reporter.info(f"Exporting {architecture} to ONNX (opset {cfg.opset}) …")
        for part in exporter.parts():
            write_onnx(part, scratch, cfg.opset, cfg.model)
        model.config.save_pretrained(scratch)
        if exporter.generates:
            model.generation_config.save_pretrained(scratch)
        if tokenizer is not None:
            tokenizer.save_pretrained(scratch)

        reporter.info("Checking ONNX Runtime against PyTorch …")
        sessions = {part.file: ort_session(scratch / part.file) for part in exporter.parts()}
        checks = exporter.check(sessions)
        max_abs_diff = max(c.max_abs_diff for c in checks)
        if not max_abs_diff <= cfg.atol:
            worst = max(checks, key=lambda c: c.max_abs_diff)
            raise LlmkitError(f"ONNX Runtime's logits differ from PyTorch's by {max_abs_diff:.3g} (--atol "
                              f"{cfg.atol:g}) on {worst.what}; nothing was written",
                              hint="raise --atol if the difference is acceptable, or report this with `llmkit env`")
        generation = check_generation(model, scratch) if exporter.generates else None
        graphs = [graph_info(file, session) for file, session in sessions.items()]
        report = {"format": cfg.format, "model": cfg.model, "task": task, "architecture": architecture,
                  "opset": cfg.opset, "graphs": [asdict(g) for g in graphs], "atol": cfg.atol,
                  "checks": [asdict(c) for c in checks], "max_abs_diff": max_abs_diff,
                  "generation": asdict(generation) if generation else None, "versions": versions()}
        (scratch / EXPORT_REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        files = sorted(f.name for f in scratch.iterdir())
    return ExportResult(model=cfg.model, output_dir=str(Path(cfg.output_dir).expanduser()), format=cfg.format,
                        task=task, architecture=architecture, opset=cfg.opset, graphs=graphs, atol=cfg.atol,
                        checks=checks, max_abs_diff=max_abs_diff, generation=generation,
                        tokenizer=tokenizer is not None, files=files, seconds=round(time.perf_counter() - started, 3))


def exportable(model_config, name: str) -> tuple[str, str]:
    """The checkpoint's architecture and what it is exported as, or a ConfigError naming what can be."""
    encoder_decoder = bool(getattr(model_config, "is_encoder_decoder", False))
    for arch in getattr(model_config, "architectures", None) or []:
        if arch.endswith("ForCausalLM") and not encoder_decoder:
            return arch, "causal-lm"
        if arch.endswith("ForConditionalGeneration") and encoder_decoder:
            return arch, "seq2seq"
        if arch.endswith("ForSequenceClassification") and not encoder_decoder:
            return arch, "seq-cls"
    archs = getattr(model_config, "architectures", None)
    what = archs[0] if archs else f"a {getattr(model_config, 'model_type', '?')} model without a recorded head"
    raise ConfigError(f"{name} is {what}: llmkit exports causal LMs (…ForCausalLM), encoder-decoder LMs "
                      "(…ForConditionalGeneration) and sequence classifiers (…ForSequenceClassification) to ONNX",
                      hint="other heads (masked LM, token classification, question answering) are not exported yet")


# --------------------------------------------------------------------------------------------------- the graphs

@dataclass
class Part:
    """One ONNX file: the module traced, its tensors' names, dynamic axes and tracing inputs."""

    file: str
    module: torch.nn.Module
    inputs: list[str]
    outputs: list[str]
    axes: dict
    example: tuple


BATCH, NEW, TOTAL, PAST, ENCODED = ("batch_size", "sequence_length", "total_sequence_length", "past_sequence_length",
                                    "encoder_sequence_length")


def past_names(layers: int, infix: str = "") -> tuple[list[str], list[str]]:
    """past_key_values.{i}[.decoder].key/value and the matching present.{i}[.decoder].key/value."""
    past = [f"past_key_values.{i}{infix}.{kind}" for i in range(layers) for kind in ("key", "value")]
    return past, [name.replace("past_key_values", "present") for name in past]


def past_axes(past: list[str], present: list[str]) -> dict:
    return {**{name: {0: BATCH, 2: PAST} for name in past}, **{name: {0: BATCH, 2: TOTAL} for name in present}}


class CausalDecoder(torch.nn.Module):
    """A causal LM's forward on flat tensors: the past as past_key_values.{i}.key/value in, presents out."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, *past):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=dynamic_cache(past, self.model.config), use_cache=True)
        return (out.logits, *flat_cache(out.cache))


class Seq2SeqDecoder(torch.nn.Module):
    """An encoder-decoder's decoder on flat tensors: its self-attention past in, presents out; the cross-attention
    cache starts empty at every call, so its keys and values come from encoder_hidden_states."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, encoder_attention_mask, encoder_hidden_states, *past):
        from transformers import DynamicCache, EncoderDecoderCache

        cache = EncoderDecoderCache(dynamic_cache(past), DynamicCache())
        out = self.model(decoder_input_ids=input_ids, attention_mask=encoder_attention_mask,
                         encoder_outputs=(encoder_hidden_states,), cache=cache, use_cache=True)
        return (out.logits, *flat_cache(out.cache.self_attention_cache))


class Encoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class ClassifierLogits(torch.nn.Module):
    def __init__(self, model, type_ids: bool):
        super().__init__()
        self.model = model
        self.type_ids = type_ids

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        extra = {"token_type_ids": token_type_ids} if self.type_ids else {}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits


def dynamic_cache(past, config=None):
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=[past[i: i + 2] for i in range(0, len(past), 2)], config=config)


def flat_cache(cache) -> list[torch.Tensor]:
    return [tensor for layer in cache.layers for tensor in (layer.keys, layer.values)]


class CausalLMExport:
    generates = True

    def __init__(self, model):
        self.model = model
        self.past, self.present = past_names(model.config.get_text_config(decoder=True).num_hidden_layers)

    def parts(self) -> list[Part]:
        # traced with a past of length 2, so the past length is an axis of the graph, not a constant
        ids, mask = probe_batch(self.model.config, padding=0)
        mask = torch.cat([torch.ones(mask.shape[0], 2, dtype=torch.long), mask], dim=1)
        with torch.no_grad():
            past = flat_cache(self.model(input_ids=ids[:, :2], use_cache=True).cache)
        axes = {"input_ids": {0: BATCH, 1: NEW}, "attention_mask": {0: BATCH, 1: TOTAL},
                "position_ids": {0: BATCH, 1: NEW}, "logits": {0: BATCH, 1: NEW}, **past_axes(self.past, self.present)}
        # eval() on the wrappers too: the exporter restores a wrapper's mode afterwards, and a fresh Module trains
        return [Part(ONNX_FILE, CausalDecoder(self.model).eval(),
                     ["input_ids", "attention_mask", "position_ids", *self.past], ["logits", *self.present], axes,
                     (ids, mask, positions_of(mask)[:, 2:], *past))]

    def check(self, sessions: dict) -> list[Check]:
        """The prompt step (empty past, left padding) and one decoding step fed the prompt's presents."""
        session = sessions[ONNX_FILE]
        ids, mask = probe_batch(self.model.config)
        with torch.no_grad():
            prompt = self.model(input_ids=ids, attention_mask=mask, position_ids=positions_of(mask), use_cache=True)
        empty = [t[:, :, :0] for t in flat_cache(prompt.cache)]
        names = ["input_ids", "attention_mask", "position_ids", *self.past]
        got = session.run(None, feeds(names, ids, mask, positions_of(mask), *empty))
        checks = [Check("the prompt step (empty past; batch 2, one row left-padded)",
                        masked_max_diff(prompt.logits, got[0], mask))]
        next_ids = prompt.logits[:, -1:].argmax(-1)
        step_mask = torch.cat([mask, torch.ones_like(next_ids)], dim=1)
        step_positions = positions_of(step_mask)[:, -1:]
        with torch.no_grad():
            step = self.model(input_ids=next_ids, attention_mask=step_mask, position_ids=step_positions,
                              cache=prompt.cache, use_cache=True)
        got = session.run(None, feeds(names, next_ids, step_mask, step_positions, *map(torch.from_numpy, got[1:])))
        checks.append(Check("one decoding step fed the prompt's presents as past", max_diff(step.logits, got[0])))
        return checks


class Seq2SeqExport:
    generates = True

    def __init__(self, model):
        self.model = model
        self.past, self.present = past_names(model.config.get_text_config(decoder=True).num_hidden_layers,
                                             ".decoder")
        self.start = model.config.decoder_start_token_id

    def decoder_prompt(self) -> torch.Tensor:
        """The decoder start token and two more: a prompt step of three positions."""
        return torch.tensor([[self.start, 5, 6]] * PROBE_BATCH)

    def parts(self) -> list[Part]:
        ids, mask = probe_batch(self.model.config, left=False)
        decoder_ids = self.decoder_prompt()
        with torch.no_grad():
            hidden = Encoder(self.model)(ids, mask)
            past = flat_cache(self.model(encoder_outputs=(hidden,), attention_mask=mask, decoder_input_ids=decoder_ids,
                                         use_cache=True).cache.self_attention_cache)
        encoder_axes = {"input_ids": {0: BATCH, 1: ENCODED}, "attention_mask": {0: BATCH, 1: ENCODED},
                        "last_hidden_state": {0: BATCH, 1: ENCODED}}
        decoder_axes = {"input_ids": {0: BATCH, 1: NEW}, "encoder_attention_mask": {0: BATCH, 1: ENCODED},
                        "encoder_hidden_states": {0: BATCH, 1: ENCODED}, "logits": {0: BATCH, 1: NEW},
                        **past_axes(self.past, self.present)}
        return [Part(ENCODER_FILE, Encoder(self.model).eval(), ["input_ids", "attention_mask"], ["last_hidden_state"],
                     encoder_axes, (ids, mask)),
                Part(DECODER_FILE, Seq2SeqDecoder(self.model).eval(),
                     ["input_ids", "encoder_attention_mask", "encoder_hidden_states", *self.past],
                     ["logits", *self.present], decoder_axes, (decoder_ids[:, :1], mask, hidden, *past))]

    def check(self, sessions: dict) -> list[Check]:
        """The encoder (right padding); the decoder's prompt step (empty past) and one step fed its presents,
        both on PyTorch's encoder output, so each graph is compared on its own."""
        ids, mask = probe_batch(self.model.config, left=False)
        decoder_ids = self.decoder_prompt()
        with torch.no_grad():
            hidden = self.model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
            prompt = self.model(encoder_outputs=(hidden,), attention_mask=mask, decoder_input_ids=decoder_ids,
                                use_cache=True)
        got_hidden = sessions[ENCODER_FILE].run(None, feeds(["input_ids", "attention_mask"], ids, mask))[0]
        checks = [Check("the encoder (batch 2, one row right-padded)", masked_max_diff(hidden, got_hidden, mask))]
        names = ["input_ids", "encoder_attention_mask", "encoder_hidden_states", *self.past]
        empty = [t[:, :, :0] for t in flat_cache(prompt.cache.self_attention_cache)]
        got = sessions[DECODER_FILE].run(None, feeds(names, decoder_ids, mask, hidden, *empty))
        checks.append(Check("the decoder's prompt step (empty past)", max_diff(prompt.logits, got[0])))
        next_ids = prompt.logits[:, -1:].argmax(-1)
        with torch.no_grad():
            step = self.model(encoder_outputs=(hidden,), attention_mask=mask, decoder_input_ids=next_ids,
                              cache=prompt.cache, use_cache=True)
        got = sessions[DECODER_FILE].run(None, feeds(names, next_ids, mask, hidden, *map(torch.from_numpy, got[1:])))
        checks.append(Check("one decoding step fed the decoder's presents as past", max_diff(step.logits, got[0])))
        return checks


class ClassifierExport:
    generates = False

    def __init__(self, model):
        self.model = model
        self.type_ids = "token_type_ids" in inspect.signature(model.forward).parameters
        self.inputs = ["input_ids", "attention_mask", *(["token_type_ids"] if self.type_ids else [])]

    def probe(self) -> tuple:
        ids, mask = probe_batch(self.model.config)
        return (ids, mask, torch.zeros_like(ids)) if self.type_ids else (ids, mask)

    def parts(self) -> list[Part]:
        axes = {**{name: {0: BATCH, 1: NEW} for name in self.inputs}, "logits": {0: BATCH}}
        return [Part(ONNX_FILE, ClassifierLogits(self.model, self.type_ids).eval(), self.inputs, ["logits"], axes,
                     self.probe())]

    def check(self, sessions: dict) -> list[Check]:
        probe = self.probe()
        with torch.no_grad():
            reference = self.model(**dict(zip(self.inputs, probe))).logits
        got = sessions[ONNX_FILE].run(None, feeds(self.inputs, *probe))
        return [Check("batch 2, one row left-padded", max_diff(reference, got[0]))]


EXPORTERS = {"causal-lm": CausalLMExport, "seq2seq": Seq2SeqExport, "seq-cls": ClassifierExport}


def write_onnx(part: Part, out: Path, opset: int, name: str) -> None:
    import warnings

    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")   # the tracer's notes on Python branches it fixes (the checks cover them)
            torch.onnx.export(part.module, part.example, str(out / part.file), input_names=part.inputs,
                              output_names=part.outputs, dynamic_axes=part.axes, opset_version=opset, dynamo=False)
    except Exception as exc:   # an operator or Python construct the TorchScript exporter cannot write
        raise LlmkitError(f"the ONNX exporter failed on {name}: {str(exc).strip().splitlines()[0]}",
                          hint="nothing was written; try another --opset, or report this with `llmkit env`") from None


# --------------------------------------------------------------------------------------------------- the checks

def probe_batch(model_config, padding: int = PROBE_PADDING, left: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded token ids [PROBE_BATCH, PROBE_LENGTH] and their mask; the first row's first (or, `left` False, last)
    `padding` tokens are padding."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model_config.vocab_size, (PROBE_BATCH, PROBE_LENGTH), generator=generator)
    mask = torch.ones_like(ids)
    padded = slice(0, padding) if left else slice(PROBE_LENGTH - padding, PROBE_LENGTH)
    mask[0, padded] = 0
    pad = getattr(model_config, "pad_token_id", None)
    ids[0, padded] = pad if pad is not None else 0
    return ids, mask


def positions_of(mask: torch.Tensor) -> torch.Tensor:
    """Positions that count real tokens only, as transformers' generate gives a left-padded batch."""
    return (mask.cumsum(-1) - 1).clamp_min(0)


def feeds(names: list[str], *tensors: torch.Tensor) -> dict:
    return {name: tensor.numpy() for name, tensor in zip(names, tensors)}


def max_diff(reference: torch.Tensor, got) -> float:
    return float((reference - torch.from_numpy(got)).abs().max())


def masked_max_diff(reference: torch.Tensor, got, mask: torch.Tensor) -> float:
    """Max |Δ| over the positions of real tokens (padding positions' outputs are never used)."""
    diff = (reference - torch.from_numpy(got)).abs().amax(-1)
    return float(diff[mask.bool()].max())


def check_generation(model, export_dir: Path) -> GenerationCheck:
    """ONNX Runtime's greedy loop (presents fed back as past) against transformers' `generate` greedy."""
    ids, mask = probe_batch(model.config, left=not model.config.is_encoder_decoder)
    generator = OnnxGenerator(export_dir)
    with torch.no_grad():
        expected = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                  max_new_tokens=GENERATION_CHECK_TOKENS, eos_token_id=generator.eos_token_ids,
                                  pad_token_id=generator.pad_token_id)
    got = generator.generate(ids.numpy(), GENERATION_CHECK_TOKENS, attention_mask=mask.numpy())
    equal = got.shape == tuple(expected.shape) and bool((torch.from_numpy(got) == expected).all())
    if not equal:
        raise LlmkitError(f"greedy generation on ONNX Runtime differs from transformers' generate: {got.tolist()} "
                          f"instead of {expected.tolist()}; nothing was written", hint="report this with `llmkit env`")
    before = 1 if model.config.is_encoder_decoder else ids.shape[1]   # the decoder start token, or the prompt
    return GenerationCheck(prompt_tokens=ids.shape[1], new_tokens=got.shape[1] - before, equal=equal)


def graph_info(file: str, session) -> GraphInfo:
    def describe(values):
        return [{"name": v.name, "dtype": v.type, "shape": v.shape} for v in values]

    return GraphInfo(file, describe(session.get_inputs()), describe(session.get_outputs()))


def versions() -> dict:
    import onnx
    import onnxruntime
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}
