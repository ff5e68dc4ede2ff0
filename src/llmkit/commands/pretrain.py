"""`llmkit pretrain`: train a language model from scratch or continue pretraining one."""

import typer

from llmkit.commands._options import config_command
from llmkit.commands._runtime import Output, examples
from llmkit.commands._training import render_run, run_training
from llmkit.config import PretrainConfig

EPILOG = examples(
    "llmkit pretrain --model tiny-llama --from-scratch -t runs/quickstart/tokenizer "
    "--data runs/quickstart/data/train.jsonl -o runs/tiny --pack --seq-len 128 --max-steps 300 --eval-split 0.05",
    "llmkit pretrain --model runs/tiny/model --data more.jsonl --eval-split 0.05 -o runs/cont --lr 1e-4 "
    "--grad-checkpointing --optimizer adafactor --trainable-layers 2",
    "llmkit pretrain --preset bert-mlm -t ./bert-tok --data corpus.txt -o runs/bert   (BERT-base from scratch)",
    "llmkit pretrain --preset tiny-llama -t runs/quickstart/tokenizer --data corpus.jsonl -o runs/tiny --resume auto",
)


def register(app: typer.Typer) -> None:
    app.command("pretrain", epilog=EPILOG)(pretrain)


@config_command(PretrainConfig)
def pretrain(cfg: PretrainConfig, out: Output) -> None:
    """Pretrain a model (causal-lm, masked-lm, seq2seq or prefix-lm) from scratch or from a checkpoint.

    The run directory gets resolved_config.yaml, metrics.jsonl, loss_curve.png, manifest.json, checkpoints/ and,
    at the end, model/ (model + tokenizer, loadable with from_pretrained). Ctrl-C saves a checkpoint and exits 130;
    --resume auto continues from it. --deepspeed CONFIG.json works under a launcher (deepspeed, torchrun,
    accelerate launch) and without one: then llmkit runs a one-process world (it sets RANK=0, LOCAL_RANK=0,
    WORLD_SIZE=1, MASTER_ADDR and a free MASTER_PORT). --report-to tensorboard writes to OUTPUT/tensorboard;
    --report-to wandb,mlflow sends every metrics.jsonl row to W&B and MLflow (OUTPUT/mlruns by default).
    """
    from llmkit.training.pretrain import run_pretrain

    out.result(run_training(run_pretrain, cfg, out), render)


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
