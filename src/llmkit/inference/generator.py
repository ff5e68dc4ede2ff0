"""Generate text with a local or hub model: decoder-only completion and chat, encoder-decoder (summarisation,
translation) and masked-LM fill-mask; one prompt with streaming, batch JSONL jobs and an interactive chat session.

Core code: it never prints. Streaming text reaches the caller through an `on_text(chunk)` callback; progress and
warnings go through the Reporter. Decoding is transformers' own `model.generate`, given a GenerationConfig built
from the model's generation_config and the user's values, checked with transformers' own validation. With
--backend onnxruntime the model is llmkit.inference.onnx_backend's transformers model over an export dir's graphs,
so that same `generate` drives ONNX Runtime.

Context: a prompt longer than the model's context (minus --max-new-tokens) is cut from the left, keeping its end,
with a warning; when --max-new-tokens alone fills the context the request is refused.
"""

from __future__ import annotations

import copy
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit.config import GenerateConfig
from llmkit.errors import ConfigError
from llmkit.ui import Reporter, SilentReporter
from llmkit.inference.loading import (attach_adapter, check_cpu_4bit_shapes, context_length, has_tokenizer,
                                      load_model_config, quantization_config, select_device)
from llmkit.inference.tasks import GENERATION_TASKS, infer_task

OnText = Callable[[str], None]

DECODING_FLAGS = {
    "max_new_tokens": "--max-new-tokens", "min_new_tokens": "--min-new-tokens", "max_length": "--max-length",
    "min_length": "--min-length", "do_sample": "--do-sample/--greedy", "num_beams": "--num-beams",
    "num_return_sequences": "--num-return-sequences", "length_penalty": "--length-penalty",
    "early_stopping": "--early-stopping", "no_repeat_ngram_size": "--no-repeat-ngram-size",
    "temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p", "min_p": "--min-p",
    "typical_p": "--typical-p", "repetition_penalty": "--repetition-penalty", "stop_strings": "--stop",
}
SAMPLING_ONLY = ("temperature", "top_k", "top_p", "min_p", "typical_p")
BEAM_ONLY = ("length_penalty", "early_stopping")


# ------------------------------------------------------------------------------------------------------ results

@dataclass
class Timings:
    total_s: float
    time_to_first_token_s: float | None = None
    prefill_tokens_per_s: float | None = None
    decode_tokens_per_s: float | None = None


@dataclass
class Sequence:
    text: str                      # the generated continuation only (stop string and eos excluded)
    completion_tokens: int
    finish_reason: str             # eos | stop_string | length | interrupted
    token_ids: list[int] = field(default_factory=list, repr=False)


@dataclass
class GenerateResult:
    model: str
    task: str
    prompt: str                    # the text the model saw (after the chat template and any task prefix)
    prompt_tokens: int
    sequences: list[Sequence]
    params: dict[str, Any]         # the decoding values used
    timings: Timings
    truncated_prompt_tokens: int = 0

    @property
    def text(self) -> str:
        return self.sequences[0].text

    @property
    def completion_tokens(self) -> int:
        return self.sequences[0].completion_tokens

    @property
    def finish_reason(self) -> str:
        return self.sequences[0].finish_reason


@dataclass
class MaskCandidate:
    token: str
    token_id: int
    score: float                   # softmax probability at that position
    sequence: str                  # the text with this candidate in place of the mask


@dataclass
class FillMaskResult:
    model: str
    task: str
    prompt: str
    masks: list[list[MaskCandidate]]  # one list of top-k candidates per mask token, left to right
    timings: Timings


