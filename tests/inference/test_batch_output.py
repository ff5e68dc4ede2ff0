"""A batch job's --output is never user data it did not write: not the input, not a file another program (or another
job) wrote, not one written with other settings (unless --overwrite); one writer at a time, across processes."""

import json
import subprocess
import sys
import textwrap
import time

from helpers import assert_clean_error


def _prompts(path, n=3):
    path.write_text("".join(json.dumps({"prompt": f"Prompt number {i}"}) + "\n" for i in range(n)))
    return path


def _generate(cli, model, source, target, *extra):
    return cli("generate", "--model", model, "--input", source, "--output", target, "--max-new-tokens", 3, *extra)


def test_a_file_llmkit_did_not_write_is_never_touched(cli, causal_dir, tmp_path):
    source = _prompts(tmp_path / "in.jsonl")
    precious = tmp_path / "train.jsonl"
    original = "".join(json.dumps({"text": f"training row {i}"}) + "\n" for i in range(64))
    precious.write_text(original)
    assert_clean_error(_generate(cli, causal_dir, source, precious), 2, "was not written by an llmkit batch job",
                       "--overwrite")
    assert precious.read_text() == original
    result = _generate(cli, causal_dir, source, precious, "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert [json.loads(line)["line"] for line in precious.read_text().splitlines()] == [1, 2, 3]


def test_the_input_is_never_the_output(cli, causal_dir, tmp_path):
    source = _prompts(tmp_path / "in.jsonl")
    before = source.read_text()
    for flags in ((), ("--overwrite",)):
        assert_clean_error(_generate(cli, causal_dir, source, source, *flags), 2, "is the --input file")
    assert source.read_text() == before


def test_a_rerun_with_other_settings_is_not_resumed_over_stale_results(cli, causal_dir, tmp_path):
    source = _prompts(tmp_path / "in.jsonl")
    target = tmp_path / "out.jsonl"
    assert _generate(cli, causal_dir, source, target).exit_code == 0
    first = target.read_text()
    again = _generate(cli, causal_dir, source, target)   # the same job: resumed, nothing to do
    assert again.exit_code == 0 and target.read_text() == first
    assert_clean_error(_generate(cli, causal_dir, source, target, "--do-sample", "--seed", "3"), 2,
                       "holds results of another job", "params")
    assert target.read_text() == first
    assert _generate(cli, causal_dir, source, target, "--do-sample", "--seed", "3", "--overwrite").exit_code == 0


def test_embeddings_are_not_overwritten_without_asking(cli, bert_dir, tmp_path):
    source = tmp_path / "texts.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("one text", "another one")))
    target = tmp_path / "vectors.npy"
    target.write_bytes(b"not mine")
    args = ("generate", "-m", bert_dir, "--task", "feature-extraction", "--input", source, "--output", target)
    assert_clean_error(cli(*args), 2, "was not written by an llmkit batch job")
    assert target.read_bytes() == b"not mine"
    assert cli(*args, "--overwrite").exit_code == 0
    import numpy as np

    assert np.load(target).shape[0] == 2
    assert_clean_error(cli(*args), 2, "an .npy array is written whole")
    assert not list(tmp_path.glob("*.partial*"))


def test_two_jobs_on_one_output_the_second_is_refused(causal_dir, tmp_path):
    """Two real processes: one holds the output (as a running job does), the other is a whole `llmkit generate`."""
    source = _prompts(tmp_path / "in.jsonl")
    target = tmp_path / "out.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from llmkit.inference.batch import BatchOutput
        with BatchOutput(Path({str(source)!r}), Path({str(target)!r}), {{}}, False):
            print("holding", flush=True)
            time.sleep(30)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "llmkit", "generate", "--model", str(causal_dir), "--input",
                               str(source), "--output", str(target), "--max-new-tokens", "3"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.startswith("Error: ") and "being written by another job (pid " in proc.stderr
        assert "Traceback" not in proc.stderr and not target.exists()
        assert time.monotonic() - started < 60
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone (killed: its lock went with it): the job runs
    proc = subprocess.run([sys.executable, "-m", "llmkit", "generate", "--model", str(causal_dir), "--input",
                           str(source), "--output", str(target), "--max-new-tokens", "3"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(target.read_text().splitlines()) == 3
