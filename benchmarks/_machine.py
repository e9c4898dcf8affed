"""What the benchmarks record about the machine and what they can run with, shared so the
scripts describe a run the same way."""

from __future__ import annotations

import importlib.util
import platform
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions(dists: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of ``dists`` (those not installed are left out)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for dist in dists:
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return found


def hf_datasets_installed() -> bool:
    """Hugging Face ``datasets`` (sentence-transformers' trainer needs it), not a folder
    named ``datasets`` on sys.path (this repository has one), which imports as an empty
    namespace package."""
    spec = importlib.util.find_spec("datasets")
    return spec is not None and spec.origin is not None
