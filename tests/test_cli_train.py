"""``embedrag train`` on the command line: aliases, dry run, errors before model loading."""

from __future__ import annotations

import json

from test_train import _toy_rows
from typer.testing import CliRunner

from embedrag.cli import app

runner = CliRunner()


def _data(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in _toy_rows()) + "\n")
    return path


def test_dry_run_with_the_original_option_names(tiny_bert, tmp_path):
    result = runner.invoke(app, [
        "train", "--model_name_or_path", str(tiny_bert), "--train_dataset", str(_data(tmp_path)),
        "--output_dir", str(tmp_path / "out"), "--finetune_type", "lora", "--neg_nums", "3",
        "--batch_size", "4", "--query_max_len", "32", "--passage_max_len", "64", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "trainable parameters" in result.output
    assert "first batch: queries [4," in result.output
    assert "3.0 hard negatives per query" in result.output
    assert not (tmp_path / "out").exists()


def test_a_short_run_writes_the_output_layout(tiny_bert, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, [
        "train", "--model", str(tiny_bert), "--train-dataset", str(_data(tmp_path)),
        "--output-dir", str(out), "--finetune-type", "lora", "--batch-size", "8", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert "training summary" in result.output
    for name in ("final/adapter_model.safetensors", "final/embedrag.json", "checkpoint-epoch-1/trainer_state.json",
                 "detailed_training_logs.json", "training_losses.json", "training_summary_report.json"):
        assert (out / name).exists(), name
    assert any((out / "runs").iterdir())


def test_bad_data_fails_before_the_model_is_loaded(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "pos": "not a list"}\n')
    result = runner.invoke(app, ["train", "--model", "embedrag-tests/no-such-model",
                                 "--train-dataset", str(bad), "--output-dir", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert f"{bad}:1: \"pos\" must be a non-empty list of strings" in result.output
    assert "no-such-model" not in result.output


def test_impossible_combination_is_one_line(tmp_path):
    result = runner.invoke(app, ["train", "--train-dataset", str(_data(tmp_path)), "--output-dir",
                                 str(tmp_path / "o"), "--finetune-type", "full", "--quantization-bits", "4"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ["error: --quantization-bits only applies to --finetune-type qlora, not full"]


def test_every_train_option_is_a_trainconfig_field_with_its_default():
    """Options are declared once, as the command's parameters; TrainConfig's defaults agree."""
    import dataclasses
    import inspect

    from embedrag import TrainConfig
    from embedrag.cli.train import RUN_OPTIONS, config_from_options, train

    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    parameters = inspect.signature(train).parameters
    defaults = {name: p.default for name, p in parameters.items() if p.default is not inspect.Parameter.empty}
    for name, default in defaults.items():
        if name in RUN_OPTIONS:
            continue
        field_default = fields[name].default
        assert field_default == (float(default) if name == "attention_dropout" else default), name
    options = {**defaults, "train_dataset": ["train.jsonl"], "output_dir": "out"}
    assert config_from_options(options) == TrainConfig(train_datasets=["train.jsonl"], output_dir="out").validate()
