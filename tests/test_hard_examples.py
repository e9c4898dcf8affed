"""Second-stage "hard example" training: select the lines the model gets wrong, retrain on
them with a margin ranking loss, starting from the first stage's adapter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from embedrag import Encoder
from embedrag.cli import app
from embedrag.engine.data.corpus import Corpus
from embedrag.engine.data.examples import Example
from embedrag.engine.encoding.encoder import EmbeddingConfig
from embedrag.engine.mining.mine import select_failing
from embedrag.engine.training.train import train
from embedrag.engine.training.train_config import TrainConfig

runner = CliRunner()


class RankedEncoder:
    """Vectors chosen by the test: every query on the first axis, a passage's score its
    first coordinate (the rest makes passages distinct)."""

    name = "ranked"
    path = None
    device = "cpu"

    def __init__(self, scores: dict[str, float]):
        self.config = EmbeddingConfig()
        self.scores = scores

    def encode(self, texts, kind="passage", batch_size=64, progress=None, num_processes=1, precision="fp32",
               max_batch_tokens=None):
        rows = []
        for text in texts:
            if kind == "query":
                rows.append([1.0, 0.0, 0.0])
            else:
                s = self.scores[text]
                rest = (1 - s * s) ** 0.5
                rows.append([s, rest * np.cos(len(text)), rest * np.sin(len(text))])
        return np.asarray(rows, np.float32).reshape(len(texts), 3)


def _line(number: int, positive_rank: int, candidates: int = 6) -> tuple[Example, dict[str, float]]:
    """A line whose positive is ranked ``positive_rank`` among its own candidates."""
    scores = {f"line {number} candidate {r}": 0.9 - 0.1 * r for r in range(1, candidates + 1)}
    names = list(scores)
    positive = names[positive_rank - 1]
    negatives = tuple(n for n in names if n != positive)
    return Example(query=f"query {number}", pos=(positive,), neg=negatives), scores


def test_only_failing_keeps_exactly_the_lines_ranked_below_k():
    lines, scores = [], {}
    ranks = [1, 2, 3, 4, 5, 6, 1, 4]
    for number, rank in enumerate(ranks):
        example, line_scores = _line(number, rank)
        lines.append(example)
        scores.update(line_scores)
    encoder = RankedEncoder(scores)
    for k in (1, 3, 5):
        kept, report = select_failing(lines, encoder, k, candidates="per-query")
        assert [e.query for e in kept] == [e.query for e, r in zip(lines, ranks) if r > k]
        assert report.kept == sum(r > k for r in ranks) and report.lines == len(ranks)
    assert report.accuracy["top1"] == pytest.approx(2 / 8)
    assert report.accuracy["top3"] == pytest.approx(4 / 8)
    assert report.accuracy["top5"] == pytest.approx(7 / 8)


def test_only_failing_over_a_whole_corpus():
    # Over the corpus, another line's passages compete too: "query 0"'s positive at 0.6 is
    # beaten by 0.9/0.8/0.7 of its own line and by line 1's 0.9/0.8/0.7 and more.
    lines, scores = [], {}
    for number, rank in enumerate([1, 4]):
        example, line_scores = _line(number, rank)
        lines.append(example)
        scores.update(line_scores)
    encoder = RankedEncoder(scores)
    corpus = Corpus.from_texts([(f"d{i}", t) for i, t in enumerate(scores)], "pool")
    kept, report = select_failing(lines, encoder, 1, candidates="all", corpus=corpus)
    # Both lines' rank-1 passages score 0.8 (the same): line 0's positive ties line 1's top
    # negative, so at k=1 it may lose the tie; at k=2 it is in, line 1's (0.5) is not.
    kept2, _ = select_failing(lines, encoder, 2, candidates="all", corpus=corpus)
    assert [e.query for e in kept2] == ["query 1"]
    assert "query 1" in [e.query for e in kept]


def test_cli_only_failing_writes_the_failing_lines(tiny_bert, tmp_path):
    # Even lines: the positive repeats the query (easy); odd lines: the negatives do (hard).
    rows = [{"query": f"question {i}", "pos": [f"question {i}"], "neg": ["zq xw", "kk jj", "vv"]} if i % 2 == 0
            else {"query": f"question {i}", "pos": ["zq xw"], "neg": [f"question {i}", f"question {i}?", "question"]}
            for i in range(12)]
    source = tmp_path / "train.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "failing.jsonl"
    report = tmp_path / "report.json"
    result = runner.invoke(app, ["mine", "--only-failing", "2", "-i", str(source), "-o", str(out), "-m",
                                 str(tiny_bert), "--no-cache", "--report", str(report)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "top-1" in result.output and "kept" in result.output
    summary = json.loads(report.read_text())
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert 0 < summary["kept"] == len(kept) < 12 and summary["lines"] == 12
    # The same judgement as eval --candidates per-query gives, line by line.
    encoder = Encoder.load(tiny_bert, device="cpu")
    for row in rows:
        q = encoder.encode([row["query"]], "query")[0]
        scores = encoder.encode(row["pos"] + row["neg"], "passage") @ q
        rank = 1 + int((scores[1:] > scores[0]).sum())
        assert (row in kept) == (rank > 2), (row, rank)

    no_negatives = tmp_path / "pairs.jsonl"
    no_negatives.write_text(json.dumps({"query": "q", "pos": ["p"]}) + "\n")
    refused = runner.invoke(app, ["mine", "--only-failing", "3", "-i", str(no_negatives), "-o",
                                  str(tmp_path / "o.jsonl"), "-m", str(tiny_bert), "--no-cache"])
    assert refused.exit_code == 2 and "no line has a neg" in refused.output


def _toy(tmp_path: Path) -> Path:
    topics = ["apple", "river", "music", "stone", "cloud", "train", "green", "paper"]
    path = tmp_path / "toy.jsonl"
    path.write_text("".join(json.dumps({
        "query": f"tell me about {t}", "pos": [f"{t} {t}: all about the {t}"],
        "neg": [f"{o} {o}: all about the {o}" for o in topics if o != t][:3]}) + "\n" for t in topics))
    return path


def _config(model, data, out, finetune_type="lora", **overrides):
    values = dict(train_datasets=[str(data)], output_dir=str(out), model=str(model), finetune_type=finetune_type,
                  batch_size=4, max_steps=16, neg_nums=3, lr=5e-3, warmup_proportion=0.0,
                  save_on_epoch_end=False, tensorboard=False, lora_dropout=0.0)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.parametrize("loss, options", [("margin-ranking", {"margin": 0.2}), ("infonce-symmetric", {})])
def test_the_other_losses_train(tiny_bert, tmp_path, loss, options):
    losses = []

    class Recorder:
        def on_step(self, log):
            losses.append(log["loss"])

        def __getattr__(self, name):
            return lambda *args, **kwargs: None

    result = train(_config(tiny_bert, _toy(tmp_path), tmp_path / "out", loss=loss, **options), Recorder())
    assert len(losses) == 16 and np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4]), losses
    record = json.loads((result.final_dir / "embedrag.json").read_text())["extra"]["finetune"]
    assert record["loss"] == loss and record.get("margin") == options.get("margin")


def test_init_from_an_adapter_continues_it(tiny_bert, tmp_path):
    data = _toy(tmp_path)
    stage1 = train(_config(tiny_bert, data, tmp_path / "stage1", lora_r=4, lora_alpha=8))
    # A step with a vanishing learning rate: what stage 2 starts from is what it ends with.
    stage2 = train(_config(tiny_bert, data, tmp_path / "stage2", max_steps=1, lr=1e-12,
                           init_from=str(stage1.final_dir), loss="margin-ranking"))
    a = load_file(stage1.final_dir / "adapter_model.safetensors")
    b = load_file(stage2.final_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    adapter = json.loads((stage2.final_dir / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["lora_alpha"] == 8  # the adapter's own settings, not the defaults
    texts = ["tell me about apple", "apple apple: all about the apple"]
    first = Encoder.load(stage1.final_dir, device="cpu").encode(texts)
    np.testing.assert_allclose(Encoder.load(stage2.final_dir, device="cpu").encode(texts), first, atol=1e-5)

    # Full fine-tuning from the adapter folds it into the base first.
    full = train(_config(tiny_bert, data, tmp_path / "full", finetune_type="full", max_steps=1, lr=1e-12,
                         init_from=str(stage1.final_dir)))
    np.testing.assert_allclose(Encoder.load(full.final_dir, device="cpu").encode(texts), first, atol=1e-4)
    # A model folder (here the full run's final/) is simply where the next run starts.
    again = train(_config(tiny_bert, data, tmp_path / "again", max_steps=1, lr=1e-12, init_from=str(full.final_dir)))
    np.testing.assert_allclose(Encoder.load(again.final_dir, device="cpu").encode(texts), first, atol=1e-4)


def test_init_from_errors(tiny_bert, tmp_path):
    from embedrag.engine.core.errors import ConfigError

    with pytest.raises(ConfigError, match="--init-from"):
        _config(tiny_bert, _toy(tmp_path), tmp_path / "o", init_from=str(tmp_path / "absent")).validate()
    with pytest.raises(ConfigError, match="--loss"):
        _config(tiny_bert, _toy(tmp_path), tmp_path / "o", loss="triplet").validate()
