"""`embedrag demo` chains the real steps: run on a tiny model and a tiny BEIR folder."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from embedrag.cli import app

TOPICS = ["apple", "river", "music", "stone", "cloud", "train", "green", "paper", "light",
          "sugar", "horse", "glass", "tiger", "ocean", "piano", "maple"]


def _demo_data(folder: Path) -> Path:
    (folder / "qrels").mkdir(parents=True)
    corpus = [{"_id": f"d{i}", "title": t, "text": f"all about the {t}, the {t} and more {t}"}
              for i, t in enumerate(TOPICS)]
    queries = [{"_id": f"q{i}", "text": f"tell me about {t}"} for i, t in enumerate(TOPICS)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n"
                                               + "".join(f"q{i}\td{i}\t1\n" for i in range(8, 16)))
    passage = {d["_id"]: f"{d['title']} {d['text']}" for d in corpus}
    train = [{"query": q["text"], "pos": [passage[f"d{i}"]], "neg": [passage[f"d{(i + 1) % 8}"]]}
             for i, q in enumerate(queries[:8])]
    test = [{"query": q["text"], "pos": [passage[f"d{i + 8}"]]} for i, q in enumerate(queries[8:])]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    return folder


def test_demo_runs_the_whole_loop(tiny_bert, tmp_path):
    data = _demo_data(tmp_path / "data")
    work = tmp_path / "work"
    result = CliRunner().invoke(app, ["demo", "--workdir", str(work), "--finetune-type", "lora", "--data", str(data),
                                      "--model", str(tiny_bert)],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for stage in ("evaluate base", "train", "merge", "index", "evaluate tuned", "ask"):
        assert stage in result.output
    assert "ndcg@10" in result.output and "[1]" in result.output
    from embedrag import Encoder
    from embedrag.engine.retrieval.store import open_table

    assert Encoder.load(work / "merged", device="cpu").encode(["x"]).shape[0] == 1
    assert open_table(work / "lancedb", "scifact").count_rows() == len(TOPICS)
    assert (work / "run" / "training_summary_report.json").is_file()
    assert "p (perm.)" in result.output
    # 8 training queries: too few for a validation split, so no verdict line
    summary = json.loads((work / "run" / "training_summary_report.json").read_text())
    assert summary["validation"]["verdict"] is None and "training's own check" not in result.output


def test_demo_without_data_is_one_clear_line(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--workdir", str(tmp_path), "--data", str(tmp_path / "absent")])
    assert result.exit_code == 2 and "demo data needs" in result.output and "Traceback" not in result.output


def test_demo_finds_the_bundled_slice_of_a_source_checkout():
    """`make demo` passes no --data: the slice beside the package must be found."""
    from embedrag.engine.tools.demo import default_data

    root = Path(__file__).resolve().parents[1]
    assert default_data() == root / "datasets" / "scifact-slice"
    assert (default_data() / "train.jsonl").is_file()
