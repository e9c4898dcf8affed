"""``embedrag eval``: test sets, metrics equal to pytrec_eval, cache, reports, errors."""

from __future__ import annotations

import json
import random

import pytest
from test_train import _toy_rows
from typer.testing import CliRunner

from embedrag.cli import app
from embedrag.engine.core.errors import ConfigError, DataError
from embedrag.engine.data.testsets import load_beir_testset, load_jsonl_testset
from embedrag.engine.evaluation.evaluate import ModelSpec, evaluate
from embedrag.engine.evaluation.metrics import evaluate_run

runner = CliRunner()


def test_metrics_equal_pytrec_eval_on_200_random_cases():
    pytrec_eval = pytest.importorskip("pytrec_eval")
    rng = random.Random(1234)
    measures = {"ndcg_cut.1,5,10", "recall.1,5,10", "P.1,5,10", "map_cut.1,5,10"}
    names = {"ndcg": "ndcg_cut", "recall": "recall", "precision": "P", "map": "map_cut"}
    checked = with_unjudged_query = 0
    while checked < 200:
        docs = [f"d{i}" for i in range(rng.randint(3, 30))]
        qrels, run = {}, {}
        for q in range(rng.randint(1, 8)):
            judged = rng.sample(docs, rng.randint(1, len(docs)))
            qrels[f"q{q}"] = {d: rng.choice([0, 0, 1, 2, 3]) for d in judged}
            retrieved = rng.sample(docs, rng.randint(1, len(docs)))
            # coarse scores: many ties
            run[f"q{q}"] = {d: float(rng.randint(0, 4)) for d in retrieved}
        if not any(g > 0 for judged in qrels.values() for g in judged.values()):
            continue
        checked += 1
        with_unjudged_query += any(all(g <= 0 for g in j.values()) for j in qrels.values())
        ours = evaluate_run(qrels, run, ks=(1, 5, 10))
        assert set(ours.without_relevant) == {q for q, j in qrels.items() if all(g <= 0 for g in j.values())}
        reference = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
        for qid, values in ours.per_query.items():
            for metric, trec in names.items():
                for k in (1, 5, 10):
                    assert values[f"{metric}@{k}"] == pytest.approx(reference[qid][f"{trec}_{k}"], abs=1e-6)
    assert with_unjudged_query > 20  # queries without any relevant document were exercised


@pytest.fixture
def jsonl_set(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in _toy_rows(3)[:10]) + "\n")
    return path


def _beir(tmp_path, corpus=None, queries=None, qrels="query-id\tcorpus-id\tscore\nq1\tdoc1\t2\nq2\tdoc2\t1\n"):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    corpus = corpus or [{"_id": "doc1", "title": "Apple", "text": "apples are fruit"},
                        {"_id": "doc2", "title": "", "text": "rivers flow"},
                        {"_id": "doc3", "title": "Stone", "text": "rocks"}]
    queries = queries or [{"_id": "q1", "text": "what is an apple"}, {"_id": "q2", "text": "river"},
                          {"_id": "q3", "text": "unjudged"}]
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps(c) for c in corpus) + "\n")
    (folder / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries) + "\n")
    (folder / "qrels" / "test.tsv").write_text(qrels)
    return folder


def test_jsonl_test_set_pools_and_deduplicates(jsonl_set):
    test_set = load_jsonl_testset(jsonl_set)
    assert len(test_set.qrels) == 10
    texts = list(test_set.corpus.values())
    assert len(texts) == len(set(texts))
    for qid, relevant in test_set.qrels.items():
        assert set(relevant) <= set(test_set.candidates[qid])


def test_beir_folder_joins_title_and_keeps_grades(tmp_path):
    test_set = load_beir_testset(_beir(tmp_path), "test")
    assert test_set.corpus["doc1"] == "Apple apples are fruit"
    assert test_set.qrels == {"q1": {"doc1": 2}, "q2": {"doc2": 1}}
    assert set(test_set.queries) == {"q1", "q2"}


