"""Corpus embeddings cached on disk, keyed by the model's fingerprint (and the precision
or exported backend its vectors were made with) and the corpus' hash: eval, mine and the
answer evaluation share one cache, so a corpus is embedded once per model.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from embedrag.engine.encoding.fingerprint import model_fingerprint

if TYPE_CHECKING:
    import numpy as np

    from embedrag.engine.encoding.encoder import Encoder

logger = logging.getLogger(__name__)


def cache_root() -> Path:
    """embedrag's caches: ``$EMBEDRAG_CACHE_DIR``, else ``$XDG_CACHE_HOME/embedrag`` (``~/.cache/embedrag``)."""
    return Path(os.environ.get("EMBEDRAG_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "embedrag"))


def default_cache_dir() -> Path:
    return cache_root() / "embeddings"


class EmbeddingCache:
    """Corpus embeddings on disk, one ``.npy`` per (model, corpus)."""

    def __init__(self, folder: Path | None):
        self.folder = folder

    def _path(self, model_fp: str, corpus_fp: str) -> Path:
        assert self.folder is not None
        return self.folder / f"{model_fp[:24]}-{corpus_fp[:24]}.npy"

    def load(self, model_fp: str, corpus_fp: str, rows: int) -> np.ndarray | None:
        import numpy as np

        if self.folder is None:
            return None
        path = self._path(model_fp, corpus_fp)
        if not path.is_file():
            return None
        try:
            vectors = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        return vectors if vectors.shape[0] == rows else None

    def store(self, model_fp: str, corpus_fp: str, vectors: np.ndarray) -> None:
        import numpy as np

        if self.folder is None:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            handle, tmp = tempfile.mkstemp(dir=self.folder, suffix=".npy.tmp")
            with os.fdopen(handle, "wb") as out:
                np.save(out, vectors, allow_pickle=False)
            os.replace(tmp, self._path(model_fp, corpus_fp))
        except OSError as exc:  # a cache that cannot be written only costs time
            logger.warning("could not write the embedding cache in %s: %s", self.folder, exc)


def cache_fingerprint(model_fp: str, precision: str) -> str:
    """The embedding-cache key of a model's vectors in ``precision``: cached vectors are only
    reused at the precision they were made in (fp32 keeps the key it always had, so existing
    caches stay valid)."""
    return model_fp if precision == "fp32" else hashlib.sha256(f"{model_fp}:{precision}".encode()).hexdigest()


def vectors_cache_key(encoder: Encoder, precision: str, model_fp: str | None = None) -> str:
    """The embedding-cache key of ``encoder``'s vectors in ``precision`` (resolved): an
    exported backend's are cached apart from torch's (close, not equal)."""
    model_fp = model_fp or model_fingerprint(encoder)
    if getattr(encoder, "exported", False):  # encoders of other kinds (tests, users) are torch's
        precision = f"{encoder.backend}:{encoder.vector_precision(precision)}"
    return cache_fingerprint(model_fp, precision)
