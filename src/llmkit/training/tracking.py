"""--report-to wandb and mlflow: every metrics.jsonl row (the eval before training, each logged step, each eval,
the final eval) sent soon after it is written, with the run's resolved config as the tracked run's parameters.

Why not transformers' WandbCallback and MLflowCallback: they see only what the Trainer logs (no step-0 eval, no
tokens/s, no perplexity), name runs and projects their own way ("huggingface", the Default experiment), and keep
process-wide state (MLflow's tracking URI is set once per process, its run ends before the final eval, whose
metrics would then start a stray run). Here each run holds its own W&B run object and MLflow client.

Only the process that owns the run directory tracks (RANK 0 under a launcher); the other ranks never start a run.
Nothing here reaches the network unless the user's settings ask for it: W&B honours WANDB_MODE=offline, and MLflow
without MLFLOW_TRACKING_URI writes a file store into the run directory.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from transformers import TrainerCallback

from llmkit.config import report_targets
from llmkit.errors import LlmkitError
from llmkit.training.integrations import environment_variable, is_main_process

PROJECT = "llmkit"             # W&B project and MLflow experiment unless WANDB_PROJECT / MLFLOW_EXPERIMENT_NAME say
MLFLOW_DIR = "mlruns"          # the local file store, under the run directory


class WandbRun:
    """A W&B run named after the run directory: train rows under train/, eval rows under eval/ (the panels
    transformers' integration fills), at the run's own step."""

    EXIT_CODES = {"completed": 0, "interrupted": 130, "failed": 1}

    def __init__(self, run_dir: Path, config: dict[str, Any], info: Callable[[str], None]):
        import wandb

        try:
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or PROJECT, name=run_dir.name,
                                  dir=os.environ.get("WANDB_DIR") or str(run_dir), config=config,
                                  reinit="create_new", settings=wandb.Settings(console="off", silent=True))
        except wandb.errors.Error as exc:
            raise LlmkitError(f"--report-to wandb could not start a run: {exc}",
                              hint="run `wandb login`, or set WANDB_MODE=offline (`wandb sync DIR` uploads the run "
                                   "later)") from None
        where = self.run.settings.sync_dir
        info(f"wandb: run {self.run.name} in {where}: " + (f"offline, `wandb sync {where}` uploads it"
                                                          if self.run.offline else self.run.url))

    def log(self, row: dict[str, Any]) -> None:
        self.run.log({self.panel_key(key): value for key, value in row.items() if key != "step"}, step=row["step"])

    @staticmethod
    def panel_key(key: str) -> str:
        """eval_loss -> eval/loss, perplexity (of an eval row) -> eval/perplexity, loss -> train/loss."""
        if key.startswith("eval_"):
            return "eval/" + key.removeprefix("eval_")
        return ("eval/" if key == "perplexity" else "train/") + key

    def finish(self, status: str) -> None:
        self.run.finish(exit_code=self.EXIT_CODES[status])


class MlflowRun:
    """An MLflow run named after the run directory, in MLFLOW_TRACKING_URI or else RUN/mlruns (a file store), with
    metrics.jsonl's names (loss, lr, eval_loss, perplexity, ...) at the run's own step."""

    STATES = {"completed": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}

    def __init__(self, run_dir: Path, config: dict[str, Any], info: Callable[[str], None]):
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        uri = os.environ.get("MLFLOW_TRACKING_URI") or (run_dir / MLFLOW_DIR).resolve().as_uri()
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or PROJECT
        try:
            # MLflow 3 refuses a file store unless allowed; the store is built here and cached for its URI
            with environment_variable("MLFLOW_ALLOW_FILE_STORE", "true"):
                self.client = MlflowClient(uri)
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
            params = [Param(key, str(value)[:MAX_PARAM_VAL_LENGTH]) for key, value in config.items()]
            for first in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
                self.client.log_batch(self.run_id, params=params[first:first + MAX_PARAMS_TAGS_PER_BATCH])
        except MlflowException as exc:
            raise LlmkitError(f"--report-to mlflow could not start a run in {uri}: {exc.message}",
                              hint="check MLFLOW_TRACKING_URI, or unset it for a file store in the run directory") \
                from None
        info(f"mlflow: run {run_dir.name} ({self.run_id}) in experiment {experiment!r} at {uri}")

    def log(self, row: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, float(value), now, row["step"])
                                                    for key, value in row.items() if key != "step"])

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, self.STATES[status])


TRACKERS = {"wandb": WandbRun, "mlflow": MlflowRun}   # tensorboard is transformers' callback (integrations)


class TrackedRuns(TrainerCallback):
    """The tracked runs of one training run. As a Trainer callback (after the one that writes metrics.jsonl) it sends
    each row that file has gained since the last send; `finish` sends the rest (the final eval, written after
    training) and closes the runs. Following the file, not the Trainer's logs, gives the trackers every row any
    recipe writes (the task heads' evaluations too), with the same numbers."""

    def __init__(self, metrics_file: Path, runs: list | None = None):
        self.metrics_file = metrics_file
        self.runs = runs or []
        self.sent_bytes = 0

    @classmethod
    def start(cls, report_to: str, run_dir: Path, metrics_file: Path, config: dict[str, Any],
              info: Callable[[str], None]) -> TrackedRuns:
        """A run in each tracker --report-to names (in this process, when it owns the run directory)."""
        started = cls(metrics_file)
        if not is_main_process():
            return started
        try:
            for target in report_targets(report_to):
                if target in TRACKERS:
                    started.runs.append(TRACKERS[target](run_dir, config, info))
        except BaseException:
            started.finish("failed")
            raise
        return started

    def send_new_rows(self) -> None:
        if not self.runs or not self.metrics_file.is_file():
            return
        with self.metrics_file.open("rb") as f:
            f.seek(self.sent_bytes)
            text = f.read()
        whole = text[:text.rfind(b"\n") + 1]   # a row being written is sent with the next call
        self.sent_bytes += len(whole)
        for line in whole.decode("utf-8").splitlines():
            row = json.loads(line)
            numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for run in self.runs:
                run.log(numbers)

    def on_log(self, args, state, control, **kwargs):
        self.send_new_rows()

    def on_evaluate(self, args, state, control, **kwargs):
        self.send_new_rows()

    def finish(self, status: str) -> None:
        """Send the rows not sent yet and close every run as completed, interrupted or failed."""
        try:
            self.send_new_rows()
        finally:
            for run in self.runs:
                run.finish(status)
            self.runs = []
