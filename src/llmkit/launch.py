"""`llmkit launch`: run a training command (pretrain, sft, peft) on several processes and nodes with accelerate and
DeepSpeed: DDP, ZeRO-1/2/3, ZeRO with CPU/NVMe offload, FSDP, or the cheapest strategy that fits (`auto`); or a batch
`generate` (--input/--output) as data-parallel inference: every rank a whole model and its share of the lines.

Light by design: planning, the generated files (an accelerate YAML in accelerate's own schema, a DeepSpeed JSON, a
hostfile, one command per node, a SLURM script) and the memory figures (memory-estimate's arithmetic) are pure Python;
torch is never imported here. Running spawns `python -m accelerate.commands.launch` with this interpreter, so every
process runs this same installation of llmkit.

How the work is split: the DeepSpeed JSON says "auto" for what the Trainer owns (batch sizes, accumulation, clipping,
precision), so the training command stays the one source of truth; it sets explicitly what the strategy means (stage,
offload, overlap_comm, contiguous_gradients, bucket sizes, gathering 16-bit weights on save).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit.errors import ConfigError, LlmkitError
from llmkit.config import STRATEGY_ZERO as ZERO
from llmkit.runtime import free_port

# --strategy auto tries these in this order (fastest first) and takes the first that fits --gpu-memory
AUTO_ORDER = ("ddp", "zero1", "zero2", "zero3", "zero2-offload", "zero3-offload")
TRAINING_COMMANDS = ("pretrain", "sft", "peft")
INFERENCE_COMMANDS = ("generate",)   # batch mode only: the ranks split the input lines (llmkit.inference.parallel)
DEFAULT_PORT = 29500
ACCELERATE_CONFIG = "accelerate_config.yaml"
DEEPSPEED_CONFIG = "deepspeed_config.json"
HOSTFILE = "hostfile"
COMMANDS = "commands.sh"
SLURM = "launch.slurm"


# ------------------------------------------------------------------------------------------ the training command

@dataclass(frozen=True)
class TrainingCommand:
    """The command after `--`: `llmkit SUBCOMMAND ARGS`, and its configuration as that command resolves it (its own
    parser, preset, config file and flags: `llmkit.commands._runtime.resolve_command_line`)."""

    subcommand: str
    args: tuple[str, ...]
    config: Any                      # PretrainConfig | SFTConfig | PeftConfig | GenerateConfig

    @property
    def inference(self) -> bool:
        return self.subcommand in INFERENCE_COMMANDS

    def gave(self, flag: str) -> bool:
        """Whether the command line itself passes --FLAG (launch must not pass it a second time)."""
        return any(a == flag or a.startswith(flag + "=") for a in self.args)


def check_training_argv(argv: list[str] | tuple[str, ...] | None) -> list[str]:
    """Check that ARGV is `llmkit pretrain|sft|peft|generate ...`; returns it as a list."""
    argv = list(argv or [])
    if not argv:
        raise ConfigError("no training command after --",
                          hint="e.g. llmkit launch --strategy ddp -- llmkit pretrain --model tiny-llama ...")
    program = argv[0]
    if Path(program).name != "llmkit":
        raise ConfigError(f"launch runs llmkit training commands, not {program!r}",
                          hint="start the command after -- with llmkit: -- llmkit pretrain|sft|peft ... "
                               "(for another script use accelerate launch itself)")
    if len(argv) > 1 and argv[1] == "eval":
        raise ConfigError("launch does not run eval: its figures (perplexity over sliding windows, task scores) "
                          "are aggregates over every row, which the ranks would have to combine",
                          hint="run `llmkit eval ...` in one process")
    if len(argv) < 2 or argv[1] not in TRAINING_COMMANDS + INFERENCE_COMMANDS:
        got = argv[1] if len(argv) > 1 else "nothing"
        raise ConfigError(f"launch runs the training commands {', '.join(TRAINING_COMMANDS)} and batch generate, "
                          f"not {got!r}",
                          hint="every process runs the command after --, so only training (or a batch that the "
                               "ranks split) makes sense there: -- llmkit pretrain|sft|peft|generate ...")
    for flag in ("--help", "-h", "--print-config"):
        if flag in argv[2:]:
            raise ConfigError(f"the training command has {flag}: every process would print and exit",
                              hint=f"run `llmkit {argv[1]} ... {flag}` by itself")
    return argv


def quantized(config) -> str | None:
    """The bitsandbytes quantization a training config asks for (QLoRA), or None."""
    quant = getattr(config, "quant", "none")
    return None if quant == "none" else quant


# ------------------------------------------------------------------------------------------------------ the plan

@dataclass
class NodeCommand:
    node_rank: int
    argv: list[str]
    env: dict[str, str]

    @property
    def line(self) -> str:
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (prefix + " " if prefix else "") + shlex.join(self.argv)


@dataclass
class Plan:
    strategy: str                      # the strategy used (auto resolved)
    requested_strategy: str
    num_processes: int                 # per node
    nodes: int
    node_rank: int
    main_ip: str
    main_port: int
    port_chosen: bool                  # True when launch picked a free port itself
    mixed_precision: str
    cpu: bool
    threads_per_process: int | None    # OMP_NUM_THREADS for every process
    config_dir: Path
    training: TrainingCommand
    training_argv: list[str]           # what every process runs, after `python -m`
    hosts: list[tuple[str, int]]       # (host, slots) for the hostfile
    memory: dict[str, Any] | None      # memory-estimate per rank for the strategy used
    candidates: list[dict[str, Any]]   # --strategy auto: every strategy tried, with its total and fit
    memory_note: str | None            # why there is no memory estimate
    commands: list[NodeCommand] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    @property
    def world_size(self) -> int:
        return self.num_processes * self.nodes

    @property
    def uses_deepspeed(self) -> bool:
        return self.strategy.startswith("zero")

    @property
    def zero_stage(self) -> int:
        return ZERO[self.strategy][0]

    def to_json(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy, "requested_strategy": self.requested_strategy,
            "num_processes": self.num_processes, "nodes": self.nodes, "node_rank": self.node_rank,
            "world_size": self.world_size, "main_ip": self.main_ip, "main_port": self.main_port,
            "mixed_precision": self.mixed_precision, "cpu": self.cpu, "threads_per_process": self.threads_per_process,
            "config_dir": str(self.config_dir), "files": dict(self.files),
            "training_command": self.training_argv[3:],   # after `python -m llmkit`
            "commands": [{"node_rank": c.node_rank, "argv": c.argv, "env": c.env, "line": c.line}
                         for c in self.commands],
            "memory": self.memory, "memory_note": self.memory_note, "candidates": self.candidates,
        }


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def visible_gpus() -> int:
    """GPUs this process may use, without importing torch: CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU ")) if out.returncode == 0 else 0


