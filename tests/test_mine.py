"""Hard-negative mining: ranges, margins and identity filters honoured exactly; BM25
candidates ranked and padded as documented; the CLI on real (tiny) models, BEIR folders
and LanceDB tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from embedrag.cli import app
from embedrag.engine.core.errors import ConfigError
from embedrag.engine.data.examples import Example
from embedrag.engine.mining.mine import (
    Corpus,
    MineConfig,
    mine_examples,
    normalize_text,
    parse_range,
)
from embedrag.engine.retrieval.lexical import BM25Ranker, tokenize

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
SLICE = REPO / "datasets" / "scifact-slice"


class FakeEncoder:
    """Vectors chosen by the test. Queries sit on the first axis, so a passage's score for
    a query is the first coordinate of its vector."""

    device = "cpu"

    def __init__(self, scores: dict[str, float], queries: list[str]):
        self.vectors = {t: self.unit(s, i) for i, (t, s) in enumerate(scores.items())}
        self.vectors.update({q: np.array([1.0, 0.0, 0.0], np.float32) for q in queries})

    @staticmethod
    def unit(score: float, i: int) -> np.ndarray:
        rest = math.sqrt(max(0.0, 1 - score * score))
        angle = 0.37 * i  # spread passages around the query axis so they differ from each other
        return np.array([score, rest * math.cos(angle), rest * math.sin(angle)], np.float32)

    def encode(self, texts, kind="passage", batch_size=64, progress=None, num_processes=1, precision="fp32",
               max_batch_tokens=None):
        return np.stack([self.vectors[t] for t in texts]) if texts else np.zeros((0, 3), np.float32)


def _setup(n=30, positive_score=0.8, top=0.99, step=0.02):
    """A corpus of passages with scores top, top-step, ...; one positive among them."""
    scores = {f"passage {i}": round(top - step * i, 6) for i in range(n)}
    scores["the positive"] = positive_score
    encoder = FakeEncoder(scores, ["the query"])
    corpus = Corpus.from_texts([(f"d{i}", t) for i, t in enumerate(scores)], "fake")
    return scores, encoder, corpus


def _ranking(scores: dict[str, float]) -> list[str]:
    return sorted(scores, key=lambda t: -scores[t])


def _score(encoder, text, query="the query"):
    return float(encoder.vectors[text] @ encoder.vectors[query])


def test_range_and_relative_margin_are_honoured_exactly():
    scores, encoder, corpus = _setup()
    example = Example(query="the query", pos=("the positive",))
    config = MineConfig(negatives=100, range_start=3, range_end=25, relative_margin=0.95)
    lines, report = mine_examples([example], corpus, encoder, config)
    reference = _score(encoder, "the positive")
    window = _ranking(scores)[3:25]
    expected = [t for t in window if t != "the positive" and _score(encoder, t) <= 0.95 * reference]
    assert lines[0]["neg"] == expected
    margin_dropped = [t for t in window if t != "the positive" and _score(encoder, t) > 0.95 * reference]
    assert report.removed["relative_margin"] == len(margin_dropped) > 0
    assert report.removed["positive"] == ("the positive" in window)
    assert report.candidates_considered == len(window)


def test_absolute_margin_and_top_n():
    scores, encoder, corpus = _setup()
    example = Example(query="the query", pos=("the positive",))
    config = MineConfig(negatives=4, range_start=0, range_end=31, relative_margin=None, absolute_margin=0.1)
    lines, report = mine_examples([example], corpus, encoder, config)
    reference = _score(encoder, "the positive")
    survivors = [t for t in _ranking(scores) if t != "the positive" and _score(encoder, t) <= reference - 0.1]
    assert lines[0]["neg"] == survivors[:4]
    assert report.removed["absolute_margin"] == sum(
        1 for t in scores if t != "the positive" and _score(encoder, t) > reference - 0.1)
    assert report.negatives_histogram == {4: 1}


def test_weakest_positive_sets_the_margin():
    scores, encoder, corpus = _setup(n=20)
    scores_with_second = {**scores, "strong positive": 0.97}
    encoder = FakeEncoder(scores_with_second, ["the query"])
    corpus = Corpus.from_texts([(f"d{i}", t) for i, t in enumerate(scores_with_second)], "fake")
    example = Example(query="the query", pos=("strong positive", "the positive"))
    lines, _ = mine_examples([example], corpus, encoder, MineConfig(negatives=50, range_start=0, range_end=40))
    assert lines[0]["neg"]
    assert max(_score(encoder, t) for t in lines[0]["neg"]) <= 0.95 * _score(encoder, "the positive")


def test_never_a_positive_the_query_or_a_duplicate():
    scores = {"The  Positive": 0.9, "the positive ": 0.85, "THE QUERY": 0.88, "old negative": 0.7,
              "Old   negative": 0.69, "fresh": 0.6, "fresh two": 0.5}
    encoder = FakeEncoder(scores, ["the query"])
    corpus = Corpus.from_texts([(f"d{i}", t) for i, t in enumerate(scores)], "fake")
    # "the positive " and "Old   negative" are the same passages as earlier rows: dropped at load.
    assert len(corpus.texts) == 5
    example = Example(query="the query", pos=("the positive",), neg=("old negative",))
    lines, report = mine_examples([example], corpus, encoder,
                                  MineConfig(negatives=10, range_start=0, range_end=10, relative_margin=None))
    assert lines[0]["neg"] == ["old negative", "fresh", "fresh two"]
    assert report.removed["positive"] == 1 and report.removed["query"] == 1 and report.removed["duplicate"] == 1
    keys = [normalize_text(t) for t in lines[0]["neg"]]
    assert len(keys) == len(set(keys))

    replaced, _ = mine_examples([example], corpus, encoder,
                                MineConfig(negatives=10, range_start=0, range_end=10, relative_margin=None,
                                           replace=True))
    assert replaced[0]["neg"] == ["old negative", "fresh", "fresh two"]  # mined again, now in rank order
    only_mined, _ = mine_examples([example], corpus, encoder,
                                  MineConfig(negatives=1, range_start=0, range_end=10, relative_margin=None,
                                             replace=True))
    assert only_mined[0]["neg"] == ["old negative"]


def test_random_sampling_is_seeded():
    scores, encoder, corpus = _setup(n=60, positive_score=0.999, step=0.01)
    example = Example(query="the query", pos=("the positive",))

    def run(seed):
        config = MineConfig(negatives=5, range_start=0, range_end=61, sampling="random", seed=seed)
        return mine_examples([example], corpus, encoder, config)[0][0]["neg"]

    first, again, other = run(1), run(1), run(2)
    assert first == again and first != other
    ranking = _ranking(scores)
    assert [ranking.index(t) for t in first] == sorted(ranking.index(t) for t in first)


def test_anchor_minus_positive_formula():
    scores, encoder, corpus = _setup(n=25, positive_score=0.5, step=0.03)
    example = Example(query="the query", pos=("the positive",))
    config = MineConfig(negatives=6, range_start=0, range_end=26, relative_margin=None,
                        score_formula="anchor-minus-positive", positive_weight=0.5)
    lines, _ = mine_examples([example], corpus, encoder, config)
    positive = encoder.vectors["the positive"]

    def formula(text):
        return _score(encoder, text) - 0.5 * float(encoder.vectors[text] @ positive)

    candidates = [t for t in scores if t != "the positive"]
    assert lines[0]["neg"] == sorted(candidates, key=lambda t: -formula(t))[:6]
    assert lines[0]["neg"] != _ranking({t: scores[t] for t in candidates})[:6]


def test_with_scores_and_positives_outside_the_corpus():
    scores, encoder, corpus = _setup(n=10)
    encoder.vectors["unseen positive"] = FakeEncoder.unit(0.9, 99)
    encoder.vectors["given negative"] = FakeEncoder.unit(0.3, 98)
    example = Example(query="the query", pos=("unseen positive",), neg=("given negative",), id="q7")
    lines, _ = mine_examples([example], corpus, encoder,
                             MineConfig(negatives=3, range_start=0, range_end=11, with_scores=True))
    line = lines[0]
    assert line["id"] == "q7" and line["neg"][0] == "given negative" and len(line["neg"]) == 4
    assert line["pos_scores"] == [pytest.approx(0.9, abs=1e-5)]
    assert line["neg_scores"] == [pytest.approx(_score(encoder, t), abs=1e-5) for t in line["neg"]]
    assert all(s <= 0.95 * 0.9 + 1e-6 for s in line["neg_scores"][1:])


def test_config_and_range_errors():
    assert parse_range("10-100") == (10, 100)
    for bad in ("100-10", "10", "a-b", "5-5"):
        with pytest.raises(ConfigError):
            parse_range(bad)
    for kwargs in ({"negatives": 0}, {"strategy": "magic"}, {"relative_margin": 1.5},
                   {"absolute_margin": -1.0}, {"sampling": "best"}):
        with pytest.raises(ConfigError):
            MineConfig(**kwargs).validate()


def test_bm25_candidates_are_ranked_padded_and_exclude_passages_with_no_common_term():
    """Scores themselves are checked against Lucene's formula in test_significance.py."""
    texts = ["the cat sat on the mat", "the dog sat", "cats and dogs", "牛肉麵 很好吃"]
    ranker = BM25Ranker(texts)
    assert tokenize("牛肉麵 Hello, World!") == ["牛", "肉", "麵", "hello", "world"]
    rows, values = ranker.search(["cat sat", "麵", "nothing matches"], k=3)
    scores = ranker.scores("cat sat")
    assert rows[0][0] == int(np.argmax(scores)) == 0  # "cat" and "cats" stem alike: 0 and 2 match "cat"
    assert [r for r in rows[0] if r >= 0] == sorted(np.flatnonzero(scores), key=lambda r: (-scores[r], r))
    assert (values[0][:-1] >= values[0][1:]).all()
    assert rows[1].tolist() == [3, -1, -1] and values[1][0] > 0
    assert rows[2].tolist() == [-1, -1, -1] and not values[2].any()


