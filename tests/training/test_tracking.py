"""--report-to wandb|mlflow on pretrain and sft: W&B offline and an MLflow file store, read back with W&B's record
format and MLflow's own client, step for step against metrics.jsonl; no network; a missing package refused before
any work."""

import ipaddress
import json
import socket
import struct
import sys

import pytest

from helpers import assert_clean_error


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """W&B offline into tmp, MLflow's default store (the run dir), and every socket that would leave this machine
    refused and recorded (loopback and unix sockets, which W&B's own service uses, stay open)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    (tmp_path / "wandb-dir").mkdir()
    for name in ("WANDB_PROJECT", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    attempts = []
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def local(host) -> bool:
        try:
            return host in ("localhost", "") or ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def guarded_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not local(address[0]):
            attempts.append(address)
            raise OSError("network refused by the test")
        return connect(sock, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host is not None and not local(host):
            attempts.append(host)
            raise socket.gaierror("name lookup refused by the test")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    yield tmp_path / "wandb-dir"
    assert attempts == []


def _metrics(out):
    """metrics.jsonl of a 3-step run logging every step, with an eval before and after."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [s for s, _ in _curve(rows, "loss")] == [1, 2, 3] and [s for s, _ in _curve(rows, "eval_loss")] == [0, 3]
    return rows


def _curve(rows, key):
    return [(r["step"], r[key]) for r in rows if r.get(key) is not None]


def _wandb_records(path):
    """The protobuf records of a .wandb file: W&B's LevelDB-style log (a 7-byte ':W&B' header, then 32 KiB blocks
    of chunks with a 7-byte header: crc32c, length, type FULL=1 FIRST=2 MIDDLE=3 LAST=4), parsed into W&B's own
    Record messages."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1)
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:   # a block's tail too short for a header is padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += room
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _wandb_run(wandb_dir):
    """(project, run name, config, history rows) of the one offline run under WANDB_DIR."""
    runs = list(wandb_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 1, runs
    project = name = None
    config, history = {}, []
    for record in _wandb_records(runs[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            project, name = record.run.project, record.run.display_name
            config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return project, name, config, history


def _check_wandb(wandb_dir, out, lr):
    project, name, config, history = _wandb_run(wandb_dir)
    assert (project, name) == ("llmkit", out.name)
    assert config["lr"] == lr and config["output_dir"] == str(out)   # the llmkit config
    rows = _metrics(out)
    for key, panel in (("loss", "train/loss"), ("eval_loss", "eval/loss"), ("perplexity", "eval/perplexity")):
        logged = [(h["_step"], h[panel]) for h in history if panel in h]
        assert logged == _curve(rows, key), key


def _check_mlflow(out, lr):
    from mlflow.tracking import MlflowClient

    client = MlflowClient((out / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("llmkit")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == out.name and run.info.status == "FINISHED"
    assert float(run.data.params["lr"]) == lr and run.data.params["output_dir"] == str(out)
    rows = _metrics(out)
    for key in ("loss", "eval_loss", "perplexity", "tokens_per_second"):
        logged = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(logged) == _curve(rows, key), key


@pytest.fixture
def file_store_allowed(monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")   # MLflow 3's readers refuse a file store without it


def _pretrain(cli, configs, bpe_dir, docs_file, out, report_to, *extra):
    return cli("pretrain", "--model", configs["llama"], "--from-scratch", "-t", bpe_dir, "--data", docs_file,
               "-o", out, "--seq-len", "64", "--batch-size", "4", "--max-steps", "3", "--logging-steps", "1",
               "--eval-split", "4", "--lr", "2e-3", "--report-to", report_to, *extra)


def _sft(cli, configs, bpe_dir, chat_file, out, report_to):
    return cli("sft", "-m", configs["llama"], "--from-scratch", "-t", bpe_dir, "--data", chat_file,
               "--template", "chatml", "-o", out, "--max-steps", "3", "--batch-size", "4", "--lr", "1e-3",
               "--logging-steps", "1", "--eval-split", "2", "--report-to", report_to, "--json")


def test_pretrain_reports_every_metrics_row_to_wandb_and_mlflow(cli, configs, bpe_dir, docs_file, tmp_path, offline,
                                                                 file_store_allowed):
    out = tmp_path / "run"
    result = _pretrain(cli, configs, bpe_dir, docs_file, out, "wandb,mlflow", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "completed"   # stdout is still one JSON document
    _check_wandb(offline, out, 2e-3)
    _check_mlflow(out, 2e-3)


@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_sft_reports_to_each_tracker(tracker, cli, configs, bpe_dir, chat_file, tmp_path, offline, file_store_allowed):
    out = tmp_path / "run"
    result = _sft(cli, configs, bpe_dir, chat_file, out, tracker)
    assert result.exit_code == 0, result.stderr
    if tracker == "wandb":
        _check_wandb(offline, out, 1e-3)
        assert not (out / "mlruns").exists()
    else:
        _check_mlflow(out, 1e-3)
        assert not list(offline.iterdir())


@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_a_missing_tracker_package_is_refused_before_any_work(tracker, cli, configs, bpe_dir, docs_file, tmp_path,
                                                              monkeypatch):
    monkeypatch.setitem(sys.modules, tracker, None)   # `import wandb` now raises ImportError
    out = tmp_path / "run"
    result = _pretrain(cli, configs, bpe_dir, docs_file, out, tracker)
    assert_clean_error(result, 2, f"--report-to {tracker} needs the {tracker} package",
                       "pip install 'llmkit[tracking]'")
    assert len(result.stderr.splitlines()) <= 2   # the Error line and its Hint
    assert not out.exists()


@pytest.mark.parametrize("report_to", ["wandb,foo", "none,mlflow", "wandb,wandb", ""])
def test_report_to_takes_known_trackers_only(report_to, cli, configs, bpe_dir, docs_file, tmp_path):
    out = tmp_path / "run"
    result = _pretrain(cli, configs, bpe_dir, docs_file, out, report_to)
    assert_clean_error(result, 2, "--report-to takes none, or one or more of tensorboard, wandb, mlflow")
    assert not out.exists()


def test_only_the_process_that_owns_the_run_dir_tracks(tmp_path, offline, monkeypatch):
    """Under a launcher every rank runs the command; a rank other than 0 must not open a second W&B/MLflow run."""
    from llmkit.training.tracking import TrackedRuns

    monkeypatch.setenv("RANK", "1")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    tracked = TrackedRuns.start("wandb,mlflow", run_dir, run_dir / "metrics.jsonl", {"lr": 1e-3}, print)
    assert tracked.runs == []
    tracked.finish("completed")
    assert list(run_dir.iterdir()) == [] and list(offline.iterdir()) == []
