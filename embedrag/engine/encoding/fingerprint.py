"""Fingerprints of an encoder: what its vectors depend on, hashed.

Any change that alters the vectors (weights, embedding settings, an adapter's base)
changes the fingerprint, so an index table or an embedding cache made with one model is
never read as another's. The evaluation cache (``evaluate``), index tables (``store``)
and mining (``mine``) all key on it; it sits with encoding so none of them has to import
another for it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from embedrag.engine.encoding.models import ADAPTER_CONFIG

if TYPE_CHECKING:
    from embedrag.engine.encoding.encoder import Encoder


def model_fingerprint(encoder: Encoder) -> str:
    """Weights and embedding settings: any change that alters vectors changes it.

    A folder written by ``embedrag export`` carries the fingerprint of the model it was
    exported from: its PyTorch weights and unquantized exports give that model's vectors
    (to the export check's floor), a quantized file its own (see ``backends``)."""
    from embedrag.engine.encoding.backends import parse_backend, vector_fingerprint

    folder = Path(encoder.path) if encoder.path else None
    settings = embedding_settings(encoder)
    if folder is not None and folder.is_dir():
        exported = vector_fingerprint(folder, *parse_backend(getattr(encoder, "backend", "torch")), settings)
        if exported is not None:
            return exported
    digest = hashlib.sha256()
    digest.update(json.dumps(settings, sort_keys=True).encode())
    if folder is not None and folder.is_dir():
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix in (".safetensors", ".bin", ".json", ".model", ".txt"):
                digest.update(_file_digest(path).encode())
    else:
        digest.update(encoder.name.encode())
    base = encoder.config.extra.get("finetune", {}).get("base_model") if encoder.config.extra else None
    if base and (folder is not None and (folder / ADAPTER_CONFIG).is_file()):
        digest.update(str(base).encode())
    return digest.hexdigest()


def embedding_settings(encoder: Encoder) -> dict:
    """The settings of ``encoder.config`` that shape its vectors."""
    return {k: v for k, v in asdict(encoder.config).items() if k not in ("extra", "base_model")}


def _file_digest(path: Path) -> str:
    """Name, size and a hash of the head and tail: cheap for multi-GB weights, and any
    retraining changes the bytes everywhere."""
    size = path.stat().st_size
    digest = hashlib.sha256(f"{path.name}:{size}".encode())
    with path.open("rb") as handle:
        digest.update(handle.read(1 << 20))
        if size > 2 << 20:
            handle.seek(-(1 << 20), os.SEEK_END)
            digest.update(handle.read(1 << 20))
    return digest.hexdigest()
