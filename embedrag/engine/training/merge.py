"""Folding a LoRA/QLoRA adapter into its base and saving a standalone model.

A QLoRA adapter never merges into the quantised base. By default it merges into the
*dequantized* base, the very weights it was trained against, so the merged model is
the trained model; ``qlora_base="original"`` merges into the full-precision base
instead. The result carries sentence-transformers files and ``embedrag.json`` with the
training's pooling, normalisation and instructions, and no adapter files.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedrag.engine.core.errors import ConfigError, ModelNotFoundError
from embedrag.engine.encoding.models import ADAPTER_CONFIG

if TYPE_CHECKING:
    from embedrag.engine.encoding.encoder import Encoder

logger = logging.getLogger(__name__)

# The original script's spellings; any spelling of engine.precision is accepted.
PRECISIONS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
QLORA_BASES = ("dequantized", "original")
PROBE_TEXTS = [
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "How do vaccines train the immune system?",
    "台北最好吃的牛肉麵在哪裡？",
    "深度学习模型需要大量的训练数据。",
    "x",
    "A much longer passage that goes on about retrieval, embeddings and evaluation " * 6,
]


class VerificationError(ConfigError):
    """The merged model does not reproduce the adapter model."""


@dataclass
class MergeResult:
    """Where the merged model went and how faithfully it reproduces the adapter model."""

    output_path: Path
    base_model: str
    finetune_type: str
    qlora_base: str | None
    precision: str
    max_abs_diff: float | None = None
    min_cosine: float | None = None
    probes: int = 0
    verified: bool | None = None
    notes: list[str] = field(default_factory=list)


def adapter_folder(path: str | os.PathLike) -> Path:
    """The folder of an adapter given as the folder or its adapter_model.safetensors."""
    path = Path(path)
    if path.is_file():
        path = path.parent
    if not path.exists():
        raise ModelNotFoundError(f"adapter {path} does not exist")
    if not (path / ADAPTER_CONFIG).is_file():
        raise ModelNotFoundError(f"{path} is not a LoRA adapter (no adapter_config.json)")
    return path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not overwrite and (output.is_file() or any(output.iterdir())):
        raise ConfigError(f"output path {output} exists and is not empty (pass --overwrite)")


def _check_compatible(adapter: Path, base: str, adapter_settings) -> None:
    """Same architecture and hidden size as the model the adapter was trained on."""
    from transformers import AutoConfig

    from embedrag.engine.encoding.models import resolve_model

    base_config = AutoConfig.from_pretrained(resolve_model(base).path)
    recorded_dim = adapter_settings.dimension if adapter_settings else None
    hidden = getattr(base_config, "hidden_size", None)
    if recorded_dim and hidden and recorded_dim != hidden:
        raise ConfigError(f"adapter {adapter} was trained on a model with hidden size {recorded_dim}, "
                          f"base {base} has {hidden}")
    recorded_arch = adapter_settings.architecture if adapter_settings else None
    from embedrag.engine.encoding.encoder import is_decoder_config

    arch = "decoder" if is_decoder_config(base_config) else "encoder"
    if recorded_arch and recorded_arch != arch:
        raise ConfigError(f"adapter {adapter} was trained on a model of type {recorded_arch}; "
                          f"base {base} is of type {arch}")


def _load_base(base: str, finetune: dict[str, Any], qlora_base: str, device: str) -> Encoder:
    from embedrag.engine.encoding.encoder import Encoder, load_quantized_encoder

    if finetune.get("type") == "qlora" and qlora_base == "dequantized":
        encoder = load_quantized_encoder(base, finetune.get("quantization_bits") or 4, device=device)
        import torch

        from embedrag.engine.encoding.encoder import quiet_transformers

        with quiet_transformers():
            encoder.model = encoder.model.dequantize(dtype=torch.float32)
        for attr in ("quantization_config", "_pre_quantization_dtype"):
            if hasattr(encoder.model.config, attr):
                delattr(encoder.model.config, attr)
        encoder.model.is_quantized = False
        encoder.model.hf_quantizer = None
        return encoder
    return Encoder.load(base, device=device)


def _apply_adapter(model, adapter: Path, base: str):
    from embedrag.engine.encoding.adapter_loading import merge_adapter

    return merge_adapter(model, adapter, base, quiet=Warning)


def _probe_texts(settings) -> list[str]:
    """The fixed probes plus a few lines of the training data when it is still there."""
    texts = list(PROBE_TEXTS)
    finetune = (settings.extra.get("finetune") if settings else None) or {}
    for spec in finetune.get("train_datasets") or []:
        path = Path(str(spec).rsplit(":", 1)[0]) if not Path(spec).exists() else Path(spec)
        if not path.is_file():
            continue
        from embedrag.engine.core.errors import DataError
        from embedrag.engine.data.examples import read_examples

        try:
            for number, example in enumerate(read_examples(path)):
                texts += [example.query, example.pos[0]]
                if number >= 7:
                    break
        except DataError:
            pass
        break
    return texts


def _model_card(settings, adapter: Path, base: str, result: MergeResult) -> str:
    training = _read_json(adapter / "training_config.json")
    finetune = (settings.extra.get("finetune") if settings else None) or {}
    metrics = (settings.extra.get("validation_metrics") if settings else None) or {}
    lines = [
        "---", "library_name: sentence-transformers", "tags: [embedrag, sentence-similarity, feature-extraction]",
        f"base_model: {base}", "---", "",
        f"# {Path(result.output_path).name}", "",
        f"A retrieval embedding model fine-tuned from `{base}` with [embedrag]"
        "(https://github.com/embedrag/embedrag) and merged into a standalone model.", "",
        "| | |", "|---|---|",
        f"| base model | `{base}` |",
        f"| fine-tune type | {finetune.get('type', 'lora')}"
        + (f" ({finetune.get('quantization_bits')}-bit, merged into the {result.qlora_base} base)"
           if result.qlora_base else "") + " |",
        f"| precision on disk | {result.precision} |",
    ]
    if settings:
        lines += [f"| pooling / normalize | {settings.pooling} / {settings.normalize} |",
                  f"| max length (query / passage) | {settings.query_max_length} / {settings.passage_max_length} |"]
        if settings.query_instruction or settings.passage_instruction:
            lines.append(f"| instructions | query `{settings.query_instruction!r}`, passage "
                         f"`{settings.passage_instruction!r}` |")
    for spec in training.get("train_datasets", []):
        path = Path(spec)
        size = f"{path.stat().st_size:,} bytes" if path.is_file() else "not found at merge time"
        lines.append(f"| training data | `{spec}` ({size}) |")
    for key in ("lr", "epochs", "max_steps", "batch_size", "neg_nums", "temperature", "lora_r", "lora_alpha"):
        if training.get(key) is not None:
            lines.append(f"| {key} | {training[key]} |")
    for key, value in metrics.items():
        lines.append(f"| validation {key} | {value:.4f} |")
    if result.min_cosine is not None:
        lines.append(f"| merge check | {result.probes} probes, max abs diff {result.max_abs_diff:.2e}, "
                     f"min cosine {result.min_cosine:.6f} vs adapter model |")
    lines += ["", "## Use", "", "```python", "from sentence_transformers import SentenceTransformer", "",
              f'model = SentenceTransformer("{Path(result.output_path).name}")',
              'queries = model.encode(["..."], prompt_name="query")' if settings and settings.query_instruction
              else 'vectors = model.encode(["..."])', "```", ""]
    return "\n".join(lines)


def merge(
    adapter_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    base_model: str | None = None,
    training_precision: str = "fp32",
    qlora_base: str = "dequantized",
    verify: bool = True,
    overwrite: bool = False,
    device: str = "cpu",
) -> MergeResult:
    """Merge the adapter at ``adapter_path`` into its base and write a standalone model."""
    from embedrag.engine.encoding.encoder import Encoder, read_embedding_config
    from embedrag.engine.encoding.precision import canonical_precision

    # Recorded and compared in the original's spelling (float32, bfloat16, float16).
    training_precision = {v: k for k, v in PRECISIONS.items()}[
        canonical_precision(training_precision, "--training-precision", allow_auto=False)]
    if qlora_base not in QLORA_BASES:
        raise ConfigError(f"--qlora-base must be one of {', '.join(QLORA_BASES)}, got {qlora_base!r}")
    output = Path(output_path)
    _check_output(output, overwrite)
    adapter = adapter_folder(adapter_path)
    settings = read_embedding_config(adapter)
    finetune = (settings.extra.get("finetune") if settings else None) or {}
    recorded = (settings.base_model if settings else None) or _read_json(
        adapter / ADAPTER_CONFIG).get("base_model_name_or_path")
    base = base_model or recorded
    if not base:
        raise ConfigError(f"adapter {adapter} does not record its base model: pass --base-model-path")
    _check_compatible(adapter, base, settings)
    is_qlora = finetune.get("type") == "qlora"
    result = MergeResult(output_path=output, base_model=base, finetune_type=finetune.get("type", "lora"),
                         qlora_base=qlora_base if is_qlora else None, precision=training_precision)

    if is_qlora and qlora_base == "original" and finetune.get("qlora_init") == "loftq":
        # LoftQ's start is fitted to the NF4 error of the 4-bit base; on the original
        # weights that correction is applied to an error that is not there.
        result.notes.append("this adapter started with LoftQ (fitted to the 4-bit base's error): "
                            "merged into the original base it is not the trained model; "
                            "--qlora-base dequantized reproduces it")
    base_encoder = _load_base(base, finetune, qlora_base, device)
    merged = _apply_adapter(base_encoder.model, adapter, base)
    import torch

    merged = merged.to({"float32": torch.float32, "bfloat16": torch.bfloat16,
                        "float16": torch.float16}[training_precision])
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter) if (adapter / "tokenizer_config.json").is_file() \
        else base_encoder.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    config = settings or base_encoder.config
    config.base_model = base
    config.extra = {**config.extra, "merged_from": str(adapter), "qlora_base": result.qlora_base,
                    "precision": training_precision}
    encoder = Encoder(merged, tokenizer, config, name=str(output), device=device)

    def write(staging: Path) -> None:
        encoder.write_files(staging)
        if verify:
            _verify(result, adapter, base, staging, settings, device)
        (staging / "README.md").write_text(_model_card(settings, adapter, base, result), encoding="utf-8")

    from embedrag.engine.core.atomic import write_folder_atomically

    write_folder_atomically(output, write)
    return result


def _verify(result: MergeResult, adapter: Path, base: str, merged_folder: Path, settings,
            device: str) -> None:
    """Embed probes with base+adapter (quantised as trained) and with the merged folder."""
    import numpy as np

    from embedrag.engine.encoding.encoder import Encoder, load_adapter_encoder

    texts = _probe_texts(settings)
    reference = load_adapter_encoder(adapter, device=device, base_model=base)
    merged = Encoder.load(merged_folder, device=device)
    a = np.concatenate([reference.encode(texts, "query"), reference.encode(texts, "passage")])
    b = np.concatenate([merged.encode(texts, "query"), merged.encode(texts, "passage")])
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    result.max_abs_diff = float(np.abs(a - b).max())
    result.min_cosine = float(cosine.min())
    result.probes = len(a)
    floor = 0.999 if result.precision == "float32" else 0.99
    if result.qlora_base == "original":
        # By design not the trained model: report the drift, do not fail on it.
        result.verified = None
        result.notes.append(f"merged into the original base: min cosine {result.min_cosine:.4f} "
                            "against the 4-bit+adapter model it was trained as")
        return
    result.verified = result.min_cosine >= floor
    if not result.verified:
        raise VerificationError(f"merged model disagrees with the adapter model: min cosine "
                                f"{result.min_cosine:.5f} < {floor} over {result.probes} probes")
