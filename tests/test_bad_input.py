"""What users actually feed the tool, across commands: every case exits non-zero with one
clear error line naming the file (and line) or option, no traceback, and nothing
half-written left behind. Data is generated in each test."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from embedrag.cli import app

runner = CliRunner()
GOOD = {"query": "what is a cat", "pos": ["a cat is a small animal"], "neg": ["a dog barks"]}


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _beir(folder: Path, *, queries=True, qrels_target="d1") -> Path:
    (folder / "qrels").mkdir(parents=True)
    _jsonl(folder / "corpus.jsonl", [{"_id": "d1", "title": "", "text": "a cat is a small animal"},
                                     {"_id": "d2", "title": "", "text": "a dog barks"}])
    if queries:
        _jsonl(folder / "queries.jsonl", [{"_id": "q1", "text": "what is a cat"}])
    (folder / "qrels" / "test.tsv").write_text(f"query-id\tcorpus-id\tscore\nq1\t{qrels_target}\t1\n")
    return folder


@dataclass
class Case:
    """A command line built in a temporary folder, and what its error must mention."""

    name: str
    build: Callable[[Path, dict], list[str]]
    expect: str
    outputs: tuple[str, ...] = ()  # paths (relative to tmp) that must not exist afterwards


def _train(t: Path, m: dict, data: Path, *extra: str) -> list[str]:
    return ["train", "--train-dataset", str(data), "--output-dir", str(t / "out"), "--model", m["bert"],
            "--finetune-type", "lora", "--max-steps", "1", *extra]


CASES = [
    # ---------------------------------------------------------------- validate
    Case("validate: invalid JSON", lambda t, m: ["validate", str(_jsonl(t / "d.jsonl", [GOOD, "{not json"]))],
         "d.jsonl:2"),
    Case("validate: pos is a string", lambda t, m: ["validate", str(_jsonl(t / "d.jsonl", [
        {**GOOD, "pos": "a cat"}]))], "d.jsonl:1"),
    Case("validate: empty query", lambda t, m: ["validate", str(_jsonl(t / "d.jsonl", [{**GOOD, "query": ""}]))],
         "d.jsonl:1"),
    Case("validate: neg of numbers", lambda t, m: ["validate", str(_jsonl(t / "d.jsonl", [{**GOOD, "neg": [1, 2]}]))],
         "d.jsonl:1"),
    Case("validate: a JSON array line", lambda t, m: ["validate", str(_jsonl(t / "d.jsonl", ["[1, 2]"]))],
         "d.jsonl:1"),
    Case("validate: binary garbage", lambda t, m: ["validate", str(_write_bytes(t / "d.jsonl", b"\x00\xff\x13garbage\n"))],
         "d.jsonl:1"),
    Case("validate: UTF-16", lambda t, m: ["validate", str(_write_bytes(
        t / "d.jsonl", (json.dumps(GOOD) + "\n").encode("utf-16")))], "UTF-16"),
    Case("validate: Latin-1", lambda t, m: ["validate", str(_write_bytes(
        t / "d.jsonl", json.dumps({**GOOD, "query": "café"}, ensure_ascii=False).encode("latin-1") + b"\n"))],
         "d.jsonl:1"),
    Case("validate: truncated last line", lambda t, m: ["validate", str(_write_bytes(
        t / "d.jsonl", (json.dumps(GOOD) + "\n" + json.dumps(GOOD)[:-5]).encode()))], "truncated"),
    Case("validate: a directory", lambda t, m: ["validate", str(t)], "directory"),
    Case("validate: missing file", lambda t, m: ["validate", str(t / "absent.jsonl")], "absent.jsonl"),
    Case("validate: empty file", lambda t, m: ["validate", str(_write_bytes(t / "d.jsonl", b"\n\n"))], "no examples"),
    Case("validate: deeply nested JSON", lambda t, m: ["validate", str(_write_bytes(
        t / "d.jsonl", b"[" * 100000 + b"]" * 100000 + b"\n"))], "d.jsonl:1"),
    # ---------------------------------------------------------------- train
    Case("train: bad line", lambda t, m: _train(t, m, _jsonl(t / "d.jsonl", [GOOD, {"query": "x"}])),
         "d.jsonl:2", ("out",)),
    Case("train: missing data", lambda t, m: _train(t, m, t / "absent.jsonl"), "absent.jsonl", ("out",)),
    Case("train: zero batch size", lambda t, m: _train(t, m, _jsonl(t / "d.jsonl", [GOOD] * 4), "--batch-size", "0"),
         "--batch-size", ("out",)),
    Case("train: negative neg-nums", lambda t, m: _train(t, m, _jsonl(t / "d.jsonl", [GOOD] * 4), "--neg-nums", "-1"),
         "--neg-nums", ("out",)),
    Case("train: unknown finetune type", lambda t, m: _train(t, m, _jsonl(t / "d.jsonl", [GOOD] * 4))[:-4]
         + ["--finetune-type", "dora"], "--finetune-type", ("out",)),
    Case("train: missing model", lambda t, m: ["train", "--train-dataset", str(_jsonl(t / "d.jsonl", [GOOD] * 4)),
                                               "--output-dir", str(t / "out"), "--model", str(t / "no-model")],
         "no-model", ("out",)),
    Case("train: output dir not empty", lambda t, m: _train(t, m, _jsonl(t / "d.jsonl", [GOOD] * 4))
         if (t / "out").mkdir() or (t / "out" / "keep.txt").write_text("x") else [], "not empty"),
    Case("train: --init-from missing", lambda t, m: _train(t, m, _jsonl(t / "d.jsonl", [GOOD] * 4), "--init-from",
                                                           str(t / "absent")), "--init-from", ("out",)),
    Case("train: attention dropout not a rate", lambda t, m: _train(t, m, _jsonl(t / "d.jsonl", [GOOD] * 4),
                                                                    "--attention-dropout", "high"),
         "--attention-dropout", ("out",)),
    Case("train: attention dropout out of range", lambda t, m: _train(t, m, _jsonl(t / "d.jsonl", [GOOD] * 4),
                                                                       "--attention-dropout", "1.5"),
         "--attention-dropout must be in [0, 1)", ("out",)),
    # ---------------------------------------------------------------- eval
    Case("eval: BEIR without queries.jsonl", lambda t, m: ["eval", "--beir", str(_beir(t / "b", queries=False)),
                                                           "-m", m["bert"]], "queries.jsonl"),
    Case("eval: qrels pointing nowhere", lambda t, m: ["eval", "--beir", str(_beir(t / "b", qrels_target="d9")),
                                                       "-m", m["bert"]], "not in corpus.jsonl"),
    Case("eval: unknown split", lambda t, m: ["eval", "--beir", str(_beir(t / "b")), "--split", "dev",
                                              "-m", m["bert"]], "unknown split"),
    Case("eval: --k 0", lambda t, m: ["eval", "--beir", str(_beir(t / "b")), "--k", "0", "-m", m["bert"]], "--k"),
    Case("eval: --k text", lambda t, m: ["eval", "--beir", str(_beir(t / "b")), "--k", "ten", "-m", m["bert"]],
         "--k"),
    Case("eval: a file as BEIR folder", lambda t, m: ["eval", "--beir", str(_jsonl(t / "d.jsonl", [GOOD])),
                                                      "-m", m["bert"]], "d.jsonl"),
    Case("eval: bad test line", lambda t, m: ["eval", "--test-dataset", str(_jsonl(t / "d.jsonl", [GOOD, "{"])),
                                              "-m", m["bert"]], "d.jsonl:2"),
    Case("eval: missing model", lambda t, m: ["eval", "--test-dataset", str(_jsonl(t / "d.jsonl", [GOOD])),
                                              "-m", str(t / "no-model")], "no-model"),
    Case("eval: per-query on BEIR", lambda t, m: ["eval", "--beir", str(_beir(t / "b")), "--candidates",
                                                  "per-query", "-m", m["bert"]], "per-query"),
    # ---------------------------------------------------------------- mine
    Case("mine: output exists", lambda t, m: ["mine", "-i", str(_jsonl(t / "d.jsonl", [GOOD])), "-o",
                                              str(_jsonl(t / "o.jsonl", [GOOD])), "-m", m["bert"]], "exists"),
    Case("mine: bad range", lambda t, m: ["mine", "-i", str(_jsonl(t / "d.jsonl", [GOOD])), "-o", str(t / "m.jsonl"),
                                          "--range", "9-3", "-m", m["bert"]], "--range", ("m.jsonl",)),
    Case("mine: bad input line", lambda t, m: ["mine", "-i", str(_jsonl(t / "d.jsonl", ["{oops"])), "-o",
                                               str(t / "m.jsonl"), "-m", m["bert"]], "d.jsonl:1", ("m.jsonl",)),
    # ---------------------------------------------------------------- index
    Case("index: missing input", lambda t, m: ["index", "-i", str(t / "absent"), "-m", m["bert"], "--db",
                                               str(t / "db")], "absent", ("db",)),
    Case("index: unsupported file", lambda t, m: ["index", "-i", str(_write_bytes(t / "doc.pdf", b"%PDF")), "-m",
                                                  m["bert"], "--db", str(t / "db")], "doc.pdf", ("db",)),
    Case("index: JSONL without text", lambda t, m: ["index", "-i", str(_jsonl(t / "docs.jsonl", [{"body": "x"}])),
                                                    "-m", m["bert"], "--db", str(t / "db")], "docs.jsonl:1", ("db",)),
    Case("index: unknown mode", lambda t, m: ["index", "-i", str(_jsonl(t / "docs.jsonl", [{"text": "x"}])), "-m",
                                              m["bert"], "--db", str(t / "db"), "--mode", "merge"], "--mode"),
    Case("index: table of another model", lambda t, m: _index_then(t, m["bert"]) + [
        "index", "-i", str(_jsonl(t / "more.jsonl", [{"id": "b", "text": "y"}])), "-m", m["qwen"], "--db",
        str(t / "db"), "--mode", "append"], "embedded with"),
    # ---------------------------------------------------------------- merge
    Case("merge: adapter missing", lambda t, m: ["merge", "--adapter", str(t / "absent"), "--output-path",
                                                 str(t / "merged")], "absent", ("merged",)),
    Case("merge: adapter from another base", lambda t, m: ["merge", "--adapter", m["adapter"], "--output-path",
                                                           str(t / "merged"), "--base-model-path", m["qwen"]],
         "was trained on", ("merged",)),
    # ---------------------------------------------------------------- ask
    Case("ask: no database", lambda t, m: ["ask", "hello", "--db", str(t / "absent.lancedb")], "absent.lancedb"),
    Case("ask: no table", lambda t, m: _index_then(t, m["bert"]) + ["ask", "hello", "--db", str(t / "db"),
                                                                     "--table", "nope"], "nope"),
    Case("ask: --top-k 0", lambda t, m: ["ask", "hello", "--top-k", "0"], "--top-k"),
    Case("ask: empty question", lambda t, m: _index_then(t, m["bert"]) + ["ask", "   ", "--db", str(t / "db")],
         "empty"),
]


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _index_then(t: Path, model: str) -> list[str]:
    """Build a small table first (outside the case's own command); returns nothing to add."""
    from embedrag import Encoder
    from embedrag.engine.data.documents import Document
    from embedrag.engine.retrieval.store import build_index

    build_index([Document(id="a", text="a small document")], Encoder.load(model, device="cpu"), db=t / "db",
                table="docs", fts=False)
    return []


@pytest.fixture(scope="module")
def models(tiny_bert, tiny_qwen2, tmp_path_factory):
    from embedrag.engine.training.train import train
    from embedrag.engine.training.train_config import TrainConfig

    folder = tmp_path_factory.mktemp("bad-input")
    data = _jsonl(folder / "d.jsonl", [GOOD] * 4)
    run = train(TrainConfig(train_datasets=[str(data)], output_dir=str(folder / "run"), model=str(tiny_bert),
                            finetune_type="lora", batch_size=2, max_steps=1, tensorboard=False,
                            save_on_epoch_end=False))
    return {"bert": str(tiny_bert), "qwen": str(tiny_qwen2), "adapter": str(run.final_dir)}


def test_the_suite_is_broad():
    commands = {case.name.split(":")[0] for case in CASES}
    assert len(CASES) >= 30 and commands == {"validate", "train", "eval", "mine", "index", "merge", "ask"}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_clear_line(case: Case, models, tmp_path):
    args = case.build(tmp_path, models)
    before = set(tmp_path.rglob("*"))
    result = runner.invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code not in (0, None), result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    usage = "Usage:" in result.output  # Typer's own option errors (type, range) are one box
    report = args[0] == "validate"  # validate lists every problem as FILE:LINE: message, then stats
    assert len(errors) == 1 or usage or report, result.output
    assert case.expect in result.output, result.output
    for name in case.outputs:
        assert not (tmp_path / name).exists(), f"{name} left behind"
    leftovers = [p for p in set(tmp_path.rglob("*")) - before if ".tmp" in p.name]
    assert not leftovers, leftovers
