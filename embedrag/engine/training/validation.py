"""Validation during training: the validation set, retrieval metrics, evaluation and
best-model tracking, and the base-vs-best verdict at the end."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from embedrag.engine.data.examples import Example, load_examples
from embedrag.engine.training.sampling import EpochSampler

if TYPE_CHECKING:
    from embedrag.engine.encoding.encoder import Encoder

logger = logging.getLogger(__name__)


def validation_set(spec: str, split: str = "test"):
    """The validation examples (for the loss) and test set (for retrieval metrics) of
    ``--eval-dataset``: a JSONL file (passages pooled across its lines) or a BEIR folder
    (its whole corpus, so the metrics see realistic distractors)."""
    from embedrag.engine.data.testsets import load_beir_testset, load_jsonl_testset

    if Path(spec).is_dir():
        test_set = load_beir_testset(spec, split)
        examples = [Example(query=test_set.queries[qid],
                            pos=tuple(test_set.corpus[d] for d, grade in docs.items() if grade > 0))
                    for qid, docs in test_set.qrels.items()]
        return [e for e in examples if e.pos], test_set
    return load_examples(spec), load_jsonl_testset(spec)


def retrieval_metrics(encoder: Encoder, test_set, *, batch_size: int = 64, ks: tuple[int, ...] = (10,),
                      precision: str = "fp32") -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """nDCG/Recall/MRR@k of ``encoder`` on ``test_set`` (exact search, no cache): the means
    and each query's scores."""
    from embedrag.engine.evaluation.evaluate import evaluate_model

    result = evaluate_model(encoder, test_set, name="validation", ks=ks, batch_size=batch_size,
                            precision=precision)

    def kept(scores: dict[str, float]) -> dict[str, float]:
        return {k: v for k, v in scores.items() if k.split("@")[0] in ("ndcg", "recall", "mrr")}

    return kept(result.metrics), {q: kept(v) for q, v in result.per_query.items()}


class _Validation:
    """Evaluates the model being trained and keeps track of the best evaluation."""

    def _maybe_evaluate(self, *, epoch_end: bool) -> None:
        if not self.eval_examples:
            return
        due = epoch_end or (self.config.eval_steps and self.state.global_step % self.config.eval_steps == 0)
        if not due:
            return
        metrics = self.evaluate()
        self.state.last_metrics = metrics
        self.state.last_eval_step = self.state.global_step
        self._report_evaluation(metrics, self.state.global_step)
        self.state.logs.append({"step": self.state.global_step,
                                "epoch": self.state.epoch_position(self.micro_steps_per_epoch),
                                **{f"eval_{k}": v for k, v in metrics.items()}})
        self._track_best(metrics)

    def _report_evaluation(self, metrics: dict[str, float], step: int) -> None:
        if self.is_main:
            if self.writer is not None:
                for key, value in metrics.items():
                    self.writer.add_scalar(f"eval/{key}", value, step)
            self.callback.on_evaluate({**metrics, "step": step})

    def evaluate(self) -> dict[str, float]:
        import torch

        metrics: dict[str, float] = {}
        losses = []
        sampler = EpochSampler([(self.eval_examples, 1.0)], batch_size=self.config.batch_size,
                               neg_nums=self.config.neg_nums, seed=self.config.seed)
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.no_grad():
                for batch in sampler.batches(0):
                    loss, _ = self._forward_loss(batch)
                    losses.append(float(loss))
            metrics["loss"] = sum(losses) / max(len(losses), 1)
            # The automatic split encodes as eval does by default (bf16 where native);
            # an --eval-dataset keeps fp32, as it always did.
            retrieval, self.last_per_query = retrieval_metrics(
                self.encoder, self.eval_set, batch_size=self.config.eval_batch_size,
                precision="auto" if self.holdout else "fp32")
            metrics.update(retrieval)
        finally:
            self.module.train(was_training)
        return metrics

    def _track_best(self, metrics: dict[str, float]) -> None:
        key = self.config.metric_for_best
        value = metrics[key]
        better = (self.state.best_metric is None
                  or (value < self.state.best_metric if key == "loss" else value > self.state.best_metric))
        if better:
            self.state.best_metric, self.state.best_step = value, self.state.global_step
            self.state.best_per_query = self.last_per_query
            self.state.bad_evaluations = 0
            if self.is_main:
                self._save_model(self.output_dir / "best", metrics=metrics)
        else:
            self.state.bad_evaluations += 1
            patience = self.config.early_stopping_patience
            if patience is not None and self.state.bad_evaluations >= patience:
                logger.info("early stopping: %s did not improve for %d evaluation(s)", key, patience)
                self.stopped_early = True

    def _final_is(self) -> str:
        """What final/ holds: the best evaluated model, unless asked for the last or
        the last is the best (or nothing was evaluated)."""
        best, last = self.state.best_step, self.state.global_step
        if self.config.final_model == "best" and best is not None and best != last:
            return f"best (step {best} of {last})"
        return f"last (step {last})"

    def _verdict(self):
        """Base vs best on the validation split, when both were evaluated."""
        from embedrag.engine.training.holdout import Verdict

        metric = self.config.metric_for_best if self.config.metric_for_best != "loss" else "ndcg@10"
        if not self.state.base_per_query or not self.state.best_per_query:
            return None
        return Verdict.of(metric, {q: v[metric] for q, v in self.state.base_per_query.items()},
                          {q: v[metric] for q, v in self.state.best_per_query.items()}, self.state.best_step or 0)
