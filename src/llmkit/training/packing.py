"""Which models train exactly on packed rows (`sft --pack`, `pretrain --padding-free`, and `peft` through them).

A packed row holds several examples whose position ids restart at each one, and no attention mask: transformers
finds the examples in the position ids and builds a block-diagonal causal mask, but only in models that pass
position_ids to `create_causal_mask` and take their positions from position_ids. The packed forward then equals the
examples run one by one. Every architecture in EXACT is checked against that in tests/test_family_invariants.py
(as is every refusal in REFUSED: the packed forward really differs); any other is refused until it is checked.
"""

from __future__ import annotations

from llmkit.errors import ConfigError

EXACT = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "phi3", "gpt2", "gpt_neo", "gptj", "gpt_neox",
                   "falcon"})
_MASK_WITHOUT_POSITIONS = ("builds its causal mask without the position ids, so packed examples would attend to "
                           "each other")
_ALIBI = ("uses ALiBi and its forward takes no position_ids, so transformers cannot tell the packed examples apart "
          "and they would attend to each other")
REFUSED = {"opt": _MASK_WITHOUT_POSITIONS, "biogpt": _MASK_WITHOUT_POSITIONS, "xglm": _MASK_WITHOUT_POSITIONS,
           "bloom": _ALIBI, "mpt": _ALIBI}
_FALCON_ALIBI = ("uses ALiBi (alibi: true), whose biases grow with the position in the packed row rather than in "
                 "the example and are rounded to bfloat16, so a packed example's attention differs from its own")
_SEPARATING_ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


def packing_refusal(model) -> str | None:
    """Why `model` (before any adapter wraps it) cannot train packed rows exactly, or None when it can."""
    import inspect

    config = model.config
    kind = getattr(config, "model_type", None)
    if kind in REFUSED:
        return REFUSED[kind]
    if kind == "falcon" and getattr(config, "alibi", False):
        return _FALCON_ALIBI
    if kind not in EXACT:
        return (f"is not among the architectures llmkit has checked to keep packed examples apart "
                f"({', '.join(sorted(EXACT))})")
    if "position_ids" not in inspect.signature(model.forward).parameters:
        return "takes no position_ids, so transformers cannot tell the packed examples apart"
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl not in _SEPARATING_ATTENTION:
        return f"uses attention '{impl}', which cannot keep packed examples apart"
    return None


def check_packing_support(model, flag: str) -> None:
    """Refuse `flag` (--pack, --padding-free) for a model whose packed forward would differ from the unpacked one.
    Called before the run dir is written."""
    reason = packing_refusal(model)
    if reason is None:
        return
    kind = getattr(model.config, "model_type", None)
    name = type(model).__name__ + (f" (model type {kind})" if kind else "")
    raise ConfigError(f"{flag}: {name} {reason}",
                      hint="drop --pack/--padding-free (examples are then padded per batch)")
