"""`llmkit peft`: LoRA, IA3, prompt-tuning, p-tuning, prefix-tuning and QLoRA with every sft and training flag."""

import contextlib
import sys
from typing import Annotated, Optional

import typer

from llmkit.commands import sft as sft_cmd
from llmkit.commands._options import (ConfigOpt, JsonOpt, OutputDirOpt, OverwriteOpt, PresetOpt, PrintConfigOpt,
                                      SeedOpt, TokenizerOpt, TrustRemoteCodeOpt, option)
from llmkit.commands._runtime import build_config, cli_command, comma_list, emit_json, examples, reporter
from llmkit.commands._training import (AnswersFieldOpt, BatchSizeOpt, ContextFieldOpt, DataOpt, DeepspeedOpt,
                                       DocStrideOpt, EpochsOpt, EvalDataOpt, EvalSplitOpt, EvalStepsOpt,
                                       FreezeBaseOpt, FromScratchOpt, GradAccumOpt, GradCheckpointingOpt,
                                       LabelAllSubtokensOpt, LabelFieldOpt, LabelsOpt, LoggingStepsOpt,
                                       MaskReplaceProbOpt, MaxAnswerLengthOpt, MaxGradNormOpt, MaxStepsOpt,
                                       MeanSpanLengthOpt, MixedPrecisionOpt, MlmProbabilityOpt, ModelOpt,
                                       NoiseDensityOpt, OptimizerOpt, PaddingFreeOpt, QuestionFieldOpt,
                                       RandomReplaceProbOpt, ReportToOpt, ResumeOpt, SaveStepsOpt, SaveTotalLimitOpt,
                                       SchedulerOpt, SeqLenOpt, TagsFieldOpt, TaskOpt, TextFieldTaskOpt,
                                       TextPairFieldOpt, TokensFieldOpt, TrainableLayersOpt, WarmupRatioOpt,
                                       WeightDecayOpt, WholeWordMaskingOpt, render_run, run_training, task_overrides,
                                       training_overrides)
from llmkit.config import PeftConfig
from llmkit.errors import EXIT_FAILURE
from llmkit.ui import format_bytes

EPILOG = examples(
    "llmkit peft --method lora -m runs/quickstart/pretrain/model --data qa.jsonl --template plain -o runs/lora",
    "llmkit peft --preset qlora-1b4-8gb -m bigscience/bloom-1b4 --data chats.jsonl -o runs/qlora   (8 GB GPU)",
    "llmkit peft --method prompt-tuning --prompt-init-text \"Answer briefly:\" -m ./model --data qa.jsonl -o runs/pt",
    "llmkit peft --method lora --objective causal-lm -m ./model --data corpus.txt -o runs/dapt   (continued "
    "pretraining)",
)

PEFT = "Adapter"
QLORA = "QLoRA"


def _opt(flag: str, help: str, panel: str = PEFT):
    return option(flag, help=help, panel=panel)


MethodOpt = Annotated[Optional[str], _opt("--method", "lora | ia3 | prompt-tuning | p-tuning | prefix-tuning "
                                          "(default lora).")]
ObjectiveOpt = Annotated[Optional[str], _opt("--objective", "sft (instruction data, the default) | causal-lm | "
                                             "masked-lm | seq2seq | prefix-lm (continued pretraining through the "
                                             "adapter).")]
LrPeftOpt = Annotated[Optional[float], option("--lr", help="Peak learning rate (default by method: lora 2e-4, ia3 "
                                               "3e-3, prompt-tuning 3e-2, p-tuning 1e-3, prefix-tuning 1e-2).")]
LoraRankOpt = Annotated[Optional[int], _opt("--lora-rank", "LoRA rank r (default 8).")]
LoraAlphaOpt = Annotated[Optional[float], _opt("--lora-alpha", "LoRA scaling alpha; updates scale by alpha/r "
                                               "(default 16).")]
LoraDropoutOpt = Annotated[Optional[float], _opt("--lora-dropout", "Dropout on LoRA's input (default 0.05).")]
LoraTargetsOpt = Annotated[Optional[str], _opt("--lora-targets", "Comma-separated module names (q_proj,v_proj) or "
                                               "all-linear; default: peft's choice for the architecture (shown).")]
ModulesToSaveOpt = Annotated[Optional[str], _opt("--modules-to-save", "Modules trained in full and saved with the "
                                                 "adapter (comma-separated, e.g. lm_head).")]
