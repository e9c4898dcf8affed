"""Scale-out: cross-device negatives over 2 CPU processes (gloo) and GradCache equal the
single-process full-batch step, loss and gradients and weights."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HELPER = Path(__file__).resolve().parent / "helpers" / "step_probe.py"
TOPICS = ["apple", "river", "music", "stone", "cloud", "train", "green", "paper", "light",
          "sugar", "horse", "glass", "tiger", "ocean", "piano", "maple"]


@pytest.fixture(scope="module")
def no_dropout_bert(tiny_bert, tmp_path_factory):
    """The tiny BERT without dropout: equality of two computations needs the same masks,
    and a full batch and its chunks draw them in a different order."""
    import shutil

    folder = tmp_path_factory.mktemp("bert-no-dropout") / "model"
    shutil.copytree(tiny_bert, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("scale-data") / "train.jsonl"
    rows = []
    for i, topic in enumerate(TOPICS):
        others = rng.sample([t for t in TOPICS if t != topic], 1 + i % 3)  # 1-3 negatives: ragged shards
        rows.append({"query": f"tell me about {topic}", "pos": [f"{topic}: all about the {topic}"],
                     "neg": [f"{o}: all about the {o}" for o in others]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _config(model, data, out, finetune_type, batch_size, **extra):
    return dict(train_datasets=[str(data)], output_dir=str(out), model=str(model), finetune_type=finetune_type,
                batch_size=batch_size, neg_nums=2, max_steps=1, lr=1e-2, warmup_proportion=0.0,
                save_on_epoch_end=False, tensorboard=False, lora_dropout=0.0, seed=3, **extra)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _probe(config: dict, out: Path, processes: int = 1) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if processes == 1:
        command = [sys.executable, str(HELPER), str(path), str(out)]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(HELPER), str(path), str(out)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt") for r in range(processes)]


@pytest.fixture(scope="module")
def one_process(no_dropout_bert, data, tmp_path_factory):
    """The single-process step of ``(finetune_type, batch_size)`` on the dropout-free BERT,
    probed once per module: several tests compare against the same reference step."""
    probes: dict[tuple[str, int], dict] = {}

    def probe(finetune_type: str, batch_size: int) -> dict:
        if (finetune_type, batch_size) not in probes:
            folder = tmp_path_factory.mktemp(f"one-{finetune_type}-{batch_size}")
            config = _config(no_dropout_bert, data, folder / "out", finetune_type, batch_size)
            probes[finetune_type, batch_size] = _probe(config, folder / "probe")[0]
        return probes[finetune_type, batch_size]

    return probe


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _max_update_diff(a: dict, b: dict) -> float:
    """Weights after the AdamW step, compared where the gradient is not vanishing: Adam's
    first step is lr * g / (|g| + eps), which turns float noise in a ~0 gradient (LoRA's
    zero-initialised B) into a full-size step of either sign."""
    assert a["weights"].keys() == b["weights"].keys()
    worst, compared = 0.0, 0
    for name, grad in b["grads"].items():
        conditioned = grad.abs() > 1e-4
        diff = (a["weights"][name] - b["weights"][name]).abs()[conditioned]
        compared += diff.numel()
        worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
    assert compared > 100
    return worst


@pytest.mark.parametrize("finetune_type", ["lora", "full"])
def test_two_processes_with_cross_device_negatives_equal_one_process(no_dropout_bert, data, tmp_path,
                                                                      one_process, finetune_type):
    single = one_process(finetune_type, 8)
    ranks = _probe(_config(no_dropout_bert, data, tmp_path / "o2", finetune_type, 4), tmp_path / "two", 2)
    assert single["queries"] == 8 and [r["queries"] for r in ranks] == [4, 4]
    assert sum(r["passages"] for r in ranks) == single["passages"] > 8 + 8  # hard negatives present
    for rank in ranks:
        assert abs(rank["loss"] - single["loss"]) < 1e-5
        assert _max_diff(rank["grads"], single["grads"]) < 1e-5
        assert _max_update_diff(rank, single) < 1e-5
    assert _max_diff(ranks[0]["weights"], ranks[1]["weights"]) == 0.0


def test_without_cross_device_negatives_each_process_sees_its_own_batch(no_dropout_bert, data, tmp_path,
                                                                          one_process):
    single = one_process("lora", 8)
    ranks = _probe(_config(no_dropout_bert, data, tmp_path / "o2", "lora", 4, cross_device_negatives=False),
                   tmp_path / "two", 2)
    assert abs(ranks[0]["loss"] - single["loss"]) > 1e-3  # fewer negatives: a different loss
    assert _max_diff(ranks[0]["weights"], ranks[1]["weights"]) == 0.0


@pytest.mark.parametrize("finetune_type", ["lora", "full"])
def test_gradcache_equals_the_full_batch(no_dropout_bert, data, tmp_path, one_process, finetune_type):
    full = one_process(finetune_type, 16)
    cached = _probe(_config(no_dropout_bert, data, tmp_path / "o2", finetune_type, 16, mini_batch_size=4),
                    tmp_path / "cached")[0]
    assert abs(cached["loss"] - full["loss"]) < 1e-5
    assert _max_diff(cached["grads"], full["grads"]) < 1e-5
    assert _max_update_diff(cached, full) < 1e-5


def test_gradcache_with_cross_device_negatives(no_dropout_bert, data, tmp_path, one_process):
    single = one_process("lora", 8)
    ranks = _probe(_config(no_dropout_bert, data, tmp_path / "o2", "lora", 4, mini_batch_size=3),
                   tmp_path / "two", 2)
    for rank in ranks:
        assert abs(rank["loss"] - single["loss"]) < 1e-5
        assert _max_diff(rank["grads"], single["grads"]) < 1e-5


def test_gradcache_replays_dropout(tiny_bert, data, tmp_path):
    """With dropout on, the re-encoding pass must draw the masks of the cached pass, or the
    cached embedding gradients would belong to other activations: the loss then still
    falls over a few steps (a sanity check that training works with dropout)."""
    from embedrag.engine.training.train import TrainCallback, train
    from embedrag.engine.training.train_config import TrainConfig

    losses = []

    class Recorder(TrainCallback):
        def on_step(self, log):
            losses.append(log["loss"])

    config = _config(tiny_bert, data, tmp_path / "out", "lora", 8, mini_batch_size=3)
    config.update(max_steps=12, lr=5e-3, lora_dropout=0.1)
    train(TrainConfig(**config), Recorder())
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3]), losses


def test_encoding_in_two_processes_equals_one(tiny_bert, tmp_path):
    import numpy as np

    from embedrag import Encoder
    from embedrag.engine.encoding.parallel import EncoderPool

    encoder = Encoder.load(tiny_bert, device="cpu", passage_max_length=48)
    texts = [f"passage {i} " + "word " * (i % 23) for i in range(150)]
    single = encoder.encode(texts, "passage", batch_size=16)
    seen = []
    with EncoderPool(encoder, 2) as pool:
        parallel = pool.encode(texts, "passage", batch_size=16, progress=lambda done, total: seen.append(done))
        again = pool.encode(texts[:40], "query", batch_size=16)  # the pool serves several calls
    np.testing.assert_allclose(parallel, single, atol=1e-6)
    np.testing.assert_allclose(again, encoder.encode(texts[:40], "query", batch_size=16), atol=1e-6)
    assert seen[-1] == len(texts) and seen == sorted(seen)


def test_eval_with_two_processes_gives_the_same_metrics(tiny_bert, tmp_path):
    from typer.testing import CliRunner

    from embedrag.cli import app

    slice_folder = Path(__file__).resolve().parents[1] / "datasets" / "scifact-slice"
    reports = []
    for processes in (1, 2):
        out = tmp_path / f"report-{processes}.json"
        result = CliRunner().invoke(app, ["eval", "--beir", str(slice_folder), "--model", f"tiny={tiny_bert}",
                                          "--no-cache", "--num-processes", str(processes), "--max-length", "64",
                                          "--output", str(out)])
        assert result.exit_code == 0, result.output
        reports.append(json.loads(out.read_text())["models"][0]["metrics"])
    assert reports[0] == pytest.approx(reports[1], abs=1e-9)
    assert reports[0]["ndcg@10"] > 0


def test_num_processes_relaunches_through_accelerate(tiny_bert, data, tmp_path):
    """`embedrag train --num-processes 2` runs two gloo processes; only the main one writes."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "embedrag", "train", "--train-dataset", str(data), "--output-dir", str(out),
               "--model", str(tiny_bert), "--finetune-type", "lora", "--batch-size", "4", "--max-steps", "3",
               "--save-steps", "2", "--no-save-on-epoch-end", "--num-processes", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout.count("training summary") == 1  # one process reports
    summary = json.loads((out / "training_summary_report.json").read_text())
    assert summary["start"]["processes"] == 2 and summary["global_step"] == 3
    assert summary["start"]["start_step"] == 0
    assert (out / "final" / "adapter_model.safetensors").is_file()
    assert (out / "checkpoint-step-2" / "trainer_state.json").is_file()
    resumed = subprocess.run([*command[:-2], "--max-steps", "4", "--num-processes", "2",
                              "--resume-from-checkpoint", "latest"], env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads((out / "training_summary_report.json").read_text())
    assert summary["global_step"] == 4 and summary["start"]["start_step"] == 2  # latest = checkpoint-step-2
    assert summary["start"]["learning_rate"] == 1e-4  # lora's default, recorded as used
