"""One precision vocabulary for every command: ``auto``, ``fp32``, ``bf16``, ``fp16``.

``auto`` is resolved per device where numbers are computed (see
``encoder.resolve_precision``: bf16 where the hardware computes it natively, else fp32).
The spellings of the original scripts stay accepted: train's ``--mixed-precision no``
(= fp32) and merge's ``--training-precision float32|bfloat16|float16``.
"""

from __future__ import annotations

from embedrag.engine.core.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
PRECISION_CHOICES = ("auto", *PRECISIONS)
ALIASES = {"no": "fp32", "float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16",
           "half": "fp16"}


def canonical_precision(value: str, option: str = "precision", *, allow_auto: bool = True) -> str:
    """``value`` in the one vocabulary (aliases mapped), or a ConfigError naming ``option``."""
    spelled = str(value).strip().lower()
    canonical = ALIASES.get(spelled, spelled)
    choices = PRECISION_CHOICES if allow_auto else PRECISIONS
    if canonical not in choices:
        raise ConfigError(f"{option} must be one of {', '.join(choices)}, got {value!r}")
    return canonical


def accelerate_mixed_precision(precision: str) -> str:
    """The ``mixed_precision`` value accelerate expects (``no`` for fp32)."""
    canonical = canonical_precision(precision, "--mixed-precision", allow_auto=False)
    return "no" if canonical == "fp32" else canonical