def read_hostfile(path: str) -> list[tuple[str, int]]:
    """DeepSpeed's hostfile format: `host slots=N` per line; `#` starts a comment."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--hostfile {file}: cannot read it ({exc.strerror or exc})",
                          hint="one `host slots=N` line per node") from None
    hosts: list[tuple[str, int]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        slots = None
        for part in parts[1:]:
            if part.startswith("slots="):
                try:
                    slots = int(part[6:])
                except ValueError:
                    slots = None
        if slots is None or slots <= 0:
            raise ConfigError(f"--hostfile {file}:{number}: expected `host slots=N`, got {raw.strip()!r}",
                              hint="one `host slots=N` line per node, e.g. `10.0.0.1 slots=8`")
        hosts.append((parts[0], slots))
    if not hosts:
        raise ConfigError(f"--hostfile {file} lists no host", hint="one `host slots=N` line per node")
    if len({s for _, s in hosts}) > 1:
        raise ConfigError(f"--hostfile {file}: every node needs the same number of slots "
                          f"(got {', '.join(str(s) for _, s in hosts)})",
                          hint="accelerate starts the same number of processes on every node")
    return hosts


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def plan_launch(cfg, command: TrainingCommand, check_port: bool = True) -> Plan:
    """Resolve everything before anything starts: processes, nodes, strategy (auto), refusals, memory, commands.

    Raises ConfigError (exit 2) for every invalid combination, with the reason and the alternative.
    """
    problems: list[str] = []
    hosts: list[tuple[str, int]] = []
    nodes, main_ip = cfg.nodes, cfg.main_ip
    num_processes = cfg.num_processes
    if cfg.hostfile is not None:
        hosts = read_hostfile(cfg.hostfile)
        if cfg.nodes not in (1, len(hosts)):
            problems.append(f"--nodes {cfg.nodes} but --hostfile lists {len(hosts)} hosts: give one of them")
        nodes = len(hosts)
        main_ip = main_ip or hosts[0][0]
        if num_processes is None:
            num_processes = hosts[0][1]
    if num_processes is None:
        if cfg.cpu:
            num_processes = 2
        else:
            num_processes = visible_gpus()
            if num_processes == 0:
                raise ConfigError("no GPU is visible, so there is no default for --num-processes",
                                  hint="pass --cpu to train with processes on CPUs (gloo), or --num-processes N")
    if nodes > 1 and not main_ip:
        problems.append(f"--nodes {nodes} needs --main-ip: the address of node 0, which every node connects to")
    if cfg.node_rank >= nodes:
        problems.append(f"--node-rank {cfg.node_rank} must be below --nodes {nodes} (node ranks are 0..{nodes - 1})")
    if command.inference:
        problems += inference_problems(cfg, command.config)
        mixed = "no"   # generate loads the weights in its own --dtype
    else:
        mixed = _training_mixed_precision(cfg, command, problems)
    quant = quantized(command.config)
    strategy = cfg.strategy
    if quant and strategy in ("zero3", "zero3-offload", "fsdp"):
        problems.append(f"--strategy {strategy} with a quantized base ({quant}, QLoRA): ZeRO-3 and FSDP partition "
                        "parameters, which they cannot do to bitsandbytes weights; use --strategy ddp or zero2")
    offloads = strategy.endswith("-offload")
    if not offloads and strategy != "auto" and (cfg.offload_device is not None or cfg.nvme_path is not None):
        problems.append(f"--offload-device/--nvme-path with --strategy {strategy}, which offloads nothing; use "
                        "--strategy zero2-offload or zero3-offload")
    offload_device = cfg.offload_device or "cpu"
    if offload_device == "nvme":
        if cfg.nvme_path is None:
            problems.append("--offload-device nvme needs --nvme-path DIR (a directory on a fast local NVMe disk)")
        if strategy == "zero2-offload":
            problems.append("--offload-device nvme needs --strategy zero3-offload (ZeRO-Infinity); ZeRO-2 offloads "
                            "the optimizer to CPU memory only")
    elif cfg.nvme_path is not None:
        problems.append("--nvme-path applies to --offload-device nvme")
    if strategy == "fsdp" and cfg.cpu:
        problems.append("--strategy fsdp on CPUs: accelerate's FSDP needs a GPU (or another accelerator) per "
                        "process; use --strategy zero3 (the same partitioning; DeepSpeed runs on CPUs)")
    if cfg.write_config is not None:
        folder = Path(cfg.write_config).expanduser()
        if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not cfg.overwrite)):
            problems.append(f"--write-config {folder} " + ("is a file" if not folder.is_dir() else
                            "is not empty: pass --overwrite to write the files there, or choose another dir"))
    if strategy == "auto" and cfg.gpu_memory is None:
        problems.append("--strategy auto needs --gpu-memory (the memory of one GPU, or of one process with --cpu): "
                        "the budget the chosen strategy must fit")
    if problems:
        from llmkit.configio import validate

        validate(problems)

    # memory per rank (memory-estimate), and the choice for auto
    memory, candidates, note = None, [], None
    spec, note = (None, "inference: every rank holds a whole copy of the model") if command.inference \
        else _model_spec(command)
    if strategy == "auto":
        if spec is None:
            raise ConfigError(f"--strategy auto needs the model's size, and {note}",
                              hint="choose a --strategy yourself, or give the training command a model dir, "
                                   "preset or config.json with every size field")
        for name in AUTO_ORDER:
            if quant and ZERO[name][0] == 3:
                continue
            est = _memory(cfg, command, spec, name, num_processes, nodes, mixed)
            candidates.append({"strategy": name, "total_bytes": est["per_device"]["total"], "fits": est["fits"]})
            if est["fits"] and memory is None:
                memory, strategy = est, name
        if memory is None:
            best = min(candidates, key=lambda c: c["total_bytes"])
            raise ConfigError(f"no strategy fits --gpu-memory {cfg.gpu_memory}: the smallest is {best['strategy']} "
                              f"at {_gib(best['total_bytes']):.2f} GiB per rank",
                              hint="add processes or nodes, or shrink the run (llmkit memory-estimate ... --plan "
                                   "lists what fits)")
    elif spec is not None:
        memory = _memory(cfg, command, spec, strategy, num_processes, nodes, mixed)

    # the address and port
    port_chosen = False
    port = cfg.main_port
    if port is None:
        port = DEFAULT_PORT
        if nodes == 1 and check_port and not port_free(port):
            port, port_chosen = free_port(), True
    elif check_port and cfg.node_rank == 0 and not port_free(port):
        raise ConfigError(f"--main-port {port} is in use on this machine (node 0 listens there for the other "
                          "processes)", hint="choose another --main-port, or stop what holds it")
    if check_port and nodes > 1 and cfg.main_port is None and cfg.node_rank == 0 and not port_free(port):
        raise ConfigError(f"port {port} (the default --main-port) is in use on this machine",
                          hint="pass --main-port with a free port, the same on every node")

    threads = cfg.threads_per_process
    if threads is None and cfg.cpu:
        threads = max(1, cpu_cores() // num_processes)
    if not hosts and nodes > 1:
        hosts = [(main_ip, num_processes)] + [(f"node{r}", num_processes) for r in range(1, nodes)]
    plan = Plan(strategy=strategy, requested_strategy=cfg.strategy, num_processes=num_processes, nodes=nodes,
                node_rank=cfg.node_rank, main_ip=main_ip or "127.0.0.1", main_port=port, port_chosen=port_chosen,
                mixed_precision=mixed, cpu=cfg.cpu, threads_per_process=threads, config_dir=Path("."),
                training=command, training_argv=[], hosts=hosts, memory=memory, candidates=candidates,
                memory_note=note)
    plan.config_dir = Path(cfg.write_config).expanduser().resolve() if cfg.write_config else _scratch_dir(plan, cfg)
    plan.training_argv = _training_argv(plan, cfg)
    plan.files = _file_names(plan)
    plan.commands = [node_command(plan, r) for r in range(nodes)]
    return plan


def _training_mixed_precision(cfg, command: TrainingCommand, problems: list[str]) -> str:
    """The autocast every training process runs with (launch's --mixed-precision, else the command's own)."""
    mixed = cfg.mixed_precision
    train_mixed = command.config.mixed_precision
    if mixed is None:
        mixed = train_mixed
    elif command.gave("--mixed-precision") and train_mixed != mixed:
        problems.append(f"--mixed-precision {mixed} but the training command says --mixed-precision {train_mixed}: "
                        "give it once (launch passes its own to the training command)")
    if mixed == "fp16" and cfg.cpu:
        problems.append("--mixed-precision fp16 on CPUs: fp16 autocast has no CPU gradient scaler; use bf16 "
                        "(slow without native bf16) or no")
    if mixed not in ("no", "fp16", "bf16"):
        problems.append(f"the training command's --mixed-precision {mixed!r} is not no, fp16 or bf16")
    if command.config.deepspeed is not None:
        problems.append("the training command has --deepspeed: launch writes the DeepSpeed config of --strategy "
                        "itself; drop --deepspeed from the command after --")
    return mixed


def inference_problems(cfg, generate) -> list[str]:
    """Why `generate` (its GenerateConfig) cannot run as data-parallel inference under these launch flags."""
    problems = []
    if generate.input is None or generate.output is None:
        problems.append("launch runs generate in batch mode only (--input and --output): the ranks split the input "
                        "lines; a --prompt, --message or --chat is one process's work, so run llmkit generate alone")
    elif Path(generate.output).suffix == ".npy":
        problems.append(f"--output {generate.output}: an .npy array is written whole by one process, so the ranks "
                        "cannot share it; write a .jsonl --output, or run llmkit generate alone")
    if cfg.strategy != "ddp":
        problems.append(f"--strategy {cfg.strategy} with generate: ZeRO and FSDP partition what training needs "
                        "(weights, gradients, optimizer state) across ranks; batch inference has no gradients, and "
                        "each rank generates its lines with a whole model: use --strategy ddp (the default)")
    if cfg.mixed_precision is not None:
        problems.append("--mixed-precision with generate: autocast is a training setting; generate loads the weights "
                        "in its own --dtype")
    return problems


def _scratch_dir(plan: Plan, cfg) -> Path:
    """Where a run without --write-config keeps its files: a fixed name per plan, so --dry-run shows the exact paths
    the run uses."""
    key = json.dumps([plan.strategy, plan.num_processes, plan.nodes, plan.node_rank, plan.main_ip, plan.main_port,
                      plan.mixed_precision, plan.cpu, cfg.offload_device, cfg.nvme_path, list(plan.training.args),
                      os.getcwd()])
    return Path(tempfile.gettempdir()) / f"llmkit-launch-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def _training_argv(plan: Plan, cfg) -> list[str]:
    argv = [sys.executable, "-m", "llmkit", plan.training.subcommand, *plan.training.args]
    if plan.uses_deepspeed:
        argv += ["--deepspeed", str(plan.config_dir / DEEPSPEED_CONFIG)]
    if cfg.mixed_precision is not None and not plan.training.gave("--mixed-precision"):
        argv += ["--mixed-precision", plan.mixed_precision]
    return argv


def _file_names(plan: Plan) -> dict[str, str]:
    files = {"accelerate_config": str(plan.config_dir / ACCELERATE_CONFIG)}
    if plan.uses_deepspeed:
        files["deepspeed_config"] = str(plan.config_dir / DEEPSPEED_CONFIG)
    files["commands"] = str(plan.config_dir / COMMANDS)
    if plan.nodes > 1:
        files["hostfile"] = str(plan.config_dir / HOSTFILE)
        files["slurm"] = str(plan.config_dir / SLURM)
    return files


def node_command(plan: Plan, node_rank: int) -> NodeCommand:
    """The exact command node `node_rank` runs. One process in all needs no launcher: llmkit runs it directly."""
    env = {"OMP_NUM_THREADS": str(plan.threads_per_process)} if plan.threads_per_process else {}
    if plan.world_size == 1:
        return NodeCommand(node_rank, list(plan.training_argv), env)
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(plan.config_dir / ACCELERATE_CONFIG), "--machine_rank", str(node_rank)]
    if plan.threads_per_process:
        argv += ["--num_cpu_threads_per_process", str(plan.threads_per_process)]
    if plan.uses_deepspeed:   # on the command line: from the config file, accelerate would refuse the DeepSpeed JSON
        argv += ["--mixed_precision", plan.mixed_precision]
    argv += ["-m", *plan.training_argv[2:]]
    return NodeCommand(node_rank, argv, env)


# --------------------------------------------------------------------------------------------------- the files

def accelerate_config(plan: Plan) -> dict[str, Any]:
    """An accelerate config in accelerate's own schema (accelerate.commands.config.config_args.ClusterConfig)."""
    if plan.uses_deepspeed:
        distributed = "DEEPSPEED"
    elif plan.strategy == "fsdp":
        distributed = "FSDP"
    else:
        distributed = "MULTI_GPU" if plan.world_size > 1 else "NO"   # MULTI_GPU + use_cpu: DDP over gloo on CPUs
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE", "debug": False, "distributed_type": distributed,
        "downcast_bf16": "no", "enable_cpu_affinity": False, "gpu_ids": "all", "machine_rank": plan.node_rank,
        "main_training_function": "main", "mixed_precision": plan.mixed_precision, "num_machines": plan.nodes,
        "num_processes": plan.world_size, "rdzv_backend": "static", "same_network": True,
        "tpu_env": [], "tpu_use_cluster": False, "tpu_use_sudo": False,
        "use_cpu": plan.cpu and not plan.uses_deepspeed,   # DeepSpeed picks its CPU accelerator by itself
        "main_process_port": plan.main_port,
    }
    if plan.nodes > 1:
        config["main_process_ip"] = plan.main_ip
    if plan.uses_deepspeed:
        config.pop("mixed_precision")   # the DeepSpeed JSON's "auto" (from the Trainer) decides
        config["deepspeed_config"] = {"deepspeed_config_file": str(plan.config_dir / DEEPSPEED_CONFIG),
                                      "deepspeed_multinode_launcher": "standard", "zero3_init_flag": False}
    if plan.strategy == "fsdp":
        config["fsdp_config"] = {"fsdp_version": 1, "fsdp_sharding_strategy": "FULL_SHARD",
                                 "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                                 "fsdp_backward_prefetch": "BACKWARD_PRE", "fsdp_forward_prefetch": False,
                                 "fsdp_state_dict_type": "FULL_STATE_DICT", "fsdp_offload_params": False,
                                 "fsdp_sync_module_states": True, "fsdp_use_orig_params": True,
                                 "fsdp_cpu_ram_efficient_loading": False, "fsdp_activation_checkpointing": False}
    return config


