"""One readable training path shared by `pretrain`, `sft` and `peft`, built on transformers' Trainer.

  data.py        documents -> token rows (unpacked, packed, padding-free), eval split
  objectives.py  collators for causal-lm, masked-lm, seq2seq (T5 span corruption), prefix-lm; the per-token loss
  trainer.py     TrainingArguments from the config, memory levers, the Trainer subclass and its callbacks
  rundir.py      the run directory: metrics.jsonl, loss-curve PNG, manifest, checkpoints, resume
  pretrain.py    `llmkit pretrain` end to end

Heavy module: imported only from inside a command's body.
"""
