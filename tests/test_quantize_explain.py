"""`llmkit quantize explain`: reference quantizers equal hand-computed results and agree with bitsandbytes."""

import json

import numpy as np
import pytest
from helpers import assert_clean_error

from llmkit.config import QuantizeExplainConfig
from llmkit.quantize import FP4_LEVELS, NF4_LEVELS, explain


def run(**kwargs):
    return explain(QuantizeExplainConfig(**kwargs))


def test_absmax_int8_by_hand():
    result = run(method="absmax-int8", values=(1.0, -2.0, 0.5))
    assert result.details["absmax"] == 2.0 and result.details["scale"] == 63.5
    assert result.codes == [64, -127, 32]  # 63.5 rounds away from zero; 31.75 -> 32
    assert result.dequantized == pytest.approx([64 / 63.5, -2.0, 32 / 63.5])
    assert result.max_abs_error == pytest.approx(abs(1 - 64 / 63.5))


def test_nf4_by_hand():
    result = run(method="nf4", values=(0.1, -0.5, 2.0, 0.03, -1.2))
    # normalised by absmax 2: 0.05, -0.25, 1, 0.015, -0.6 -> nearest NF4 levels
    assert result.codes == [8, 4, 15, 7, 2]
    assert result.dequantized == pytest.approx([NF4_LEVELS[c] * 2 for c in result.codes])
    assert result.bits_per_value == pytest.approx(4.5)
    assert run(method="nf4", values=(1.0,), double_quant=True).bits_per_value == pytest.approx(4.127, abs=5e-4)


def _bnb():
    return pytest.importorskip("bitsandbytes.functional")


def _unpack(packed, n):
    flat = packed.reshape(-1).numpy().astype(np.int64)
    return np.stack([flat >> 4, flat & 15], axis=1).reshape(-1)[:n]


@pytest.mark.parametrize("method", ["nf4", "fp4"])
@pytest.mark.parametrize("blocksize", [64, 128])
def test_4bit_codes_equal_bitsandbytes(method, blocksize):
    import torch

    F = _bnb()
    assert list(F.get_4bit_type(method, device="cpu").numpy()) == pytest.approx(
        list(NF4_LEVELS if method == "nf4" else FP4_LEVELS), abs=1e-6)
    x = torch.randn(4 * blocksize, generator=torch.Generator().manual_seed(0))
    packed, state = F.quantize_4bit(x, quant_type=method, blocksize=blocksize)
    ours = run(method=method, values=tuple(x.tolist()), blocksize=blocksize)
    theirs = _unpack(packed, x.numel())
    same = np.array(ours.codes) == theirs
    assert same.mean() >= 0.995  # ties between two levels may round either way
    deq = F.dequantize_4bit(packed, state).numpy().reshape(-1)
    assert np.allclose(np.array(ours.dequantized)[same], deq[same], rtol=1e-5, atol=1e-6)
    assert ours.details["absmax"] == pytest.approx(state.absmax.tolist(), rel=1e-6)


def test_double_quant_agrees_with_bitsandbytes():
    import torch

    F = _bnb()
    x = torch.randn(64 * 600, generator=torch.Generator().manual_seed(1))
    packed, state = F.quantize_4bit(x, quant_type="nf4", blocksize=64, compress_statistics=True)
    ours = run(method="nf4", values=tuple(x.tolist()), double_quant=True)
    dq = ours.details["double_quant"]
    assert dq["offset"] == pytest.approx(float(state.offset), rel=1e-5)
    assert (np.array(dq["codes"]) == state.absmax.numpy()).mean() >= 0.99
    assert dq["absmax2"] == pytest.approx(state.state2.absmax.tolist(), rel=1e-5)
    deq = F.dequantize_4bit(packed, state).numpy()
    assert np.abs(np.array(ours.dequantized) - deq).max() < 1e-2


def test_vector_int8_within_one_code_of_bitsandbytes():
    import torch

    F = _bnb()
    x = torch.randn(6, 10, generator=torch.Generator().manual_seed(2))
    codes, row_stats, outliers = F.int8_vectorwise_quant(x.half())
    ours = run(method="vector-int8", values=tuple(x.reshape(-1).tolist()), shape=(6, 10))
    assert np.abs(np.array(ours.codes) - codes.numpy().reshape(-1)).max() <= 1
    assert ours.details["row_absmax"] == pytest.approx(row_stats.float().tolist(), rel=1e-3)
    assert len(ours.details["column_scales"]) == 10


def test_llm_int8_outlier_columns_match_bitsandbytes():
    import torch

    F = _bnb()
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(3))
    x[1, 2], x[3, 5] = 9.0, -7.5
    _, _, outliers = F.int8_vectorwise_quant(x.half(), threshold=6.0)
    ours = run(method="llm-int8", values=tuple(x.reshape(-1).tolist()), shape=(4, 8))
    assert ours.details["outlier_columns"] == [2, 5] == sorted(outliers.tolist())
    deq = np.array(ours.dequantized).reshape(4, 8)
    assert deq[1, 2] == pytest.approx(9.0) and deq[3, 5] == pytest.approx(-7.5)
    assert np.abs(deq - x.numpy()).max() < float(x.abs().max()) / 127 * 6


def test_cli_json_carries_plain_lists(cli):
    result = cli("quantize", "explain", "--method", "nf4", "--values", "0.4,-0.9,0.05,1.5", "--double-quant", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["codes"] == [c for c in data["codes"] if 0 <= c <= 15] and len(data["codes"]) == 4
    assert len(data["dequantized"]) == 4 and data["details"]["levels"] == pytest.approx(list(NF4_LEVELS))
    assert data["bits_per_value"] == pytest.approx(4.127, abs=5e-4)


def test_cli_table(cli):
    result = cli("quantize", "explain", "--method", "llm-int8", "--shape", "2,3", "--values", "-0.5,7.1,-0.2,1,-0.3,0.9")
    assert result.exit_code == 0, result.stderr
    assert "outlier columns" in result.stdout and "bits per value" in result.stdout


@pytest.mark.parametrize("args, fragment", [
    (["--method", "int3", "--values", "1,2"], "not one of"),
    (["--method", "nf4", "--values", "1,2", "--blocksize", "100"], "not supported by bitsandbytes"),
    (["--method", "nf4"], "--values is required"),
    (["--method", "nf4", "--values", "1,x"], "comma-separated numbers"),
    (["--method", "vector-int8", "--values", "1,2,3", "--shape", "2,2"], "holds 4 values"),
    (["--method", "absmax-int8", "--values", "1,2", "--double-quant"], "--double-quant applies to nf4"),
    (["--method", "absmax-int8", "--values", "1,nan"], "finite"),
])
def test_bad_input_exits_2(cli, args, fragment):
    assert_clean_error(cli("quantize", "explain", *args), 2, fragment)
