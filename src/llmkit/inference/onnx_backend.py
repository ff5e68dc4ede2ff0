"""transformers models that run the ONNX graphs `llmkit export --format onnx` wrote, in Optimum's layout, so
transformers' own `generate` (greedy, sampling, beams, stop strings, streamers) drives ONNX Runtime, as Optimum's
ORTModelForCausalLM does.

* causal LM: model.onnx, inputs input_ids, attention_mask, position_ids, past_key_values.{i}.key/value; outputs
  logits, present.{i}.key/value.
* encoder-decoder: encoder_model.onnx (input_ids, attention_mask -> last_hidden_state) and decoder_model.onnx
  (input_ids, encoder_attention_mask, encoder_hidden_states, past_key_values.{i}.decoder.key/value -> logits,
  present.{i}.decoder.key/value; cross-attention keys and values are computed from encoder_hidden_states each step).

One decoder graph serves every step: the prompt (or the decoder start token) goes in with an empty past (length 0),
then the new tokens with the Cache `generate` passes as their past. The graph returns whole presents (past + new);
their new positions go into that Cache through `update`, so the Cache stays generate's (beam search reorders it).

Heavy module (torch, transformers at the top): reached only from inside a command body.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, GenerationConfig, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutputWithPast, Seq2SeqLMOutput

from llmkit.errors import ConfigError

ONNX_FILE = "model.onnx"
ENCODER_FILE, DECODER_FILE = "encoder_model.onnx", "decoder_model.onnx"
PAST_PREFIX = "past_key_values."


def ort_session(path: Path, providers: list[str] | None = None, threads: int | None = None):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3   # ORT's notices about unused initializers are not the user's business
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


def open_export_dir(export_dir: str, device: str):
    """`generate --backend onnxruntime -m EXPORT_DIR`: the dir's generator on the --device's execution provider,
    or a ConfigError saying why not."""
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("--backend onnxruntime needs onnxruntime, which is not installed",
                          hint="pip install 'llmkit[export]'") from None
    path = Path(export_dir).expanduser()
    if not (path / ONNX_FILE).is_file() and not (path / ENCODER_FILE).is_file():
        raise ConfigError(f"{export_dir} has no {ONNX_FILE}: --backend onnxruntime runs the dir that "
                          "`llmkit export --format onnx` writes",
                          hint=f"llmkit export --format onnx -m {export_dir} -o EXPORT_DIR, then -m EXPORT_DIR")
    gpu = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    if device == "cuda" and not gpu:
        raise ConfigError("--device cuda with --backend onnxruntime needs onnxruntime-gpu (this onnxruntime runs on "
                          "the CPU only)", hint="pip install onnxruntime-gpu, or use --device cpu")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device != "cpu" and gpu else None
    return load_onnx_model(path, providers=providers)


def load_onnx_model(export_dir: str | Path, *, providers: list[str] | None = None, threads: int | None = None):
    """The export dir's generator: an OnnxSeq2SeqLM beside encoder_model.onnx, else an OnnxCausalLM."""
    export_dir = Path(export_dir)
    model_class = OnnxSeq2SeqLM if (export_dir / ENCODER_FILE).is_file() else OnnxCausalLM
    return model_class(export_dir, providers=providers, threads=threads)


