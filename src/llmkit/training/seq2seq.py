"""`llmkit sft --task seq2seq`: source -> target fine-tuning of an encoder-decoder (T5, BART, Marian, mBART), the
pieces the task recipe (training/tasks.py) uses for it.

Batches are transformers' DataCollatorForSeq2Seq (labels padded with -100: loss on the target tokens only; the model
makes its decoder inputs by shifting the labels right). Evaluation is predict_with_generate's: the loss on the
targets, then each source generated (greedy or --num-beams, at most --max-new-tokens) and scored against its target
with llmkit.text_metrics: ROUGE-1/2/L/Lsum, BLEU and chrF, on the 0-100 scale.
"""

from __future__ import annotations

import torch

from llmkit.config import SFTConfig
from llmkit.data.tasks import IGNORE
from llmkit.errors import ConfigError
from llmkit.training.models import KIND_WORDS, architecture_kind
from llmkit.training.objectives import NUM_TOKENS, BatchCollator

METRICS = ("rouge", "bleu", "chrf")
OTHER_TASKS = {"decoder": "--task chat (instruction tuning) trains a decoder-only model on source -> target pairs "
                          "written as prompt and completion",
               "encoder": "an encoder-only model takes --task seq-cls, token-cls or extractive-qa"}


def check_encoder_decoder(cfg: SFTConfig, fields: dict | None) -> None:
    """--task seq2seq needs an encoder-decoder: checked on the architecture's fields (--from-scratch) or the model's
    config.json, before any weight is loaded."""
    if fields is None:
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
        except (OSError, ValueError):
            return   # loading the model reports it with a clear message
        fields = config.to_dict()
    model_type = fields.get("model_type", "")
    if fields.get("is_encoder_decoder"):
        return
    kind = architecture_kind(model_type, False)
    raise ConfigError(f"--task seq2seq needs an encoder-decoder model (T5, BART), but {cfg.model} is "
                      f"{'an' if kind[0] in 'aeiou' else 'a'} {KIND_WORDS.get(kind, kind)} {model_type} model",
                      hint=OTHER_TASKS.get(kind, "give a T5, BART, Marian or mBART model"))


def generation_settings(cfg: SFTConfig) -> dict:
    """The evaluation's decoding, also saved in the trained model's generation_config (`llmkit generate`)."""
    return {"max_new_tokens": cfg.max_new_tokens or cfg.max_target_len, "num_beams": cfg.num_beams or 1,
            "do_sample": False}


class PairCollator(BatchCollator):
    """transformers' DataCollatorForSeq2Seq, with the count of tokens trained on (encoder and decoder sides). Given
    the model, it adds the decoder inputs (the labels shifted right): llmkit's loss takes the labels out of the
    model's inputs."""

    def __init__(self, tokenizer, model):
        from transformers import DataCollatorForSeq2Seq

        super().__init__(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self.collate = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=IGNORE,
                                              return_tensors="pt")

    def __call__(self, features: list[dict]) -> dict:
        batch = dict(self.collate([{k: f[k] for k in ("input_ids", "attention_mask", "labels")} for f in features]))
        batch[NUM_TOKENS] = int(batch["attention_mask"].sum()) + int(batch["labels"].ne(IGNORE).sum())
        return batch


@torch.no_grad()
def evaluate_seq2seq(model, rows: list[dict], references: list[str], collator: PairCollator, batch_size: int,
                     device, tokenizer, generation: dict) -> dict[str, float]:
    """The loss per target token over `rows`, and the generation metrics of their sources against `references`
    (model in eval mode; its mode is restored)."""
    from llmkit import text_metrics

    was_training = model.training
    model.eval()
    loss_sum, targets, predictions = 0.0, 0, []
    for start in range(0, len(rows), batch_size):
        batch = collator(rows[start:start + batch_size])
        batch.pop(NUM_TOKENS)
        batch = {k: v.to(device) for k, v in batch.items()}
        count = int(batch["labels"].ne(IGNORE).sum())
        loss_sum += float(model(**batch).loss) * count   # the model's loss is the mean over the batch's targets
        targets += count
        generated = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                   **generation)
        predictions += tokenizer.batch_decode(generated, skip_special_tokens=True)
    model.train(was_training)
    predictions = [p.strip() for p in predictions]
    return {"loss": loss_sum / targets if targets else float("nan"),
            **text_metrics.rouge(predictions, references),
            "bleu": text_metrics.bleu(predictions, references), "chrf": text_metrics.chrf(predictions, references)}
