"""`llmkit peft`: LoRA, IA3, prompt-tuning, p-tuning, prefix-tuning and QLoRA with every sft and training flag."""

import typer

from llmkit.commands import sft as sft_cmd
from llmkit.commands._options import config_command
from llmkit.commands._runtime import Output, examples
from llmkit.commands._training import render_run, run_training
from llmkit.config import PeftConfig
from llmkit.ui import format_bytes

EPILOG = examples(
    "llmkit peft --method lora -m runs/quickstart/pretrain/model --data qa.jsonl --template plain -o runs/lora",
    "llmkit peft --preset qlora-1b4-8gb -m bigscience/bloom-1b4 --data chats.jsonl -o runs/qlora   (8 GB GPU)",
    "llmkit peft --method prompt-tuning --prompt-init-text \"Answer briefly:\" -m ./model --data qa.jsonl -o runs/pt",
    "llmkit peft --method lora --objective causal-lm -m ./model --data corpus.txt -o runs/dapt   (continued "
    "pretraining)",
)

def register(app: typer.Typer) -> None:
    app.command("peft", epilog=EPILOG)(peft)


@config_command(PeftConfig)
def peft(cfg: PeftConfig, out: Output) -> None:
    """Train an adapter on a frozen base: LoRA, IA3, prompt-, p- or prefix-tuning, or QLoRA (--quant nf4).

    Same data, templates, tasks and training flags as `llmkit sft` (--objective sft), or continued pretraining
    through the adapter (--objective causal-lm, masked-lm, seq2seq, prefix-lm). Before training it shows the
    trainable-parameter table and memory-estimate's expected peak. The run dir ends with adapter/ (loadable with
    PeftModel.from_pretrained, with the tokenizer and chat template): use it with `llmkit generate --adapter` or
    fold it into the base with `llmkit merge`.
    """
    if cfg.preview is not None or cfg.check:   # exactly sft's, on the data the adapter would train on
        sft_cmd.inspect_data(cfg.training_config(), preview=cfg.preview is not None, out=out)
        return
    from llmkit.training.peft import run_peft

    out.result(run_training(run_peft, cfg, out), render)


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
