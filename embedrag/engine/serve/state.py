"""What a running server holds: loaded once at start, shared by every request."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedrag.engine.core.errors import ConfigError
from embedrag.engine.serve.config import ServeConfig

if TYPE_CHECKING:
    from embedrag.engine.encoding.encoder import Encoder
    from embedrag.engine.llm.rag import Generator
    from embedrag.engine.retrieval.store import Retriever
    from embedrag.engine.serve.batching import EmbeddingBatcher


@dataclass
class ServerState:
    config: ServeConfig
    encoder: Encoder
    model_name: str
    retriever: Retriever | None = None
    generator: Generator | None = None
    report: dict[str, Any] | None = None
    batcher: EmbeddingBatcher | None = None
    started: float = field(default_factory=time.time)
    # A local HF model generates for one request at a time; remote servers need no lock.
    generate_lock: threading.Lock = field(default_factory=threading.Lock)
    # Request checks count tokens with their own tokenizer: a fast tokenizer's truncation
    # setting is shared state, and the batcher's encoder sets it while it encodes.
    counting_tokenizer: Any = None
    counting_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.counting_tokenizer is None:
            import copy

            self.counting_tokenizer = copy.deepcopy(self.encoder.tokenizer)

    def start(self) -> None:
        from embedrag.engine.serve.batching import EmbeddingBatcher

        if self.batcher is None:
            self.batcher = EmbeddingBatcher(self.encoder, self.config.batching, precision=self.config.precision)

    def stop(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
            self.batcher = None


def load_state(config: ServeConfig) -> ServerState:
    """Check ``config``, open the table and load the model(s) once, before the server binds,
    so a bad path or a mismatched model is a one-line error rather than a failing server."""
    from embedrag.engine.llm.rag import make_generator

    config.check()
    report = _read_report(config.report) if config.report else None
    if config.db is not None:
        from embedrag.engine.retrieval.store import Retriever

        retriever = Retriever(config.db, config.table, model=config.model, device=config.device,
                              backend=config.backend)
        if config.memory_search:
            retriever.keep_in_memory()
        encoder = retriever.encoder
    else:
        from embedrag.engine.encoding.encoder import Encoder

        retriever, encoder = None, Encoder.load(config.model, device=config.device, backend=config.backend)
    generator = make_generator(config.llm, base_url=config.llm_base_url, model=config.llm_model,
                               max_new_tokens=config.max_new_tokens, device=config.device)
    return ServerState(config=config, encoder=encoder, model_name=config.model_name or served_name(encoder.name),
                       retriever=retriever, generator=generator, report=report)


def served_name(model: str) -> str:
    """The id clients send for a model: a hub id stays as it is, a folder is its name."""
    path = Path(model)
    return path.name if path.is_absolute() or model.startswith(".") else model


def _read_report(path: str) -> dict[str, Any]:
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the eval report {path}: {exc}") from None
    if not isinstance(report, dict) or not isinstance(report.get("models"), list):
        raise ConfigError(f"{path} is not an `embedrag eval` report (no \"models\" list)")
    return report
