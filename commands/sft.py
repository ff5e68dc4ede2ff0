"""`llmkit sft`: instruction tuning that trains on exactly the right tokens."""

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmkit.commands._options import (ConfigOpt, JsonOpt, OutputDirOpt, OverwriteOpt, PresetOpt, PrintConfigOpt,
                                      SeedOpt, TokenizerOpt, TrustRemoteCodeOpt)
from llmkit.commands._runtime import build_config, cli_command, console, emit_json, examples, reporter
from llmkit.commands._training import (BatchSizeOpt, DataOpt, DeepspeedOpt, EpochsOpt, EvalDataOpt, EvalSplitOpt,
                                       EvalStepsOpt, FreezeBaseOpt, FromScratchOpt, GradAccumOpt,
                                       GradCheckpointingOpt, LoggingStepsOpt, MaxGradNormOpt, MaxStepsOpt,
                                       MixedPrecisionOpt, ModelOpt, OptimizerOpt, ReportToOpt, ResumeOpt,
                                       SaveStepsOpt, SaveTotalLimitOpt, SchedulerOpt, SeqLenOpt, TrainableLayersOpt,
                                       WarmupRatioOpt, WeightDecayOpt, render_run, run_training,
                                       training_overrides)
from llmkit.commands._training import (AnswersFieldOpt, ContextFieldOpt, DocStrideOpt, LabelAllSubtokensOpt,
                                       LabelFieldOpt, LabelsOpt, MaxAnswerLengthOpt, QuestionFieldOpt, TagsFieldOpt,
                                       TaskOpt, TextFieldTaskOpt, TextPairFieldOpt, TokensFieldOpt, task_overrides)
from llmkit.config import SFTConfig
from llmkit.errors import EXIT_FAILURE

EPILOG = examples(
    "llmkit sft -m runs/quickstart/pretrain/model --data qa.jsonl --template chatml -o runs/sft --epochs 3",
    "llmkit sft --task seq-cls -m ./bert --data reviews.jsonl --label-field sentiment --eval-split 0.1 -o runs/cls"
    "   (also token-cls, extractive-qa)",
    "llmkit sft -m ./model --data alpaca.json --preview 2   (what is trained, highlighted; --check lints)",
    "llmkit sft --preset full-0.3b-4gb -m ./qwen-0.5b --data qa.jsonl -o runs/ft   (full fine-tune on a 4 GB GPU)",
)


def _opt(flag: str, help: str):
    return typer.Option(flag, help=help, show_default=False)


FormatOpt = Annotated[Optional[str], _opt("--format", "auto | alpaca | messages | sharegpt | prompt-completion "
                                          "(default: detected from the columns).")]
TemplateOpt = Annotated[Optional[str], _opt("--template", "A built-in chat template: chatml | plain (default: the "
                                            "tokenizer's own).")]
ChatTemplateOpt = Annotated[Optional[Path], _opt("--chat-template", "A Jinja chat template file.")]
MultiTurnOpt = Annotated[Optional[str], _opt("--multi-turn", "all (every reply, one pass) | last (only the final "
                                             "reply; past --seq-len the earliest context is cut, the reply kept "
                                             "whole) | expand (one example per reply). Default all.")]
TrainOnPromptOpt = Annotated[Optional[bool], _opt("--train-on-prompt", "Loss on every token (masking off).")]
SftPackOpt = Annotated[Optional[bool], _opt("--pack", "Pack examples into --seq-len blocks without attention across "
                                            "examples (padding-free; position ids restart per example).")]
PreviewOpt = Annotated[Optional[int], _opt("--preview", "Show N encoded examples with the trained tokens highlighted "
                                           "and exit.")]
CheckOpt = Annotated[Optional[bool], _opt("--check", "Lint template, tokenizer and data, then exit (1 on errors).")]
LrSftOpt = Annotated[Optional[float], _opt("--lr", "Peak learning rate (default 2e-5).")]


def _field(flag: str, default: str):
    return Annotated[Optional[str], _opt(flag, f"Column name (default {default}).")]


def register(app: typer.Typer) -> None:
    app.command("sft", epilog=EPILOG)(sft)