def deepspeed_config(strategy: str, offload_device: str = "cpu", nvme_path: str | None = None,
                     cpu: bool = False) -> dict[str, Any]:
    """The DeepSpeed JSON of a ZeRO strategy: "auto" for what the Trainer owns, the strategy itself explicit."""
    stage, offload = ZERO[strategy]
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": not cpu,          # overlapping needs a second stream: GPUs only
        "contiguous_gradients": True,
        "reduce_scatter": True,
        "reduce_bucket_size": 500_000_000,          # elements per gradient reduce bucket (DeepSpeed's default)
    }
    if stage in (1, 2):
        zero["allgather_partitions"] = True
        zero["allgather_bucket_size"] = 500_000_000
    if stage == 3:
        zero.update({"stage3_prefetch_bucket_size": 50_000_000, "stage3_param_persistence_threshold": 100_000,
                     "stage3_max_live_parameters": 1_000_000_000, "stage3_max_reuse_distance": 1_000_000_000,
                     "sub_group_size": 1_000_000_000,
                     "stage3_gather_16bit_weights_on_model_save": True})   # a whole model on save
    if offload != "none":
        target: dict[str, Any] = {"device": offload_device, "pin_memory": not cpu}
        if offload_device == "nvme":
            target["nvme_path"] = str(nvme_path)
        zero["offload_optimizer"] = dict(target)
        if offload == "optimizer+params":
            zero["offload_param"] = dict(target)
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto", "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto", "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
        # the Trainer's optimizer (--optimizer) steps the partitions, offloaded ones too: no DeepSpeed C++ op
        "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 1_000_000_000, "wall_clock_breakdown": False,
    }
    return config


