"""The `llmkit` command line: a Typer app with one module per subcommand.

Every module here is light: heavy libraries are imported inside command bodies, so `--help` and shell completion
stay fast.
"""

import sys

import typer
from typer.core import TyperGroup

from llmkit import __version__
from llmkit.runtime import quiet_optional_kernel_notices, quiet_unpickler_notices

quiet_optional_kernel_notices()
quiet_unpickler_notices()

EXIT_CODES_HELP = (
    "Exit codes: 0 success; 1 the operation failed (data, checkpoint, runtime); "
    "2 usage or configuration error; 130 interrupted; 143 terminated (SIGTERM). Set LLMKIT_DEBUG=1 to see "
    "tracebacks."
)


# The root help reads this table, so `llmkit --help` imports no command module (trl's way); a command's module is
# imported when the command runs or shows its own help. name: (module under llmkit.commands, the summary
# `llmkit --help` shows); tests/commands/test_cli.py checks each summary against the command's own help.
COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": ("quickstart", "Run a model's life stage by stage on the Python language reference: no network, "
                                 "no GPU."),
    "tokenize": ("tokenize", "Inspect tokenizers, train new ones, pre-tokenize and pack datasets."),
    "pretrain": ("pretrain", "Pretrain a model (causal-lm, masked-lm, seq2seq or prefix-lm) from scratch or from a "
                             "checkpoint."),
    "sft": ("sft", "Fine-tune a causal LM on instructions or conversations, with loss only on the assistant "
                   "replies."),
    "peft": ("peft", "Train an adapter on a frozen base: LoRA, IA3, prompt-, p- or prefix-tuning, or QLoRA "
                     "(--quant nf4)."),
    "quantize": ("quantize", "Quantize models and explain how quantization works."),
    "merge": ("merge", "Fold a LoRA or IA3 adapter into its base model with peft; save it whole; prove the logits "
                       "equal."),
    "export": ("export", "Export a causal LM, an encoder-decoder LM (both with past key values) or a sequence "
                         "classifier to ONNX; prove ONNX Runtime's logits and greedy generation equal PyTorch's."),
    "generate": ("generate", "Generate with a causal, encoder-decoder or masked LM: stream a completion, answer a "
                             "chat message, chat, or run a JSONL batch."),
    "eval": ("eval", "Evaluate a model on a dataset: perplexity (packed or sliding window), a task head's metrics, "
                     "or generation metrics (ROUGE, BLEU, chrF, exact match); --compare A B puts two models side by "
                     "side."),
    "serve": ("serve", "Serve a generation model over an OpenAI-compatible HTTP API: /v1/chat/completions and "
                       "/v1/completions (streamed with \"stream\": true), /v1/models and /health; waiting requests "
                       "are batched."),
    "memory-estimate": ("memory_estimate", "Memory per GPU for training or inference: weights, gradients, "
                                           "optimizer, activations, overhead."),
    "launch": ("launch", "Run a training command (pretrain, sft, peft) on several processes or nodes with "
                         "accelerate and DeepSpeed."),
    "presets": ("presets_cmd", "List the shipped presets, or print one."),
    "env": ("env", "Versions of Python and every dependency, devices, CUDA and bf16, bitsandbytes and DeepSpeed "
                   "backends."),
    "completion": ("completion", "Print a shell completion script (see README: Shell completion)."),
}


def load_command(name: str):
    """The click command of `llmkit NAME`, built from its module (a Typer sub-app `app`, or a `register(app)` that
    adds one command), with llmkit's help layout."""
    import importlib

    from llmkit.commands._help import use_sectioned_help

    module = importlib.import_module(f"llmkit.commands.{COMMANDS[name][0]}")
    if hasattr(module, "register"):
        holder = typer.Typer(add_completion=False)
        module.register(holder)
        return typer.main.get_command(use_sectioned_help(holder))
    group = typer.main.get_command(use_sectioned_help(module.app))
    group.name = name
    return group


class LazyCommands(dict):
    """The root group's commands, each built on first use (see COMMANDS)."""

    def __missing__(self, name: str):
        if name not in COMMANDS:
            raise KeyError(name)
        command = self[name] = load_command(name)
        return command

    def get(self, name, default=None):
        return self[name] if name in COMMANDS else default

    def keys(self):
        return COMMANDS.keys()

    def __iter__(self):
        return iter(COMMANDS)

    def __len__(self):
        return len(COMMANDS)

    def __contains__(self, name) -> bool:
        return name in COMMANDS

    def items(self):
        return ((name, self[name]) for name in COMMANDS)

    def values(self):
        return (self[name] for name in COMMANDS)


class LlmkitGroup(TyperGroup):
    """The `llmkit` group. Its `main` is the one try of the program: every command's errors, and click's usage
    errors, become `Error:`/`Hint:` lines and exit codes there (`_runtime.run_mapping_errors`). Its commands load
    lazily (LazyCommands); its help comes from COMMANDS."""

    def __init__(self, **attrs):
        super().__init__(**attrs)
        self.commands = LazyCommands()

    def main(self, args=None, prog_name=None, **extra):
        from llmkit.commands import _runtime

        extra.pop("standalone_mode", None)
        args = list(sys.argv[1:] if args is None else args)

        def call():
            return super(LlmkitGroup, self).main(args=args, prog_name=prog_name, standalone_mode=False, **extra)

        if _runtime.resolving():   # resolve_command_line: errors go back to the caller as exceptions
            return call()
        sys.exit(_runtime.run_mapping_errors(call, json_mode="--json" in args))

    def format_help(self, ctx, formatter) -> None:
        """The commands' summaries come from COMMANDS: the root help imports no command module."""
        from llmkit.commands._help import write_epilog, write_rows

        self.format_usage(ctx, formatter)
        self.format_help_text(ctx, formatter)
        write_rows(formatter, "Options", [("--version", "Print the version and exit."),
                                          ("-h, --help", "Show this message and exit.")])
        write_rows(formatter, "Commands", [(name, summary) for name, (_, summary) in COMMANDS.items()])
        write_epilog(self.epilog, formatter)


app = typer.Typer(
    cls=LlmkitGroup,
    name="llmkit",
    help="Train, shrink and run transformer language models on your own hardware.",
    epilog=EXIT_CODES_HELP,
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,   # llmkit's own help layout (commands/_help.py)
    pretty_exceptions_enable=False,
    # help as wide as the terminal up to 120 columns (click's default stops at 80)
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llmkit {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Train, shrink and run transformer language models on your own hardware."""


def main() -> None:
    app(prog_name="llmkit")