@cli_command
def sft(
    model: ModelOpt = None, tokenizer: TokenizerOpt = None, from_scratch: FromScratchOpt = None,
    data: DataOpt = None, task: TaskOpt = None, format: FormatOpt = None, template: TemplateOpt = None,
    chat_template: ChatTemplateOpt = None, multi_turn: MultiTurnOpt = None, train_on_prompt: TrainOnPromptOpt = None,
    messages_field: _field("--messages-field", "messages, then conversations") = None,
    prompt_field: _field("--prompt-field", "prompt") = None,
    completion_field: _field("--completion-field", "completion") = None,
    instruction_field: _field("--instruction-field", "instruction") = None,
    input_field: _field("--input-field", "input") = None,
    output_field: _field("--output-field", "output") = None,
    system_field: _field("--system-field", "system") = None,
    text_field: TextFieldTaskOpt = None, text_pair_field: TextPairFieldOpt = None, label_field: LabelFieldOpt = None,
    labels: LabelsOpt = None, tokens_field: TokensFieldOpt = None, tags_field: TagsFieldOpt = None,
    label_all_subtokens: LabelAllSubtokensOpt = None, question_field: QuestionFieldOpt = None,
    context_field: ContextFieldOpt = None, answers_field: AnswersFieldOpt = None, doc_stride: DocStrideOpt = None,
    max_answer_length: MaxAnswerLengthOpt = None,
    eval_data: EvalDataOpt = None, eval_split: EvalSplitOpt = None, seq_len: SeqLenOpt = None, pack: SftPackOpt = None,
    preview: PreviewOpt = None, check: CheckOpt = None,
    batch_size: BatchSizeOpt = None, grad_accum: GradAccumOpt = None, lr: LrSftOpt = None, epochs: EpochsOpt = None,
    max_steps: MaxStepsOpt = None, warmup_ratio: WarmupRatioOpt = None, scheduler: SchedulerOpt = None,
    weight_decay: WeightDecayOpt = None, max_grad_norm: MaxGradNormOpt = None, optimizer: OptimizerOpt = None,
    mixed_precision: MixedPrecisionOpt = None, grad_checkpointing: GradCheckpointingOpt = None,
    freeze_base: FreezeBaseOpt = None, trainable_layers: TrainableLayersOpt = None,
    eval_steps: EvalStepsOpt = None, save_steps: SaveStepsOpt = None, save_total_limit: SaveTotalLimitOpt = None,
    logging_steps: LoggingStepsOpt = None, seed: SeedOpt = None, output_dir: OutputDirOpt = None,
    overwrite: OverwriteOpt = None, resume: ResumeOpt = None, report_to: ReportToOpt = None,
    deepspeed: DeepspeedOpt = None, trust_remote_code: TrustRemoteCodeOpt = None,
    preset: PresetOpt = None, config: ConfigOpt = None, print_config: PrintConfigOpt = False, json_: JsonOpt = False,
) -> None:
    """Fine-tune a causal LM on instructions or conversations, with loss only on the assistant replies.

    Each reply's end-of-turn / eos token is trained (also when pad == eos), so the model learns to stop. The chat
    template used is saved with the model, so `llmkit generate --message/--chat` renders the same way.
    --task seq-cls | token-cls | extractive-qa trains a classification, NER or extractive-QA head instead.
    """
    overrides = training_overrides(
        **task_overrides(task, text_field, text_pair_field, label_field, labels, tokens_field, tags_field,
                         label_all_subtokens, question_field, context_field, answers_field, doc_stride,
                         max_answer_length),
        model=model, tokenizer=tokenizer, from_scratch=from_scratch, data=data, format=format, template=template,
        chat_template=chat_template, multi_turn=multi_turn, train_on_prompt=train_on_prompt,
        messages_field=messages_field, prompt_field=prompt_field, completion_field=completion_field,
        instruction_field=instruction_field, input_field=input_field, output_field=output_field,
        system_field=system_field, eval_data=eval_data, eval_split=eval_split, seq_len=seq_len, pack=pack,
        preview=preview, check=check, batch_size=batch_size, grad_accum=grad_accum, lr=lr, epochs=epochs,
        max_steps=max_steps, warmup_ratio=warmup_ratio, scheduler=scheduler, weight_decay=weight_decay,
        max_grad_norm=max_grad_norm, optimizer=optimizer, mixed_precision=mixed_precision,
        grad_checkpointing=grad_checkpointing, freeze_base=freeze_base, trainable_layers=trainable_layers,
        eval_steps=eval_steps, save_steps=save_steps, save_total_limit=save_total_limit,
        logging_steps=logging_steps, seed=seed, output_dir=output_dir, overwrite=overwrite, resume=resume,
        report_to=report_to, deepspeed=deepspeed, trust_remote_code=trust_remote_code)
    cfg = build_config(SFTConfig, preset, config, overrides, print_config, json_)
    report = reporter(json_)
    if cfg.preview is not None:
        from llmkit.training.sft import preview_sft

        with contextlib.redirect_stdout(sys.stderr):
            shown = preview_sft(cfg, warn=report.warn)
        if json_:
            emit_json([{"row": e.row, "input_ids": e.input_ids, "labels": e.labels} for e in shown])
        else:
            render_preview(shown)
        return
    if cfg.check:
        from llmkit.training.sft import check_sft

        with contextlib.redirect_stdout(sys.stderr):
            result = check_sft(cfg)
        if json_:
            emit_json(result)
        else:
            render_check(result)
        if not result.ok:
            raise typer.Exit(EXIT_FAILURE)
        return
    from llmkit.training.sft import run_sft

    result = run_training(run_sft, cfg, report)
    if json_:
        emit_json(result)
        return
    if cfg.task != "chat":
        render_task(result)
        return
    render(result)


