"""What comes in: the training JSONL contract, documents and chunks, test sets, answer sets."""

from __future__ import annotations


def __getattr__(name: str):
    """``embedrag.engine.data`` was the training-JSONL module (now ``data.examples``): its
    names still resolve here, with a ``DeprecationWarning``, for one release."""
    import importlib
    import warnings

    examples = importlib.import_module(f"{__name__}.examples")  # not `from . import`: that asks here first

    if name.startswith("__") or not hasattr(examples, name):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"embedrag.engine.data.{name} moved to embedrag.engine.data.examples.{name}; "
                  "the old path goes in the next release", DeprecationWarning, stacklevel=2)
    return getattr(examples, name)
