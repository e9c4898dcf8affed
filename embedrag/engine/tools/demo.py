"""The whole loop on the bundled model and the SciFact slice, offline, in minutes.

Evaluate the base model -> fine-tune with validation -> merge the adapter -> index the
slice's corpus in LanceDB -> evaluate the merged model -> answer a sample question from
the index. Every step is the library call a user would make; the demo only chains them
and reports what each produced.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedrag.engine.core.errors import ConfigError, DataError
from embedrag.engine.encoding.models import DEFAULT_MODEL

DEMO_MODEL = DEFAULT_MODEL
DEMO_QUESTION = "What do mesenchymal stem cells differentiate into?"
METRICS = ("ndcg@10", "recall@10", "mrr@10", "hit@1", "hit@5")
DEMO_EPOCHS = 1
DEMO_TRAINING_PASSAGE_TOKENS = 128
# One epoch of the slice is 12 steps: at full fine-tuning's default lr (2e-5, set for
# hundreds of steps) they barely move the model. lora/qlora keep theirs (1e-4).
DEMO_FULL_LR = 5e-5
Stage = Callable[[str, str], None]


def default_data() -> Path | None:
    """The SciFact slice of a source checkout (datasets/scifact-slice next to the package)."""
    # The checkout's root holds the top package: one folder up per dotted part of this
    # module's name, so a move of this module cannot point it at the wrong folder again.
    root = Path(__file__).resolve().parents[len(__name__.split(".")) - 1]
    candidate = root / "datasets" / "scifact-slice"
    return candidate if (candidate / "corpus.jsonl").is_file() else None


@dataclass
class DemoResult:
    """Before/after metrics, the answer to the sample question, and every path written."""

    workdir: Path
    finetune_type: str
    before: dict[str, float]
    after: dict[str, float]
    answer: Any
    paths: dict[str, str]
    seconds: dict[str, float] = field(default_factory=dict)
    # metric -> tuned vs base on the test queries (significance.PairedComparison)
    comparisons: dict[str, Any] = field(default_factory=dict)
    verdict: dict[str, Any] | None = None  # the training run's own, on its validation split

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


def run_demo(
    workdir: str | os.PathLike = "embedrag-demo",
    *,
    finetune_type: str = "auto",
    data: str | os.PathLike | None = None,
    model: str = DEMO_MODEL,
    epochs: int = DEMO_EPOCHS,
    question: str = DEMO_QUESTION,
    precision: str = "auto",
    training_passage_tokens: int = DEMO_TRAINING_PASSAGE_TOKENS,
    lr: float | None = None,
    on_stage: Stage | None = None,
    train_callback: Any = None,
) -> DemoResult:
    """Run the loop in ``workdir`` (replacing an earlier demo there); passages are
    encoded in ``precision`` (auto: bf16 where the hardware has it natively). ``lr``
    None: :data:`DEMO_FULL_LR` for full (and auto) fine-tuning, the type's default else."""
    from embedrag.engine.data.testsets import load_beir_testset
    from embedrag.engine.evaluation.evaluate import EvaluationReport, evaluate, evaluate_table
    from embedrag.engine.evaluation.metrics import DEFAULT_KS
    from embedrag.engine.llm.rag import RAG
    from embedrag.engine.retrieval.store import Retriever
    from embedrag.engine.training.merge import merge
    from embedrag.engine.training.train import train

    folder = Path(data) if data else default_data()
    if folder is None:
        raise ConfigError("no demo data found: pass --data with a BEIR folder that also holds "
                          "train.jsonl and test.jsonl (as datasets/scifact-slice of the source tree)")
    for name in ("train.jsonl", "test.jsonl", "corpus.jsonl"):
        if not (folder / name).is_file():
            raise DataError([f"{folder}: demo data needs {name}"])
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    stage = on_stage or (lambda name, detail: None)
    seconds: dict[str, float] = {}

    def timed(name: str, detail: str, call):
        stage(name, detail)
        started = time.perf_counter()
        value = call()
        seconds[name] = round(time.perf_counter() - started, 1)
        return value

    test_set = load_beir_testset(folder, "test")
    base = timed("evaluate base", f"{model} on {test_set.describe()['queries']} test queries, "
                 f"{len(test_set.corpus)} passages",
                 lambda: evaluate(test_set, [f"base={model}"], cache_dir=work / "embedding-cache",
                                  precision=precision).models[0])
    run = work / "run"
    config = _train_config(folder, run, model, finetune_type, epochs, training_passage_tokens, lr)
    trained = timed("train", f"{finetune_type}, {epochs} epoch(s), validation on held-out training queries",
                    lambda: train(config, train_callback))
    final = trained.final_dir
    finetune_type = trained.summary["config"]["finetune_type"]
    merged = work / "merged"
    if finetune_type == "full":
        model_dir = final
    else:
        timed("merge", f"{final} -> {merged}", lambda: merge(final, merged, overwrite=True, verify=False))
        model_dir = merged
    db = work / "lancedb"
    timed("index", f"{folder / 'corpus.jsonl'} -> {db}::scifact, one row per passage",
          lambda: _index_passages(folder, test_set, model_dir, base.settings["passage_max_length"], db, precision))
    # The tuned model is scored from the table it just filled (the passages were embedded
    # once, as `evaluate` embeds them), then tested query by query against the base.
    tuned = timed("evaluate tuned", f"{db}::scifact",
                  lambda: evaluate_table(test_set, db, "scifact", name="tuned").models[0])
    report = EvaluationReport(test_set=test_set.describe(), ks=DEFAULT_KS, candidates="all",
                              models=[base, tuned], seconds=sum(seconds.values()))
    comparisons = {metric: report.comparison(tuned, metric) for metric in METRICS}
    answer = timed("ask", question, lambda: RAG(Retriever(db, "scifact"), top_k=3).ask(question))
    paths = {"training run": str(run), "final model": str(final), "merged model": str(model_dir),
             "LanceDB": f"{db} (table scifact)", "training report": str(run / "training_summary_report.json")}
    return DemoResult(workdir=work, finetune_type=finetune_type, before=base.metrics, after=tuned.metrics,
                      answer=answer, paths=paths, seconds=seconds, comparisons=comparisons,
                      verdict=trained.verdict)


