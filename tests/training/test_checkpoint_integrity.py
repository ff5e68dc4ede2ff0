"""Checkpoints a resume can trust, and one writer per run dir.

A damaged file in the newest checkpoint (a torn write: cut short; or bytes changed) is found before the Trainer
reads it: `--resume auto` warns, names the file and resumes from the checkpoint before, and the run ends with the
weights of an uninterrupted run; `--resume` of that checkpoint is one clean error naming the file. Two processes on
one run dir: the second is refused before it touches anything, the first finishes with its metrics written once.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import pytest
import torch
from transformers import TrainerCallback

from helpers import assert_clean_error, base_config

STEPS = 6


class CtrlC(TrainerCallback):
    """Ctrl-C during step 4: with --save-steps 2 the run leaves checkpoint-2 and checkpoint-4."""

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == 3:
            os.kill(os.getpid(), signal.SIGINT)


def _common(configs, bpe_dir, docs_file):
    return dict(model=str(configs["llama"]), tokenizer=str(bpe_dir), data=str(docs_file), max_steps=STEPS,
                save_steps=2, lr=3e-3, scheduler="cosine", warmup_ratio=0.2)


def _weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model" / "model.safetensors"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, configs, bpe_dir, docs_file):
    """An uninterrupted 6-step run (the reference) and a run stopped after step 4 (checkpoints 2 and 4)."""
    from llmkit.training.pretrain import run_pretrain
    from llmkit.training.run import TrainingInterrupted

    root = tmp_path_factory.mktemp("integrity")
    torch.set_num_threads(1)
    run_pretrain(base_config(output_dir=str(root / "full"), **_common(configs, bpe_dir, docs_file)))
    with pytest.raises(TrainingInterrupted):
        run_pretrain(base_config(output_dir=str(root / "cut"), **_common(configs, bpe_dir, docs_file)),
                     callbacks=[CtrlC()])
    assert sorted(p.name for p in (root / "cut" / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    return root


def _truncate(path):
    path.write_bytes(path.read_bytes()[:path.stat().st_size * 2 // 3])


def _corrupt(path):
    """Change bytes the file's reader depends on: a torch zip's largest record (a tensor: torch would load it
    without complaint), the safetensors header, JSON."""
    data = bytearray(path.read_bytes())
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            largest = max(archive.infolist(), key=lambda entry: entry.compress_size)
        lengths = data[largest.header_offset + 26:largest.header_offset + 30]   # the local header's name, extra
        start = largest.header_offset + 30 + int.from_bytes(lengths[:2], "little") + int.from_bytes(lengths[2:], "little")
        at = start + largest.compress_size // 2
    else:
        at = 12 if path.suffix == ".safetensors" else len(data) // 2   # safetensors: 8 length bytes, then JSON
    data[at:at + 4] = bytes(255 - b for b in data[at:at + 4])
    path.write_bytes(bytes(data))


def _unsafe_pickle(path):
    """A whole zip archive whose pickle holds more than tensors: the Trainer's weights_only load refuses it."""
    import argparse

    torch.save({"state": {}, "param_groups": [], "extra": argparse.Namespace(code="anything")}, path)


DAMAGED = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "model.safetensors")
CASES = [(name, damage) for damage in (_truncate, _corrupt) for name in DAMAGED] + [("optimizer.pt", _unsafe_pickle)]