RsloraOpt = Annotated[Optional[bool], _opt("--use-rslora", "Rank-stabilised LoRA (scale alpha/sqrt(r)).")]
DoraOpt = Annotated[Optional[bool], _opt("--use-dora", "Weight-decomposed LoRA (DoRA).")]
Ia3TargetsOpt = Annotated[Optional[str], _opt("--ia3-targets", "IA3 modules (key, value, feed-forward); default: "
                                              "detected for the architecture.")]
Ia3FeedforwardOpt = Annotated[Optional[str], _opt("--ia3-feedforward", "Which IA3 targets are feed-forward "
                                                  "(scaled on their input).")]
VirtualTokensOpt = Annotated[Optional[int], _opt("--num-virtual-tokens", "prompt-, p- and prefix-tuning: virtual "
                                                 "tokens (default 20).")]
PromptInitOpt = Annotated[Optional[str], _opt("--prompt-init", "prompt-tuning: random | text (default: text when "
                                              "--prompt-init-text is given).")]
PromptInitTextOpt = Annotated[Optional[str], _opt("--prompt-init-text", "prompt-tuning: a hard prompt whose token "
                                                  "embeddings start the soft prompt.")]
EncoderOpt = Annotated[Optional[str], _opt("--encoder", "p-tuning: mlp | lstm prompt encoder (default mlp).")]
EncoderHiddenOpt = Annotated[Optional[int], _opt("--encoder-hidden-size", "p-tuning / prefix projection: hidden size "
                                                 "(default: the model's).")]
PrefixProjectionOpt = Annotated[Optional[bool], typer.Option(
    "--prefix-projection/--no-prefix-projection", help="prefix-tuning: learn the prefix through an MLP "
    "(default off).", show_default=False, rich_help_panel=PEFT)]
QuantOpt = Annotated[Optional[str], _opt("--quant", "nf4 | fp4 | int8: load the base through bitsandbytes (QLoRA, "
                                         "with --method lora).", QLORA)]
DoubleQuantOpt = Annotated[Optional[bool], _opt("--double-quant", "nf4/fp4: quantize the block constants too "
                                                "(4.127 instead of 4.5 bits per weight).", QLORA)]
BaseDtypeOpt = Annotated[Optional[str], _opt("--base-dtype", "fp32 | bf16 | fp16: the frozen base's weights "
                                          "(adapters stay fp32); bf16 halves the base's memory (default fp32).")]
ComputeDtypeOpt = Annotated[Optional[str], _opt("--compute-dtype", "auto | fp32 | bf16 | fp16 for 4-bit matmuls "
                                                "(auto: bf16 on a GPU that has it, else fp32).", QLORA)]


def register(app: typer.Typer) -> None:
    app.command("peft", epilog=EPILOG)(peft)