def _train_config(folder: Path, run: Path, model: str, finetune_type: str, epochs: int,
                  passage_tokens: int, lr: float | None) -> Any:
    """The demo's training run: small and cheap, validated on its own held-out queries."""
    from embedrag.engine.training.train_config import TrainConfig

    # The test queries are never seen in training: the run validates on its own held-out
    # share of train.jsonl, over a small pool so that validating stays cheap.
    return TrainConfig(train_datasets=[str(folder / "train.jsonl")], output_dir=str(run), model=model,
                       finetune_type=finetune_type, epochs=epochs, validation_pool_size=300,
                       # One hard negative per query halves the passages per step, and
                       # 128-token passages (all-MiniLM-L6-v2's own training length) halve
                       # their cost again; the tuned model embeds at the base's length.
                       batch_size=16, neg_nums=1, query_max_len=64, passage_max_len=passage_tokens,
                       lr=lr if lr is not None or finetune_type not in ("auto", "full") else DEMO_FULL_LR,
                       overwrite_output_dir=True, tensorboard=False, save_on_epoch_end=False)


def _index_passages(folder: Path, test_set: Any, model_dir: Path, passage_tokens: int, db: Path,
                    precision: str) -> Any:
    """The corpus as the test set reads it (``title text``), one row per passage, embedded
    at ``passage_tokens``: the vectors ``evaluate`` would compute, written once."""
    from embedrag.engine.data.documents import JsonlFields, read_documents
    from embedrag.engine.encoding.encoder import Encoder
    from embedrag.engine.retrieval.store import build_index

    documents = list(read_documents([folder / "corpus.jsonl"], fields=JsonlFields(id="_id")))
    for document in documents:
        document.text = test_set.corpus[document.id]
    encoder = Encoder.load(model_dir, passage_max_length=passage_tokens)
    return build_index(documents, encoder, db=db, table="scifact", mode="overwrite", chunk_size=0,
                       precision=precision)
