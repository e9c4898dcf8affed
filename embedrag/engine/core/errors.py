"""Domain errors. The CLI turns each into one line and a non-zero exit; a notebook sees
an ordinary exception with the same message."""

from __future__ import annotations


class EmbedragError(Exception):
    """Base class of every error embedrag reports to a user as a one-line message."""

    exit_code = 2


class ModelNotFoundError(EmbedragError):
    """A model name or path resolved nowhere."""


class DataError(EmbedragError):
    """Input data violates the data contract. ``problems`` holds every problem found
    (``FILE:LINE: what is wrong``), the message the first of them."""

    def __init__(self, problems: list[str], *, truncated: int = 0):
        self.problems = list(problems)
        self.truncated = truncated
        first = self.problems[0] if self.problems else "invalid data"
        more = len(self.problems) - 1 + truncated
        super().__init__(first if more == 0 else f"{first} (and {more} more problem(s))")


class ConfigError(EmbedragError):
    """Options that cannot work together, or a value out of range."""


class TrainingInterrupted(EmbedragError):
    """Training stopped on request (Ctrl-C) after saving a resumable checkpoint."""

    exit_code = 130


# Failures of the machine rather than of the input. They arrive as ordinary exceptions
# from torch, the OS or LanceDB; these turn them into one line that says what to try.

_TRAINING_MEMORY_HINT = ("lower --batch-size, add --mini-batch-size 8 (same batch, less memory), "
                         "--gradient-checkpointing, or --finetune-type qlora")
_ENCODING_MEMORY_HINT = "lower --batch-size or the max length"
_OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory")
_CUDA_MARKERS = ("cuda error", "cublas_status", "cudnn_status", "cudnn error", "nccl error",
                 "device-side assert", "no kernel image is available")
_DISK_FULL_MARKERS = ("no space left on device", "disk quota exceeded")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def out_of_memory_message(exc: BaseException, *, training: bool) -> str | None:
    """``out of memory (...): <what to lower>`` for host and GPU OOM, else None."""
    text = str(exc).lower()
    if not (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
            or (isinstance(exc, RuntimeError) and any(m in text for m in _OOM_MARKERS))):
        return None
    where = "GPU" if "cuda" in text or "hip" in text else "host"
    hint = _TRAINING_MEMORY_HINT if training else _ENCODING_MEMORY_HINT
    return f"out of memory on the {where} ({_first_line(exc)[:160]}): {hint}"


def cuda_error_message(exc: BaseException) -> str | None:
    """A CUDA/cuDNN/NCCL failure with the next diagnostic step, else None."""
    text = str(exc).lower()
    if not isinstance(exc, RuntimeError) or not any(m in text for m in _CUDA_MARKERS):
        return None
    return (f"GPU error: {_first_line(exc)[:200]} (check the GPU with nvidia-smi; rerun with "
            "CUDA_LAUNCH_BLOCKING=1 --debug to find the failing operation, or CUDA_VISIBLE_DEVICES= "
            "to run on the CPU)")


def os_error_message(exc: BaseException) -> str | None:
    """Full disk, permissions and other file-system failures, naming the path, else None."""
    import errno

    text = str(exc).lower()
    if not isinstance(exc, OSError):  # LanceDB's Rust errors arrive as ValueError/RuntimeError
        if any(m in text for m in _DISK_FULL_MARKERS):
            return f"no space left on device ({_first_line(exc)[:200]}): free some space or write elsewhere"
        if "permission denied" in text or "permissiondenied" in text:
            return f"permission denied ({_first_line(exc)[:240]})"
        return None
    path = f": {exc.filename}" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT) or any(m in text for m in _DISK_FULL_MARKERS):
        return f"no space left on device{path} (free some space or write elsewhere; nothing was kept)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied{path}"
    if exc.errno == errno.EROFS:
        return f"read-only file system{path}"
    if exc.strerror:
        return f"{exc.strerror.lower()}{path}"
    return None


def machine_error_message(exc: BaseException, *, training: bool = False) -> str | None:
    """One line for an out-of-memory, GPU or file-system failure; None for anything else."""
    return (out_of_memory_message(exc, training=training) or cuda_error_message(exc)
            or os_error_message(exc))


# Where an LLM key can come from. Every message embedrag prints passes through redact(),
# so a server that echoes the key in an error body cannot leak it to a terminal or log.
API_KEY_VARIABLES = ("EMBEDRAG_LLM_API_KEY", "OPENAI_API_KEY")


def api_key_from_environment() -> str | None:
    """The LLM key from the first of ``API_KEY_VARIABLES`` that is set, else None."""
    import os

    return next((os.environ[name] for name in API_KEY_VARIABLES if os.environ.get(name)), None)


def redact(text: str, secrets: tuple[str | None, ...] = ()) -> str:
    """``text`` with every API key (from the environment, or ``secrets``) replaced by ***."""
    import os

    for secret in (*secrets, *(os.environ.get(name) for name in API_KEY_VARIABLES)):
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text