def hostfile_text(plan: Plan) -> str:
    lines = ["# DeepSpeed/MPI hostfile: one `host slots=N` line per node; node 0 (the first) is --main-ip"]
    if any(host.startswith("node") and host[4:].isdigit() for host, _ in plan.hosts[1:]):
        lines.append("# replace node1.. with the addresses of the other machines")
    lines += [f"{host} slots={slots}" for host, slots in plan.hosts]
    return "\n".join(lines) + "\n"


def commands_text(plan: Plan) -> str:
    lines = ["#!/bin/sh", f"# llmkit launch --strategy {plan.strategy}: {plan.nodes} node(s) x {plan.num_processes} "
             "process(es); run line N on node N-1 (node 0 first)"]
    for command in plan.commands:
        lines.append(f"# node {command.node_rank}")
        lines.append(command.line)
    return "\n".join(lines) + "\n"


def slurm_text(plan: Plan) -> str:
    """A SLURM batch script: one task per node; each runs its node's command with SLURM's node id as the rank and
    the allocation's first node as the main address."""
    argv = list(node_command(plan, 0).argv)
    argv[argv.index("--machine_rank") + 1] = "__NODE_RANK__"
    at = argv.index("-m", argv.index("--machine_rank"))
    argv[at:at] = ["--main_process_ip", "__MAIN_IP__"]
    line = shlex.join(argv).replace("__NODE_RANK__", "$SLURM_NODEID").replace("__MAIN_IP__", "$MAIN_IP")
    env = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in node_command(plan, 0).env.items())
    gpus = "" if plan.cpu else f"#SBATCH --gpus-per-node={plan.num_processes}\n"
    inner = line.replace("'", "'\\''")
    return (f"#!/bin/bash\n#SBATCH --job-name=llmkit-{plan.strategy}\n#SBATCH --nodes={plan.nodes}\n"
            f"#SBATCH --ntasks-per-node=1\n{gpus}#SBATCH --exclusive\n"
            "# node 0 of the allocation is the main address; every node runs one accelerate launch\n"
            'MAIN_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)\n'
            f"export MAIN_IP\n{env}"
            f"srun --kill-on-bad-exit=1 bash -c '{inner}'\n")


