"""Loading what fine-tuning saves, on the encoding side: adapter folders and 4-bit/8-bit
bases, with no training code.

An adapter folder (``adapter_config.json``, no ``config.json``) records its base model;
:func:`embedrag.engine.encoding.encoder.load_adapter_encoder` loads that base (quantised the way it
was trained) and puts the adapter on it with :func:`attach_adapter`. The pieces here
never build an :class:`~embedrag.engine.encoding.encoder.Encoder` themselves, so the encoder, the
fine-tuning code (``finetune``) and ``merge`` can all import them without an import circle.
peft, bitsandbytes, transformers and torch are imported inside the functions that use them.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedrag.engine.core.errors import ConfigError, ModelNotFoundError
from embedrag.engine.encoding.models import ADAPTER_CONFIG

if TYPE_CHECKING:
    import torch



def is_adapter_folder(folder: str | os.PathLike) -> bool:
    """A LoRA/QLoRA adapter saved on its own (no full model next to it)."""
    folder = Path(folder)
    return (folder / ADAPTER_CONFIG).is_file() and not (folder / "config.json").is_file()


def read_adapter_config(folder: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(folder) / ADAPTER_CONFIG).read_text(encoding="utf-8"))


def adapter_base(folder: str | os.PathLike, saved: Any, adapter_config: dict[str, Any], *,
                 base_model: str | None = None) -> str:
    """The base model an adapter belongs on: ``base_model`` when given, else the one its
    ``embedrag.json`` (``saved``, an EmbeddingConfig or None) records, else peft's record."""
    base = base_model or (saved.base_model if saved and saved.base_model else None) or adapter_config.get(
        "base_model_name_or_path")
    if not base:
        raise ModelNotFoundError(f"{folder}: adapter does not record its base model")
    return str(base)


def adapter_quantization_bits(saved: Any) -> int | None:
    """The bits a QLoRA adapter's base was quantised to in training; None for LoRA."""
    finetune = (saved.extra.get("finetune") if saved else None) or {}
    return finetune.get("quantization_bits") if finetune.get("type") == "qlora" else None


def quantization_config(bits: int, device_type: str):
    """The bitsandbytes config for QLoRA: NF4 with double quantisation, or int8."""
    import torch
    from transformers import BitsAndBytesConfig

    if bits == 4:
        compute = torch.bfloat16 if device_type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute)
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ConfigError(f"--quantization-bits must be 4 or 8, got {bits}")


def quantized_model_kwargs(bits: int, device: str) -> dict[str, Any]:
    """``Encoder.load(model_kwargs=...)`` for a base quantised to ``bits`` on ``device``."""
    import torch

    return {"quantization_config": quantization_config(bits, torch.device(device).type),
            "device_map": {"": device}}


def quiet_bitsandbytes() -> None:
    # Its CPU backend warns at import about an optional hub kernel it cannot fetch offline.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def avoid_cpu_4bit_inplace_bug(model: torch.nn.Module) -> None:
    """bitsandbytes 0.49/0.50 on AVX-512-bf16 CPUs: one eval-mode forward of a 4-bit
    layer rewrites its packed weight in place, and the next training step then fails
    ("a view of a leaf Variable ... in-place"). Turning that fast path off avoids it."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def release_checkpoint_mapping(model: torch.nn.Module) -> None:
    """Copy the tensors a quantised CPU model still shares with its memory-mapped
    checkpoint. The few unquantised weights (embeddings, norms) otherwise keep the whole
    full-precision file mapped and resident, which costs more than 4-bit saves."""
    import gc

    for module in model.modules():
        tensors = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        for _, tensor in tensors:
            if tensor.is_floating_point():
                tensor.data = tensor.data.clone()
    gc.collect()


def settle_quantized_model(model: torch.nn.Module) -> None:
    """What a freshly loaded quantised base needs before use: the bitsandbytes CPU
    workaround, and on a CPU its own copy of the weights the checkpoint still maps."""
    avoid_cpu_4bit_inplace_bug(model)
    if model.device.type == "cpu":
        release_checkpoint_mapping(model)


def attach_adapter(model: torch.nn.Module, folder: str | os.PathLike, base: str, *,
                   quiet: type[Warning] = FutureWarning) -> torch.nn.Module:
    """The saved adapter in ``folder`` on ``model`` (its base), unmerged, in eval mode;
    warnings of class ``quiet`` while loading are dropped. The one place that calls
    ``PeftModel.from_pretrained`` (loading, merging, ``--init-from``)."""
    quiet_bitsandbytes()
    import warnings

    from peft import PeftModel

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", quiet)
            adapted = PeftModel.from_pretrained(model, os.fspath(folder))
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"adapter {folder} does not fit base {base}: {first}") from exc
    adapted.eval()
    return adapted


def merge_adapter(model: torch.nn.Module, folder: str | os.PathLike, base: str, *,
                  quiet: type[Warning] = FutureWarning) -> torch.nn.Module:
    """``model`` with the adapter in ``folder`` folded into its weights (no peft wrapper)."""
    # merge_and_unload returns the merged model; the wrapper must not be kept (peft#2032).
    return attach_adapter(model, folder, base, quiet=quiet).merge_and_unload()
