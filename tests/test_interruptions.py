"""Killed runs lose nothing: SIGKILL at varied points of training (checkpoint writes
included) and of an upsert, then a re-run ends exactly where a clean run ends."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
TOPICS = ["apple", "river", "music", "stone", "cloud", "train", "green", "paper", "light",
          "sugar", "horse", "glass", "tiger", "ocean", "piano", "maple"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("kill-data") / "train.jsonl"
    rows = [{"query": f"tell me about {t}", "pos": [f"{t}: all about the {t}"],
             "neg": [f"{o}: all about the {o}" for o in TOPICS if o != t][:3]} for t in TOPICS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _train_command(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "embedrag", "train", "--train-dataset", str(data), "--output-dir", str(out),
            "--model", str(model), "--finetune-type", "lora", "--batch-size", "4", "--max-steps", "10",
            "--save-steps", "1", "--no-save-on-epoch-end", "--lora-dropout", "0.1", "--seed", "5", *extra]


def _kill_when(process: subprocess.Popen, ready, delay: float, timeout: float = 120) -> bool:
    """SIGKILL ``process`` ``delay`` seconds after ``ready()`` holds; False if it ended first."""
    deadline = time.time() + timeout
    while not ready():
        if process.poll() is not None or time.time() > deadline:
            return False
        time.sleep(0.05)
    time.sleep(delay)
    if process.poll() is not None:
        return False
    process.kill()
    process.wait()
    return True


def _checkpoints(out: Path) -> int:
    return sum(1 for c in out.glob("checkpoint-*") if (c / "trainer_state.json").is_file())


def test_sigkill_during_training_then_resume_reaches_the_same_weights(tiny_bert, data, tmp_path):
    """Five kills in one run's life, each resumed with ``latest`` (so resumes of resumes are
    covered too): after 1..5 complete checkpoints and a random 0-0.3 s later, i.e. mid-step
    or mid-checkpoint-write. The last resume must end at the clean run's weights."""
    clean = tmp_path / "clean"
    subprocess.run(_train_command(tiny_bert, data, clean), env=ENV, check=True, capture_output=True, timeout=300)
    reference = load_file(clean / "final" / "adapter_model.safetensors")
    rng = random.Random(1234)
    out = tmp_path / "killed"
    killed = 0
    for kill in range(5):
        extra = ("--resume-from-checkpoint", "latest") if kill else ()
        process = subprocess.Popen(_train_command(tiny_bert, data, out, *extra), env=ENV,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        killed += _kill_when(process, lambda n=kill + 1: _checkpoints(out) >= n, rng.uniform(0.0, 0.3))
    resumed = subprocess.run(_train_command(tiny_bert, data, out, "--resume-from-checkpoint", "latest"),
                             env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-1500:] + resumed.stderr[-1500:]
    weights = load_file(out / "final" / "adapter_model.safetensors")
    assert max(float((weights[k] - reference[k]).abs().max()) for k in reference) < 1e-6
    assert not list(out.glob(".*tmp*")), "a half-written folder was left behind"
    assert killed >= 4  # the kills must really have landed mid-way


def test_sigkill_during_upsert_then_rerun_gives_the_clean_rows(tiny_bert, tmp_path):
    """Three ``embedrag index --mode upsert`` processes killed part-way; the re-run of each
    (the library's ``index``, here in-process: a process start costs ~7 s) leaves exactly
    the rows of an uninterrupted run."""
    from embedrag import index
    from embedrag.engine.retrieval.store import open_table

    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": f"d{i}", "text": f"document {i} about {TOPICS[i % 16]}. " * 3})
                            + "\n" for i in range(600)))

    def command(db: Path) -> list[str]:
        return [sys.executable, "-m", "embedrag", "index", "-i", str(docs), "-m", str(tiny_bert), "--db", str(db),
                "--table", "docs", "--mode", "upsert", "--no-fts", "--batch-size", "16"]

    def upsert(db: Path) -> None:
        index([docs], str(tiny_bert), db=db, table="docs", mode="upsert", fts=False, encode_batch_size=16)

    def rows(db: Path) -> set[tuple[str, str]]:
        table = open_table(db, "docs").to_arrow().select(["chunk_id", "text"]).to_pydict()
        return set(zip(table["chunk_id"], table["text"]))

    upsert(tmp_path / "clean")
    expected = rows(tmp_path / "clean")
    assert len(expected) >= 600
    rng = random.Random(99)
    killed = 0
    for run in range(3):
        db = tmp_path / f"db{run}"
        process = subprocess.Popen(command(db), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Kill once the table exists and holds part of the rows, a random moment later.
        killed += _kill_when(process, lambda d=db: (d / "docs.lance").exists(), rng.uniform(0.2, 1.5))
        upsert(db)
        assert rows(db) == expected
        assert open_table(db, "docs").count_rows() == len(expected)
    assert killed >= 2
