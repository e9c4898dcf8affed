"""The automatic validation split and the regression guard of ``train``."""

from __future__ import annotations

import json
import random
import string

import pytest

from embedrag.engine.data.examples import Example, load_examples
from embedrag.engine.training.holdout import holdout_testset, split_holdout
from embedrag.engine.training.train import train
from embedrag.engine.training.train_config import TrainConfig


def _words(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = set()
    while len(words) < n:
        words.add("".join(rng.choice(string.ascii_lowercase) for _ in range(6)))
    return sorted(words)


def _rows(n: int, seed: int = 0, shuffle_positives: bool = False) -> list[dict]:
    """Queries that name a made-up word; the positive passage is about that word."""
    words = _words(n, seed)
    rng = random.Random(seed + 1)
    passages = [f"{w} {w}: all about the {w}" for w in words]
    targets = list(range(n))
    if shuffle_positives:  # every query points at another query's passage: training hurts
        rng.shuffle(targets)
    rows = []
    for i, word in enumerate(words):
        negatives = rng.sample([j for j in range(n) if j not in (i, targets[i])], 2)
        rows.append({"query": f"tell me about {word}", "pos": [passages[targets[i]]],
                     "neg": [passages[j] for j in negatives]})
    return rows


def _examples(rows) -> list[Example]:
    return [Example(query=r["query"], pos=tuple(r["pos"]), neg=tuple(r["neg"])) for r in rows]


def test_split_is_deterministic_disjoint_and_sized():
    examples = _examples(_rows(300))
    kept, held, info = split_holdout([(examples, 1.0)], seed=42)
    again = split_holdout([(list(reversed(examples)), 1.0)], seed=42)[1]
    assert {e.query for e in held} == {e.query for e in again}  # line order does not matter
    assert (info.queries, info.of_queries) == (20, 300)  # 5 % is 15: at least 20
    train_queries = {e.query for e, in zip(kept[0][0])}
    assert not train_queries & {e.query for e in held}
    assert len(train_queries) + len(held) == 300
    assert {e.query for e in split_holdout([(examples, 1.0)], seed=7)[1]} != {e.query for e in held}
    # 5 % of 1,000 queries; a query repeated on two lines is held out on both
    many = _examples(_rows(1000))
    many.append(Example(query=many[0].query, pos=("another passage",)))
    kept, held, info = split_holdout([(many[:600], 1.0), (many[600:], 2.0)], seed=42)
    assert info.queries == 50 and len({e.query for e in held}) == 50
    assert not {e.query for part, _ in kept for e in part} & {e.query for e in held}
    assert [w for _, w in kept] == [1.0, 2.0]
    # too few queries: no split, and a reason
    kept, held, info = split_holdout([(examples[:99], 1.0)], seed=42)
    assert held == [] and kept[0][0] == examples[:99] and "only 99 distinct training queries" in info.skipped_reason


def test_pool_holds_each_held_out_positive_and_a_seeded_sample():
    examples = _examples(_rows(300))
    _, held, _ = split_holdout([(examples, 1.0)], seed=42)
    test_set, source = holdout_testset(held, examples, seed=42, pool_size=100)
    assert len(test_set.corpus) == 100 and "sample" in source
    for qid, docs in test_set.qrels.items():
        assert [test_set.corpus[d] for d in docs] == list(next(e for e in held
                                                                if e.query == test_set.queries[qid]).pos)
    again, _ = holdout_testset(held, examples, seed=42, pool_size=100)
    assert again.corpus == test_set.corpus


def _run(model, rows, out, **overrides):
    path = out.parent / f"{out.name}.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    values = dict(train_datasets=[str(path)], output_dir=str(out), model=str(model), finetune_type="full",
                  batch_size=8, epochs=2, neg_nums=1, lr=1e-3, warmup_proportion=0.0, save_on_epoch_end=False,
                  tensorboard=False, query_max_len=32, passage_max_len=32)
    values.update(overrides)
    return train(TrainConfig(**values)), path


def test_guard_reports_a_helping_run_and_a_hurting_run(tiny_bert, tmp_path):
    helped, path = _run(tiny_bert, _rows(120), tmp_path / "helps")
    verdict = helped.verdict
    summary = json.loads((tmp_path / "helps" / "training_summary_report.json").read_text())
    assert summary["validation"]["verdict"] == verdict
    split = summary["validation"]["split"]
    assert (split["queries"], split["of_queries"]) == (20, 120)
    assert summary["start"]["examples"] == 100  # trained on the other 100 queries only
    assert len(load_examples(path)) == 120
    assert verdict["gain"] > 0 and verdict["best"] > verdict["base"]
    assert verdict["outcome"] in ("better", "not significant")
    assert "improved" in verdict["message"] or "gained" in verdict["message"]

    hurt, _ = _run(tiny_bert, _rows(120, shuffle_positives=True), tmp_path / "hurts")
    verdict = hurt.verdict
    assert verdict["outcome"] == "not better" and verdict["gain"] <= 0
    assert "not better than the base model" in verdict["message"]
    assert f"{verdict['base']:.4f} -> {verdict['best']:.4f}" in verdict["message"]
    summary = json.loads((tmp_path / "hurts" / "training_summary_report.json").read_text())
    assert summary["validation"]["verdict"]["outcome"] == "not better"


def test_no_auto_validation_and_small_files(tiny_bert, tmp_path):
    result, _ = _run(tiny_bert, _rows(120), tmp_path / "off", auto_validation=False, max_steps=2)
    assert result.verdict is None and result.best_dir is None
    result, _ = _run(tiny_bert, _rows(40), tmp_path / "small", max_steps=2)
    summary = json.loads((tmp_path / "small" / "training_summary_report.json").read_text())
    assert result.verdict is None and "only 40 distinct training queries" in summary["validation"]["split"][
        "skipped_reason"]


@pytest.mark.parametrize("final_model", ["best", "last"])
def test_final_is_the_best_evaluated_model_unless_asked(tiny_bert, tmp_path, final_model):
    from safetensors.torch import load_file

    result, _ = _run(tiny_bert, _rows(120, shuffle_positives=True), tmp_path / "out", epochs=3,
                     final_model=final_model, save_on_epoch_end=True)
    best_step = result.summary["best_metric"]["step"]
    final = load_file(result.final_dir / "model.safetensors")
    best = load_file(result.best_dir / "model.safetensors")
    last = load_file(tmp_path / "out" / "checkpoint-epoch-3" / "model.safetensors")
    same_as = lambda other: all((final[k] == other[k]).all() for k in final)  # noqa: E731
    if final_model == "best" and best_step != result.global_step:
        assert same_as(best) and not same_as(last)
        assert result.summary["validation"]["final_model"].startswith("best")
    else:
        assert same_as(last)