def write_files(plan: Plan, cfg) -> dict[str, str]:
    """Write the plan's files into plan.config_dir; returns their paths."""
    import yaml

    folder = plan.config_dir
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ACCELERATE_CONFIG).write_text(yaml.safe_dump(accelerate_config(plan), sort_keys=True),
                                            encoding="utf-8")
    if plan.uses_deepspeed:
        ds = deepspeed_config(plan.strategy, cfg.offload_device or "cpu", cfg.nvme_path, plan.cpu)
        (folder / DEEPSPEED_CONFIG).write_text(json.dumps(ds, indent=2) + "\n", encoding="utf-8")
    (folder / COMMANDS).write_text(commands_text(plan), encoding="utf-8")
    if plan.nodes > 1:
        (folder / HOSTFILE).write_text(hostfile_text(plan), encoding="utf-8")
        (folder / SLURM).write_text(slurm_text(plan), encoding="utf-8")
    return dict(plan.files)


# ---------------------------------------------------------------------------------------------------- memory

def _gib(n: float) -> float:
    return n / 2 ** 30


def _model_spec(command: TrainingCommand):
    """(ModelSpec, None), or (None, the reason it cannot be sized) from the training command's --model."""
    from llmkit import modelspec

    config = command.config
    overrides: dict[str, int | None] = {}
    if config.tokenizer:
        vocab = _tokenizer_vocab(config.tokenizer)
        if vocab:
            overrides["vocab"] = vocab   # a model built from scratch gets the tokenizer's vocabulary
    try:
        return modelspec.load_spec(config.model, overrides), None
    except LlmkitError as exc:
        return None, f"the model cannot be sized: {exc.message}"
    except Exception as exc:  # noqa: BLE001 - the estimate is advice; an odd config never stops a launch
        return None, f"the model cannot be sized: {type(exc).__name__}: {exc}"


