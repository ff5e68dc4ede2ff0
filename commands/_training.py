"""Option aliases of the training core, shared by `pretrain`, `sft` and `peft` (same flag, same meaning)."""

from pathlib import Path
from typing import Annotated, Optional

from llmkit.commands._options import option


def _opt(flag: str, help: str, *aliases: str):
    return option(flag, *aliases, help=help)


# model
ModelOpt = Annotated[Optional[str], _opt("--model", "A model dir or hub id (continued training); with --from-scratch "
                                         "a model preset (`llmkit presets`) or a config.json.", "-m")]
FromScratchOpt = Annotated[Optional[bool], _opt("--from-scratch", "Random initialisation from --model's architecture "
                                                "(needs --tokenizer).")]
# data
DataOpt = Annotated[Optional[str], _opt("--data", "Training data: jsonl, json, csv, parquet, txt, a `llmkit tokenize "
                                        "dataset` dir, or a hub dataset.")]
EvalDataOpt = Annotated[Optional[str], _opt("--eval-data", "A separate evaluation set (same formats as --data).")]
EvalSplitOpt = Annotated[Optional[float], _opt("--eval-split", "Hold out this share (0-1) or this many documents "
                                               "(>= 1) of --data for evaluation.")]
SeqLenOpt = Annotated[Optional[int], _opt("--seq-len", "Tokens per training row (default 512).")]
PackOpt = Annotated[Optional[bool], _opt("--pack", "Concatenate documents (eos between them) into --seq-len blocks; "
                                         "attention crosses document boundaries.")]
PaddingFreeOpt = Annotated[Optional[bool], _opt("--padding-free", "Pack, but each document attends only to itself "
                                                "(position ids restart per document; causal-lm).")]
# optimisation
BatchSizeOpt = Annotated[Optional[int], _opt("--batch-size", "Sequences per micro-batch (default 8).", "-b")]
GradAccumOpt = Annotated[Optional[int], _opt("--grad-accum", "Micro-batches per optimizer step (default 1).")]
LrOpt = Annotated[Optional[float], _opt("--lr", "Peak learning rate (default 3e-4).")]
EpochsOpt = Annotated[Optional[float], _opt("--epochs", "Passes over the data (default 1).")]
MaxStepsOpt = Annotated[Optional[int], _opt("--max-steps", "Optimizer steps; overrides --epochs.")]
WarmupRatioOpt = Annotated[Optional[float], _opt("--warmup-ratio", "Share of steps spent warming up (default 0).")]
SchedulerOpt = Annotated[Optional[str], _opt("--scheduler", "linear | cosine | constant | constant-with-warmup.")]
WeightDecayOpt = Annotated[Optional[float], _opt("--weight-decay", "AdamW weight decay (default 0).")]
MaxGradNormOpt = Annotated[Optional[float], _opt("--max-grad-norm", "Gradient clipping; 0 turns it off (default 1).")]
OptimizerOpt = Annotated[Optional[str], _opt("--optimizer", "adamw | adamw-8bit | paged-adamw-8bit | adafactor | sgd.")]
# memory levers and run
MixedPrecisionOpt = Annotated[Optional[str], _opt("--mixed-precision", "no | fp16 | bf16 (autocast over fp32 "
                                                  "weights; fp16 needs a GPU).")]
GradCheckpointingOpt = Annotated[Optional[bool], _opt("--grad-checkpointing", "Recompute activations in backward: "
                                                      "less memory, more compute.")]
FreezeBaseOpt = Annotated[Optional[bool], _opt("--freeze-base", "Train only the output head.")]
TrainableLayersOpt = Annotated[Optional[int], _opt("--trainable-layers", "Train only the last N blocks (and the head).")]
EvalStepsOpt = Annotated[Optional[int], _opt("--eval-steps", "Evaluate every N steps (default: before and after).")]
SaveStepsOpt = Annotated[Optional[int], _opt("--save-steps", "Checkpoint every N steps (default 500).")]
SaveTotalLimitOpt = Annotated[Optional[int], _opt("--save-total-limit", "Keep this many checkpoints (default 2).")]
LoggingStepsOpt = Annotated[Optional[int], _opt("--logging-steps", "A metrics row and progress line every N steps.")]
ResumeOpt = Annotated[Optional[str], _opt("--resume", "auto (the last intact checkpoint in --output-dir) or a "
                                          "checkpoint dir.")]
ReportToOpt = Annotated[Optional[str], _opt("--report-to", "none | tensorboard.")]
DeepspeedOpt = Annotated[Optional[Path], _opt("--deepspeed", "A DeepSpeed JSON config, passed to the Trainer as is.")]


# pretraining objectives (pretrain, and peft --objective)
MlmProbabilityOpt = Annotated[Optional[float], _opt("--mlm-probability", "masked-lm: share of tokens to predict "
                                                    "(default 0.15).")]
MaskReplaceProbOpt = Annotated[Optional[float], _opt("--mask-replace-prob", "masked-lm: of those, share replaced by "
                                                     "the mask token (default 0.8).")]
RandomReplaceProbOpt = Annotated[Optional[float], _opt("--random-replace-prob", "masked-lm: share replaced by a "
                                                       "random token (default 0.1).")]
