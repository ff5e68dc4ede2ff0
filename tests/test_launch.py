"""`llmkit launch`: the plan, the files (loaded by accelerate and DeepSpeed themselves), the refusals, and real
multi-process runs on CPUs with gloo (DDP = 1 process, ZeRO-1/2/3/offload, two nodes on one machine, a rank dying)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import assert_clean_error, heavy_modules_after


DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                   "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", **extra)
    return env


def _train(configs, bpe_dir, docs_file, out, *extra):
    return ["llmkit", "pretrain", "--model", str(configs["llama"]), "--from-scratch", "-t", str(bpe_dir), "--data",
            str(docs_file), "-o", str(out), "--seq-len", "32", "--pack", "--logging-steps", "1", "--lr", "3e-3",
            "--scheduler", "constant", *map(str, extra)]


def _launch(*args, timeout=400, env=None):
    return subprocess.run([sys.executable, "-m", "llmkit", "launch", *map(str, args)], capture_output=True,
                          text=True, env=env or _env(), timeout=timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@pytest.fixture
def train_cmd(configs, bpe_dir, docs_file, tmp_path):
    return _train(configs, bpe_dir, docs_file, tmp_path / "run", "--batch-size", "2", "--max-steps", "4")


# ---------------------------------------------------------------------------------------- --dry-run, --write-config

def test_dry_run_prints_the_exact_command(cli, train_cmd):
    from llmkit.launch import cpu_cores

    result = cli("launch", "--strategy", "ddp", "--cpu", "--num-processes", "2", "--dry-run", "--json", "--",
                 *train_cmd)
    assert result.exit_code == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["strategy"] == "ddp" and plan["world_size"] == 2 and plan["nodes"] == 1 and plan["cpu"] is True
    assert plan["threads_per_process"] == max(1, cpu_cores() // 2)
    [command] = plan["commands"]
    argv = command["argv"]
    # `llmkit` means this installation: this interpreter, `-m llmkit`, under accelerate's launcher
    assert argv[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert argv[argv.index("--config_file") + 1] == str(Path(plan["config_dir"]) / "accelerate_config.yaml")
    assert argv[argv.index("--machine_rank") + 1] == "0"
    assert argv[argv.index("--num_cpu_threads_per_process") + 1] == str(plan["threads_per_process"])
    tail = argv[argv.index("-m", 3):]
    assert tail == ["-m", "llmkit", *train_cmd[1:]]                 # the training command, unchanged
    assert plan["training_command"] == train_cmd[1:]
    assert command["env"] == {"OMP_NUM_THREADS": str(plan["threads_per_process"])}
    assert command["line"].endswith(" ".join(train_cmd[1:])) or "'" in command["line"]
    memory = plan["memory"]          # memory-estimate's figures for this run (tokenizer vocabulary included)
    assert memory["zero"] == 0 and memory["per_device"]["total"] > 0 and memory["per_device"]["weights"] > 0
    assert memory["communication_bytes_per_step"] > 0
    assert not Path(plan["config_dir"]).exists()                    # a dry run writes nothing

    human = cli("launch", "--cpu", "--dry-run", "--", *train_cmd)
    assert human.exit_code == 0 and "memory per rank" in human.stdout
    assert command["line"] in human.stdout.replace("\n", " ") or "accelerate.commands.launch" in human.stdout


def test_one_process_in_all_runs_without_a_launcher(cli, train_cmd):
    plan = json.loads(cli("launch", "--cpu", "--num-processes", "1", "--dry-run", "--json", "--", *train_cmd).stdout)
    assert plan["commands"][0]["argv"] == [sys.executable, "-m", "llmkit", *train_cmd[1:]]


def test_write_config_two_nodes_field_by_field(cli, train_cmd, tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    out = tmp_path / "launch"
    result = cli("launch", "--strategy", "zero3", "--nodes", "2", "--num-processes", "4", "--main-ip", "10.1.2.3",
                 "--main-port", "29600", "--mixed-precision", "bf16", "--write-config", out, "--json", "--", *train_cmd)
    assert result.exit_code == 0, result.stderr
    plan = json.loads(result.stdout)
    assert sorted(p.name for p in out.iterdir()) == ["accelerate_config.yaml", "commands.sh", "deepspeed_config.json",
                                                     "hostfile", "launch.slurm"]
    acc = load_config_from_file(str(out / "accelerate_config.yaml"))      # accelerate's own loader and schema
    assert acc.distributed_type.value == "DEEPSPEED" and acc.num_processes == 8 and acc.num_machines == 2
    assert acc.machine_rank == 0 and acc.main_process_ip == "10.1.2.3" and acc.main_process_port == 29600
    assert acc.rdzv_backend == "static" and acc.deepspeed_config["deepspeed_config_file"] == str(
        out / "deepspeed_config.json")
    assert acc.deepspeed_config["deepspeed_multinode_launcher"] == "standard"

    ds = json.loads((out / "deepspeed_config.json").read_text())
    for key in ("train_micro_batch_size_per_gpu", "train_batch_size", "gradient_accumulation_steps",
                "gradient_clipping"):
        assert ds[key] == "auto", key                                       # the Trainer owns them
    assert ds["bf16"] == {"enabled": "auto"} and ds["fp16"] == {"enabled": "auto"}
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero["overlap_comm"] is True and zero["contiguous_gradients"] is True
    assert zero["reduce_bucket_size"] == 500_000_000 and zero["stage3_prefetch_bucket_size"] == 50_000_000
    assert "offload_optimizer" not in zero and "offload_param" not in zero and "optimizer" not in ds

    hosts = [line for line in (out / "hostfile").read_text().splitlines() if not line.startswith("#")]
    assert hosts == ["10.1.2.3 slots=4", "node1 slots=4"]
    lines = [line for line in (out / "commands.sh").read_text().splitlines() if not line.startswith("#")]
    assert len(lines) == 2 and lines == [c["line"] for c in plan["commands"]]
    for rank, line in enumerate(lines):
        assert f"--machine_rank {rank} " in line and "--mixed_precision bf16" in line
        assert line.endswith(f"--deepspeed {out / 'deepspeed_config.json'} --mixed-precision bf16")
    slurm = (out / "launch.slurm").read_text()
    assert "#SBATCH --nodes=2" in slurm and "#SBATCH --gpus-per-node=4" in slurm
    assert "--machine_rank $SLURM_NODEID" in slurm and "--main_process_ip $MAIN_IP" in slurm
    assert "scontrol show hostnames" in slurm


def test_ddp_config_on_cpus_loads_in_accelerate(cli, train_cmd, tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    result = cli("launch", "--cpu", "--write-config", tmp_path / "c", "--", *train_cmd)
    assert result.exit_code == 0, result.stderr
    acc = load_config_from_file(str(tmp_path / "c" / "accelerate_config.yaml"))
    assert acc.distributed_type.value == "MULTI_GPU" and acc.use_cpu is True and acc.num_processes == 2
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["accelerate_config.yaml", "commands.sh"]


@pytest.mark.parametrize("strategy, stage, optimizer, params", [
    ("zero1", 1, None, None), ("zero2", 2, None, None), ("zero2-offload", 2, "cpu", None),
    ("zero3-offload", 3, "cpu", "cpu")])
def test_deepspeed_json_per_strategy(strategy, stage, optimizer, params):
    from llmkit.launch import deepspeed_config

    zero = deepspeed_config(strategy, cpu=True)["zero_optimization"]
    assert zero["stage"] == stage
    assert zero.get("offload_optimizer", {}).get("device") == optimizer
    assert zero.get("offload_param", {}).get("device") == params
    assert zero["overlap_comm"] is False                     # gloo on CPUs: no second stream
    assert ("allgather_bucket_size" in zero) == (stage < 3)
    nvme = deepspeed_config("zero3-offload", "nvme", "/nvme")["zero_optimization"]
    assert nvme["offload_param"] == {"device": "nvme", "pin_memory": True, "nvme_path": "/nvme"}


DS_INITIALIZE = """
import json, os, sys
import torch, deepspeed
from llmkit.launch import deepspeed_config
os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1])
torch.manual_seed(0)
stages = {}
for strategy in ("zero1", "zero2", "zero3", "zero2-offload", "zero3-offload"):
    config = deepspeed_config(strategy, cpu=True)
    # the Trainer replaces every "auto" with its own value; these are the values of a batch-2 run
    config.update(train_micro_batch_size_per_gpu=2, train_batch_size=2, gradient_accumulation_steps=1,
                  gradient_clipping=1.0, bf16={"enabled": False}, fp16={"enabled": False})
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    x = torch.randn(2, 8)
    losses = []
    for _ in range(3):
        loss = engine(x).pow(2).mean()
        engine.backward(loss)
        engine.step()
        losses.append(float(loss))
    stages[strategy] = [engine.zero_optimization_stage(), losses[-1] < losses[0]]
