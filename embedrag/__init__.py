"""embedrag: fine-tune embedding models for retrieval and put them to work.

The Python API is the engine's public names, imported lazily so that ``import embedrag``
(and ``embedrag --help``) stay fast::

    from embedrag import Encoder
    enc = Encoder.load("sentence-transformers/all-MiniLM-L6-v2")
    vectors = enc.encode(["a passage"], kind="passage")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0.dev0"

_EXPORTS = {
    "Encoder": "embedrag.engine.encoder",
    "EmbeddingConfig": "embedrag.engine.encoder",
    "resolve_model": "embedrag.engine.models",
    "ResolvedModel": "embedrag.engine.models",
    "Example": "embedrag.engine.data",
    "read_examples": "embedrag.engine.data",
    "load_examples": "embedrag.engine.data",
    "validate_files": "embedrag.engine.data",
    "TrainConfig": "embedrag.engine.train_config",
    "train": "embedrag.engine.train",
    "TrainResult": "embedrag.engine.train",
    "TrainCallback": "embedrag.engine.train",
    "InfoNCELoss": "embedrag.engine.loss",
    "merge": "embedrag.engine.merge",
    "mine": "embedrag.engine.mine",
    "MineConfig": "embedrag.engine.mine",
    "MineReport": "embedrag.engine.mine",
    "only_failing": "embedrag.engine.mine",
    "generate": "embedrag.engine.generate",
    "GenerateConfig": "embedrag.engine.generate",
    "GenerateReport": "embedrag.engine.generate",
    "make_query_writer": "embedrag.engine.query_writers",
    "MarginRankingLoss": "embedrag.engine.loss",
    "index": "embedrag.engine.store",
    "build_index": "embedrag.engine.store",
    "Retriever": "embedrag.engine.store",
    "RAG": "embedrag.engine.rag",
    "read_documents": "embedrag.engine.documents",
    "evaluate": "embedrag.engine.evaluate",
    "EvaluationReport": "embedrag.engine.evaluate",
    "evaluate_answers": "embedrag.engine.answer_eval",
    "AnswerReport": "embedrag.engine.answer_eval",
    "load_answer_set": "embedrag.engine.answer_sets",
    "make_captioner": "embedrag.engine.captions",
    "ServeConfig": "embedrag.engine.serve",
    "load_beir_testset": "embedrag.engine.testsets",
    "load_jsonl_testset": "embedrag.engine.testsets",
    "MergeResult": "embedrag.engine.merge",
    "export": "embedrag.engine.export",
    "ExportConfig": "embedrag.engine.export",
    "ExportResult": "embedrag.engine.export",
    "EmbedragError": "embedrag.engine.errors",
    "DataError": "embedrag.engine.errors",
    "ModelNotFoundError": "embedrag.engine.errors",
    "ConfigError": "embedrag.engine.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'embedrag' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover
    from embedrag.engine.answer_eval import AnswerReport, evaluate_answers
    from embedrag.engine.answer_sets import load_answer_set
    from embedrag.engine.captions import make_captioner
    from embedrag.engine.data import Example, load_examples, read_examples, validate_files
    from embedrag.engine.documents import read_documents
    from embedrag.engine.encoder import EmbeddingConfig, Encoder
    from embedrag.engine.errors import ConfigError, DataError, EmbedragError, ModelNotFoundError
    from embedrag.engine.evaluate import EvaluationReport, evaluate
    from embedrag.engine.export import ExportConfig, ExportResult, export
    from embedrag.engine.generate import GenerateConfig, GenerateReport, generate
    from embedrag.engine.loss import InfoNCELoss, MarginRankingLoss
    from embedrag.engine.merge import MergeResult, merge
    from embedrag.engine.mine import MineConfig, MineReport, mine, only_failing
    from embedrag.engine.models import ResolvedModel, resolve_model
    from embedrag.engine.query_writers import make_query_writer
    from embedrag.engine.rag import RAG
    from embedrag.engine.serve import ServeConfig
    from embedrag.engine.store import Retriever, build_index, index
    from embedrag.engine.testsets import load_beir_testset, load_jsonl_testset
    from embedrag.engine.train import TrainCallback, TrainResult, train
    from embedrag.engine.train_config import TrainConfig
