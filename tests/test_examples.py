"""The examples run: the Python API walk-through on a tiny model, the accelerate configs parse."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_python_api_example_runs(tiny_bert, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(EXAMPLES / "python_api.py"), "--model", str(tiny_bert),
                             "--workdir", str(tmp_path / "work"), "--steps", "2"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trained 2 steps" in result.stdout and "tuned: nDCG@10" in result.stdout and "[1]" in result.stdout
    assert (tmp_path / "work" / "merged" / "embedrag.json").is_file()


def test_accelerate_configs_and_scripts_are_well_formed():
    for config in (EXAMPLES / "accelerate").glob("*.yaml"):
        data = yaml.safe_load(config.read_text())
        assert data["num_processes"] >= 2 and data["distributed_type"], config
    for script in EXAMPLES.glob("train_*.sh"):
        text = script.read_text()
        assert text.startswith("#!/usr/bin/env bash") and "embedrag train" in text
        assert os.access(script, os.X_OK)


def test_cpu_accelerate_config_starts_two_processes(tiny_bert, tmp_path):
    import json

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"query": f"q {i}", "pos": [f"p {i}"], "neg": [f"n {i}"]}) + "\n"
                            for i in range(8)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                             str(EXAMPLES / "accelerate" / "cpu_two_processes.yaml"), "-m", "embedrag", "train",
                             "--train-dataset", str(data), "--output-dir", str(tmp_path / "out"), "--model",
                             str(tiny_bert), "--finetune-type", "lora", "--batch-size", "2", "--max-steps", "2"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "training_summary_report.json").read_text())
    assert summary["start"]["processes"] == 2