def _tokenizer_vocab(tokenizer: str) -> int | None:
    """The vocabulary size of a local tokenizer.json (no tokenizers import): model vocab plus added tokens."""
    path = Path(tokenizer).expanduser()
    path = path / "tokenizer.json" if path.is_dir() else path
    if path.name != "tokenizer.json" or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        vocab = data["model"]["vocab"]
        ids = set(vocab.values()) if isinstance(vocab, dict) else set(range(len(vocab)))
        ids |= {t["id"] for t in data.get("added_tokens", [])}
        return max(ids) + 1 if ids else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _memory(cfg, command: TrainingCommand, spec, strategy: str, num_processes: int, nodes: int,
            mixed: str) -> dict[str, Any]:
    """memory-estimate's per-rank figures for this training command under `strategy`."""
    from llmkit import translate
    from llmkit.memory import estimate

    zero, offload = ZERO[strategy]
    try:
        mem_cfg = translate.memory_config(command.config, zero=zero, offload=offload, gpus=num_processes,
                                          nodes=nodes, gpu_memory=cfg.gpu_memory, mixed_precision=mixed,
                                          overhead="0" if cfg.cpu else None, device="cpu" if cfg.cpu else "cuda",
                                          strategy="fsdp" if strategy == "fsdp" else None)
        est = estimate(mem_cfg, spec=spec)
    except LlmkitError as exc:
        raise ConfigError(f"memory-estimate refuses this run: {exc.message}", hint=exc.hint) from None
    return {"strategy": strategy, "zero": zero, "offload": offload, "per_device": dict(est.per_device),
            "cpu_ram": est.cpu_ram, "communication_bytes_per_step": est.communication_bytes_per_step,
            "peak_phase": est.peak_phase, "fits": est.fits, "gpu_memory": est.gpu_memory,
            "params_total": est.params_total}