@pytest.mark.parametrize("mutate, message", [
    (lambda f: (f / "queries.jsonl").unlink(), "missing queries.jsonl"),
    (lambda f: (f / "qrels" / "test.tsv").rename(f / "qrels" / "dev.tsv"), r"unknown split 'test' \(available: dev\)"),
    (lambda f: (f / "qrels" / "test.tsv").write_text("q1\tnope\t1\nq1\tgone\t1\n"), r"2 corpus id\(s\) are not in corpus.jsonl \(e.g. 'gone'\)"),
    (lambda f: (f / "qrels" / "test.tsv").write_text("q9\tdoc1\t1\n"), r"1 query id\(s\) are not in queries.jsonl"),
    (lambda f: (f / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n"), "no judgements"),
])
def test_bad_beir_folders(tmp_path, mutate, message):
    folder = _beir(tmp_path)
    mutate(folder)
    with pytest.raises(DataError, match=message):
        load_beir_testset(folder, "test")


def test_two_models_cache_and_report(tiny_bert, tiny_qwen2, jsonl_set, tmp_path):
    test_set = load_jsonl_testset(jsonl_set)
    models = [ModelSpec("bert", str(tiny_bert)), ModelSpec("qwen", str(tiny_qwen2))]
    first = evaluate(test_set, models, ks=(1, 10), cache_dir=tmp_path / "cache")
    again = evaluate(test_set, models, ks=(1, 10), cache_dir=tmp_path / "cache")
    assert [m.corpus_cached for m in first.models] == [False, False]
    assert [m.corpus_cached for m in again.models] == [True, True]
    assert first.models[1].metrics == pytest.approx(again.models[1].metrics)
    report = first.to_dict()
    assert report["baseline"] == "bert"
    assert report["models"][1]["gain_over_baseline"]["ndcg@10"] == pytest.approx(
        first.models[1].metrics["ndcg@10"] - first.models[0].metrics["ndcg@10"])
    per_query = evaluate(test_set, models[:1], ks=(1,), candidates="per-query", use_cache=False)
    assert 0 <= per_query.models[0].metrics["hit@1"] <= 1


def test_precision_is_recorded_and_never_shares_a_cache(tiny_bert, jsonl_set, tmp_path):
    test_set = load_jsonl_testset(jsonl_set)
    cache = tmp_path / "cache"
    fp32 = evaluate(test_set, [str(tiny_bert)], ks=(10,), cache_dir=cache, precision="fp32").models[0]
    bf16 = evaluate(test_set, [str(tiny_bert)], ks=(10,), cache_dir=cache, precision="bf16").models[0]
    again = evaluate(test_set, [str(tiny_bert)], ks=(10,), cache_dir=cache, precision="bf16").models[0]
    assert (fp32.corpus_cached, bf16.corpus_cached, again.corpus_cached) == (False, False, True)
    assert (fp32.settings["precision"], bf16.settings["precision"]) == ("fp32", "bf16")
    assert bf16.metrics == again.metrics
    assert abs(bf16.metrics["ndcg@10"] - fp32.metrics["ndcg@10"]) < 0.1  # same model, rounding only
    result = runner.invoke(app, ["eval", "--test-dataset", str(jsonl_set), "--model", str(tiny_bert),
                                 "--precision", "int8", "--no-cache"])
    assert result.exit_code != 0 and "precision must be one of" in result.output
    assert "Traceback" not in result.output


def test_cli_side_by_side_with_json_and_png(tiny_bert, tiny_qwen2, jsonl_set, tmp_path):
    pytest.importorskip("matplotlib")
    result = runner.invoke(app, ["eval", "--test-dataset", str(jsonl_set), "--model", f"base={tiny_bert}",
                                 "--model", f"other={tiny_qwen2}", "--k", "1,5,10", "--cache-dir",
                                 str(tmp_path / "c"), "-o", str(tmp_path / "r.json"),
                                 "--plot", str(tmp_path / "r.png"), "--per-query"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "base" in result.output and "other" in result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert [m["name"] for m in report["models"]] == ["base", "other"]
    assert len(report["models"][0]["per_query"]) == 10
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, message", [
    (["--k", "0"], "positive"),
    (["--k", "a,b"], "--k must be comma-separated integers"),
    (["--split", "dev"], "unknown split"),
])
def test_cli_bad_input_is_one_line(tmp_path, tiny_bert, args, message):
    folder = _beir(tmp_path)
    result = runner.invoke(app, ["eval", "--beir", str(folder), "--model", str(tiny_bert), *args])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output


def test_empty_test_set_and_missing_source(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = runner.invoke(app, ["eval", "--test-dataset", str(empty)])
    assert result.exit_code == 2 and "no examples" in result.output
    result = runner.invoke(app, ["eval"])
    assert result.exit_code == 2 and "exactly one of" in result.output
    with pytest.raises(ConfigError):
        ModelSpec.parse("=path")


def test_evaluating_an_indexed_table(tiny_bert, tmp_path):
    from embedrag.engine.data.documents import read_documents
    from embedrag.engine.encoding.encoder import Encoder
    from embedrag.engine.evaluation.evaluate import evaluate_table
    from embedrag.engine.retrieval.store import build_index

    folder = _beir(tmp_path)
    encoder = Encoder.load(tiny_bert, device="cpu")
    build_index(list(read_documents([folder / "corpus.jsonl"])), encoder, db=tmp_path / "db", fts=True)
    test_set = load_beir_testset(folder, "test")
    by_table = evaluate_table(test_set, tmp_path / "db", "docs", ks=(1, 3))
    direct = evaluate(test_set, [ModelSpec("m", str(tiny_bert))], ks=(1, 3), use_cache=False)
    # one chunk per document: ranking the table equals ranking the embedded corpus
    assert by_table.models[0].metrics == pytest.approx(direct.models[0].metrics)
    result = runner.invoke(app, ["eval", "--beir", str(folder), "--db", str(tmp_path / "db"), "--k", "1,3",
                                 "--hybrid"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "docs (hybrid)" in result.output


def test_one_row_per_document_table_scores_as_the_embedded_corpus(tiny_bert, tmp_path):
    """chunk_size=0 at a length other than the model's saved one: the table holds the
    vectors `evaluate` computes, and is searched with the lengths it was built with."""
    from embedrag.engine.data.documents import Document
    from embedrag.engine.encoding.encoder import Encoder
    from embedrag.engine.evaluation.evaluate import evaluate_table
    from embedrag.engine.retrieval.store import Retriever, build_index

    words = ["apple", "river", "music", "stone", "cloud", "green", "paper", "light"]
    corpus = [{"_id": f"d{i}", "title": w.title(), "text": " ".join(words[(i + j) % 8] for j in range(40))}
              for i, w in enumerate(words)]
    queries = [{"_id": f"q{i}", "text": f"about {w}"} for i, w in enumerate(words)]
    qrels = "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(8))
    test_set = load_beir_testset(_beir(tmp_path, corpus, queries, qrels), "test")
    encoder = Encoder.load(tiny_bert, device="cpu", passage_max_length=12)
    stats = build_index([Document(d, text) for d, text in test_set.corpus.items()], encoder, db=tmp_path / "db",
                        chunk_size=0, fts=False)
    assert stats.chunks == stats.documents == 8  # 40-word passages, one row each
    assert Retriever(tmp_path / "db", "docs").encoder.config.passage_max_length == 12
    by_table = evaluate_table(test_set, tmp_path / "db", "docs")
    direct = evaluate(test_set, [ModelSpec("m", str(tiny_bert))], max_length=12, use_cache=False)
    for qid, scores in direct.models[0].per_query.items():
        assert by_table.models[0].per_query[qid] == pytest.approx(scores), qid


def test_table_without_the_judged_passages_is_one_error(tiny_bert, tmp_path, jsonl_set):
    from embedrag.engine.data.documents import Document
    from embedrag.engine.encoding.encoder import Encoder
    from embedrag.engine.evaluation.evaluate import evaluate_table
    from embedrag.engine.retrieval.store import build_index

    build_index([Document("x", "unrelated text")], Encoder.load(tiny_bert, device="cpu"), db=tmp_path / "db",
                fts=False)
    with pytest.raises(DataError, match="not in the table"):
        evaluate_table(load_jsonl_testset(jsonl_set), tmp_path / "db", "docs")


def test_cli_max_batch_tokens_reaches_every_encode_and_keeps_the_scores(tiny_bert, jsonl_set, tmp_path,
                                                                       batch_budgets):
    budgets = batch_budgets
    reports = {}
    for name, extra in (("default", []), ("capped", ["--max-batch-tokens", "16"])):
        result = runner.invoke(app, ["eval", "--test-dataset", str(jsonl_set), "--model", str(tiny_bert),
                                     "--no-cache", "-o", str(tmp_path / f"{name}.json"), *extra])
        assert result.exit_code == 0, result.output
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())["models"][0]["metrics"]
    # corpus and queries, each run: the CPU default budget first, then the flag's
    assert len(budgets) == 4 and budgets[:2] != [16, 16] and budgets[2:] == [16, 16]
    assert reports["capped"] == pytest.approx(reports["default"], abs=1e-6)
    with pytest.raises(ConfigError, match="max-batch-tokens"):
        evaluate(load_jsonl_testset(jsonl_set), [str(tiny_bert)], use_cache=False, max_batch_tokens=0)
