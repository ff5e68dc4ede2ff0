"""`llmkit sft`: instruction tuning that trains on exactly the right tokens."""

import contextlib
import sys

import typer

from llmkit.commands._options import config_command
from llmkit.commands._runtime import Output, console, examples
from llmkit.commands._training import render_run, run_training
from llmkit.config import SFTConfig
from llmkit.errors import EXIT_FAILURE

EPILOG = examples(
    "llmkit sft -m runs/quickstart/pretrain/model --data qa.jsonl --template chatml -o runs/sft --epochs 3",
    "llmkit sft --task seq-cls -m ./bert --data reviews.jsonl --label-field sentiment --eval-split 0.1 -o runs/cls"
    "   (also token-cls, extractive-qa, and seq2seq for T5/BART)",
    "llmkit sft -m ./model --data alpaca.json --preview 2   (what is trained, highlighted; --check lints)",
    "llmkit sft --preset full-0.3b-4gb -m ./qwen-0.5b --data qa.jsonl -o runs/ft   (full fine-tune on a 4 GB GPU)",
)


def register(app: typer.Typer) -> None:
    app.command("sft", epilog=EPILOG)(sft)


@config_command(SFTConfig, skip=("padding_free",))   # sft --pack is padding-free already
def sft(cfg: SFTConfig, out: Output) -> None:
    """Fine-tune a causal LM on instructions or conversations, with loss only on the assistant replies.

    Each reply's end-of-turn / eos token is trained (also when pad == eos), so the model learns to stop. The chat
    template used is saved with the model, so `llmkit generate --message/--chat` renders the same way.
    --task seq-cls | token-cls | extractive-qa trains a classification, NER or extractive-QA head instead;
    --task seq2seq fine-tunes an encoder-decoder (T5, BART) on source -> target pairs (summarization, translation).
    """
    if cfg.preview is not None or cfg.check:
        inspect_data(cfg, preview=cfg.preview is not None, out=out)
        return
    from llmkit.training.sft import run_sft

    out.result(run_training(run_sft, cfg, out), render if cfg.task == "chat" else render_task)


def inspect_data(training: SFTConfig, preview: bool, out: Output) -> None:
    """--preview N (the first N encoded examples) or --check (lints; exit 1 on errors) of what `training` would
    train on; `llmkit peft` inspects its data the same way."""
    if preview:
        from llmkit.training.sft import preview_sft

        with contextlib.redirect_stdout(sys.stderr):
            shown = preview_sft(training, warn=out.report.warn)
        # the document lists ids and labels; people see the tokens themselves, the trained ones highlighted
        out.result([{"row": e.row, "input_ids": e.input_ids, "labels": e.labels} for e in shown],
                   lambda _: render_preview(shown))
        return
    from llmkit.training.sft import check_sft

    with contextlib.redirect_stdout(sys.stderr):
        result = check_sft(training)
    out.result(result, render_check)
    if not result.ok:
        raise typer.Exit(EXIT_FAILURE)


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