WholeWordMaskingOpt = Annotated[Optional[bool], _opt("--whole-word-masking", "masked-lm: mask whole words.")]
NoiseDensityOpt = Annotated[Optional[float], _opt("--noise-density", "seq2seq: share of tokens corrupted "
                                                  "(default 0.15).")]
MeanSpanLengthOpt = Annotated[Optional[float], _opt("--mean-span-length", "seq2seq: mean corrupted span in tokens "
                                                    "(default 3).")]


def render_run(title: str, result, rows: list[tuple[str, str]], closing: str | None = None) -> None:
    """A finished training run, for people: its loss curve and final loss, the command's own rows, the files written
    and where the model (or adapter) is."""
    from rich.table import Table

    from llmkit.commands._runtime import console

    out = console()
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row("loss curve", result.sparkline)
    if result.train_loss is not None:
        table.add_row("final train loss", f"{result.train_loss:.4f}")
    for what, value in rows:
        table.add_row(what, value)
    out.print(table)
    out.print("written:", markup=False)
    for name, path in result.files.items():
        out.print(f"  {name.replace('_', ' ')}: {path}", markup=False, soft_wrap=True)
    if closing:
        out.print(closing, markup=False, soft_wrap=True)


def training_overrides(**values) -> dict:
    """Flag values keyed by config field; Paths become strings, None stays 'not given'."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items()}


def run_training(run, cfg, report):
    """Run a training function (run_pretrain, run_sft) and return its result; after Ctrl-C's checkpoint, tell the
    user how to continue and exit 130 (cli_command maps KeyboardInterrupt). The run functions keep stdout for the
    result themselves. Under a launcher (RANK set) the ranks other than 0 report nothing and exit 0 after training,
    so the result is printed once."""
    from llmkit.training.integrations import is_main_process
    from llmkit.training.pretrain import TrainingInterrupted

    main = is_main_process()
    if not main:   # under a launcher every rank runs this command: RANK 0 alone reports and prints the result
        from llmkit.ui import SilentReporter

        report = SilentReporter()
    try:
        result = run(cfg, reporter=report)
    except TrainingInterrupted as stop:
        report.warn(f"interrupted at step {stop.result.steps}; checkpoint: {stop.result.checkpoint}; "
                    f"continue with --resume auto")
        raise KeyboardInterrupt from None
    if not main:
        import typer

        raise typer.Exit(0)
    for warning in result.warnings:
        report.warn(warning)
    return result


# task heads (#10): `sft --task` and `peft --task`
TaskOpt = Annotated[Optional[str], _opt("--task", "chat (instruction tuning, default) | seq-cls (classification, "
                                        "regression) | token-cls (NER) | extractive-qa (SQuAD-style).")]
TextFieldTaskOpt = Annotated[Optional[str], _opt("--text-field", "seq-cls: the text column (default text).")]
TextPairFieldOpt = Annotated[Optional[str], _opt("--text-pair-field", "seq-cls: a second text column (NLI pairs).")]
LabelFieldOpt = Annotated[Optional[str], _opt("--label-field", "seq-cls: the label column: names, class ids, or "
                                              "floats for a regression (default label).")]
LabelsOpt = Annotated[Optional[str], _opt("--labels", "seq-cls/token-cls: comma-separated label names in id order "
                                          "(default: the training data's, sorted).")]
TokensFieldOpt = Annotated[Optional[str], _opt("--tokens-field", "token-cls: the list-of-words column (default "
                                               "tokens).")]
TagsFieldOpt = Annotated[Optional[str], _opt("--tags-field", "token-cls: the list-of-tags column, one per word "
                                             "(default tags).")]
LabelAllSubtokensOpt = Annotated[Optional[bool], _opt("--label-all-subtokens", "token-cls: label every sub-token "
                                                      "of a word (B-X continues as I-X), not only the first.")]
QuestionFieldOpt = Annotated[Optional[str], _opt("--question-field", "extractive-qa: default question.")]
ContextFieldOpt = Annotated[Optional[str], _opt("--context-field", "extractive-qa: default context.")]
AnswersFieldOpt = Annotated[Optional[str], _opt("--answers-field", "extractive-qa: {text: [...], answer_start: "
                                                "[...]} per example; empty = unanswerable (default answers).")]
DocStrideOpt = Annotated[Optional[int], _opt("--doc-stride", "extractive-qa: tokens shared by the overlapping "
                                             "windows of a long context (default 128, at most a quarter of "
                                             "--seq-len).")]
MaxAnswerLengthOpt = Annotated[Optional[int], _opt("--max-answer-length", "extractive-qa evaluation: longest answer, "
                                                   "tokens (default 30).")]


def task_overrides(task, text_field, text_pair_field, label_field, labels, tokens_field, tags_field,
                   label_all_subtokens, question_field, context_field, answers_field, doc_stride,
                   max_answer_length) -> dict:
    from llmkit.commands._runtime import comma_list

    names = comma_list(labels, "--labels")
    return dict(task=task, text_field=text_field, text_pair_field=text_pair_field, label_field=label_field,
                labels=[n.strip() for n in names] if names is not None else None, tokens_field=tokens_field,
                tags_field=tags_field, label_all_subtokens=label_all_subtokens, question_field=question_field,
                context_field=context_field, answers_field=answers_field, doc_stride=doc_stride,
                max_answer_length=max_answer_length)
