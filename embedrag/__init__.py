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

from embedrag._version import __version__

_EXPORTS = {
    "Encoder": "embedrag.engine.encoding.encoder",
    "EmbeddingConfig": "embedrag.engine.encoding.encoder",
    "resolve_model": "embedrag.engine.encoding.models",
    "ResolvedModel": "embedrag.engine.encoding.models",
    "Example": "embedrag.engine.data.examples",
    "read_examples": "embedrag.engine.data.examples",
    "load_examples": "embedrag.engine.data.examples",
    "validate_files": "embedrag.engine.data.examples",
    "TrainConfig": "embedrag.engine.training.train_config",
    "train": "embedrag.engine.training.train",
    "TrainResult": "embedrag.engine.training.train",
    "TrainCallback": "embedrag.engine.training.train",
    "InfoNCELoss": "embedrag.engine.training.loss",
    "merge": "embedrag.engine.training.merge",
    "mine": "embedrag.engine.mining.mine",
    "MineConfig": "embedrag.engine.mining.mine",
    "MineReport": "embedrag.engine.mining.mine",
    "only_failing": "embedrag.engine.mining.mine",
    "generate": "embedrag.engine.llm.generate",
    "GenerateConfig": "embedrag.engine.llm.generate",
    "GenerateReport": "embedrag.engine.llm.generate",
    "make_query_writer": "embedrag.engine.llm.query_writers",
    "MarginRankingLoss": "embedrag.engine.training.loss",
    "index": "embedrag.engine.retrieval.store",
    "build_index": "embedrag.engine.retrieval.store",
    "Retriever": "embedrag.engine.retrieval.store",
    "RAG": "embedrag.engine.llm.rag",
    "read_documents": "embedrag.engine.data.documents",
    "evaluate": "embedrag.engine.evaluation.evaluate",
    "EvaluationReport": "embedrag.engine.evaluation.evaluate",
    "evaluate_answers": "embedrag.engine.llm.answer_eval",
    "AnswerReport": "embedrag.engine.llm.answer_eval",
    "load_answer_set": "embedrag.engine.data.answer_sets",
    "make_captioner": "embedrag.engine.llm.captions",
    "ServeConfig": "embedrag.engine.serve",
    "load_beir_testset": "embedrag.engine.data.testsets",
    "load_jsonl_testset": "embedrag.engine.data.testsets",
    "MergeResult": "embedrag.engine.training.merge",
    "export": "embedrag.engine.tools.export",
    "ExportConfig": "embedrag.engine.tools.export",
    "ExportResult": "embedrag.engine.tools.export",
    "EmbedragError": "embedrag.engine.core.errors",
    "DataError": "embedrag.engine.core.errors",
    "ModelNotFoundError": "embedrag.engine.core.errors",
    "ConfigError": "embedrag.engine.core.errors",
    "write_json": "embedrag.engine.core.atomic",
    "JsonlFields": "embedrag.engine.data.documents",
    "read_beir_corpus": "embedrag.engine.data.testsets",
    "DEFAULT_MODEL": "embedrag.engine.encoding.models",
    "token_length_report": "embedrag.engine.encoding.validate",
    "ModelSpec": "embedrag.engine.evaluation.evaluate",
    "default_cache_dir": "embedrag.engine.encoding.cache",
    "evaluate_table": "embedrag.engine.evaluation.evaluate",
    "plot_report": "embedrag.engine.evaluation.evaluate",
    "check_ks": "embedrag.engine.evaluation.metrics",
    "DEFAULT_RESAMPLES": "embedrag.engine.evaluation.significance",
    "DEFAULT_SEED": "embedrag.engine.evaluation.significance",
    "format_pvalue": "embedrag.engine.evaluation.significance",
    "make_scorers": "embedrag.engine.llm.answer_eval",
    "best_sentence": "embedrag.engine.llm.rag",
    "make_generator": "embedrag.engine.llm.rag",
    "parse_range": "embedrag.engine.mining.mine",
    "BatchingConfig": "embedrag.engine.serve",
    "Limits": "embedrag.engine.serve",
    "serve": "embedrag.engine.serve",
    "DEMO_EPOCHS": "embedrag.engine.tools.demo",
    "METRICS": "embedrag.engine.tools.demo",
    "run_demo": "embedrag.engine.tools.demo",
    "diagnose": "embedrag.engine.tools.doctor",
    "is_main_process": "embedrag.engine.training.launch",
    "relaunch": "embedrag.engine.training.launch",
    "release_process_group": "embedrag.engine.training.launch",
    "dry_run": "embedrag.engine.training.train",
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
    from embedrag.engine.core.atomic import write_json
    from embedrag.engine.core.errors import (
        ConfigError,
        DataError,
        EmbedragError,
        ModelNotFoundError,
    )
    from embedrag.engine.data.answer_sets import load_answer_set
    from embedrag.engine.data.documents import JsonlFields, read_documents
    from embedrag.engine.data.examples import Example, load_examples, read_examples, validate_files
    from embedrag.engine.data.testsets import (
        load_beir_testset,
        load_jsonl_testset,
        read_beir_corpus,
    )
    from embedrag.engine.encoding.cache import default_cache_dir
    from embedrag.engine.encoding.encoder import EmbeddingConfig, Encoder
    from embedrag.engine.encoding.models import DEFAULT_MODEL, ResolvedModel, resolve_model
    from embedrag.engine.encoding.validate import token_length_report
    from embedrag.engine.evaluation.evaluate import (
        EvaluationReport,
        ModelSpec,
        evaluate,
        evaluate_table,
        plot_report,
    )
    from embedrag.engine.evaluation.metrics import check_ks
    from embedrag.engine.evaluation.significance import (
        DEFAULT_RESAMPLES,
        DEFAULT_SEED,
        format_pvalue,
    )
    from embedrag.engine.llm.answer_eval import AnswerReport, evaluate_answers, make_scorers
    from embedrag.engine.llm.captions import make_captioner
    from embedrag.engine.llm.generate import GenerateConfig, GenerateReport, generate
    from embedrag.engine.llm.query_writers import make_query_writer
    from embedrag.engine.llm.rag import RAG, best_sentence, make_generator
    from embedrag.engine.mining.mine import MineConfig, MineReport, mine, only_failing, parse_range
    from embedrag.engine.retrieval.store import Retriever, build_index, index
    from embedrag.engine.serve import BatchingConfig, Limits, ServeConfig, serve
    from embedrag.engine.tools.demo import DEMO_EPOCHS, METRICS, run_demo
    from embedrag.engine.tools.doctor import diagnose
    from embedrag.engine.tools.export import ExportConfig, ExportResult, export
    from embedrag.engine.training.launch import is_main_process, relaunch, release_process_group
    from embedrag.engine.training.loss import InfoNCELoss, MarginRankingLoss
    from embedrag.engine.training.merge import MergeResult, merge
    from embedrag.engine.training.train import TrainCallback, TrainResult, dry_run, train
    from embedrag.engine.training.train_config import TrainConfig
