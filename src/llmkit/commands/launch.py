"""`llmkit launch`: a training command on several processes and nodes (DDP, ZeRO-1/2/3, offload, FSDP, auto).

Light: planning, the files and the memory figures never import torch; the run itself is a child process.
"""

import inspect
from typing import Annotated, Optional

import typer

from llmkit.commands._options import config_command
from llmkit.commands._runtime import Output, console, examples, resolve_command_line
from llmkit.config import LaunchConfig
from llmkit.ui import format_bytes

EPILOG = examples(
    "llmkit launch --strategy ddp --cpu --num-processes 2 -- llmkit pretrain --preset tiny-llama "
    "-t runs/quickstart/tokenizer --data runs/quickstart/data/train.jsonl -o runs/ddp --max-steps 100",
    "llmkit launch --strategy auto --gpu-memory 24GiB --dry-run -- llmkit pretrain --model llama-2-7b "
    "--from-scratch -t ./tok --data corpus.jsonl -o runs/7b --batch-size 1 --seq-len 2048",
    "llmkit launch --strategy zero2 --nodes 2 --num-processes 8 --main-ip 10.0.0.1 --write-config launch/ "
    "-- llmkit pretrain --model ./base --data corpus.jsonl -o runs/big",
    "llmkit launch --cpu --num-processes 2 -- llmkit generate -m ./model --input prompts.jsonl --output answers.jsonl",
)


def register(app: typer.Typer) -> None:
    app.command("launch", epilog=EPILOG)(launch)


@config_command(LaunchConfig, extra=(
    inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context),
    inspect.Parameter("command", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[list[str]], typer.Argument(help="The command every process runs, after --: llmkit "
                                                 "pretrain|sft|peft ..., or llmkit generate --input --output",
                                            metavar="-- COMMAND...",
                                            show_default=False)])))
def launch(cfg: LaunchConfig, out: Output, ctx: typer.Context, command: Optional[list[str]]) -> None:
    """Run a training command (pretrain, sft, peft) on several processes or nodes with accelerate and DeepSpeed,
    or a batch generate (--input, --output) as data-parallel inference.

    Every process runs the command after -- with this same llmkit installation; RANK 0 writes the run dir and
    prints the result. Before starting, launch shows the per-rank memory from memory-estimate and refuses invalid
    combinations. A real run exits with the training's exit code when a process fails (1), or 130 after Ctrl-C
    (forwarded to the processes: they checkpoint and stop). With --json, --dry-run and --write-config print the
    plan as one JSON document; a real run passes --json to the training command, whose result is then the one
    document on stdout. Under launch, generate gives each rank a share of the input lines, each writing a part
    file beside --output; RANK 0 merges them into --output in input order (a rerun resumes the parts).
    """
    from llmkit import launch as core

    argv = core.check_training_argv(command)
    only_plan = cfg.dry_run or cfg.write_config is not None
    if out.json and not only_plan and "--json" not in argv:
        argv.append("--json")
    # the training command's configuration, resolved once by its own parser: a bad flag there is one clear error
    # here, before any rank starts, and the memory figures are those of exactly this run
    training = core.TrainingCommand(subcommand=argv[1], args=tuple(argv[2:]),
                                    config=resolve_training_config(argv[1:], ctx.find_root().command))
    if cfg.check_sources:
        check_training_sources(training.config)
    plan = core.plan_launch(cfg, training, check_port=not only_plan)
    if cfg.write_config is not None:
        core.write_files(plan, cfg)
    if only_plan:
        out.result(plan, lambda plan: _render(plan, cfg))
        return
    # a real run's result is the training command's own (one JSON document under --json); plain lines on stderr,
    # also for people: the processes' output interleaves with them
    from llmkit.ui import PlainReporter

    report = PlainReporter()
    for line in _summary(plan):
        report.info(line)
    result = core.run(plan, cfg, info=report.info, json_stdout=out.stdout if out.json else None)
    if result.signal is not None and result.exit_code != 0:
        report.info(f"launch: stopped after {result.signal} ({result.seconds:.1f} s)")
        raise KeyboardInterrupt
    if result.exit_code != 0:
        from llmkit.errors import LlmkitError

        what, kept = (("generate", "the ranks' part files beside --output keep their lines (rerun the same "
                                   "command to resume)") if training.inference else
                      ("training", "checkpoints already written are intact (continue with --resume auto in the "
                                   "training command)"))
        raise LlmkitError(f"a {what} process failed: the launcher exited with {result.exit_code} after "
                          f"{result.seconds:.1f} s, and the other processes were stopped",
                          hint=f"the failing rank's error is above; {kept}")
    report.info(f"launch: {plan.world_size} process(es) finished in {result.seconds:.1f} s")


