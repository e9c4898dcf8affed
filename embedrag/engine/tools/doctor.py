"""What this machine can do: libraries, devices, quantisation backend, offline models."""

from __future__ import annotations

import logging
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from embedrag.engine.encoding.models import DEFAULT_MODEL


@dataclass
class Check:
    """One line of the diagnosis. ``status`` is ok, warn or missing."""

    area: str
    status: str
    detail: str


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _torch_checks() -> list[Check]:
    try:
        import torch
    except ImportError:
        return [Check("torch", "missing", "not installed: pip install torch")]
    checks = [Check("torch", "ok", f"{torch.__version__} ({torch.get_num_threads()} CPU threads)")]
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        bf16 = torch.cuda.is_bf16_supported()
        checks.append(Check("device", "ok", f"CUDA {torch.version.cuda}: {len(names)} x {names[0]}"
                                            f" (bf16 {'yes' if bf16 else 'no'})"))
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        checks.append(Check("device", "ok", "Apple MPS"))
    else:
        flags = _cpu_flags()
        bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
        capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "unknown")()
        checks.append(Check("device", "warn", f"CPU only, {os.cpu_count()} cores, {capability}, native bf16 "
                                              f"{'yes' if bf16 else 'no'}: training works, slowly"))
    return checks


def _bitsandbytes_check() -> Check:
    if _version("bitsandbytes") is None:
        return Check("bitsandbytes", "missing", "not installed: --finetune-type qlora unavailable")
    # Its CPU backend warns at import about an optional hub kernel it cannot fetch offline.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        import bitsandbytes
        from bitsandbytes import cextension
    except Exception as exc:  # noqa: BLE001 - any import failure means no qlora
        return Check("bitsandbytes", "warn", f"import failed ({type(exc).__name__}): qlora unavailable")
    backend = getattr(cextension, "BNB_BACKEND", "unknown")
    return Check("bitsandbytes", "ok", f"{bitsandbytes.__version__}, backend {backend}: qlora 4/8-bit available")


def _accelerate_check() -> Check:
    found = _version("accelerate")
    if found is None:
        return Check("accelerate", "missing", "not installed")
    try:
        from accelerate.commands.config import default_config_file
    except Exception:  # noqa: BLE001
        return Check("accelerate", "ok", found)
    if os.path.isfile(default_config_file):
        return Check("accelerate", "ok", f"{found}, config {default_config_file}")
    return Check("accelerate", "ok", f"{found}, no config file (single process unless "
                                     "`accelerate launch` says otherwise)")


def _library_check(dist: str, area: str | None = None, *, optional: str = "") -> Check:
    found = _version(dist)
    if found:
        return Check(area or dist, "ok", found)
    return Check(area or dist, "warn" if optional else "missing",
                 f"not installed{': ' + optional if optional else ''}")


def _model_checks(models: Sequence[str]) -> list[Check]:
    from embedrag.engine.core.errors import ModelNotFoundError
    from embedrag.engine.encoding.models import resolve_model

    checks = []
    for name in models:
        try:
            resolved = resolve_model(name, allow_download=False)
        except ModelNotFoundError as exc:
            checks.append(Check("model", "warn", str(exc)))
        else:
            checks.append(Check("model", "ok", f"{name} -> {resolved.source}: {resolved.path}"))
    try:
        from huggingface_hub import scan_cache_dir

        cached = [r.repo_id for r in scan_cache_dir().repos if r.repo_type == "model"]
    except Exception:  # noqa: BLE001 - no cache folder yet
        cached = []
    checks.append(Check("hf cache", "ok", f"{len(cached)} model(s)"
                                          + (f": {', '.join(sorted(cached)[:8])}" if cached else "")))
    return checks


def diagnose(models: Sequence[str] = (DEFAULT_MODEL,)) -> list[Check]:
    """Every check, in display order."""
    from embedrag._version import __version__
    from embedrag.engine.encoding.models import hub_offline

    checks = [
        Check("embedrag", "ok", __version__),
        Check("python", "ok", f"{sys.version.split()[0]} on {platform.system()} {platform.machine()}"),
        *_torch_checks(),
        _library_check("transformers"),
        _library_check("peft", optional="--finetune-type lora/qlora unavailable"),
        _bitsandbytes_check(),
        _accelerate_check(),
        _library_check("lancedb", optional="index/ask unavailable"),
        _library_check("tensorboard", optional="no TensorBoard logs"),
        _library_check("sentence-transformers", optional="only needed for parity checks"),
        Check("hub", "ok", "offline (HF_HUB_OFFLINE=1): models resolve locally only"
              if hub_offline() else "online: models missing locally are downloaded"),
        *_model_checks(models),
    ]
    return checks