print(json.dumps(stages))
"""


def test_generated_deepspeed_configs_are_accepted_by_deepspeed_initialize():
    proc = subprocess.run([sys.executable, "-c", DS_INITIALIZE, str(_free_port())], capture_output=True, text=True,
                          env=_env(), timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stages = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stages == {"zero1": [1, True], "zero2": [2, True], "zero3": [3, True], "zero2-offload": [2, True],
                      "zero3-offload": [3, True]}


def test_fsdp_config_on_gpus(cli, train_cmd, tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    result = cli("launch", "--strategy", "fsdp", "--num-processes", "4", "--write-config", tmp_path / "f", "--",
                 *train_cmd)
    assert result.exit_code == 0, result.stderr
    acc = load_config_from_file(str(tmp_path / "f" / "accelerate_config.yaml"))
    assert acc.distributed_type.value == "FSDP" and acc.fsdp_config["fsdp_sharding_strategy"] == "FULL_SHARD"
    assert acc.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"   # a whole model on save


def test_hostfile_gives_nodes_address_and_slots(cli, train_cmd, tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# cluster\n10.0.0.5 slots=3\n10.0.0.6 slots=3  # second\n")
    plan = json.loads(cli("launch", "--hostfile", hostfile, "--node-rank", "1", "--dry-run", "--json", "--",
                          *train_cmd).stdout)
    assert (plan["nodes"], plan["num_processes"], plan["main_ip"], plan["node_rank"]) == (2, 3, "10.0.0.5", 1)
    assert [c["node_rank"] for c in plan["commands"]] == [0, 1]


def test_mixed_precision_is_passed_once(cli, train_cmd):
    plan = json.loads(cli("launch", "--cpu", "--mixed-precision", "bf16", "--dry-run", "--json", "--",
                          *train_cmd).stdout)
    assert plan["commands"][0]["argv"][-2:] == ["--mixed-precision", "bf16"] and plan["mixed_precision"] == "bf16"
    result = cli("launch", "--cpu", "--mixed-precision", "bf16", "--dry-run", "--", *train_cmd,
                 "--mixed-precision", "no")
    assert_clean_error(result, 2, "--mixed-precision bf16", "says --mixed-precision no")


def test_dry_run_refuses_the_sources_the_real_run_would(cli, configs, bpe_dir, docs_file, tmp_path):
    missing_data = _train(configs, bpe_dir, tmp_path / "typo.jsonl", tmp_path / "run")
    result = cli("launch", "--cpu", "--dry-run", "--", *missing_data)
    assert_clean_error(result, 1, "in the training command: no such file or directory", "typo.jsonl",
                       "--no-check-sources")
    missing_model = _train(configs, bpe_dir, docs_file, tmp_path / "run")
    missing_model[3] = str(tmp_path / "no-model")
    missing_model.remove("--from-scratch")
    assert_clean_error(cli("launch", "--cpu", "--dry-run", "--", *missing_model), 1, "no-model")
    # the real run refuses it the same way, before any process starts
    assert_clean_error(cli("launch", "--cpu", "--", *missing_data), 1, "typo.jsonl")
    assert not (tmp_path / "run").exists()
    # sources that exist only on the nodes: the flags are still checked, the paths are not
    result = cli("launch", "--cpu", "--dry-run", "--no-check-sources", "--json", "--", *missing_data)
    assert result.exit_code == 0, result.stderr
    assert_clean_error(cli("launch", "--cpu", "--dry-run", "--no-check-sources", "--", *missing_data, "--lr", "x"),
                       2, "the training command is invalid")


def test_auto_picks_the_cheapest_strategy_that_fits(cli):
    from llmkit.config import MemoryEstimateConfig
    from llmkit.memory import estimate

    # placeholders, not checked: the memory is the preset's, with its own vocabulary
    cmd = ["llmkit", "pretrain", "--model", "llama-2-7b", "--from-scratch", "-t", "tok", "--data", "d.jsonl",
           "-o", "out", "--batch-size", "1", "--seq-len", "2048", "--grad-checkpointing", "--mixed-precision", "bf16"]
    result = cli("launch", "--strategy", "auto", "--num-processes", "8", "--gpu-memory", "40GiB", "--dry-run",
                 "--no-check-sources", "--json", "--", *cmd)
    assert result.exit_code == 0, result.stderr
    plan = json.loads(result.stdout)
    fits = [c["strategy"] for c in plan["candidates"] if c["fits"]]
    assert plan["requested_strategy"] == "auto" and plan["strategy"] == fits[0]
    assert plan["candidates"][0]["strategy"] == "ddp" and not plan["candidates"][0]["fits"]   # 7B x 16 B > 40 GiB
    zero, offload = {"zero1": (1, "none"), "zero2": (2, "none"), "zero3": (3, "none")}.get(plan["strategy"],
                                                                                         (2, "optimizer"))
    expected = estimate(MemoryEstimateConfig(model="llama-2-7b", batch_size=1, seq_len=2048, grad_checkpointing=True,
                                             mixed_precision="bf16", zero=zero, offload=offload, gpus=8,
                                             gpu_memory="40GiB"))
    assert plan["memory"]["per_device"]["total"] == expected.per_device["total"]
    assert plan["commands"][0]["argv"][-2] == "--deepspeed"


def test_auto_needs_a_budget_and_a_sizeable_model(cli, train_cmd, bpe_dir, docs_file, tmp_path):
    assert_clean_error(cli("launch", "--strategy", "auto", "--cpu", "--dry-run", "--", *train_cmd), 2,
                       "--gpu-memory")
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"model_type": "llama"}))
    cmd = ["llmkit", "pretrain", "--model", str(odd), "--from-scratch", "-t", bpe_dir, "--data", docs_file, "-o",
           tmp_path / "o"]
    assert_clean_error(cli("launch", "--strategy", "auto", "--cpu", "--gpu-memory", "1GiB", "--dry-run", "--", *cmd),
                       2, "needs the model's size")
    # without auto, an unsizeable model is said and the launch goes on
    result = cli("launch", "--strategy", "zero2", "--cpu", "--dry-run", "--json", "--", *cmd)
    assert result.exit_code == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["memory"] is None and "cannot be sized" in plan["memory_note"]


def test_dry_run_and_write_config_import_nothing_heavy(configs, bpe_dir, docs_file, tmp_path):
    cmd = _train(configs, bpe_dir, docs_file, tmp_path / "run")
    code, heavy, out = heavy_modules_after(["launch", "--strategy", "zero3-offload", "--cpu", "--dry-run", "--json",
                                            "--", *cmd])
    assert code == 0 and json.loads(out)["strategy"] == "zero3-offload"
    assert heavy == []
    for strategy in ("auto", "zero2"):
        code, heavy, _ = heavy_modules_after(["launch", "--strategy", strategy, "--gpu-memory", "1GiB", "--cpu",
                                              "--write-config", str(tmp_path / strategy), "--", *cmd])
        assert code == 0 and (tmp_path / strategy / "accelerate_config.yaml").is_file()
        assert heavy == []
    assert (tmp_path / "zero2" / "deepspeed_config.json").is_file()


def test_a_launcher_environment_is_left_alone(monkeypatch):
    from llmkit.training.integrations import ensure_single_process_env, is_main_process

    launcher = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234"}
    for key, value in launcher.items():
        monkeypatch.setenv(key, value)
    assert ensure_single_process_env() is None
    assert {k: os.environ[k] for k in launcher} == launcher
    assert is_main_process() is False
    monkeypatch.setenv("RANK", "0")
    assert is_main_process() is True
    monkeypatch.delenv("RANK")
    assert is_main_process() is True          # no launcher: the only process


# ----------------------------------------------------------------------------------------------------- bad input

def test_unknown_strategy_exits_2(cli, train_cmd):
    result = cli("launch", "--strategy", "zero4", "--dry-run", "--", *train_cmd)
    assert_clean_error(result, 2, "--strategy")


def test_num_processes_0(cli, train_cmd):
    assert_clean_error(cli("launch", "--num-processes", "0", "--cpu", "--dry-run", "--", *train_cmd), 2,
                       "--num-processes must be greater than 0")


def test_no_command_after_dashes(cli):
    assert_clean_error(cli("launch", "--cpu", "--dry-run", "--"), 2, "no training command after --")
    assert_clean_error(cli("launch", "--cpu", "--dry-run"), 2, "no training command after --")


def test_a_command_that_is_not_a_training_command_is_refused(cli):
    assert_clean_error(cli("launch", "--cpu", "--dry-run", "--", "llmkit", "quantize", "-m", "x", "-o", "y"),
                       2, "pretrain, sft, peft", "'quantize'")
    assert_clean_error(cli("launch", "--cpu", "--dry-run", "--", "python", "train.py"), 2,
                       "launch runs llmkit training commands", "accelerate launch")


@pytest.mark.parametrize("flags, extra, fragments", [
    (["--strategy", "zero3"], ["--quant", "nf4"], ["zero3 with a quantized base", "zero2"]),
    (["--strategy", "zero3-offload"], ["--quant", "int8"], ["quantized base"]),
    (["--strategy", "ddp", "--offload-device", "cpu"], [], ["offloads nothing", "zero2-offload"]),
    (["--mixed-precision", "fp16"], [], ["fp16 on CPUs", "bf16"]),
    (["--nodes", "2"], [], ["--nodes 2 needs --main-ip"]),
    (["--nodes", "2", "--node-rank", "2", "--main-ip", "127.0.0.1"], [], ["--node-rank 2 must be below --nodes 2"]),
    (["--strategy", "zero3-offload", "--offload-device", "nvme"], [], ["--nvme-path"]),
    (["--strategy", "zero2"], ["--deepspeed", "ds.json"], ["drop --deepspeed"]),
    (["--strategy", "fsdp"], [], ["fsdp on CPUs", "zero3"]),
])
def test_invalid_combinations_are_refused(cli, train_cmd, flags, extra, fragments):
    if "--quant" in extra:   # QLoRA: an adapter run on a pretrained base
        train_cmd = ["llmkit", "peft"] + [a for a in train_cmd[2:] if a != "--from-scratch"]
    result = cli("launch", "--cpu", *flags, "--dry-run", "--", *train_cmd, *extra)
    assert_clean_error(result, 2, *fragments)


def test_flags_the_training_command_does_not_take_are_refused_before_planning(cli, train_cmd):
    assert_clean_error(cli("launch", "--cpu", "--dry-run", "--", *train_cmd, "--quant", "nf4"), 2,
                       "the training command is invalid", "No such option: --quant")


def test_a_port_in_use_is_refused(cli, train_cmd):
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli("launch", "--cpu", "--main-port", port, "--", *train_cmd)
    assert_clean_error(result, 2, f"--main-port {port} is in use")


def test_unreachable_main_address_fails_after_timeout(train_cmd, tmp_path):
    port = _free_port()                      # nobody listens there
    started = time.monotonic()
    proc = _launch("--cpu", "--nodes", "2", "--node-rank", "1", "--main-ip", "127.0.0.1", "--main-port", port,
                   "--timeout", "2", "--", *train_cmd, timeout=60)
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr
    assert f"Error: cannot reach the main address 127.0.0.1:{port} within --timeout 2 s" in proc.stderr
    assert "Hint:" in proc.stderr and "Traceback" not in proc.stderr
    assert 2 <= elapsed < 30
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------ real runs (CPU, gloo)

def _report(proc):
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    [document] = proc.stdout.strip().splitlines()               # exactly one JSON document: RANK 0's
    return json.loads(document)


def test_ddp_two_processes_equal_one_process(configs, bpe_dir, docs_file, tmp_path):
    """Same global batch (2 x 2 = 1 x 4), same data order: accelerate hands rank r the r-th slice of each global
    batch, and DDP averages over all tokens, so the loss curves agree over 20 steps."""
    common = ("--max-steps", 20, "--eval-split", 4, "--save-steps", 100)
    two = _report(_launch("--strategy", "ddp", "--cpu", "--num-processes", "2", "--json", "--",
                          *_train(configs, bpe_dir, docs_file, tmp_path / "two", "--batch-size", 2, *common)))
    one = subprocess.run([sys.executable, "-m", *_train(configs, bpe_dir, docs_file, tmp_path / "one",
                                                         "--batch-size", 4, *common)[0:], "--json"],
                         capture_output=True, text=True, env=_env(), timeout=300)
    one = _report(one)
    assert len(two["loss_curve"]) == len(one["loss_curve"]) == 20
    assert two["loss_curve"] == pytest.approx(one["loss_curve"], abs=1e-4)
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], abs=1e-4)     # every rank evaluates the whole set
    assert two["initial_eval_loss"] == pytest.approx(one["initial_eval_loss"], abs=1e-4)
    assert two["tokens"] == one["tokens"] > 0                                 # summed over the ranks
    rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in rows if "loss" in r]) == 20                        # written once, by RANK 0
    assert (tmp_path / "two" / "model" / "model.safetensors").is_file()
    assert not list(tmp_path.glob("two/.model.partial-*"))


@pytest.mark.parametrize("strategy", ["zero1", "zero2", "zero3", "zero3-offload"])
def test_zero_strategies_with_two_processes(strategy, configs, bpe_dir, docs_file, corpus_texts, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    report = _report(_launch("--strategy", strategy, "--cpu", "--num-processes", "2", "--json", "--",
                             *_train(configs, bpe_dir, docs_file, out, "--batch-size", 4, "--max-steps", 6,
                                     "--save-steps", 6)))
    losses = report["loss_curve"]
    assert report["status"] == "completed" and len(losses) == 6
    assert sum(losses[-2:]) < sum(losses[:2]) - 0.02
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["deepspeed"]["zero_stage"] == int(strategy[4])
    assert not Path(manifest["deepspeed"]["config"]).exists()    # launch's scratch files are gone after the run
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    for name, tensor in model.state_dict().items():   # whole tensors: ZeRO-3 gathered them on save
        assert tensor.numel() > 0 and tensor.dtype == torch.float32, name
    assert model.config.num_hidden_layers == 2


def test_two_nodes_on_one_machine_form_one_job(configs, bpe_dir, docs_file, tmp_path):
    port = _free_port()
    cmd = _train(configs, bpe_dir, docs_file, tmp_path / "run", "--batch-size", 2, "--max-steps", 4)
    nodes = [subprocess.Popen([sys.executable, "-m", "llmkit", "launch", "--cpu", "--nodes", "2", "--num-processes",
                               "1", "--node-rank", str(rank), "--main-ip", "127.0.0.1", "--main-port", str(port),
                               "--timeout", "60", "--json", "--", *map(str, cmd)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    for node, (stdout, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, stderr[-3000:]
    report = json.loads(outputs[0][0])                 # node 0 holds RANK 0: the result
    assert outputs[1][0].strip() == ""                 # node 1's rank prints nothing
    assert report["status"] == "completed" and report["steps"] == 4
    assert "world size 2, node rank 1" in outputs[1][1]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["steps"] == 4


def _pids_with(marker: str, rank: str | None = None) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = dict(item.split("=", 1) for item in (entry / "environ").read_text().split("\0") if "=" in item)
        except OSError:
            continue
        if env.get("LLMKIT_TEST_MARK") == marker and (rank is None or env.get("RANK") == rank):
            found.append(int(entry.name))
    return found


def _all_gone(marker: str, within: float = 15.0) -> bool:
    """No process of this launch is left (the last ones may take a moment to be reaped)."""
    deadline = time.monotonic() + within
    while _pids_with(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _start_launch(cmd, marker: str, tmp_path):
    """A 2-process CPU launch in the background, its output going to a file (a pipe nobody reads while waiting
    would fill up and stall the job)."""
    log = tmp_path / "launch.log"
    with log.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "llmkit", "launch", "--cpu", "--num-processes", "2", "--",
                                 *map(str, cmd)], stdout=sink, stderr=subprocess.STDOUT, text=True,
                                env=_env(LLMKIT_TEST_MARK=marker))
    return proc, log


def test_a_rank_dying_stops_the_others_and_keeps_the_last_checkpoint(configs, bpe_dir, docs_file, tmp_path):
    from llmkit.training import rundir

    marker = f"launch-{os.getpid()}-{time.time()}"
    out = tmp_path / "run"
    cmd = _train(configs, bpe_dir, docs_file, out, "--batch-size", 2, "--max-steps", 2000, "--save-steps", 2,
                 "--epochs", 100)
    proc, log = _start_launch(cmd, marker, tmp_path)
    try:
        deadline = time.monotonic() + 240
        # checkpoints rotate (--save-total-limit 2): wait for any whole one from step 4 on
        while not any(int(c.name.split("-")[1]) >= 4 and (c / "trainer_state.json").is_file()
                      for c in rundir.checkpoints(out)):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint from step 4 on in time: " + log.read_text()[-3000:]
            time.sleep(0.05)
        [victim] = _pids_with(marker, rank="1")
        os.kill(victim, signal.SIGKILL)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = log.read_text()
    assert proc.returncode == 1, stderr[-3000:]
    assert "Error: a training process failed" in stderr
    assert _all_gone(marker)                                        # nobody is left running
    last = rundir.resume_checkpoint(out, "auto", lambda message: None)
    assert rundir.checkpoint_problem(last) is None and int(last.name.split("-")[1]) >= 4


def test_ctrl_c_is_forwarded_once_the_ranks_checkpoint_and_launch_exits_130(configs, bpe_dir, docs_file, tmp_path):
    from llmkit.training import rundir

    marker = f"launch-int-{os.getpid()}-{time.time()}"
    out = tmp_path / "run"
    cmd = _train(configs, bpe_dir, docs_file, out, "--batch-size", 2, "--max-steps", 2000, "--save-steps", 1000,
                 "--epochs", 100)
    proc, log = _start_launch(cmd, marker, tmp_path)
    try:
        deadline = time.monotonic() + 240
        while not (out / "metrics.jsonl").is_file() or len((out / "metrics.jsonl").read_text().splitlines()) < 3:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "training did not start in time: " + log.read_text()[-3000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        signalled = time.monotonic()
        proc.wait(timeout=120)
        stopped_in = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = log.read_text()
    assert proc.returncode == 130, stderr[-3000:]
    # the ranks agree on the step to stop at; a rank left waiting in an all-reduce would be killed after 30 s
    assert stopped_in < 25, stopped_in
    assert "Interrupted." in stderr and "continue with --resume auto" in stderr
    assert _all_gone(marker)
    [last] = rundir.checkpoints(out)                                # saved at the interrupted step
    assert rundir.checkpoint_problem(last) is None and int(last.name.split("-")[1]) >= 2


def test_a_bad_training_command_is_refused_once_before_any_rank_starts(train_cmd, tmp_path):
    started = time.monotonic()
    proc = _launch("--cpu", "--", *train_cmd, "--warmup-ratio", "2", timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("Error: the training command is invalid: --warmup-ratio must be in [0, 1)")
    assert "Traceback" not in proc.stderr and time.monotonic() - started < 20
    proc = _launch("--cpu", "--", *train_cmd, "--no-such-flag", timeout=120)
    assert proc.returncode == 2 and "the training command is invalid" in proc.stderr and "--no-such-flag" in \
        proc.stderr, proc.stderr
    assert not (tmp_path / "run").exists()


def test_the_training_commands_preset_and_config_file_are_read_for_the_memory(cli, bpe_dir, docs_file, tmp_path):
    from typer.main import get_command

    from llmkit.commands import app
    from llmkit.commands.launch import resolve_training_config

    settings = tmp_path / "train.yaml"
    settings.write_text("seq_len: 64\ngrad_checkpointing: true\n")
    config = resolve_training_config(["pretrain", "--preset", "tiny-llama", "--config", str(settings),
                                      "-t", str(bpe_dir), "--batch-size", "4", "--data", "d.jsonl", "-o", "r"],
                                     get_command(app))
    assert config.model == "tiny-llama" and config.seq_len == 64     # preset < file
    assert config.batch_size == 4 and config.grad_checkpointing is True   # flags win
    plan = json.loads(cli("launch", "--cpu", "--dry-run", "--json", "--", "llmkit", "pretrain", "--preset",
                          "tiny-llama", "-t", bpe_dir, "--data", docs_file, "-o", tmp_path / "r").stdout)
    assert plan["memory"] is not None and plan["memory_note"] is None
