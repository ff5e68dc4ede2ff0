"""The errors llmkit reports to users: a message, a hint, and the exit code they map to.

Exit codes (documented in README and `llmkit --help`):
  0 success; 1 the operation failed (data, checkpoint, runtime); 2 usage or configuration error; 130 interrupted;
  143 terminated (SIGTERM; a training run checkpoints first).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143   # SIGTERM (SLURM and Kubernetes preemption): 128 + 15, as shells report it


class LlmkitError(Exception):
    """An expected failure: shown as `Error: <message>` and `Hint: <hint>`, never as a traceback."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class ConfigError(LlmkitError):
    """A flag, preset or config file the user gave is wrong (exit 2)."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, hint: str | None = None, problems: list[str] | None = None):
        super().__init__(message, hint)
        self.problems = problems or [message]


class DataError(LlmkitError):
    """A data file cannot be read or does not have what the command needs (exit 1)."""


class ModelLoadError(LlmkitError):
    """A model or tokenizer cannot be loaded from the given path or hub id (exit 1)."""


def _raised_as(exc: BaseException, class_name: str) -> bool:
    """Whether `exc` is (a subclass of) a library's exception class, known by name: this module imports none of
    the libraries that raise them."""
    return any(klass.__name__ == class_name for klass in type(exc).__mro__)


def as_user_error(exc: BaseException) -> LlmkitError | None:
    """The one table from exceptions to what users see: an LlmkitError as it is; an operating-system error on a
    named path (permissions, a file where a dir should be, a full disk) as exit 1 with that path; a config.json that
    transformers' typed configs reject, a damaged safetensors file or an unsafe pickle as exit 1; anything else is
    a bug, None, and keeps its traceback."""
    if isinstance(exc, LlmkitError):
        return exc
    if _raised_as(exc, "StrictDataclassError"):   # huggingface_hub: a config.json field of the wrong type
        return ModelLoadError(f"the model's config.json is invalid: {' '.join(str(exc).split())}",
                              hint="fix that field in config.json (transformers names and types), or re-save the model")
    if _raised_as(exc, "SafetensorError"):   # safetensors' Rust error: a truncated or damaged weights file
        return ModelLoadError(f"a weights file is damaged or incomplete: {str(exc).splitlines()[0]}",
                              hint="download or save the model again (an interrupted copy leaves a short file)")
    if _raised_as(exc, "UnpicklingError") and "weights_only" in str(exc):
        return ModelLoadError("the checkpoint is a pickle that torch will not load safely: it holds more than "
                              "tensors (pickles can run code)",
                              hint="use a safetensors copy of the model; llmkit never loads pickles unsafely")
    if isinstance(exc, OSError) and exc.filename is not None:
        return LlmkitError(f"cannot use {exc.filename}: {exc.strerror or type(exc).__name__}",
                           hint="check the path, its permissions and the free disk space")
    return None
