"""The 4 GB lesson (#10): the cls-bert-large-4gb preset fits a 330M BERT-large classifier in 4 GiB by
memory-estimate's arithmetic, where the baseline (batch 32, AdamW) does not."""

from llmkit import presets
from llmkit.config import MemoryEstimateConfig, SFTConfig
from llmkit.configio import resolve
from llmkit.memory import estimate


def _estimate(cfg: SFTConfig, **changes):
    fields = dict(model="bert-large", mode="train", task=cfg.task, optimizer=cfg.optimizer,
                  batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, seq_len=cfg.seq_len,
                  grad_checkpointing=cfg.grad_checkpointing, mixed_precision=cfg.mixed_precision,
                  freeze_base=cfg.freeze_base, gpu_memory="4GiB")
    fields.update(changes)
    return estimate(MemoryEstimateConfig(**fields))


def test_the_preset_fits_a_bert_large_classifier_in_4_gib_and_the_baseline_does_not():
    assert presets.preset_text("sft", "cls-bert-large-4gb").startswith(
        "# llmkit sft --task seq-cls --preset cls-bert-large-4gb")
    cfg = resolve(SFTConfig, preset="cls-bert-large-4gb", overrides={"model": "m", "data": "d", "output_dir": "o"})
    assert cfg.task == "seq-cls" and cfg.batch_size * cfg.grad_accum == 32
    est = _estimate(cfg)
    assert est.fits and 300e6 < est.params_trainable < 340e6 and est.params_trainable == est.params_total
    assert not _estimate(cfg, batch_size=32, grad_accum=1, grad_checkpointing=False, optimizer="adamw").fits