@cli_command
def peft(
    method: MethodOpt = None, model: ModelOpt = None, tokenizer: TokenizerOpt = None,
    from_scratch: FromScratchOpt = None, objective: ObjectiveOpt = None,
    data: DataOpt = None, task: TaskOpt = None, format: sft_cmd.FormatOpt = None, template: sft_cmd.TemplateOpt = None,
    chat_template: sft_cmd.ChatTemplateOpt = None, multi_turn: sft_cmd.MultiTurnOpt = None,
    train_on_prompt: sft_cmd.TrainOnPromptOpt = None,
    messages_field: sft_cmd._field("--messages-field", "messages, then conversations") = None,
    prompt_field: sft_cmd._field("--prompt-field", "prompt") = None,
    completion_field: sft_cmd._field("--completion-field", "completion") = None,
    instruction_field: sft_cmd._field("--instruction-field", "instruction") = None,
    input_field: sft_cmd._field("--input-field", "input") = None,
    output_field: sft_cmd._field("--output-field", "output") = None,
    system_field: sft_cmd._field("--system-field", "system") = None,
    text_field: TextFieldTaskOpt = None, text_pair_field: TextPairFieldOpt = None, label_field: LabelFieldOpt = None,
    labels: LabelsOpt = None, tokens_field: TokensFieldOpt = None, tags_field: TagsFieldOpt = None,
    label_all_subtokens: LabelAllSubtokensOpt = None, question_field: QuestionFieldOpt = None,
    context_field: ContextFieldOpt = None, answers_field: AnswersFieldOpt = None, doc_stride: DocStrideOpt = None,
    max_answer_length: MaxAnswerLengthOpt = None,
    eval_data: EvalDataOpt = None, eval_split: EvalSplitOpt = None, seq_len: SeqLenOpt = None,
    pack: sft_cmd.SftPackOpt = None, padding_free: PaddingFreeOpt = None,
    preview: sft_cmd.PreviewOpt = None, check: sft_cmd.CheckOpt = None,
    lora_rank: LoraRankOpt = None, lora_alpha: LoraAlphaOpt = None, lora_dropout: LoraDropoutOpt = None,
    lora_targets: LoraTargetsOpt = None, modules_to_save: ModulesToSaveOpt = None, use_rslora: RsloraOpt = None,
    use_dora: DoraOpt = None, ia3_targets: Ia3TargetsOpt = None, ia3_feedforward: Ia3FeedforwardOpt = None,
    num_virtual_tokens: VirtualTokensOpt = None, prompt_init: PromptInitOpt = None,
    prompt_init_text: PromptInitTextOpt = None, encoder: EncoderOpt = None,
    encoder_hidden_size: EncoderHiddenOpt = None, prefix_projection: PrefixProjectionOpt = None,
    quant: QuantOpt = None, double_quant: DoubleQuantOpt = None, compute_dtype: ComputeDtypeOpt = None,
    base_dtype: BaseDtypeOpt = None,
    batch_size: BatchSizeOpt = None, grad_accum: GradAccumOpt = None, lr: LrPeftOpt = None, epochs: EpochsOpt = None,
    max_steps: MaxStepsOpt = None, warmup_ratio: WarmupRatioOpt = None, scheduler: SchedulerOpt = None,
    weight_decay: WeightDecayOpt = None, max_grad_norm: MaxGradNormOpt = None, optimizer: OptimizerOpt = None,
    mixed_precision: MixedPrecisionOpt = None, grad_checkpointing: GradCheckpointingOpt = None,
    freeze_base: FreezeBaseOpt = None, trainable_layers: TrainableLayersOpt = None,
    eval_steps: EvalStepsOpt = None, save_steps: SaveStepsOpt = None, save_total_limit: SaveTotalLimitOpt = None,
    logging_steps: LoggingStepsOpt = None, seed: SeedOpt = None, output_dir: OutputDirOpt = None,
    overwrite: OverwriteOpt = None, resume: ResumeOpt = None, report_to: ReportToOpt = None,
    deepspeed: DeepspeedOpt = None,
    mlm_probability: MlmProbabilityOpt = None, mask_replace_prob: MaskReplaceProbOpt = None,
    random_replace_prob: RandomReplaceProbOpt = None, whole_word_masking: WholeWordMaskingOpt = None,
    noise_density: NoiseDensityOpt = None, mean_span_length: MeanSpanLengthOpt = None,
    trust_remote_code: TrustRemoteCodeOpt = None,
    preset: PresetOpt = None, config: ConfigOpt = None, print_config: PrintConfigOpt = False, json_: JsonOpt = False,
) -> None:
    """Train an adapter on a frozen base: LoRA, IA3, prompt-, p- or prefix-tuning, or QLoRA (--quant nf4).

    Same data, templates, tasks and training flags as `llmkit sft` (--objective sft), or continued pretraining
    through the adapter (--objective causal-lm, masked-lm, seq2seq, prefix-lm). Before training it shows the
    trainable-parameter table and memory-estimate's expected peak. The run dir ends with adapter/ (loadable with
    PeftModel.from_pretrained, with the tokenizer and chat template): use it with `llmkit generate --adapter` or
    fold it into the base with `llmkit merge`.
    """
    overrides = training_overrides(
        **task_overrides(task, text_field, text_pair_field, label_field, labels, tokens_field, tags_field,
                         label_all_subtokens, question_field, context_field, answers_field, doc_stride,
                         max_answer_length),
        method=method, objective=objective, model=model, tokenizer=tokenizer, from_scratch=from_scratch, data=data,
        format=format, template=template, chat_template=chat_template, multi_turn=multi_turn,
        train_on_prompt=train_on_prompt, messages_field=messages_field, prompt_field=prompt_field,
        completion_field=completion_field, instruction_field=instruction_field, input_field=input_field,
        output_field=output_field, system_field=system_field, eval_data=eval_data, eval_split=eval_split,
        seq_len=seq_len, pack=pack, padding_free=padding_free, preview=preview, check=check,
        lora_rank=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        lora_targets=comma_list(lora_targets, "--lora-targets", str),
        modules_to_save=comma_list(modules_to_save, "--modules-to-save", str), use_rslora=use_rslora,
        use_dora=use_dora, ia3_targets=comma_list(ia3_targets, "--ia3-targets", str),
        ia3_feedforward=comma_list(ia3_feedforward, "--ia3-feedforward", str),
        num_virtual_tokens=num_virtual_tokens, prompt_init=prompt_init, prompt_init_text=prompt_init_text,
        encoder=encoder, encoder_hidden_size=encoder_hidden_size, prefix_projection=prefix_projection,
        quant=quant, double_quant=double_quant, compute_dtype=compute_dtype, base_dtype=base_dtype,
        batch_size=batch_size, grad_accum=grad_accum, lr=lr, epochs=epochs, max_steps=max_steps,
        warmup_ratio=warmup_ratio, scheduler=scheduler, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
        optimizer=optimizer, mixed_precision=mixed_precision, grad_checkpointing=grad_checkpointing,
        freeze_base=freeze_base, trainable_layers=trainable_layers, eval_steps=eval_steps, save_steps=save_steps,
        save_total_limit=save_total_limit, logging_steps=logging_steps, seed=seed, output_dir=output_dir,
        overwrite=overwrite, resume=resume, report_to=report_to, deepspeed=deepspeed,
        mlm_probability=mlm_probability, mask_replace_prob=mask_replace_prob,
        random_replace_prob=random_replace_prob, whole_word_masking=whole_word_masking,
        noise_density=noise_density, mean_span_length=mean_span_length, trust_remote_code=trust_remote_code)
    cfg = build_config(PeftConfig, preset, config, overrides, print_config, json_)
    report = reporter(json_)
    if cfg.preview is not None or cfg.check:
        _inspect(cfg, report, json_)
        return
    from llmkit.training.peft import run_peft

    result = run_training(run_peft, cfg, report)
    if json_:
        emit_json(result.to_json())
        return
    render(result)


