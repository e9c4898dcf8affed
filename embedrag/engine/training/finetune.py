"""Preparing a model for fine-tuning (full, LoRA, QLoRA).

QLoRA loads the base through bitsandbytes (4-bit NF4 with double quantisation, or
8-bit), runs ``prepare_model_for_kbit_training`` and adds LoRA; LoRA adds adapters to a
full-precision base; full trains every weight. Loading what a run saves (adapter
folders, quantised bases) belongs to the encoding side: :mod:`embedrag.engine.encoding.adapter_loading`
and :func:`embedrag.engine.encoding.encoder.load_adapter_encoder`, re-exported here.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedrag.engine.core.errors import ConfigError, ModelNotFoundError

# Loading what fine-tuning saves lives on the encoding side (adapter_loading, encoder);
# the names stay importable from here.
from embedrag.engine.encoding.adapter_loading import (  # noqa: F401 - re-exported
    ADAPTER_CONFIG,
    adapter_base,
    avoid_cpu_4bit_inplace_bug,
    quantization_config,
    quiet_bitsandbytes,
    read_adapter_config,
    release_checkpoint_mapping,
)
from embedrag.engine.encoding.encoder import (  # noqa: F401 - re-exported
    Encoder,
    load_adapter_encoder,
    load_quantized_encoder,
    read_embedding_config,
)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

FINETUNE_TYPES = ("lora", "qlora", "full")
# "auto" picks one of them by model size and memory: see choose_finetune_type.
FINETUNE_CHOICES = ("auto", *FINETUNE_TYPES)
# Full fine-tuning up to this many parameters (BERT-large and bge-large sizes), when its
# ~16 bytes a parameter (weights, gradients, two AdamW moments) fit in half the memory.
FULL_MAX_PARAMETERS = 400_000_000
# How QLoRA's adapter starts: "loftq" compensates the 4-bit quantisation error (the adapter
# starts as the best rank-r fit of original - dequantized weights), "gaussian" is peft's
# default (B = 0: the run starts from the quantised base as it is).
QLORA_INITS = ("loftq", "gaussian")


@dataclass
class LoraSettings:
    """LoRA hyper-parameters. ``target_modules`` "auto" means every linear layer of the
    transformer blocks (peft's "all-linear"), which adapts attention and MLP alike."""

    r: int = 8
    alpha: int = 32
    dropout: float = 0.1
    target_modules: str | list[str] = "auto"

    def peft_target_modules(self) -> str | list[str]:
        if self.target_modules in ("auto", "all-linear", ["auto"], ["all-linear"]):
            return "all-linear"
        if isinstance(self.target_modules, str):
            return [m.strip() for m in self.target_modules.split(",") if m.strip()]
        return list(self.target_modules)


def load_training_encoder(model: str, finetune_type: str, *, quantization_bits: int | None,
                          device: str, **encoder_kwargs) -> Encoder:
    """The Encoder to train: quantised for qlora, full precision otherwise."""
    if finetune_type not in FINETUNE_TYPES:
        raise ConfigError(f"--finetune-type must be one of {', '.join(FINETUNE_TYPES)}, got {finetune_type!r}")
    if finetune_type == "qlora":
        return load_quantized_encoder(model, quantization_bits or 4, device=device, **encoder_kwargs)
    return Encoder.load(model, device=device, model_kwargs={}, **encoder_kwargs)


def set_attention_dropout(model: torch.nn.Module, p: float) -> int:
    """Set the dropout on attention probabilities of every self-attention layer to ``p``;
    returns how many layers were set (0: an architecture this does not recognise, left
    as it is).

    Fine-tuning turns it off by default: while it is on, PyTorch's fused attention
    kernel cannot run on CPU, so every layer materialises its (batch, heads, length,
    length) attention matrix and draws a Bernoulli mask for it; off, a training step of
    all-MiniLM-L6-v2 on 256-token passages is ~1.5x faster here. Hidden-state dropout
    stays. Transformers keeps the rate either as a float ``attention_dropout`` on the
    attention module (Llama, Qwen2, ModernBERT, GTE, NomicBERT) or as the ``dropout``
    module of a ``*SelfAttention`` (BERT, RoBERTa, XLM-R, MPNet, DistilBERT, ELECTRA)."""
    import torch

    changed = 0
    for module in model.modules():
        rate = getattr(module, "attention_dropout", None)
        if isinstance(rate, torch.nn.Dropout):  # remote-code models
            rate.p = p
        elif isinstance(rate, (int, float)) and not isinstance(rate, bool):
            module.attention_dropout = float(p)
        elif type(module).__name__.endswith("SelfAttention") and isinstance(
                getattr(module, "dropout", None), torch.nn.Dropout):
            module.dropout.p = p
        else:
            continue
        changed += 1
    return changed


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Checkpoint activations so that LoRA still trains: non-reentrant checkpoints and
    inputs that require grad (frozen embeddings would otherwise cut the graph)."""
    options = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()


def prepare_for_training(encoder: Encoder, finetune_type: str, lora: LoraSettings, *,
                         gradient_checkpointing: bool = False, qlora_init: str = "gaussian") -> torch.nn.Module:
    """Make ``encoder.model`` trainable as ``finetune_type`` asks; returns the model.
    ``qlora_init`` "loftq" starts a 4-bit QLoRA adapter at the quantisation error's
    low-rank fit (:func:`loftq_initialise`); the value used is left in
    ``encoder.config.extra["finetune"]["qlora_init"]`` when that record exists."""
    model = encoder.model
    if finetune_type == "full":
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        if gradient_checkpointing:
            enable_gradient_checkpointing(model)
        model.train()
        return model

    quiet_bitsandbytes()
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if finetune_type == "qlora":
        # peft would enable checkpointing through transformers' deprecated name; ours is the same.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=lora.peft_target_modules(), bias="none")
    import warnings

    try:
        with warnings.catch_warnings():
            # peft still calls transformers' deprecated is_gradient_checkpointing.
            warnings.simplefilter("ignore", FutureWarning)
            model = get_peft_model(model, peft_config)
    except ValueError as exc:
        raise ConfigError(f"LoRA target modules {lora.target_modules!r}: {exc}") from exc
    # peft records where the base came from; make that the resolvable name, not a cache path.
    model.peft_config["default"].base_model_name_or_path = encoder.config.base_model or encoder.name
    if finetune_type == "qlora":
        used = "gaussian"
        if qlora_init == "loftq" and encoder.path is not None:
            layers = loftq_initialise(model, Path(encoder.path))
            if layers:
                used = "loftq"
                logger.info("LoftQ: %d 4-bit layers start at their quantisation error's rank-%d fit", layers, lora.r)
            else:
                logger.warning("LoftQ: no 4-bit layer found in %s (8-bit, or no safetensors weights): "
                               "the adapter starts at zero", encoder.path)
        record = (encoder.config.extra or {}).get("finetune")
        if record is not None:
            record["qlora_init"] = used
    model.train()
    encoder.model = model
    return model


def _checkpoint_tensors(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it, for a model folder's weights."""
    from safetensors import safe_open

    located: dict[str, Path] = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        if path.name.startswith("adapter_"):
            continue
        with safe_open(str(path), framework="pt") as handle:
            located.update({name: path for name in handle.keys()})
    return located


def loftq_initialise(model: torch.nn.Module, source: Path) -> int:
    """LoftQ (Li et al., 2023), one alternation: set each 4-bit LoRA layer's adapter to the
    best rank-r approximation (truncated SVD) of ``W - dequantize(quantize(W))``, the
    error NF4 made on that layer, so base + adapter starts close to the full-precision
    model. The 4-bit base itself is the usual one, so ``merge`` into the dequantized base
    still reproduces the trained model exactly. ``source`` is the model folder the
    original weights are read from (safetensors), one tensor at a time. Returns the
    number of layers set; 0 when nothing could be matched (peft's default init stays)."""
    import bitsandbytes as bnb
    import torch
    from peft.tuners.lora import Linear4bit
    from safetensors import safe_open

    located = _checkpoint_tensors(source)
    changed = 0
    for name, module in model.named_modules():
        if not isinstance(module, Linear4bit) or "default" not in module.lora_A:
            continue
        # peft prefixes module names ("base_model.model."); checkpoints may prefix them
        # too ("bert.", "model."): match on the longest common dotted suffix.
        key = next((k for k in located if k.endswith(".weight") and (
            f".{k[:-len('.weight')]}".endswith(f".{_strip_peft(name)}")
            or f".{_strip_peft(name)}".endswith(f".{k[:-len('.weight')]}"))), None)
        if key is None:
            continue
        with safe_open(str(located[key]), framework="pt") as handle:
            original = handle.get_tensor(key).to(torch.float32)
        weight = module.base_layer.weight
        dequantized = bnb.functional.dequantize_4bit(weight.data, weight.quant_state).to(torch.float32)
        if original.shape != dequantized.shape:
            continue
        rank, scaling = module.r["default"], module.scaling["default"]
        u, sigma, vh = torch.linalg.svd((original.to(dequantized.device) - dequantized), full_matrices=False)
        root = torch.sqrt(sigma[:rank] / scaling)
        lora_a, lora_b = module.lora_A["default"].weight, module.lora_B["default"].weight
        with torch.no_grad():
            lora_a.copy_((root[:, None] * vh[:rank]).to(lora_a.dtype))
            lora_b.copy_((u[:, :rank] * root[None, :]).to(lora_b.dtype))
        changed += 1
    return changed


def _strip_peft(name: str) -> str:
    return name.removeprefix("base_model.model.")


def checkpoint_parameters(folder: str | os.PathLike) -> int:
    """Parameters stored in a model folder's safetensors files (read from their headers)."""
    from safetensors import safe_open

    total = 0
    for path in sorted(Path(folder).glob("*.safetensors")):
        if path.name.startswith("adapter_"):
            continue
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                shape = handle.get_slice(name).get_shape()
                count = 1
                for size in shape:
                    count *= size
                total += count
    return total


def device_memory_bytes(device: str) -> int:
    """Total memory of ``device``: a CUDA GPU's, else the machine's RAM."""
    import torch

    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(torch.device(device)).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 16 << 30


def choose_finetune_type(parameters: int, memory_bytes: int) -> tuple[str, str]:
    """``--finetune-type auto``: (type, why). Full fine-tuning where it fits, since it
    learns most (SciFact, all-MiniLM-L6-v2, 2 epochs: full 0.7055 nDCG@10, lora 0.6737,
    qlora 0.6716; benchmarks/RESULTS.md); LoRA for larger models; QLoRA when even the
    full-precision weights would crowd the memory."""
    millions = f"{parameters / 1e6:,.0f}M parameters"
    memory = f"{memory_bytes / 2**30:.0f} GiB"
    if parameters <= FULL_MAX_PARAMETERS and 16 * parameters <= memory_bytes / 2:
        return "full", f"{millions}: full fine-tuning fits in {memory}"
    if 4 * parameters <= memory_bytes / 2:
        return "lora", f"{millions}: too large for full fine-tuning here, LoRA on the full-precision base"
    return "qlora", f"{millions}: the full-precision weights crowd {memory}, QLoRA on a 4-bit base"


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count as their real number."""
    trainable = total = 0
    for parameter in model.parameters():
        count = parameter.numel()
        if parameter.__class__.__name__ == "Params4bit":
            count *= 2  # two 4-bit values per stored byte
        total += count
        if parameter.requires_grad:
            trainable += count
    return trainable, total


@dataclass
class InitSource:
    """Where a run starts: a model folder or hub id, or an earlier run's adapter on its base."""

    model: str
    adapter: Path | None = None
    adapter_config: dict[str, Any] | None = None

    def lora(self, dropout: float) -> LoraSettings:
        """The adapter's own rank, alpha and target modules: its weights only fit those."""
        assert self.adapter_config is not None
        targets = self.adapter_config.get("target_modules") or "auto"
        return LoraSettings(r=int(self.adapter_config["r"]), alpha=int(self.adapter_config["lora_alpha"]),
                            dropout=dropout, target_modules=targets if isinstance(targets, str) else sorted(targets))


def resolve_init(init_from: str | os.PathLike | None, model: str) -> InitSource:
    """``--init-from``: an adapter folder (a training ``final/``) continues that adapter on
    its recorded base; any other folder is a model to start from, like ``--model``."""
    if init_from is None:
        return InitSource(model)
    folder = Path(init_from)
    if not (folder / ADAPTER_CONFIG).is_file():
        return InitSource(str(folder))
    adapter_config = read_adapter_config(folder)
    base = adapter_base(folder, read_embedding_config(folder), adapter_config)
    return InitSource(base, folder, adapter_config)


def load_adapter_weights(model: torch.nn.Module, folder: Path) -> None:
    """Copy a saved adapter's LoRA weights into a peft model built with the same settings."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = folder / "adapter_model.safetensors"
    if not path.is_file():
        raise ModelNotFoundError(f"{folder}: no adapter_model.safetensors")
    try:
        result = set_peft_model_state_dict(model, load_file(str(path)))
    except RuntimeError as exc:
        raise ConfigError(f"{folder}: adapter does not fit this model ({str(exc).splitlines()[0]})") from exc
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ConfigError(f"{folder}: adapter does not fit this model ({len(unexpected)} unexpected weights, "
                          f"e.g. {unexpected[0]})")