def render_task(result) -> None:
    rows = []
    for name, value in result.metrics.items():
        before = result.initial_metrics.get(name)
        rows.append((f"eval {name.replace('_', ' ')}", f"{value:.4f}" + (f" (before: {before:.4f})"
                                                                         if before is not None else "")))
    rows.append(("examples", f"{result.examples:,} ({result.train_rows:,} rows)"
                 + (f", {result.eval_examples:,} eval" if result.eval_examples else "")))
    if result.labels:
        rows.append(("labels", ", ".join(result.labels)))
    rows += [("parameters", f"{result.parameters:,} ({result.trainable_parameters:,} trainable)"),
             ("throughput", f"{result.tokens_per_second:,.0f} tokens/s")]
    render_run(f"sft --task {result.task}: {result.steps} steps in {result.seconds:.1f} s", result, rows)

def render_preview(shown) -> None:
    from rich.text import Text

    out = console()
    for e in shown:
        trained = sum(1 for label in e.labels if label != -100)
        out.print(f"example from row {e.row + 1}: {len(e.input_ids)} tokens, {trained} trained "
                  "(highlighted; the rest is context)", markup=False)
        text = Text()
        for token, label in zip(e.tokens, e.labels):
            text.append(token, style="bold black on green" if label != -100 else "dim")
        out.print(text)
        out.print("trained text: " + repr("".join(t for t, label in zip(e.tokens, e.labels) if label != -100)),
                  markup=False, soft_wrap=True)
        out.print()


def render_check(result) -> None:
    out = console()
    styles = {"error": "bold red", "warning": "yellow", "info": "dim"}
    out.print(f"sft --check: {result.examples:,} examples ({result.format}, template {result.template}), "
              f"{result.trained_tokens:,} trained tokens", markup=False)
    for f in result.findings:
        out.print(f"[{styles[f.level]}]{f.level:7}[/] {f.check}: ", end="")
        out.print(f.message, markup=False, soft_wrap=True)
    out.print("ok" if result.ok else "problems found (errors above)", markup=False)


def render(result) -> None:
    rows = []
    if result.eval_loss is not None:
        before = f" (before: {result.initial_eval_loss:.4f})" if result.initial_eval_loss is not None else ""
        rows.append(("eval loss", f"{result.eval_loss:.4f}{before}"))
    dropped = sum(result.dropped.values())
    rows += [("examples", f"{result.examples:,}" + (f" ({dropped:,} dropped)" if dropped else "")
              + (f", {result.train_rows:,} packed blocks" if result.packed else "")),
             ("trained tokens", f"{result.trained_tokens:,} per epoch (assistant replies and their end token)"),
             ("parameters", f"{result.parameters:,} ({result.trainable_parameters:,} trainable)"),
             ("throughput", f"{result.tokens_per_second:,.0f} tokens/s, {result.trained_tokens_per_second:,.0f} "
                            "trained tokens/s")]
    render_run(f"sft ({result.format}, template {result.template}): {result.steps} steps in {result.seconds:.1f} s",
               result, rows, f"model and tokenizer (with its chat template): {result.model_dir}"
               if result.model_dir else None)
