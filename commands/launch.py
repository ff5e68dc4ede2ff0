"""`llmkit launch`: a training command on several processes and nodes (DDP, ZeRO-1/2/3, offload, FSDP, auto).

Light: planning, the files and the memory figures never import torch; the run itself is a child process.
"""

from typing import Annotated, Optional

import typer

from llmkit.commands._options import ConfigOpt, JsonOpt, PresetOpt, PrintConfigOpt, option
from llmkit.commands._runtime import build_config, cli_command, console, emit_json, examples, reporter
from llmkit.ui import format_bytes

EPILOG = examples(
    "llmkit launch --strategy ddp --cpu --num-processes 2 -- llmkit pretrain --preset tiny-llama "
    "-t runs/quickstart/tokenizer --data runs/quickstart/data/train.jsonl -o runs/ddp --max-steps 100",
    "llmkit launch --strategy zero3-offload --num-processes 8 --mixed-precision bf16 --dry-run -- llmkit sft "
    "--model ./base --data chat.jsonl -o runs/sft",
    "llmkit launch --strategy auto --gpu-memory 24GiB --dry-run -- llmkit pretrain --model llama-2-7b "
    "--from-scratch -t ./tok --data corpus.jsonl -o runs/7b --batch-size 1 --seq-len 2048",
    "llmkit launch --strategy zero2 --nodes 2 --num-processes 8 --main-ip 10.0.0.1 --write-config launch/ "
    "-- llmkit pretrain --model ./base --data corpus.jsonl -o runs/big",
)

_PANEL = "Processes and nodes"


def _opt(flag: str, help_: str, type_=str, panel: Optional[str] = None):
    return Annotated[Optional[type_], option(flag, help=help_, panel=panel)]


def register(app: typer.Typer) -> None:
    app.command("launch", epilog=EPILOG)(launch)


@cli_command
def launch(
    command: Annotated[Optional[list[str]], typer.Argument(
        help="The training command every process runs, after --: llmkit pretrain|sft|peft ...",
        metavar="-- COMMAND...", show_default=False)] = None,
    strategy: _opt("--strategy", "ddp | zero1 | zero2 | zero3 | zero2-offload | zero3-offload | fsdp | auto "
                                 "(auto: the cheapest that fits --gpu-memory). Default ddp.") = None,
    num_processes: _opt("--num-processes", "Processes per node (default: the visible GPUs, or 2 with --cpu).",
                        int, _PANEL) = None,
    nodes: _opt("--nodes", "Nodes (machines) in the job (default 1).", int, _PANEL) = None,
    node_rank: _opt("--node-rank", "This node's rank, 0..nodes-1 (default 0).", int, _PANEL) = None,
    main_ip: _opt("--main-ip", "Node 0's address, which every node connects to (needed with --nodes > 1).",
                  str, _PANEL) = None,
    main_port: _opt("--main-port", "Node 0's port (default 29500; one node: a free one if that is taken).", int,
                    _PANEL) = None,
    hostfile: _opt("--hostfile", "`host slots=N` per line: the nodes, the main address (the first host) and the "
                                 "processes per node.", str, _PANEL) = None,
    mixed_precision: _opt("--mixed-precision", "no | fp16 | bf16 (default: the training command's own; fp16 "
                                               "needs GPUs).") = None,
    offload_device: _opt("--offload-device", "cpu | nvme: where the *-offload strategies put optimizer state "
                                             "(and parameters) (default cpu).") = None,
    nvme_path: _opt("--nvme-path", "A directory on a local NVMe disk, for --offload-device nvme.") = None,
    cpu: _opt("--cpu", "Processes on CPUs with gloo: for machines without GPUs, and for tests.", bool,
              _PANEL) = None,
    gpu_memory: _opt("--gpu-memory", "One GPU's memory (with --cpu: one process's budget), e.g. 80GiB: "
                                     "--strategy auto chooses the cheapest strategy that fits it.") = None,
    threads_per_process: _opt("--threads-per-process", "OMP_NUM_THREADS of every process (default with --cpu: "
                                                       "cores // processes).", int, _PANEL) = None,
    timeout: _opt("--timeout", "Seconds a node other than 0 waits for node 0's address (default 120).",
                  float, _PANEL) = None,
    write_config: _opt("--write-config", "Write the accelerate config, the DeepSpeed JSON and (several nodes) a "
                                         "hostfile, one command per node and a SLURM script into DIR, and "
                                         "exit.") = None,
    dry_run: _opt("--dry-run", "Print the exact command(s) and the per-rank memory, and exit.", bool) = None,
    preset: PresetOpt = None, config: ConfigOpt = None, print_config: PrintConfigOpt = False, json_: JsonOpt = False,
) -> None:
    """Run a training command (pretrain, sft, peft) on several processes or nodes with accelerate and DeepSpeed.

    Every process runs the command after -- with this same llmkit installation; RANK 0 writes the run dir and
    prints the result. Before starting, launch shows the per-rank memory from memory-estimate and refuses invalid
    combinations. A real run exits with the training's exit code when a process fails (1), or 130 after Ctrl-C
    (forwarded to the processes: they checkpoint and stop). With --json, --dry-run and --write-config print the
    plan as one JSON document; a real run passes --json to the training command, whose result is then the one
    document on stdout.
    """
    from llmkit.config import LaunchConfig

    cfg = build_config(LaunchConfig, preset, config, dict(
        strategy=strategy, num_processes=num_processes, nodes=nodes, node_rank=node_rank, main_ip=main_ip,
        main_port=main_port, hostfile=hostfile, mixed_precision=mixed_precision, offload_device=offload_device,
        nvme_path=nvme_path, cpu=cpu, gpu_memory=gpu_memory, threads_per_process=threads_per_process,
        timeout=timeout, write_config=write_config, dry_run=dry_run), print_config, json_)
    from llmkit import launch as core

    argv = list(command or [])
    only_plan = cfg.dry_run or cfg.write_config is not None
    if json_ and not only_plan and "--json" not in argv:
        argv.append("--json")
    plan = core.plan_launch(cfg, argv, check_port=not only_plan)
    if cfg.write_config is not None:
        core.write_files(plan, cfg)
    if only_plan:
        if json_:
            emit_json(plan.to_json())
        else:
            _render(plan, cfg)
        return
    core.check_training_command(plan)   # one clear error before any rank starts, not one per rank
    report = reporter(True)     # plain lines on stderr: the processes' output interleaves with them
    for line in _summary(plan):
        report.info(line)
    result = core.run(plan, cfg, info=report.info, json_stdout=json_)
    if result.signal is not None and result.exit_code != 0:
        report.info(f"launch: stopped after {result.signal} ({result.seconds:.1f} s)")
        raise KeyboardInterrupt
    if result.exit_code != 0:
        from llmkit.errors import LlmkitError

        raise LlmkitError(f"a training process failed: the launcher exited with {result.exit_code} after "
                          f"{result.seconds:.1f} s, and the other processes were stopped",
                          hint="the failing rank's error is above; checkpoints already written are intact "
                               "(continue with --resume auto in the training command)")
    report.info(f"launch: {plan.world_size} process(es) finished in {result.seconds:.1f} s")



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
