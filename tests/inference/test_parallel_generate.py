"""`llmkit launch -- llmkit generate --input --output`: data-parallel batch inference on 2 CPU processes (gloo).
The merged --output is byte for byte the one-process output (greedy and seeded sampling), a rerun resumes the ranks'
part files, and what makes no sense under launch is refused before any rank starts."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from helpers import assert_clean_error

DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                   "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")
SIDECAR = ".llmkit-batch.json"
BATCH = 2   # lines per batch: batch b (lines 2b+1, 2b+2) goes to rank b % 2


def _env():
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    return env


def _prompts(path, n=9):
    """Prompts of different lengths (left padding differs per batch), some with an id; 9 lines: the last batch is
    short and belongs to rank 0."""
    rows = [{"prompt": "The for statement " * (1 + i % 3) + f"number {i}", **({"id": f"q{i}"} if i % 2 else {})}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _generate(model, source, target, *extra):
    return ["generate", "-m", str(model), "--input", str(source), "--output", str(target), "--max-new-tokens", "5",
            "--batch-size", str(BATCH), *map(str, extra)]


def _one_process(cli, args):
    result = cli(*args)
    assert result.exit_code == 0, result.stderr


def _two_processes(args):
    proc = subprocess.run([sys.executable, "-m", "llmkit", "launch", "--cpu", "--num-processes", "2", "--json", "--",
                           "llmkit", *args], capture_output=True, text=True, env=_env(), timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    [document] = proc.stdout.strip().splitlines()   # one JSON document: RANK 0's, for the whole job
    return json.loads(document)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".rank-" in p.name or p.name.endswith(".lock"))


@pytest.mark.parametrize("decoding", [(), ("--do-sample", "--temperature", "1.5", "--seed", "7")],
                         ids=["greedy", "sampled"])
def test_two_processes_write_the_one_process_output_byte_for_byte(cli, causal_dir, tmp_path, decoding):
    source = _prompts(tmp_path / "prompts.jsonl")
    _one_process(cli, _generate(causal_dir, source, tmp_path / "one.jsonl", *decoding))
    result = _two_processes(_generate(causal_dir, source, tmp_path / "two.jsonl", *decoding))
    one = (tmp_path / "one.jsonl").read_bytes()
    assert (tmp_path / "two.jsonl").read_bytes() == one
    rows = [json.loads(line) for line in one.decode().splitlines()]
    assert [r["line"] for r in rows] == list(range(1, 10))                    # input order, every line once
    assert [r.get("id") for r in rows] == [f"q{i}" if i % 2 else None for i in range(9)]
    assert len({r["text"] for r in rows}) > 1                                  # the model says different things
    assert result["lines"] == result["generated"] == 9 and result["skipped"] == 0
    assert result["completion_tokens"] == sum(r["completion_tokens"] for r in rows)   # summed over the ranks
    assert _leftovers(tmp_path) == []                                          # parts merged and removed


def test_a_rerun_resumes_the_parts_and_the_output(cli, causal_dir, tmp_path):
    """As after an interruption: --output holds batch 0 (merged by an earlier run), rank 1's part holds its first
    batch and a torn line. The rerun generates only the rest and still writes the one-process bytes."""
    source = _prompts(tmp_path / "prompts.jsonl")
    reference = tmp_path / "one.jsonl"
    _one_process(cli, _generate(causal_dir, source, reference))
    lines = reference.read_text().splitlines(keepends=True)
    target = tmp_path / "two.jsonl"
    part = tmp_path / "two.rank-1-of-2.jsonl"
    target.write_text("".join(lines[0:2]))                                     # batch 0 (lines 1-2)
    part.write_text("".join(lines[2:4]) + lines[6][:15])                       # batch 1 (lines 3-4), line 7 torn
    for written in (target, part):   # the job's settings do not include where its output goes
        shutil.copy(reference.with_name(reference.name + SIDECAR), written.with_name(written.name + SIDECAR))
    result = _two_processes(_generate(causal_dir, source, target))
    assert target.read_bytes() == reference.read_bytes()
    assert result["skipped"] == 4 and result["generated"] == 5
    assert _leftovers(tmp_path) == []


def test_a_task_head_batch_is_shared_the_same_way(cli, bert_cls_dir, tmp_path):
    source = tmp_path / "texts.jsonl"
    source.write_text("".join(json.dumps({"text": f"text number {i} " * (1 + i % 4)}) + "\n" for i in range(7)))
    args = ["generate", "-m", str(bert_cls_dir), "--task", "text-classification", "--input", str(source),
            "--batch-size", str(BATCH), "--top-k", "2"]
    _one_process(cli, [*args, "--output", str(tmp_path / "one.jsonl")])
    result = _two_processes([*args, "--output", str(tmp_path / "two.jsonl")])
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    assert result["written"] == 7 and _leftovers(tmp_path) == []


@pytest.mark.parametrize("launch_flags, generate_flags, fragments", [
    ((), ("--prompt", "hello"), ("batch mode only (--input and --output)", "run llmkit generate alone")),
    (("--strategy", "zero3"), ("--input", "{source}", "--output", "{target}"), ("--strategy zero3 with generate",
                                                                                "use --strategy ddp")),
    (("--mixed-precision", "bf16"), ("--input", "{source}", "--output", "{target}"), ("its own --dtype",)),
    ((), ("--input", "{source}", "--output", "{folder}/vectors.npy"), ("an .npy array is written whole",)),
])
def test_what_makes_no_sense_under_launch_is_refused_before_any_rank_starts(cli, causal_dir, tmp_path, launch_flags,
                                                                           generate_flags, fragments):
    source = _prompts(tmp_path / "prompts.jsonl")
    names = {"source": source, "target": tmp_path / "answers.jsonl", "folder": tmp_path}
    result = cli("launch", "--cpu", "--num-processes", "2", *launch_flags, "--", "llmkit", "generate", "-m",
                 causal_dir, *(flag.format(**names) for flag in generate_flags))
    assert_clean_error(result, 2, *fragments)
    assert len([line for line in result.stderr.splitlines() if line.startswith("Error: ")]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.jsonl"]    # nothing written


def test_eval_is_refused_with_the_reason(cli, causal_dir, tmp_path):
    result = cli("launch", "--cpu", "--", "llmkit", "eval", "-m", causal_dir, "--data", tmp_path / "x.jsonl")
    assert_clean_error(result, 2, "launch does not run eval", "aggregates", "one process")
