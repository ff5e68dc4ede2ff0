"""The run directory: resolved_config.yaml, metrics.jsonl, loss_curve.png, manifest.json, checkpoints/, model/.

Pure Python apart from the checkpoint checks; the loss curve is a PNG written with zlib (no matplotlib: it would
add ~40 MB and a second of import to every training run for one picture; the numbers are in metrics.jsonl).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
import zlib
from pathlib import Path
from typing import IO

from llmkit.errors import LlmkitError
from llmkit.outputs import lock_holder, release_lock, take_lock, write_text_atomic

CHECKPOINTS = "checkpoints"
MODEL = "model"
ADAPTER = "adapter"          # a peft run's final adapter (instead of model/)
METRICS = "metrics.jsonl"
CURVE = "loss_curve.png"
MANIFEST = "manifest.json"
LOCK = ".llmkit.lock"         # held by the one process writing the run dir, for the run's whole life
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


# ----------------------------------------------------------------------------------------------------- metrics

def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by kill -9
            break
    return rows


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep the rows up to a checkpoint's step (a resumed run logs the later steps again)."""
    rows = [r for r in read_metrics(path) if r.get("step", 0) <= last_step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def append_metrics(path: Path, row: dict) -> None:
    """One JSON row (a NaN or infinite value is written as null: JSON has no such numbers)."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(clean, allow_nan=False) + "\n")
        f.flush()


def sparkline(values: list[float], width: int = 40) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return ""
    if len(values) > width:  # average into `width` buckets
        step = len(values) / width
        values = [sum(values[int(i * step):max(int((i + 1) * step), int(i * step) + 1)]) /
                  len(values[int(i * step):max(int((i + 1) * step), int(i * step) + 1)]) for i in range(width)]
    bars = "▁▂▃▄▅▆▇█"
    lo, hi = min(values), max(values)
    span = hi - lo or 1.0
    return "".join(bars[min(int((v - lo) / span * (len(bars) - 1) + 0.5), len(bars) - 1)] for v in values)


# --------------------------------------------------------------------------------------------------------- PNG

def _png(width: int, height: int, pixels: bytearray) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes(pixels[y * width * 3:(y + 1) * width * 3]) for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def write_loss_png(path: Path, train: list[tuple[int, float]], evals: list[tuple[int, float]],
                   width: int = 640, height: int = 360) -> None:
    """Training loss (blue line) and eval loss (orange dots) against steps, on light grid lines."""
    pixels = bytearray(b"\xff" * (width * height * 3))
    margin = 30

    def put(x: int, y: int, rgb: tuple[int, int, int]) -> None:
        if 0 <= x < width and 0 <= y < height:
            i = (y * width + x) * 3
            pixels[i:i + 3] = bytes(rgb)

    points = [p for p in train + evals if math.isfinite(p[1])]
    for k in range(5):  # grid
        y = margin + k * (height - 2 * margin) // 4
        for x in range(margin, width - margin):
            put(x, y, (225, 225, 225))
    for y in range(margin, height - margin + 1):  # axes
        put(margin, y, (0, 0, 0))
    for x in range(margin, width - margin + 1):
        put(x, height - margin, (0, 0, 0))
    if points:
        s0, s1 = min(p[0] for p in points), max(p[0] for p in points)
        l0, l1 = min(p[1] for p in points), max(p[1] for p in points)

        def xy(step: float, loss: float) -> tuple[int, int]:
            fx = (step - s0) / ((s1 - s0) or 1)
            fy = (loss - l0) / ((l1 - l0) or 1)
            return margin + int(fx * (width - 2 * margin)), height - margin - int(fy * (height - 2 * margin))

        line = [xy(*p) for p in train if math.isfinite(p[1])]
        for (x0, y0), (x1, y1) in zip(line, line[1:]):
            n = max(abs(x1 - x0), abs(y1 - y0), 1)
            for t in range(n + 1):
                x, y = x0 + (x1 - x0) * t // n, y0 + (y1 - y0) * t // n
                put(x, y, (31, 119, 180))
                put(x, y + 1, (31, 119, 180))
        for step, loss in evals:
            if math.isfinite(loss):
                cx, cy = xy(step, loss)
                for dx in range(-3, 4):
                    for dy in range(-3, 4):
                        if dx * dx + dy * dy <= 9:
                            put(cx + dx, cy + dy, (255, 127, 14))
    path.write_bytes(_png(width, height, pixels))


# -------------------------------------------------------------------------------------------------- manifest

def fingerprint(source: str) -> str:
    """sha256 over a data file, or over a directory's files (names and bytes); hub names hash as text."""
    digest = hashlib.sha256()
    path = Path(source).expanduser()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
    if not files:
        digest.update(source.encode())
    for f in files:
        digest.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with f.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import llmkit

    out = {"llmkit": llmkit.__version__}
    for name in ("torch", "transformers", "datasets", "tokenizers", "accelerate", "deepspeed", "peft",
                 "bitsandbytes"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    import platform

    out["python"] = platform.python_version()
    return out


def peak_memory() -> dict[str, int | None]:
    import resource

    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    gpu = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    return {"peak_rss_bytes": rss, "peak_gpu_allocated_bytes": gpu}


def write_json(path: Path, value: dict) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------------------------------------ checkpoints

def checkpoints(run_dir: Path) -> list[Path]:
    folder = run_dir / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and _CHECKPOINT_RE.match(p.name)]
    return sorted(found, key=lambda p: int(_CHECKPOINT_RE.match(p.name).group(1)))


# the files the Trainer reads with torch.load(weights_only=True) on resume (DeepSpeed reads its own global_step*/)
_WEIGHTS_ONLY_PICKLES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth", "pytorch_model*.bin")
_CRC_CHECK_BYTES = 256 << 20   # torch files up to this size have every byte checked (~0.1 s); bigger ones their
#                                structure, their pickle and its CRC: a torn write cuts the end, where the zip
#                                directory lives, and checking every byte of a 50 GB optimizer.pt takes minutes


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint cannot be resumed from, or None when every file a resume reads is whole: the JSON files
    (trainer_state.json with an integer global_step), the weights (safetensors headers and sizes), the optimizer,
    scheduler, scaler and RNG states and DeepSpeed's global_step*/ files (torch zip archives: their directory, every
    record inside the file, the CRCs; the Trainer's own pickles load with weights_only)."""
    if not path.is_dir():
        return "it is not a directory"
    parsed = {}
    for json_file in sorted(path.glob("*.json")):
        try:
            parsed[json_file.name] = json.loads(json_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return f"{json_file.name} is not valid JSON (truncated or damaged)"
    if "trainer_state.json" not in parsed:
        return "trainer_state.json is missing"
    state = parsed["trainer_state.json"]
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        return "trainer_state.json has no integer global_step"
    weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if not weights:
        return "it holds no model weights (*.safetensors)"
    for w in weights:
        problem = _safetensors_problem(w) if w.suffix == ".safetensors" else None
        if problem:
            return problem
    deepspeed_states = _deepspeed_state_dir(path)
    if isinstance(deepspeed_states, str):
        return deepspeed_states
    if not any((path / name).is_file() for name in ("optimizer.pt", "optimizer.bin")) and deepspeed_states is None:
        return "the optimizer state (optimizer.pt) is missing"
    weights_only = {p for pattern in _WEIGHTS_ONLY_PICKLES for p in path.glob(pattern)}
    torch_files = [p for pattern in ("*.pt", "*.pth", "*.bin") for p in sorted(path.glob(pattern))]
    if deepspeed_states is not None:
        torch_files += sorted(p for p in deepspeed_states.iterdir() if p.is_file())
    for torch_file in torch_files:
        problem = _torch_file_problem(torch_file, torch_file in weights_only)
        if problem:
            return f"{torch_file.relative_to(path)} {problem}"
    return None


def _safetensors_problem(path: Path) -> str | None:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                f.get_slice(key)
        size = path.stat().st_size
        with path.open("rb") as handle:
            header = struct.unpack("<Q", handle.read(8))[0]
            meta = json.loads(handle.read(header))
        end = max((v["data_offsets"][1] for k, v in meta.items() if k != "__metadata__"), default=0)
        if 8 + header + end != size:
            return f"{path.name} is truncated ({size:,} bytes, expected {8 + header + end:,})"
    except Exception as exc:  # safetensors raises several types for a damaged file
        return f"{path.name} is damaged ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    return None


def _deepspeed_state_dir(path: Path) -> Path | str | None:
    """DeepSpeed's global_step*/ dir that the checkpoint's `latest` file names; None for a Trainer checkpoint, or
    the problem (a str)."""
    latest = path / "latest"
    if not latest.is_file():
        return "DeepSpeed's `latest` file is missing" if any(path.glob("global_step*")) else None
    tag = latest.read_text(encoding="utf-8", errors="replace").strip()
    states = path / tag
    if not tag or not states.is_dir() or not any(states.iterdir()):
        return f"DeepSpeed's `latest` names {tag!r}, which is not a saved state dir"
    return states


def _torch_file_problem(path: Path, weights_only: bool) -> str | None:
    """What is wrong with a torch.save file (a zip archive), read cheaply: the zip directory at its end (a torn write
    loses it), every record's header and extent inside the file, the CRCs (of every record for a file up to
    _CRC_CHECK_BYTES, else of the pickle), then, for the Trainer's own files, the pickle loaded as the Trainer does
    (weights_only; memory-mapped, so no tensor is read)."""
    import zipfile

    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive, path.open("rb") as raw:
            for entry in archive.infolist():
                raw.seek(entry.header_offset)
                local = raw.read(30)
                if len(local) < 30 or local[:4] != b"PK\x03\x04":
                    return "is damaged (a record header is missing)"
                name_length, extra_length = struct.unpack("<HH", local[26:30])
                if entry.header_offset + 30 + name_length + extra_length + entry.compress_size > size:
                    return f"is truncated ({size:,} bytes; record {entry.filename} ends beyond them)"
                if size <= _CRC_CHECK_BYTES or entry.filename.endswith(".pkl"):
                    archive.read(entry)   # raises BadZipFile on a CRC mismatch
    except Exception as exc:  # noqa: BLE001 - zipfile raises many types for a damaged archive
        return f"is truncated or damaged ({exc})"
    if weights_only:
        import torch
        from transformers.trainer_pt_utils import safe_globals   # numpy's RNG state, as the Trainer allows it

        try:
            with safe_globals():
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad pickle
            return f"does not load as the Trainer loads it ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
    return None


def resume_checkpoint(run_dir: Path, resume: str, warn) -> Path:
    """The checkpoint to resume from: `auto` = the newest whole one in run_dir/checkpoints, or a given dir."""
    if resume != "auto":
        path = Path(resume).expanduser()
        problem = checkpoint_problem(path)
        if problem:
            raise LlmkitError(f"cannot resume from {path}: {problem}",
                              hint="pass an intact checkpoint dir, or --resume auto for the newest intact one")
        return path
    found = checkpoints(run_dir)
    if not found:
        raise LlmkitError(f"--resume auto: no checkpoint in {run_dir / CHECKPOINTS}",
                          hint="drop --resume to start a new run (with --overwrite to replace the dir)")
    skipped = []
    for path in reversed(found):
        problem = checkpoint_problem(path)
        if problem is None:
            for message in skipped:
                warn(message)
            return path
        skipped.append(f"skipping checkpoint {path.name}: {problem} (interrupted while saving?)")
    raise LlmkitError(f"--resume auto: every checkpoint in {run_dir / CHECKPOINTS} is damaged "
                      f"({checkpoint_problem(found[-1])})",
                      hint="start over with --overwrite; nothing was changed")


def check_unlocked(run: Path) -> None:
    """Refuse a run dir another llmkit run is writing (before this run does anything)."""
    holder = lock_holder(run / LOCK)
    if holder is not None:
        raise _busy(run, holder)


def _busy(run: Path, holder: str) -> LlmkitError:
    return LlmkitError(f"another llmkit run is writing {run} ({holder})",
                       hint="wait for it to finish (or stop it), or give this run another --output-dir")


def start(run: Path, config_yaml: str, overwrite: bool, resume_from: Path | None) -> tuple[Path, IO | None]:
    """Lock the run dir (RUN/.llmkit.lock, until `release`), then create it or, with overwrite, empty it, and write
    its resolved config; return the metrics file, emptied for a new run or cut back to the checkpoint's step when
    resuming, and the lock. Called only after every input check passed."""
    import shutil

    from llmkit.training.integrations import is_main_process

    if not is_main_process():   # under a launcher only RANK 0 touches the run dir (the others write no file)
        return run / METRICS, None
    run.mkdir(parents=True, exist_ok=True)
    lock = take_lock(run / LOCK)
    if lock is None:
        raise _busy(run, lock_holder(run / LOCK) or "another process")
    if overwrite:
        for entry in run.iterdir():
            if entry.name == LOCK:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    write_text_atomic(run / "resolved_config.yaml", config_yaml)
    metrics_file = run / METRICS
    if resume_from is not None:
        state = json.loads((resume_from / "trainer_state.json").read_text(encoding="utf-8"))
        truncate_metrics(metrics_file, int(state["global_step"]))
    else:
        write_text_atomic(metrics_file, "")
    return metrics_file, lock


def release(run: Path, lock: IO | None) -> None:
    """Let go of the run dir (the lock `start` took, if any)."""
    if lock is not None:
        release_lock(lock, run / LOCK)
