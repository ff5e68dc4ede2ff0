"""Which task a checkpoint fits, from its config alone (no weights loaded)."""

from __future__ import annotations

from llmkit.errors import ConfigError

# the generation tasks and the transformers Auto class family (llmkit.modeling.AUTO_CLASSES key) each runs on
GENERATION_TASKS = {"text-generation": "causal-lm", "summarization": "seq2seq", "translation": "seq2seq",
             "fill-mask": "masked-lm"}

# the generate --task each task-head class suffix fits
HEAD_TASK = {"ForSequenceClassification": "text-classification", "ForTokenClassification": "token-classification",
             "ForQuestionAnswering": "question-answering"}


def head_task(model_config) -> str | None:
    """The generate --task a checkpoint's head fits (None for LM heads and bare encoders)."""
    for arch in getattr(model_config, "architectures", None) or []:
        for suffix, task in HEAD_TASK.items():
            if arch.endswith(suffix):
                return task
    return None


def infer_task(model_config, requested: str | None, name: str) -> str:
    """The task for this architecture, or a ConfigError that says what the model is and which --task fits."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
                                                        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES)

    model_type = getattr(model_config, "model_type", "?")
    archs = list(getattr(model_config, "architectures", None) or [])
    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    masked = set(MODEL_FOR_MASKED_LM_MAPPING_NAMES.values())
    seq2seq = set(MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES.values())
    encoder_decoder = bool(getattr(model_config, "is_encoder_decoder", False))
    head = None
    for arch in archs:
        if arch in seq2seq or (encoder_decoder and arch.endswith("ForConditionalGeneration")):
            head = "seq2seq"
        elif arch in causal or arch.endswith("ForCausalLM") or arch.endswith("LMHeadModel"):
            head = "causal-lm"
        elif arch in masked or arch.endswith("ForMaskedLM"):
            head = "masked-lm"
        if head:
            break
    if head is None and not archs:  # a bare config: go by the model type
        if encoder_decoder and model_type in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
            head = "seq2seq"
        elif model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            head = "causal-lm"
        elif model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
            head = "masked-lm"
    fits = {"causal-lm": "--task text-generation", "seq2seq": "--task summarization or --task translation",
            "masked-lm": "--task fill-mask"}
    what = archs[0] if archs else f"a {model_type} model"
    if head is None:
        if encoder_decoder and model_type in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
            could = "seq2seq"
        elif model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:  # encoders (BERT) before their rarer causal heads
            could = "masked-lm"
        elif model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            could = "causal-lm"
        else:
            could = None
        kind = _head_kind(what)
        message = f"{name} is {what}{kind}: it has no head that generates text or fills masks"
        own = head_task(model_config)
        if own is not None:
            raise ConfigError(message, hint=f"its head fits --task {own} (or --task feature-extraction for "
                                            "embeddings); to generate, use a model with an LM head")
        if could:
            hint = (f"its architecture ({model_type}) fits {fits[could]} when saved with that head "
                    f"({_example_class(could, model_type)}); this checkpoint's head cannot be used to generate")
        else:
            hint = "use a causal-LM (text-generation), encoder-decoder (summarization, translation) or masked-LM " \
                   "(fill-mask) model"
        raise ConfigError(message, hint=hint)
    if requested is None:
        return {"causal-lm": "text-generation", "seq2seq": "summarization", "masked-lm": "fill-mask"}[head]
    if GENERATION_TASKS[requested] != head:
        nature = {"causal-lm": "a decoder-only language model", "seq2seq": "an encoder-decoder model",
                  "masked-lm": "a masked language model"}[head]
        raise ConfigError(f"--task {requested} does not fit {name}: it is {what}, {nature}",
                          hint=f"use {fits[head]}")
    return requested


def _head_kind(arch: str) -> str:
    for suffix, kind in (("ForSequenceClassification", "sequence classification"),
                         ("ForTokenClassification", "token classification"),
                         ("ForQuestionAnswering", "extractive question answering"),
                         ("ForMultipleChoice", "multiple choice"), ("Model", "the bare encoder, no head")):
        if arch.endswith(suffix):
            return f" ({kind})"
    return ""


def _example_class(head: str, model_type: str) -> str:
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
                                                        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES)

    table = {"causal-lm": MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, "masked-lm": MODEL_FOR_MASKED_LM_MAPPING_NAMES,
             "seq2seq": MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES}[head]
    return table.get(model_type, "?")
