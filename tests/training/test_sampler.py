"""The training sampler: accelerate's seeded order, without a Python list of every row index."""

from __future__ import annotations

import pytest
import torch
from accelerate.data_loader import SeedableRandomSampler

from llmkit.training.trainer import PermutationSampler


@pytest.mark.parametrize("rows", [1, 7, 2 * PermutationSampler.SLICE + 3])
@pytest.mark.parametrize("seed", [0, 42])
def test_the_order_is_seedable_random_samplers_epoch_after_epoch(rows, seed):
    ours = PermutationSampler(rows, seed)
    reference = SeedableRandomSampler(data_source=range(rows), generator=None, data_seed=seed)
    for epoch in range(3):
        if epoch == 2:   # the Trainer sets the epoch; without it both move on by themselves
            ours.set_epoch(5)
            reference.set_epoch(5)
        assert list(ours) == list(reference)
    assert len(ours) == rows


def test_llmkit_trainer_draws_rows_with_it(tiny_trainer_args):
    trainer, rows = tiny_trainer_args
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, PermutationSampler) and len(sampler) == rows


@pytest.fixture
def tiny_trainer_args(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

    from llmkit.training.trainer import LlmkitTrainer

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    rows = [{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}] * 10
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    return LlmkitTrainer(model=model, args=args, train_dataset=rows), len(rows)
