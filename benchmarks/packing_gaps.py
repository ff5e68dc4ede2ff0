"""Packed vs per-example logits for every causal-LM family llmkit names (the figures behind llmkit.training.packing).

For each family, a tiny random model (the configs of tests/training/test_family_invariants.py) gets the batches llmkit really
trains on — `pretrain --padding-free` blocks and `sft --pack` blocks — and the largest |logit difference| against the
same documents run one at a time is printed, with llmkit's verdict (packed or refused).

    .venv/bin/python benchmarks/packing_gaps.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "training"), str(ROOT / "tests"), str(ROOT / "src")]


def main() -> None:
    import torch
    from transformers import AutoTokenizer

    import test_family_invariants as f
    from conftest import _train
    from llmkit import corpus

    torch.set_num_threads(1)
    texts = [r["text"] for r in corpus.documents()[0][:400]]
    with tempfile.TemporaryDirectory() as tmp:
        tok = AutoTokenizer.from_pretrained(_train("bpe", Path(tmp) / "bpe", texts, 600))
    print("| family | pretrain --padding-free: max abs logit gap | sft --pack: max abs logit gap | llmkit |")
    print("|---|---:|---:|---|")
    for family in f.CAUSAL:
        model = f._model(family, tok)
        docs = f._ids(f.PACKED_DOCS_LONG.get(family, f.PACKED_DOCS), len(tok))
        gaps = []
        with torch.no_grad():
            for _command, (batch, trained) in f._packed_batches(tok, docs).items():
                reference, _ = f._per_example(model, docs, trained)
                packed, _ = f._packed_logits_by_example(model, batch, docs)
                gaps.append(max((p - r).abs().max().item() for p, r in zip(packed, reference)))
        refusal = f._refusal(model)
        verdict = "packs" if refusal is None else "refused: " + refusal.message.split(") ", 1)[-1]
        print(f"| {family} | {gaps[0]:.2e} | {gaps[1]:.2e} | {verdict} |")


if __name__ == "__main__":
    main()
