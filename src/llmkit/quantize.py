"""Quantization, explained step by step on numbers a user gives (`quantize explain`).

Reference implementations in numpy, written to be read; tests check them against bitsandbytes where it implements
the same thing (nf4/fp4 codes, vector-wise int8, LLM.int8 outlier columns).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmkit.config import SUPPORTED_4BIT_BLOCKSIZES, QuantizeExplainConfig

# The 16 NF4 levels (QLoRA, Dettmers et al. 2023): quantiles of N(0, 1) scaled to [-1, 1], with an exact zero.
NF4_LEVELS = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
              -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
              0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
              0.7229568362236023, 1.0)
# bitsandbytes' FP4 (1 sign, 2 exponent, 1 mantissa bits) levels, normalised to [-1, 1], indexed by code.
FP4_LEVELS = (0.0, 0.005208333333, 0.6666666667, 1.0, 0.3333333333, 0.5, 0.1666666667, 0.25,
              -0.0, -0.005208333333, -0.6666666667, -1.0, -0.3333333333, -0.5, -0.1666666667, -0.25)
DOUBLE_QUANT_BLOCK = 256  # absmax values per second-level block (bitsandbytes' compress_statistics)


@dataclass
class ExplainResult:
    method: str
    values: list[float]
    shape: list[int]
    codes: list[int]                  # integer codes, flat, in the order of `values`
    dequantized: list[float]
    abs_error: list[float]
    max_abs_error: float
    mean_abs_error: float
    relative_error: float             # ||x - x̂||_F / ||x||_F
    bits_per_value: float             # codes plus the constants stored with them, per value
    steps: list[str]                  # what was done, in words, with the numbers
    details: dict = field(default_factory=dict)


def explain(cfg: QuantizeExplainConfig) -> ExplainResult:
    import numpy as np

    x = np.asarray(cfg.values, dtype=np.float64)
    shape = list(cfg.shape) if cfg.shape else [1, x.size] if cfg.method in ("vector-int8", "llm-int8") else [x.size]
    handler = {"absmax-int8": _absmax_int8, "vector-int8": _vector_int8, "llm-int8": _llm_int8,
               "nf4": _four_bit, "fp4": _four_bit}[cfg.method]
    codes, dequantized, bits, steps, details = handler(x.reshape(shape), cfg)
    error = np.abs(x - dequantized.reshape(-1))
    norm = float(np.linalg.norm(x))
    return ExplainResult(
        method=cfg.method, values=[float(v) for v in x], shape=shape, codes=[int(c) for c in codes.reshape(-1)],
        dequantized=[float(v) for v in dequantized.reshape(-1)], abs_error=[float(e) for e in error],
        max_abs_error=float(error.max()), mean_abs_error=float(error.mean()),
        relative_error=float(np.linalg.norm(error) / norm) if norm else 0.0, bits_per_value=round(bits, 4),
        steps=steps, details=details)


def _round_half_away(values):
    import numpy as np

    return np.sign(values) * np.floor(np.abs(values) + 0.5)


def _absmax_int8(x, cfg):
    import numpy as np

    absmax = float(np.abs(x).max())
    scale = 127.0 / absmax if absmax else 1.0
    codes = np.clip(_round_half_away(x * scale), -127, 127).astype(np.int64)
    dequantized = codes / scale
    steps = [f"absmax = max|x| = {absmax:g}",
             f"scale = 127 / absmax = {scale:g}",
             "code = round(x × scale), in [-127, 127]",
             "x̂ = code / scale"]
    bits = 8 + 32 / x.size  # one fp32 scale for the whole tensor
    return codes, dequantized, bits, steps, {"absmax": absmax, "scale": scale}


def _rowwise(x):
    import numpy as np

    row_absmax = np.abs(x).max(axis=1)
    safe = np.where(row_absmax == 0, 1.0, row_absmax)
    codes = np.clip(_round_half_away(x * (127.0 / safe)[:, None]), -127, 127).astype(np.int64)
    return codes, codes * (safe / 127.0)[:, None], row_absmax


def _vector_int8(x, cfg):
    import numpy as np

    codes, dequantized, row_absmax = _rowwise(x)
    col_absmax = np.abs(x).max(axis=0)
    col_safe = np.where(col_absmax == 0, 1.0, col_absmax)
    col_codes = np.clip(_round_half_away(x * (127.0 / col_safe)[None, :]), -127, 127).astype(np.int64)
    steps = [f"per-row absmax (the scale of each row, as for activations X): {_fmt(row_absmax)}",
             "code[i, j] = round(127 × x[i, j] / row_absmax[i])",
             f"per-column absmax (as for weights W, used for X·W): {_fmt(col_absmax)}",
             "x̂[i, j] = code[i, j] × row_absmax[i] / 127 (the codes and x̂ shown are the row-wise ones)",
             "a matmul X·W multiplies int8 codes in int32 and rescales by row_absmax(X) ⊗ col_absmax(W) / 127²"]
    bits = 8 + 32 * x.shape[0] / x.size
    details = {"row_absmax": row_absmax.tolist(), "row_scales": (127.0 / np.where(row_absmax == 0, 1, row_absmax)).tolist(),
               "column_absmax": col_absmax.tolist(), "column_scales": (127.0 / col_safe).tolist(),
               "column_codes": col_codes.reshape(-1).tolist()}
    return codes, dequantized, bits, steps, details


def _llm_int8(x, cfg):
    import numpy as np

    threshold = cfg.threshold
    outliers = np.nonzero((np.abs(x) >= threshold).any(axis=0))[0]
    regular = np.setdiff1d(np.arange(x.shape[1]), outliers)
    codes = np.zeros(x.shape, dtype=np.int64)
    dequantized = x.astype(np.float16).astype(np.float64)  # outlier columns stay 16-bit
    row_absmax = np.zeros(x.shape[0])
    if regular.size:
        part_codes, part_deq, row_absmax = _rowwise(x[:, regular])
        codes[:, regular] = part_codes
        dequantized[:, regular] = part_deq
    steps = [f"outlier columns: those with any |x| ≥ {threshold:g}: {outliers.tolist() or 'none'}",
             "outlier columns stay in fp16 (code 0 here); they go through a 16-bit matmul",
             f"the other columns are int8, row-wise: row absmax over them = {_fmt(row_absmax)}",
             "code = round(127 × x / row_absmax); x̂ = code × row_absmax / 127",
             "the two matmul results are added: X·W = X_int8·W_int8 (rescaled) + X_fp16[:, outliers]·W_fp16[outliers]"]
    n_out = outliers.size * x.shape[0]
    bits = (8 * (x.size - n_out) + 16 * n_out + 32 * x.shape[0]) / x.size
    details = {"threshold": threshold, "outlier_columns": outliers.tolist(), "row_absmax": row_absmax.tolist(),
               "outlier_share": n_out / x.size}
    return codes, dequantized, bits, steps, details


def _four_bit(x, cfg):
    import numpy as np

    levels = np.asarray(NF4_LEVELS if cfg.method == "nf4" else FP4_LEVELS)
    flat = x.reshape(-1)
    block = cfg.blocksize
    n_blocks = -(-flat.size // block)
    absmax = np.array([np.abs(flat[i * block:(i + 1) * block]).max() for i in range(n_blocks)])
    safe = np.where(absmax == 0, 1.0, absmax)
    per_value_absmax = np.repeat(safe, block)[: flat.size]
    normalized = flat / per_value_absmax
    codes = np.abs(normalized[:, None] - levels[None, :]).argmin(axis=1)
    steps = [f"{n_blocks} block(s) of {block} values; absmax per block = {_fmt(absmax)}",
             f"normalised = x / absmax(block), in [-1, 1]: {_fmt(normalized)}",
             f"the 16 {cfg.method.upper()} levels: {_fmt(levels)}",
             "code = index of the nearest level (0–15, two codes per byte)"]
    details: dict = {"levels": levels.tolist(), "absmax": absmax.tolist(), "normalized": normalized.tolist(),
                     "blocksize": block}
    if cfg.double_quant:
        stored_absmax, dq = _double_quant(absmax)
        details["double_quant"] = dq
        bits = 4 + 8 / block + 32 / (block * DOUBLE_QUANT_BLOCK)
        steps += [f"double quantization: offset = mean(absmax) = {dq['offset']:g}; (absmax − offset) is quantized "
                  f"to 8 bits in blocks of {DOUBLE_QUANT_BLOCK} with bitsandbytes' dynamic map, second-level "
                  f"absmax = {_fmt(dq['absmax2'])}; absmax codes = {dq['codes']}",
                  f"bits per value = 4 + 8/{block} + 32/({block}×{DOUBLE_QUANT_BLOCK}) = {bits:.4f}"]
        scale = np.repeat(stored_absmax, block)[: flat.size]
    else:
        bits = 4 + 32 / block
        steps.append(f"bits per value = 4 + 32/{block} (one fp32 absmax per block) = {bits:.4f}")
        scale = per_value_absmax
    dequantized = levels[codes] * scale
    steps.append("x̂ = level[code] × absmax(block)")
    return codes, dequantized, bits, steps, details


def _double_quant(absmax):
    """Second-level quantization of the block constants, as bitsandbytes' compress_statistics does it."""
    import numpy as np

    dynamic = np.asarray(_dynamic_map())
    offset = float(absmax.mean())
    centred = absmax - offset
    n = -(-centred.size // DOUBLE_QUANT_BLOCK)
    absmax2 = np.array([np.abs(centred[i * DOUBLE_QUANT_BLOCK:(i + 1) * DOUBLE_QUANT_BLOCK]).max() for i in range(n)])
    safe = np.where(absmax2 == 0, 1.0, absmax2)
    scale = np.repeat(safe, DOUBLE_QUANT_BLOCK)[: centred.size]
    codes = np.abs((centred / scale)[:, None] - dynamic[None, :]).argmin(axis=1)
    restored = dynamic[codes] * scale + offset
    return restored, {"offset": offset, "absmax2": absmax2.tolist(), "codes": codes.tolist(),
                      "absmax_dequantized": restored.tolist()}


def _dynamic_map() -> list[float]:
    """bitsandbytes' signed 8-bit dynamic map (its create_dynamic_map(signed=True)), rebuilt in plain Python."""
    import itertools

    max_exponent_bits, total_bits = 7, 8
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    data: list[float] = []
    for i in range(max_exponent_bits):
        fraction_items = 2 ** (i + non_sign_bits - max_exponent_bits) + 1
        boundaries = [0.1 + 0.9 * k / (fraction_items - 1) for k in range(fraction_items)]
        means = [(a + b) / 2 for a, b in itertools.pairwise(boundaries)]
        data += [10 ** (-(max_exponent_bits - 1) + i) * m for m in means]
        data += [-(10 ** (-(max_exponent_bits - 1) + i)) * m for m in means]
    if additional_items > 0:
        boundaries = [0.1 + 0.9 * k / additional_items for k in range(additional_items + 1)]
        means = [(a + b) / 2 for a, b in itertools.pairwise(boundaries)]
        data += [10 ** (-(max_exponent_bits - 1) + max_exponent_bits - 1) * m for m in means]
        data += [-(10 ** (-(max_exponent_bits - 1) + max_exponent_bits - 1)) * m for m in means]
    data += [0.0, 1.0]
    assert len(data) == 2**total_bits
    return sorted(data)


def _fmt(values, limit: int = 16) -> str:
    values = list(values)
    shown = ", ".join(f"{float(v):.4g}" for v in values[:limit])
    return f"[{shown}{', …' if len(values) > limit else ''}]"