def _inspect(cfg: PeftConfig, report, json_: bool) -> None:
    """--preview / --check: exactly sft's, on the data the adapter would train on."""
    training = cfg.training_config()
    if cfg.preview is not None:
        from llmkit.training.sft import preview_sft

        with contextlib.redirect_stdout(sys.stderr):
            shown = preview_sft(training, warn=report.warn)
        if json_:
            emit_json([{"row": e.row, "input_ids": e.input_ids, "labels": e.labels} for e in shown])
        else:
            sft_cmd.render_preview(shown)
        return
    from llmkit.training.sft import check_sft

    with contextlib.redirect_stdout(sys.stderr):
        result = check_sft(training)
    if json_:
        emit_json(result)
    else:
        sft_cmd.render_check(result)
    if not result.ok:
        raise typer.Exit(EXIT_FAILURE)


def render(result) -> None:
    training = result.training
    rows = []
    if getattr(training, "eval_loss", None) is not None:
        before = getattr(training, "initial_eval_loss", None)
        rows.append(("eval loss", f"{training.eval_loss:.4f}" + (f" (before: {before:.4f})" if before else "")))
    for name, value in (getattr(training, "metrics", None) or {}).items():
        rows.append((f"eval {name.replace('_', ' ')}", f"{value:.4f}"))
    rows.append(("trainable", f"{result.trainable_parameters:,} of {result.parameters:,} "
                              f"({result.trainable_share:.4%})"))
    if result.adapter_bytes is not None:
        ratio = result.base_bytes / max(result.adapter_bytes, 1)
        rows.append(("adapter size", f"{format_bytes(result.adapter_bytes)} on disk (base in memory "
                                     f"{format_bytes(result.base_bytes)}: {ratio:,.0f}x)"))
    rows.append(("throughput", f"{training.tokens_per_second:,.0f} tokens/s"))
    what = result.method + (f" on {', '.join(result.targets)}" if result.targets else "") + \
        (f", base in {result.quant}" if result.quant != "none" else "")
    render_run(f"peft {what}: {training.steps} steps in {training.seconds:.1f} s", training, rows,
               f"adapter: {result.adapter_dir} (llmkit generate -m {result.base_model} --adapter "
               f"{result.adapter_dir}; llmkit merge to fold it in)" if result.adapter_dir else None)
