"""One readable training path shared by `pretrain`, `sft` and `peft`, built on transformers' Trainer.

  run.py         one Run: output dir, resume, seed, DeepSpeed, memory forecast, training, the record (written
                 once); RunResult, the fields every run returns
  models.py      the model and tokenizer a run starts from (pretrained, or built from an architecture)
  data.py        documents -> token rows (unpacked, packed, padding-free), eval split
  objectives.py  collators for causal-lm, masked-lm, seq2seq (T5 span corruption), prefix-lm; the per-token loss
  trainer.py     TrainingArguments from the config, memory levers, the Trainer subclass and its callbacks
  rundir.py      the run directory: metrics.jsonl, loss-curve PNG, manifest, checkpoints, resume
  pretrain.py, sft.py, tasks.py, peft.py   the recipes on Run: `llmkit pretrain`, `sft`, `sft --task`, `peft`

Heavy module: imported only from inside a command's body.
"""