def communication_table(spec, strategies=AUTO_ORDER, num_processes: int = 2, batch_size: int = 8,
                        seq_len: int = 512, mixed: str = "no") -> dict[str, int]:
    """memory-estimate's communication bytes per optimizer step and device, for each strategy (benchmarks)."""
    from llmkit.config import MemoryEstimateConfig
    from llmkit.memory import estimate

    out = {}
    for strategy in strategies:
        zero, offload = ZERO[strategy]
        est = estimate(MemoryEstimateConfig(model=spec.name, batch_size=batch_size, seq_len=seq_len, zero=zero,
                                            offload=offload, gpus=num_processes, mixed_precision=mixed,
                                            overhead="0"), spec=spec)
        out[strategy] = est.communication_bytes_per_step
    return out


# -------------------------------------------------------------------------------------------------------- run

def wait_for_main(host: str, port: int, timeout: float) -> None:
    """A node other than 0 waits until node 0 listens; an unreachable address fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise LlmkitError(f"cannot reach the main address {host}:{port} within --timeout {timeout:g} s "
                              f"({last or 'no answer'})",
                              hint="start node 0 first (it listens on --main-port), check --main-ip and the "
                                   "firewall, or raise --timeout")
        try:
            with socket.create_connection((host, port), timeout=min(2.0, max(left, 0.1))):
                return
        except OSError as exc:
            last = exc.strerror or type(exc).__name__
            time.sleep(min(0.5, max(deadline - time.monotonic(), 0)))


@dataclass
class LaunchResult:
    exit_code: int
    seconds: float
    signal: str | None = None


def _split_stdout(stream, out, err) -> None:
    """Under --json: JSON lines (the training's result) go to stdout, everything else (DeepSpeed prints its
    accelerator notice to stdout) to stderr, so stdout holds one JSON document."""
    for line in iter(stream.readline, ""):
        text = line.strip()
        target = err
        if text.startswith("{"):
            try:
                json.loads(text)
                target = out
            except ValueError:
                pass
        target.write(line)
        target.flush()


def run(plan: Plan, cfg, info=None, json_stdout=None) -> LaunchResult:
    """Start this node's command, forward SIGINT/SIGTERM/SIGHUP to it, wait; the files live for the run's length
    (in --write-config's dir they stay). `json_stdout` (under --json): the stream for the training's JSON result;
    the processes' other stdout lines go to stderr."""
    import shutil
    import threading

    info = info or (lambda message: None)
    if plan.nodes > 1 and plan.node_rank > 0:
        info(f"waiting for node 0 at {plan.main_ip}:{plan.main_port} (--timeout {cfg.timeout:g} s)")
        wait_for_main(plan.main_ip, plan.main_port, cfg.timeout)
    write_files(plan, cfg)
    command = plan.commands[plan.node_rank]
    env = dict(os.environ)
    env.update(command.env)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()
    received: list[int] = []
    proc = subprocess.Popen(command.argv, env=env, start_new_session=True,
                            stdout=subprocess.PIPE if json_stdout else None, text=True)
    reader = None
    if json_stdout:
        reader = threading.Thread(target=_split_stdout, args=(proc.stdout, json_stdout, sys.stderr), daemon=True)
        reader.start()

    def forward(signum, frame):
        received.append(signum)
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        try:
            previous[sig] = signal.signal(sig, forward)
        except ValueError:   # not the main thread: no forwarding
            pass
    try:
        code = proc.wait()
        if reader is not None:
            reader.join(timeout=10)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if not cfg.write_config:
            shutil.rmtree(plan.config_dir, ignore_errors=True)
    name = signal.Signals(received[0]).name if received else None
    return LaunchResult(exit_code=code, seconds=time.perf_counter() - started, signal=name)