class _OnnxLM(PreTrainedModel, GenerationMixin):
    """What both generators share: config and generation_config from the export dir, a decoder session, and the
    past its graph takes. No parameters: the weights live in the graph, on ONNX Runtime's side."""

    decoder_file = ONNX_FILE

    def __init__(self, export_dir: Path, *, providers: list[str] | None, threads: int | None):
        super().__init__(AutoConfig.from_pretrained(export_dir))
        self.decoder_session = ort_session(export_dir / self.decoder_file, providers, threads)
        self.past_shapes = {i.name: i.shape for i in self.decoder_session.get_inputs()
                            if i.name.startswith(PAST_PREFIX)}
        self.generation_config = GenerationConfig.from_pretrained(export_dir) \
            if (export_dir / "generation_config.json").is_file() else GenerationConfig.from_model_config(self.config)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")   # ONNX Runtime takes and returns host arrays, whichever provider runs the graph

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32         # the exporter traces the model in fp32

    def run_decoder(self, feeds: dict[str, torch.Tensor], cache) -> torch.Tensor:
        """Logits of the new tokens, the past taken from `cache` (a DynamicCache, or None: no past) and the new
        positions of the presents added to it."""
        batch = next(iter(feeds.values())).shape[0]
        layers = cache.layers if cache is not None else []
        past = {}
        for i, name in enumerate(self.past_shapes):
            layer, kind = divmod(i, 2)
            if layer < len(layers) and layers[layer].is_initialized:
                past[name] = (layers[layer].keys, layers[layer].values)[kind].contiguous().numpy()
            else:
                shape = self.past_shapes[name]
                past[name] = np.zeros((batch, shape[1], 0, shape[3]), dtype=np.float32)
        outputs = self.decoder_session.run(None, {**{k: v.numpy() for k, v in feeds.items()}, **past})
        if cache is not None:
            known = next(iter(past.values())).shape[2]
            presents = [torch.from_numpy(p[:, :, known:]) for p in outputs[1:]]
            for layer in range(len(presents) // 2):
                cache.update(presents[2 * layer], presents[2 * layer + 1], layer)
        return torch.from_numpy(outputs[0])


class OnnxCausalLM(_OnnxLM):
    main_input_name = "input_ids"

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=None, **kwargs):
        past_length = cache.get_seq_length() if cache is not None else 0
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape[0], past_length + input_ids.shape[1], dtype=torch.long)
        if position_ids is None:   # positions count real tokens only, as generate gives a left-padded batch
            position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)[:, -input_ids.shape[1]:]
        logits = self.run_decoder({"input_ids": input_ids, "attention_mask": attention_mask,
                                   "position_ids": position_ids}, cache)
        return CausalLMOutputWithPast(logits=logits, cache=cache)


class _OnnxEncoder(torch.nn.Module):
    """encoder_model.onnx as the module generate's `get_encoder()` finds (the `encoder` attribute)."""

    main_input_name = "input_ids"

    def __init__(self, session):
        super().__init__()
        self.session = session

    def forward(self, input_ids, attention_mask=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.session.run(None, {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})[0]
        return BaseModelOutput(last_hidden_state=torch.from_numpy(hidden))


class OnnxSeq2SeqLM(_OnnxLM):
    main_input_name = "input_ids"
    decoder_file = DECODER_FILE

    def __init__(self, export_dir: Path, *, providers: list[str] | None, threads: int | None):
        super().__init__(export_dir, providers=providers, threads=threads)
        self.encoder = _OnnxEncoder(ort_session(export_dir / ENCODER_FILE, providers, threads))

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, encoder_outputs=None, cache=None,
                use_cache=None, **kwargs):
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids, attention_mask)
        hidden = encoder_outputs[0]
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long)
        # the graph recomputes cross-attention from the encoder's output, so only the self-attention past is kept
        logits = self.run_decoder({"input_ids": decoder_input_ids, "encoder_attention_mask": attention_mask,
                                   "encoder_hidden_states": hidden},
                                  cache.self_attention_cache if cache is not None else None)
        return Seq2SeqLMOutput(logits=logits, cache=cache, encoder_last_hidden_state=hidden)


class OnnxGenerator:
    """Greedy generation on ONNX Runtime from an export dir, arrays in and out (the export's own check, the
    benchmark): transformers' `generate` on `load_onnx_model`'s model."""

    def __init__(self, export_dir: str | Path, *, providers: list[str] | None = None, threads: int | None = None):
        self.model = load_onnx_model(export_dir, providers=providers, threads=threads)
        gc = self.model.generation_config
        eos = gc.eos_token_id
        self.eos_token_ids = [] if eos is None else list(eos) if isinstance(eos, list) else [eos]
        self.pad_token_id = gc.pad_token_id if gc.pad_token_id is not None else \
            (self.eos_token_ids[0] if self.eos_token_ids else None)

    def generate(self, input_ids, max_new_tokens: int, attention_mask=None, **generate_kwargs) -> np.ndarray:
        """Up to `max_new_tokens` greedy tokens as transformers' `generate` returns them ([batch, length]): a causal
        LM's after its prompt, an encoder-decoder's after the decoder start token. Prompts in a batch are padded
        (left for a causal LM), `attention_mask` marking real tokens."""
        ids = torch.from_numpy(np.asarray(input_ids, dtype=np.int64))
        mask = torch.ones_like(ids) if attention_mask is None else torch.from_numpy(
            np.asarray(attention_mask, dtype=np.int64))
        with torch.inference_mode():
            return self.model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                       max_new_tokens=max_new_tokens, eos_token_id=self.eos_token_ids or None,
                                       pad_token_id=self.pad_token_id, **generate_kwargs).numpy()