class Generator:
    """A loaded model and tokenizer, the base generation settings, and the calls that generate with them."""

    def __init__(self, cfg: GenerateConfig, reporter: Reporter | None = None, *, model=None, tokenizer=None):
        self.cfg = cfg
        self.reporter = reporter or SilentReporter()
        self.name = cfg.model
        if cfg.adapter:
            from llmkit.modeling import adapter_base

            self.name = adapter_base(cfg.adapter, self.name)
        if model is None:
            self.model, self.tokenizer, self.task = self._load()
        else:  # an already loaded model (tests, the quickstart)
            self.model, self.tokenizer = model, tokenizer
            self.task = infer_task(model.config, cfg.task, self.name or "the model")
        self.model.eval()
        self.encoder_decoder = bool(getattr(self.model.config, "is_encoder_decoder", False))
        self.chat_template = self._chat_template()
        self.task_prefix = self._task_prefix()
        self.base_generation = self._base_generation_config() if self.task != "fill-mask" else None
        self.context = context_length(self.model.config)

    # -- loading
    def _load(self):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars; llmkit reports through its Reporter
        hf_logging.set_verbosity_error()   # flag-combination warnings come from llmkit, naming the flags
        from llmkit.modeling import load_model, load_tokenizer

        cfg = self.cfg
        if getattr(cfg, "backend", "torch") == "onnxruntime":   # eval loads through here too, always with torch
            from llmkit.inference.onnx_backend import open_export_dir

            model = open_export_dir(self.name, cfg.device)
            tokenizer = load_tokenizer(self.name, trust_remote_code=cfg.trust_remote_code)
            return model, tokenizer, infer_task(model.config, cfg.task, self.name)
        model_config = load_model_config(self.name, cfg.trust_remote_code)
        task = infer_task(model_config, cfg.task, self.name)
        device = select_device(cfg.device)
        quantization = quantization_config(cfg, device)
        if cfg.load_in_4bit and device == "cpu":
            check_cpu_4bit_shapes(model_config)
        dtype = None if cfg.dtype == "auto" else cfg.dtype
        tokenizer_source = cfg.adapter if cfg.adapter and has_tokenizer(cfg.adapter) else self.name
        tokenizer = load_tokenizer(tokenizer_source, trust_remote_code=cfg.trust_remote_code)
        model = load_model(self.name, GENERATION_TASKS[task], dtype=dtype, device=device,
                           trust_remote_code=cfg.trust_remote_code, quantization_config=quantization)
        if cfg.adapter:
            model = attach_adapter(model, cfg.adapter)
        return model, tokenizer, task

    def _chat_template(self) -> str | None:
        if self.cfg.chat_template:
            path = Path(self.cfg.chat_template).expanduser()
            if not path.is_file():
                raise ConfigError(f"--chat-template {path}: no such file", hint="pass a Jinja template file")
            text = path.read_text(encoding="utf-8")
            if not text.strip():
                raise ConfigError(f"--chat-template {path} is empty", hint="pass a Jinja template file")
            return text
        return getattr(self.tokenizer, "chat_template", None) or None

    def _task_prefix(self) -> str:
        params = getattr(self.model.config, "task_specific_params", None) or {}
        if self.task == "summarization":
            return (params.get("summarization") or {}).get("prefix", "") or ""
        if self.task == "translation":
            keys = [k for k in params if k.startswith("translation")]
            if len(keys) == 1:
                return params[keys[0]].get("prefix", "") or ""
        return ""

    def _base_generation_config(self):
        """The model's generation_config where it has one; transformers' defaults and max_new_tokens otherwise."""
        from transformers import GenerationConfig

        model_gc = getattr(self.model, "generation_config", None)
        gc = copy.deepcopy(model_gc) if model_gc is not None else GenerationConfig()
        diff = gc.to_diff_dict() if model_gc is not None else {}
        if gc.max_new_tokens is None and "max_length" not in diff:
            default = GenerateConfig.DEFAULT_MAX_NEW_TOKENS
            context = context_length(self.model.config)
            if context is not None and not self.encoder_decoder:
                default = min(default, max(1, context // 2))  # leave half a small context to the prompt
            gc.max_new_tokens = default
            gc.max_length = None
        if gc.pad_token_id is None:
            pad = self.tokenizer.pad_token_id
            if pad is None:
                eos = gc.eos_token_id if gc.eos_token_id is not None else self.tokenizer.eos_token_id
                pad = eos[0] if isinstance(eos, list) else eos
            gc.pad_token_id = pad
        if gc.eos_token_id is None and self.tokenizer.eos_token_id is not None:
            gc.eos_token_id = self.tokenizer.eos_token_id
        return gc

    # -- parameters
    def user_params(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The decoding values the user gave (flags, then `extra`, e.g. from chat /set)."""
        values = {k: getattr(self.cfg, k) for k in DECODING_FLAGS if k != "stop_strings" and hasattr(self.cfg, k)}
        values = {k: v for k, v in values.items() if v is not None}
        if self.cfg.stop:
            values["stop_strings"] = list(self.cfg.stop)
        values.update({k: v for k, v in (extra or {}).items() if v is not None})
        return values

    def generation_config(self, user: dict[str, Any] | None = None, warn: bool = True):
        """GenerationConfig = model's < user's values, validated by transformers; ConfigError names the flag."""
        user = dict(self.user_params() if user is None else user)
        gc = copy.deepcopy(self.base_generation)
        if "max_length" in user and "max_new_tokens" not in user:
            gc.max_new_tokens = None  # --max-length alone bounds the total
        if "min_length" in user and "min_new_tokens" not in user:
            gc.min_new_tokens = None
        if user.get("temperature") == 0:
            if user.get("do_sample", gc.do_sample):
                raise ConfigError("--temperature 0 with sampling: sampling divides the logits by the temperature, "
                                  "so 0 is undefined" + ("" if "do_sample" in user else
                                                         " (this model's generation_config samples by default)"),
                                  hint="use --greedy (what temperature 0 means elsewhere) or a small positive "
                                       "temperature such as 0.1")
            user.pop("temperature")
        try:
            gc.update(**user)
            gc.validate(strict=False, user_set_attributes=set(user))
            _check_processors(gc)
        except ValueError as exc:
            raise _flag_error(exc) from None
        if warn:
            self._warn_unused(gc, user)
        return gc

    def _warn_unused(self, gc, user: dict[str, Any]) -> None:
        if not gc.do_sample:
            unused = [DECODING_FLAGS[k] for k in SAMPLING_ONLY if k in user]
            if unused:
                self.reporter.warn(f"{', '.join(unused)} only matter(s) when sampling: add --do-sample")
        if (gc.num_beams or 1) == 1:
            unused = [DECODING_FLAGS[k] for k in BEAM_ONLY if k in user]
            if unused:
                self.reporter.warn(f"{', '.join(unused)} only matter(s) with beam search: add --num-beams N")

    @staticmethod
    def params_of(gc) -> dict[str, Any]:
        """The values used, for display and JSON."""
        keys = ["max_new_tokens", "min_new_tokens", "max_length", "min_length", "do_sample", "num_beams",
                "num_return_sequences", "temperature", "top_k", "top_p", "min_p", "typical_p",
                "repetition_penalty", "no_repeat_ngram_size", "length_penalty", "early_stopping", "stop_strings",
                "eos_token_id", "pad_token_id"]
        try:  # what generate() fills in for fields left at None (transformers 5)
            defaults = type(gc)._get_default_generation_params()
        except AttributeError:
            defaults = {}
        out = {}
        for key in keys:
            value = getattr(gc, key, None)
            if value is None and key != "max_length":
                value = defaults.get(key)
            if value is None or (key in SAMPLING_ONLY and not gc.do_sample) or \
                    (key in BEAM_ONLY and (gc.num_beams or 1) == 1) or \
                    (key in ("min_length", "min_new_tokens", "no_repeat_ngram_size") and not value):
                continue
            out[key] = list(value) if isinstance(value, tuple) else value
        return out

    # -- prompts
    def render_messages(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        if not self.chat_template:
            raise ConfigError(f"{self.name} has no chat template, so --message, --chat and `messages` lines cannot "
                              "be rendered", hint="pass --chat-template FILE (a Jinja template), or use --prompt to "
                                                  "send text as it is")
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, chat_template=self.chat_template,
                                                      add_generation_prompt=add_generation_prompt)
        except Exception as exc:  # jinja2 errors (syntax, raise_exception in the template)
            source = "--chat-template" if self.cfg.chat_template else "the model's chat template"
            raise ConfigError(f"{source} failed to render the conversation: {str(exc).splitlines()[0]}",
                              hint="check the template, and the roles it accepts") from None

    def with_system(self, messages: list[dict[str, str]], system: str | None) -> list[dict[str, str]]:
        if system and not (messages and messages[0].get("role") == "system"):
            return [{"role": "system", "content": system}] + list(messages)
        return list(messages)

    def encode(self, texts: list[str], chat: bool) -> tuple[list[list[int]], list[int]]:
        """Token ids per text (the template already holds its special tokens), cut to the context from the left."""
        texts = [self.task_prefix + t for t in texts] if self.task_prefix else texts
        encoded = self.tokenizer(texts, add_special_tokens=not chat)["input_ids"]
        return [list(ids) for ids in encoded], [0] * len(encoded)

    def fit_context(self, ids: list[int], gc) -> tuple[list[int], int]:
        """The prompt ids that fit the context with room for the new tokens (a long prompt keeps its end), and how
        many were cut."""
        if self.context is None or self.encoder_decoder:
            if self.encoder_decoder and self.context is not None and len(ids) > self.context:
                cut = len(ids) - self.context
                self.reporter.warn(f"the input has {len(ids)} tokens, more than the encoder's {self.context}: "
                                   f"kept the last {self.context}")
                return ids[cut:], cut
            return ids, 0
        room = self.context - (gc.max_new_tokens if gc.max_new_tokens is not None else 0)
        if gc.max_new_tokens is None and gc.max_length is not None:
            room = min(self.context, gc.max_length) - 1
        if room < 1:
            raise ConfigError(f"--max-new-tokens {gc.max_new_tokens} leaves no room for the prompt in the model's "
                              f"context of {self.context} tokens", hint=f"use --max-new-tokens below {self.context}")
        if len(ids) > room:
            self.reporter.warn(f"the prompt has {len(ids)} tokens, but the context is {self.context} and "
                               f"{gc.max_new_tokens} are for new tokens: kept the last {room} prompt tokens")
            return ids[len(ids) - room:], len(ids) - room
        return ids, 0

    # -- generation
    def generate_ids(self, batch: list[list[int]], gc, *, on_text: OnText | list[OnText | None] | None = None,
                     stop_event: threading.Event | list[threading.Event | None] | None = None
                     ) -> tuple[list[list[Sequence]], Timings]:
        """Generate for a batch of token-id prompts (left-padded for decoder-only models). One `on_text` streams a
        batch of one; a list (one callback per prompt) streams each prompt of a batch (a server's clients). One
        `stop_event` ends the whole batch; a list ends each prompt on its own (a client that went away)."""
        import torch
        from transformers import StoppingCriteriaList

        pad = gc.pad_token_id
        width = max(len(ids) for ids in batch)
        left = not self.encoder_decoder
        rows, masks = [], []
        for ids in batch:
            padding = [pad] * (width - len(ids))
            rows.append(padding + ids if left else ids + padding)
            masks.append(([0] * len(padding) + [1] * len(ids)) if left else ([1] * len(ids) + [0] * len(padding)))
        device = self.model.device
        input_ids = torch.tensor(rows, dtype=torch.long, device=device)
        attention_mask = torch.tensor(masks, dtype=torch.long, device=device)
        streamable = (gc.num_beams or 1) == 1 and (gc.num_return_sequences or 1) == 1
        stops = tuple(gc.stop_strings or ())
        if isinstance(on_text, list):
            streamer = _RowStreamers([_Streamer(self.tokenizer, f, stops) for f in on_text], _eos_ids(gc)) \
                if streamable else None
        else:
            streamer = _Streamer(self.tokenizer if on_text else None, on_text, stops) \
                if streamable and len(batch) == 1 else None
        events = stop_event if isinstance(stop_event, list) else [stop_event] * len(batch)
        criteria = StoppingCriteriaList([_EventStop(events)]) if any(e is not None for e in events) else None
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, generation_config=gc, streamer=streamer,
                      stopping_criteria=criteria)
        if gc.stop_strings:
            kwargs["tokenizer"] = self.tokenizer
        started = time.perf_counter()
        if streamer is not None:
            streamer.started = started
        with torch.inference_mode():
            try:
                out = self.model.generate(**kwargs)
            except ValueError as exc:
                raise _flag_error(exc) from None
        ended = time.perf_counter()
        new = out[:, 1:] if self.encoder_decoder else out[:, width:]
        per_prompt = gc.num_return_sequences or 1
        sequences: list[list[Sequence]] = []
        for i, event in enumerate(events):
            interrupted = event is not None and event.is_set()
            group = [self._finish(new[i * per_prompt + j].tolist(), gc, interrupted) for j in range(per_prompt)]
            sequences.append(group)
        if isinstance(streamer, _RowStreamers):
            streamer.finish([group[0].text for group in sequences])
        elif streamer is not None and on_text is not None:
            streamer.finish(sequences[0][0].text)
        total = ended - started
        count = max(len(s.token_ids) for group in sequences for s in group) if sequences else 0
        first = streamer.first_token_at if streamer is not None else None
        timings = Timings(total_s=round(total, 4))
        prompt_tokens = sum(len(ids) for ids in batch)
        if first is not None:
            ttft = first - started
            timings.time_to_first_token_s = round(ttft, 4)
            timings.prefill_tokens_per_s = round(prompt_tokens / ttft, 1) if ttft > 0 else None
            if count > 1 and ended > first:
                timings.decode_tokens_per_s = round((count - 1) / (ended - first), 1)
        elif total > 0:
            generated = sum(len(s.token_ids) for group in sequences for s in group)
            timings.decode_tokens_per_s = round(generated / total, 1)
        return sequences, timings

    def _finish(self, ids: list[int], gc, interrupted: bool) -> Sequence:
        eos_ids = _eos_ids(gc)
        reason = "length"
        cut = len(ids)
        for k, token in enumerate(ids):
            if token in eos_ids:
                cut, reason = k, "eos"
                break
        ids = ids[:cut]
        if reason != "eos" and gc.pad_token_id is not None and gc.pad_token_id not in eos_ids:
            while ids and ids[-1] == gc.pad_token_id:  # rows that stopped early (stop string) are padded
                ids.pop()
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if gc.stop_strings:
            hits = [text.find(s) for s in gc.stop_strings if s in text]
            if hits:
                text, reason = text[:min(hits)], "stop_string"
        if reason == "length" and interrupted and len(ids) < (gc.max_new_tokens or 1 << 30):
            reason = "interrupted"
        return Sequence(text=text, completion_tokens=len(ids), finish_reason=reason, token_ids=ids)

    def complete(self, text: str, *, chat: bool = False, user: dict[str, Any] | None = None,
                 on_text: OnText | None = None, stop_event: threading.Event | None = None,
                 gc=None) -> GenerateResult:
        """One prompt (already rendered through the chat template when `chat`)."""
        gc = gc if gc is not None else self.generation_config(user)
        ids = self.encode([text], chat)[0][0]
        if not ids:
            raise ConfigError("the prompt is empty after tokenization", hint="give some text")
        ids, cut = self.fit_context(ids, gc)
        self.seed_sampling(gc)
        sequences, timings = self.generate_ids([ids], gc, on_text=on_text, stop_event=stop_event)
        return GenerateResult(model=self.name, task=self.task, prompt=self.task_prefix + text, prompt_tokens=len(ids),
                              sequences=sequences[0], params=self.params_of(gc), timings=timings,
                              truncated_prompt_tokens=cut)

    def seed_sampling(self, gc) -> None:
        """--seed before sampling, so a sampled run repeats."""
        if self.cfg.seed is not None:
            import torch

            torch.manual_seed(self.cfg.seed)

    # -- fill-mask
    def fill_mask(self, text: str, top_k: int | None = None) -> FillMaskResult:
        import torch

        tok = self.tokenizer
        if tok.mask_token is None:
            raise ConfigError(f"the tokenizer of {self.name} has no mask token", hint="use a masked-LM tokenizer")
        if tok.mask_token not in text:
            raise ConfigError(f"the prompt has no mask token {tok.mask_token}",
                              hint=f"write {tok.mask_token} where a word should be predicted, e.g. "
                                   f"\"The capital of France is {tok.mask_token}.\"")
        k = top_k if top_k else 5
        started = time.perf_counter()
        enc = tok(text, return_tensors="pt", truncation=self.context is not None, max_length=self.context)
        enc = {key: value.to(self.model.device) for key, value in enc.items()}
        with torch.inference_mode():
            logits = self.model(**enc).logits[0]
        ids = enc["input_ids"][0]
        positions = (ids == tok.mask_token_id).nonzero().flatten().tolist()
        masks = []
        for pos in positions:
            probs = logits[pos].float().softmax(-1)
            scores, top = probs.topk(min(k, probs.numel()))
            candidates = []
            for score, token_id in zip(scores.tolist(), top.tolist()):
                filled = ids.clone()
                filled[pos] = token_id
                candidates.append(MaskCandidate(token=tok.decode([token_id]).strip(), token_id=token_id,
                                                score=round(score, 6),
                                                sequence=tok.decode(filled.tolist(), skip_special_tokens=True)))
            masks.append(candidates)
        return FillMaskResult(model=self.name, task=self.task, prompt=text, masks=masks,
                              timings=Timings(total_s=round(time.perf_counter() - started, 4)))


def _check_processors(gc) -> None:
    """Build the logits processors generate() would build, so their own checks run before any model call."""
    from transformers.generation import logits_process as lp

    if gc.do_sample:
        if gc.temperature is not None and gc.temperature != 1.0:
            lp.TemperatureLogitsWarper(float(gc.temperature))
        if gc.top_k is not None and gc.top_k != 0:
            lp.TopKLogitsWarper(int(gc.top_k))
        if gc.top_p is not None and gc.top_p != 1.0:
            lp.TopPLogitsWarper(float(gc.top_p))
        if gc.min_p is not None:
            lp.MinPLogitsWarper(float(gc.min_p))
        if gc.typical_p is not None and gc.typical_p != 1.0:
            lp.TypicalLogitsWarper(float(gc.typical_p))
    if gc.repetition_penalty is not None and gc.repetition_penalty != 1.0:
        lp.RepetitionPenaltyLogitsProcessor(float(gc.repetition_penalty))
    if gc.no_repeat_ngram_size:
        lp.NoRepeatNGramLogitsProcessor(int(gc.no_repeat_ngram_size))


def _flag_error(exc: Exception) -> ConfigError:
    text = str(exc).strip()
    names = re.findall(r"`(\w+)`", text)
    flags = list(dict.fromkeys(DECODING_FLAGS[n] for n in names if n in DECODING_FLAGS))
    first = text.splitlines()[0] if text else type(exc).__name__
    where = f"{', '.join(flags)}: " if flags else ""
    return ConfigError(f"{where}{first} (transformers)", hint="see `llmkit generate --help` for the decoding flags")


def _eos_ids(gc) -> set[int]:
    eos = gc.eos_token_id
    return set(eos if isinstance(eos, list) else ([] if eos is None else [eos]))


class _EventStop:
    """A StoppingCriteria that ends a prompt's rows when its Event is set (Ctrl-C in chat, a server's client gone);
    one Event per prompt (None: never), each covering that prompt's num_return_sequences rows."""

    def __init__(self, events: list[threading.Event | None]):
        self.events = events

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        stopped = torch.tensor([e is not None and e.is_set() for e in self.events], dtype=torch.bool,
                               device=input_ids.device)
        return stopped.repeat_interleave(input_ids.shape[0] // len(self.events))


class _Streamer:
    """A generate() streamer (transformers' BaseStreamer interface: put, end). Records the time of the first new
    token; with a callback, decodes and hands out text as it grows, holding back what may be the start of a stop
    string, so the stream never shows one."""

    def __init__(self, tokenizer, on_text: OnText | None, stops: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.stops = stops
        self.started = time.perf_counter()
        self.first_token_at: float | None = None
        self.prompt_seen = False
        self.committed = ""        # text of tokens before the cache
        self.cache: list[int] = []
        self.emitted = 0           # characters handed out
        self.stopped = False

    def put(self, value) -> None:
        if not self.prompt_seen:   # generate() first passes the prompt (or the decoder start token)
            self.prompt_seen = True
            return
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        if self.on_text is None or self.stopped:
            return
        self.cache.extend(value.reshape(-1).tolist())
        piece = self.tokenizer.decode(self.cache, skip_special_tokens=True)
        text = self.committed + piece
        if piece.endswith("\n"):
            self.committed, self.cache = text, []
        self._emit(text, final=False)

    def _emit(self, text: str, final: bool) -> None:
        hits = [text.find(s) for s in self.stops if s in text]
        if hits:
            text, self.stopped, final = text[:min(hits)], True, True
        safe = len(text)
        if not final:
            if text.endswith("\ufffd"):
                safe = len(text.rstrip("\ufffd"))
            for stop in self.stops:
                for n in range(min(len(stop) - 1, len(text)), 0, -1):
                    if text.endswith(stop[:n]):
                        safe = min(safe, len(text) - n)
                        break
        if safe > self.emitted:
            self.on_text(text[self.emitted:safe])
            self.emitted = safe

    def finish(self, final_text: str) -> None:
        """Hand out what was held back, so the stream ends with exactly the result text."""
        if self.emitted < len(final_text):
            self.on_text(final_text[self.emitted:])
            self.emitted = len(final_text)

    def end(self) -> None:
        pass


class _RowStreamers:
    """A generate() streamer for a batch: one _Streamer per prompt, fed its row's tokens until the row ends (a row
    that is done goes on receiving padding)."""

    def __init__(self, rows: list[_Streamer], eos_ids: set[int]):
        self.rows = rows
        self.eos_ids = eos_ids
        self.done = [False] * len(rows)

    @property
    def first_token_at(self) -> float | None:
        return self.rows[0].first_token_at   # every row gets its first token in the same step

    def put(self, value) -> None:
        for i, row in enumerate(self.rows):
            if self.done[i]:
                continue
            new_token = row.prompt_seen   # generate() first passes the prompts
            row.put(value[i])
            self.done[i] = new_token and int(value[i].reshape(-1)[-1]) in self.eos_ids

    def finish(self, final_texts: list[str]) -> None:
        for row, text in zip(self.rows, final_texts):
            if row.on_text is not None:
                row.finish(text)

    def end(self) -> None:
        pass


# ---------------------------------------------------------------------------------------- single prompt, batch

def run_prompt(cfg: GenerateConfig, generator: Generator | None = None, reporter: Reporter | None = None,
               on_text: OnText | None = None) -> GenerateResult | FillMaskResult:
    """--prompt or --message: one generation, streamed through `on_text` as it is produced."""
    generator = generator or Generator(cfg, reporter)
    if generator.task == "fill-mask":
        return generator.fill_mask(cfg.prompt or "", cfg.top_k)
    if cfg.message is not None:
        messages = generator.with_system([{"role": "user", "content": cfg.message}], cfg.system)
        return generator.complete(generator.render_messages(messages), chat=True, on_text=on_text)
    return generator.complete(cfg.prompt or "", on_text=on_text)