def resolve_training_config(argv: list[str], root):
    """The config of `llmkit ARGV...` (a training command), or the ConfigError it would stop with."""
    from llmkit.errors import ConfigError

    try:
        return resolve_command_line(argv, root)
    except ConfigError as exc:
        raise ConfigError(f"the training command is invalid: {exc.message}",
                          hint=exc.hint or f"check it alone: llmkit {argv[0]} ... --print-config") from None


def check_training_sources(config) -> None:
    """The training command's own source checks, run here so that a dry run refuses what the real run would."""
    from llmkit.errors import LlmkitError
    from llmkit.preflight import check_sources

    try:
        check_sources(config)
    except LlmkitError as exc:
        hint = exc.hint or "check the path or hub id"
        raise type(exc)(f"in the training command: {exc.message}",
                        hint=f"{hint} (or, when it exists only on the nodes: launch --no-check-sources)") from None


def _summary(plan) -> list[str]:
    lines = [f"strategy {plan.strategy}" + (" (chosen by auto)" if plan.requested_strategy == "auto" else "")
             + f": {plan.nodes} node(s) x {plan.num_processes} process(es) = world size {plan.world_size}"
             + (f", node rank {plan.node_rank}" if plan.nodes > 1 else "")
             + (", CPUs (gloo)" if plan.cpu else "")
             + (f", {plan.threads_per_process} thread(s) per process" if plan.threads_per_process else "")
             + f", mixed precision {plan.mixed_precision}, main {plan.main_ip}:{plan.main_port}"
             + (" (29500 was taken)" if plan.port_chosen else "")]
    for cand in plan.candidates:
        mark = "fits" if cand["fits"] else "does not fit"
        lines.append(f"  auto: {cand['strategy']:<14} {format_bytes(cand['total_bytes']):>12} per rank  {mark}")
    if plan.memory is not None:
        d = plan.memory["per_device"]
        where = "per process, tensors only (CPU: no runtime overhead)" if plan.cpu else "per GPU"
        lines.append(f"memory per rank (memory-estimate) {format_bytes(d['total'])} {where}: weights "
                     f"{format_bytes(d['weights'])}, gradients {format_bytes(d['gradients'])}, optimizer "
                     f"{format_bytes(d['optimizer'])}, activations {format_bytes(d['activations'])}; communication "
                     f"{format_bytes(plan.memory['communication_bytes_per_step'])} per step and rank"
                     + (f"; CPU RAM for offload {format_bytes(plan.memory['cpu_ram'])} per node"
                        if plan.memory["offload"] != "none" else ""))
    else:
        lines.append(f"memory per rank: no estimate, {plan.memory_note} (launch goes on)")
    return lines


def _render(plan, cfg) -> None:
    out = console()
    for line in _summary(plan):
        out.print(line, markup=False, soft_wrap=True)
    if cfg.write_config is not None:
        out.print("written:", markup=False)
        for name, path in plan.files.items():
            out.print(f"  {name.replace('_', ' ')}: {path}", markup=False, soft_wrap=True)
    elif plan.world_size > 1:
        out.print(f"files (written when it runs, removed after): {plan.config_dir}", markup=False, soft_wrap=True)
    for cmd in plan.commands:
        if plan.nodes > 1:
            out.print(f"# node {cmd.node_rank}", markup=False)
        out.print(cmd.line, markup=False, soft_wrap=True)
