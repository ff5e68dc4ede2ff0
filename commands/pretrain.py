"""`llmkit pretrain`: train a language model from scratch or continue pretraining one."""

from typing import Annotated, Optional

import typer

from llmkit.commands._options import (ConfigOpt, JsonOpt, OutputDirOpt, OverwriteOpt, PresetOpt, PrintConfigOpt,
                                      SeedOpt, TextFieldOpt, TokenizerOpt, TrustRemoteCodeOpt)
from llmkit.commands._runtime import build_config, cli_command, emit_json, examples, reporter
from llmkit.commands._training import (BatchSizeOpt, DataOpt, DeepspeedOpt, EpochsOpt, EvalDataOpt, EvalSplitOpt,
                                       EvalStepsOpt, FreezeBaseOpt, FromScratchOpt, GradAccumOpt,
                                       GradCheckpointingOpt, LoggingStepsOpt, LrOpt, MaskReplaceProbOpt,
                                       MaxGradNormOpt, MaxStepsOpt, MeanSpanLengthOpt, MixedPrecisionOpt,
                                       MlmProbabilityOpt, ModelOpt, NoiseDensityOpt, OptimizerOpt, PackOpt,
                                       PaddingFreeOpt, RandomReplaceProbOpt, ReportToOpt, ResumeOpt, SaveStepsOpt,
                                       SaveTotalLimitOpt, SchedulerOpt, SeqLenOpt, TrainableLayersOpt,
                                       WarmupRatioOpt, WeightDecayOpt, WholeWordMaskingOpt, training_overrides,
                                       render_run, run_training)
from llmkit.config import PretrainConfig

EPILOG = examples(
    "llmkit pretrain --model tiny-llama --from-scratch -t runs/quickstart/tokenizer "
    "--data runs/quickstart/data/train.jsonl -o runs/tiny --pack --seq-len 128 --max-steps 300 --eval-split 0.05",
    "llmkit pretrain --model runs/tiny/model --data more.jsonl --eval-split 0.05 -o runs/cont --lr 1e-4 "
    "--grad-checkpointing --optimizer adafactor --trainable-layers 2",
    "llmkit pretrain --preset bert-mlm -t ./bert-tok --data corpus.txt -o runs/bert   (BERT-base from scratch)",
    "llmkit pretrain --preset tiny-llama -t runs/quickstart/tokenizer --data corpus.jsonl -o runs/tiny --resume auto",
)

ObjectiveOpt = Annotated[Optional[str], typer.Option(
    "--objective", help="causal-lm | masked-lm | seq2seq (T5 span corruption) | prefix-lm.", show_default=False)]


def register(app: typer.Typer) -> None:
    app.command("pretrain", epilog=EPILOG)(pretrain)


@cli_command
def pretrain(
    model: ModelOpt = None, tokenizer: TokenizerOpt = None, from_scratch: FromScratchOpt = None,
    objective: ObjectiveOpt = None,
    data: DataOpt = None, text_field: TextFieldOpt = None, eval_data: EvalDataOpt = None,
    eval_split: EvalSplitOpt = None, seq_len: SeqLenOpt = None, pack: PackOpt = None,
    padding_free: PaddingFreeOpt = None,
    batch_size: BatchSizeOpt = None, grad_accum: GradAccumOpt = None, lr: LrOpt = None, epochs: EpochsOpt = None,
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
    """Pretrain a model (causal-lm, masked-lm, seq2seq or prefix-lm) from scratch or from a checkpoint.

    The run directory gets resolved_config.yaml, metrics.jsonl, loss_curve.png, manifest.json, checkpoints/ and,
    at the end, model/ (model + tokenizer, loadable with from_pretrained). Ctrl-C saves a checkpoint and exits 130;
    --resume auto continues from it. --deepspeed CONFIG.json works under a launcher (deepspeed, torchrun,
    accelerate launch) and without one: then llmkit runs a one-process world (it sets RANK=0, LOCAL_RANK=0,
    WORLD_SIZE=1, MASTER_ADDR and a free MASTER_PORT). --report-to tensorboard writes to OUTPUT/tensorboard.
    """
    overrides = training_overrides(
        model=model, tokenizer=tokenizer, from_scratch=from_scratch, objective=objective, data=data,
        text_field=text_field, eval_data=eval_data, eval_split=eval_split, seq_len=seq_len, pack=pack,
        padding_free=padding_free, batch_size=batch_size, grad_accum=grad_accum, lr=lr, epochs=epochs,
        max_steps=max_steps, warmup_ratio=warmup_ratio, scheduler=scheduler, weight_decay=weight_decay,
        max_grad_norm=max_grad_norm, optimizer=optimizer, mixed_precision=mixed_precision,
        grad_checkpointing=grad_checkpointing, freeze_base=freeze_base, trainable_layers=trainable_layers,
        eval_steps=eval_steps, save_steps=save_steps, save_total_limit=save_total_limit,
        logging_steps=logging_steps, seed=seed, output_dir=output_dir, overwrite=overwrite, resume=resume,
        report_to=report_to, deepspeed=deepspeed, mlm_probability=mlm_probability,
        mask_replace_prob=mask_replace_prob, random_replace_prob=random_replace_prob,
        whole_word_masking=whole_word_masking, noise_density=noise_density, mean_span_length=mean_span_length,
        trust_remote_code=trust_remote_code)
    cfg = build_config(PretrainConfig, preset, config, overrides, print_config, json_)
    from llmkit.training.pretrain import run_pretrain

    result = run_training(run_pretrain, cfg, reporter(json_))
    if json_:
        emit_json(result)
        return
    render(result)


def render(result) -> None:
    rows = []
    if result.eval_loss is not None:
        before = (f" (before: {result.initial_eval_loss:.4f}, perplexity {result.initial_perplexity:,.2f})"
                  if result.initial_eval_loss is not None else "")
        rows += [("eval loss", f"{result.eval_loss:.4f}{before}"), ("perplexity", f"{result.perplexity:,.2f}")]
    rows += [("parameters", f"{result.parameters:,} ({result.trainable_parameters:,} trainable)"),
             ("throughput", f"{result.tokens_per_second:,.0f} tokens/s over {result.tokens:,} tokens")]
    render_run(f"pretrain ({result.objective}): {result.steps} steps in {result.seconds:.1f} s", result, rows,
               f"model and tokenizer: {result.model_dir} (AutoModel*.from_pretrained)" if result.model_dir else None)