# ---------------------------------------------------------------------- CLI, real models
def _check_output(path: Path, encoder, margin: float | None, kept_negatives: dict[str, list[str]] | None = None):
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for line in lines:
        positives = {normalize_text(t) for t in line["pos"]}
        keys = [normalize_text(t) for t in line["neg"]]
        assert len(keys) == len(set(keys)), "a duplicate negative"
        assert not positives & set(keys), "a positive mined as a negative"
        assert normalize_text(line["query"]) not in keys, "the query mined as a negative"
        mined = line["neg"][len((kept_negatives or {}).get(line["query"], [])):]
        if mined and margin is not None:
            q = encoder.encode([line["query"]], "query")[0]
            pos = encoder.encode(line["pos"], "passage") @ q
            neg = encoder.encode(mined, "passage") @ q
            assert neg.max() <= margin * pos.min() + 1e-5
    return lines


def test_cli_mines_sample_data_with_minilm(minilm_path, tmp_path):
    from embedrag import Encoder
    from embedrag.engine.data.examples import load_examples

    source = REPO / "datasets" / "sample_data.jsonl"
    out = tmp_path / "mined.jsonl"
    args = ["mine", "-i", str(source), "-o", str(out), "-m", str(minilm_path), "--negatives", "3",
            "--range", "1-30", "--no-cache", "--report", str(tmp_path / "report.json")]
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "lines written" in result.output and "relative margin" in result.output
    existing = {e.query: list(e.neg) for e in load_examples(source)}
    lines = _check_output(out, Encoder.load(minilm_path, device="cpu"), 0.95, existing)
    assert len(lines) == len(existing)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["written"] == len(lines) and report["mined_negatives"] > 0

    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "exists" in again.output and "Traceback" not in again.output
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
    assert out.read_bytes() == (tmp_path / "mined.jsonl").read_bytes()