@pytest.mark.parametrize("name, damage", CASES, ids=[f"{n}-{d.__name__.strip('_')}" for n, d in CASES])
def test_a_damaged_file_in_the_last_checkpoint(name, damage, runs, cli, configs, bpe_dir, docs_file, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(runs / "cut", out)
    bad = out / "checkpoints" / "checkpoint-4"
    damage(bad / name)
    args = ["pretrain", "--model", configs["llama"], "--from-scratch", "-t", bpe_dir, "--data", docs_file, "-o", out,
            "--seq-len", "64", "--batch-size", "4", "--max-steps", str(STEPS), "--save-steps", "2", "--lr", "3e-3",
            "--scheduler", "cosine", "--warmup-ratio", "0.2", "--logging-steps", "1"]

    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    explicit = cli(*args, "--resume", bad)
    assert_clean_error(explicit, 1, f"cannot resume from {bad}: {name}")
    assert len([line for line in explicit.stderr.splitlines() if line.startswith("Error:")]) == 1
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before    # refused: nothing changed

    resumed = cli(*args, "--resume", "auto", "--json")
    assert resumed.exit_code == 0, resumed.stderr
    assert f"skipping checkpoint checkpoint-4: {name}" in resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["resumed_from"].endswith("checkpoint-2") and report["steps"] == STEPS
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == list(range(1, STEPS + 1))                                     # steps 3 and 4 logged once
    reference, got = _weights(runs / "full"), _weights(out)
    assert reference.keys() == got.keys()
    assert all(torch.allclose(reference[k], got[k], atol=1e-6, rtol=0) for k in reference)


def test_every_checkpoint_file_is_flushed_to_disk(runs, configs, bpe_dir, docs_file, tmp_path, monkeypatch):
    """After each save, every file of the checkpoint, the checkpoint dir and checkpoints/ were fsynced; and the
    run's own records."""
    from llmkit.training.pretrain import run_pretrain

    flushed, real_fsync = set(), os.fsync

    def recording_fsync(fd):
        flushed.add(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    out = tmp_path / "run"
    run_pretrain(base_config(output_dir=str(out), **{**_common(configs, bpe_dir, docs_file), "max_steps": 4}))
    written = {str(p) for p in (out / "checkpoints").rglob("*")} | {str(out / "checkpoints")}
    assert len(written) > 20 and written <= flushed, sorted(written - flushed)
    # llmkit's own files: the metrics with each checkpoint; the records written beside their name, then renamed
    assert {str(out / n) for n in ("metrics.jsonl", "manifest.json.tmp", "resolved_config.yaml.tmp", "")} <= flushed


def test_a_large_optimizer_state_is_checked_without_reading_it(tmp_path, runs, monkeypatch):
    """An optimizer.pt over the size whose every byte is checked (lowered here to 16 MB: the real limit is 256 MB)
    has its structure and pickle checked, not its tensors' bytes; cut short, it is found."""
    import zlib

    from llmkit.training import rundir

    monkeypatch.setattr(rundir, "_CRC_CHECK_BYTES", 16 << 20)
    ckpt = tmp_path / "checkpoint-4"
    shutil.copytree(runs / "cut" / "checkpoints" / "checkpoint-4", ckpt)
    optimizer = ckpt / "optimizer.pt"
    torch.save({"state": {i: {"exp_avg": torch.rand(8_000_000)} for i in range(4)}, "param_groups": []}, optimizer)
    checked = []
    monkeypatch.setattr(zipfile, "crc32", lambda data, crc=0: checked.append(len(data)) or zlib.crc32(data, crc))
    assert rundir.checkpoint_problem(ckpt) is None
    assert 0 < sum(checked) < 1 << 20 < optimizer.stat().st_size // 100
    with optimizer.open("r+b") as f:
        f.truncate(optimizer.stat().st_size - 100)
    assert rundir.checkpoint_problem(ckpt).startswith("optimizer.pt is truncated")


# --------------------------------------------------------------------------------------------- one writer

PAUSE_AT_STEP_2 = """
import os, sys, time
from pathlib import Path
from transformers import TrainerCallback
from llmkit.training import run

class Pause(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 2:
            Path(os.environ["PAUSED"]).write_text(str(os.getpid()))
            deadline = time.time() + 300
            while not Path(os.environ["GO_ON"]).exists() and time.time() < deadline:
                time.sleep(0.05)

start = run.Run.start
def start_then_pause(self):
    self.callbacks.append(Pause())
    return start(self)
run.Run.start = start_then_pause

from llmkit.commands import main
sys.argv = ["llmkit", *sys.argv[1:]]
main()
"""


def test_a_second_run_on_the_same_dir_is_refused(cli, configs, bpe_dir, tmp_path):
    """The first run is paused (a test callback) after step 2, holding its run dir; every way of starting a second
    run on that dir exits 1 before touching it; the first then finishes with each step's metrics once."""
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"What is {i} plus one?"},
                                                     {"role": "assistant", "content": f"It is {i + 1}."}]}) + "\n"
                            for i in range(8)), encoding="utf-8")
    out = tmp_path / "run"
    args = ["sft", "-m", configs["llama"], "--from-scratch", "-t", bpe_dir, "--data", data, "--template", "chatml",
            "-o", out, "--max-steps", "4", "--batch-size", "2", "--logging-steps", "1", "--save-steps", "2"]
    paused, go_on = tmp_path / "paused", tmp_path / "go-on"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PAUSED": str(paused), "GO_ON": str(go_on)}
    first = subprocess.Popen([sys.executable, "-c", PAUSE_AT_STEP_2, *map(str, args), "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 300
        while not paused.exists():
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.time() < deadline, "the first run never reached step 2"
            time.sleep(0.1)
        before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        for extra in ([], ["--overwrite"], ["--resume", "auto"]):
            second = cli(*args, *extra)
            assert_clean_error(second, 1, f"another llmkit run is writing {out} (pid {first.pid})")
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    finally:
        go_on.touch()
        stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-3000:]
    assert json.loads(stdout)["steps"] == 4
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert not (out / ".llmkit.lock").exists()                                   # released at the end


def test_the_run_dir_is_locked_when_the_run_starts_writing_it(tmp_path):
    """Even a run that got past the early check (both started at once) is refused before it empties the dir."""
    import fcntl

    from llmkit.errors import LlmkitError
    from llmkit.training import rundir

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    with (run / ".llmkit.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 4242")
        held.flush()
        with pytest.raises(LlmkitError, match=f"another llmkit run is writing {run} \\(pid 4242\\)"):
            rundir.start(run, "x: 1\n", overwrite=True, resume_from=None)
        assert (run / "metrics.jsonl").read_text() == '{"step": 1, "loss": 2.0}\n'
    metrics, lock = rundir.start(run, "x: 1\n", overwrite=True, resume_from=None)   # a dead holder's file is taken
    assert metrics.read_text() == "" and (run / ".llmkit.lock").read_text() == f"pid {os.getpid()}"
    rundir.release(run, lock)
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl", "resolved_config.yaml"]