@pytest.mark.parametrize("strategy", ["bm25", "hybrid"])
def test_cli_mines_a_beir_split_with_bm25_and_hybrid(tiny_bert, tmp_path, strategy):
    from embedrag import Encoder

    out = tmp_path / f"{strategy}.jsonl"
    result = runner.invoke(app, ["mine", "--beir", str(SLICE), "--split", "test", "-o", str(out),
                                 "-m", str(tiny_bert), "--strategy", strategy, "--negatives", "4",
                                 "--sampling", "random", "--with-scores", "--no-cache",
                                 "--relative-margin", "0"])  # a random model scores everything alike
    assert result.exit_code == 0, result.output
    lines = _check_output(out, Encoder.load(tiny_bert, device="cpu"), None)
    assert len(lines) == 100 and all(len(line["neg_scores"]) == len(line["neg"]) for line in lines)
    assert sum(len(line["neg"]) for line in lines) > 300


def test_mine_from_a_lancedb_table_reuses_its_vectors(tiny_bert, tmp_path):
    from embedrag import Encoder
    from embedrag.engine.data.documents import Document
    from embedrag.engine.mining.mine import load_table_corpus
    from embedrag.engine.retrieval.store import build_index

    encoder = Encoder.load(tiny_bert, device="cpu")
    docs = [Document(id=f"d{i}", text=f"document number {i} about {w}", title="")
            for i, w in enumerate("rivers mountains noodles tea coffee rain snow wind".split())]
    build_index(docs, encoder, db=tmp_path / "db", table="docs", fts=False)
    corpus = load_table_corpus(tmp_path / "db", "docs", encoder)
    assert corpus.vectors is not None
    np.testing.assert_allclose(corpus.vectors, encoder.encode(corpus.texts, "passage"), atol=1e-5)

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"query": "noodles", "pos": ["document number 2 about noodles"]}) + "\n")
    out = tmp_path / "mined.jsonl"
    result = runner.invoke(app, ["mine", "-i", str(pairs), "-o", str(out), "-m", str(tiny_bert),
                                 "--db", str(tmp_path / "db"), "--range", "0-8", "--relative-margin", "0"])
    assert result.exit_code == 0, result.output
    line = json.loads(out.read_text())
    assert len(line["neg"]) == 7 and "document number 2 about noodles" not in line["neg"]


def test_mining_precision_is_used_recorded_and_cached_apart(tiny_bert, tmp_path):
    from embedrag import Encoder
    from embedrag.engine.encoding.encoder import resolve_precision
    from embedrag.engine.mining.mine import mine

    encoder = Encoder.load(tiny_bert, device="cpu")
    encode = encoder.encode
    corpus_encodes = []

    def recording(texts, kind="passage", **options):
        if len(texts) > 100:  # the slice's 1,500-passage corpus, not its queries or positives
            corpus_encodes.append(options["precision"])
        return encode(texts, kind, **options)

    encoder.encode = recording
    reports = [mine(beir=SLICE, split="test", model=encoder, cache_dir=tmp_path / "cache", precision=precision,
                    negatives=2, relative_margin=None, max_batch_tokens=512)
               for precision in ("fp32", "bf16", "bf16", "auto")]
    auto = resolve_precision("auto")
    assert [r.config["precision"] for r in reports] == ["fp32", "bf16", "bf16", auto]
    assert [r.config["max_batch_tokens"] for r in reports] == [512] * 4
    # each precision embeds the corpus once; a rerun, or auto (bf16 where native, else fp32:
    # a precision already cached either way), reads the cache
    assert auto in ("fp32", "bf16")
    assert corpus_encodes == ["fp32", "bf16"]
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == len(set(corpus_encodes))


@pytest.mark.parametrize("args, message", [
    (["-i", "{sample}", "-o", "{tmp}/o.jsonl", "--precision", "int8"], "precision must be one of"),
    (["-o", "{tmp}/o.jsonl"], "exactly one of --input"),
    (["-i", "{tmp}/absent.jsonl", "-o", "{tmp}/o.jsonl"], "absent.jsonl"),
    (["-i", "{sample}", "-o", "{tmp}/o.jsonl", "--range", "50-10"], "--range"),
    (["-i", "{sample}", "-o", "{tmp}/o.jsonl", "--strategy", "magic"], "--strategy"),
    (["--beir", "{slice}", "--split", "nope", "-o", "{tmp}/o.jsonl"], "unknown split"),
    (["-i", "{sample}", "-o", "{tmp}"], "folder"),
])
def test_cli_errors_are_one_line(tmp_path, args, message, tiny_bert):
    args = [a.format(tmp=tmp_path, sample=REPO / "datasets" / "sample_data.jsonl", slice=SLICE) for a in args]
    result = runner.invoke(app, ["mine", "-m", str(tiny_bert), "--no-cache", *args])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o.jsonl").exists()
