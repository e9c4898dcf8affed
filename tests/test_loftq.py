"""QLoRA's LoftQ start: the 4-bit base + adapter begins closer to the full-precision model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedrag import Encoder
from embedrag.engine.training.finetune import (
    LoraSettings,
    load_training_encoder,
    prepare_for_training,
)

TEXTS = ["tell me about apple", "the river runs to the ocean", "piano music", "台北的牛肉麵", "x" * 60]


def _start(model, init):
    encoder = load_training_encoder(str(model), "qlora", quantization_bits=4, device="cpu")
    encoder.config.extra = {"finetune": {}}
    prepare_for_training(encoder, "qlora", LoraSettings(r=8, alpha=16, dropout=0.0), qlora_init=init)
    encoder.model.eval()
    return encoder


@pytest.mark.parametrize("model_fixture", ["tiny_bert", "tiny_qwen2"])
def test_loftq_start_is_closer_to_full_precision_than_the_4bit_base(model_fixture, request):
    model = request.getfixturevalue(model_fixture)
    reference = Encoder.load(model, device="cpu").encode(TEXTS)
    errors = {}
    for init in ("gaussian", "loftq"):
        encoder = _start(model, init)
        assert encoder.config.extra["finetune"]["qlora_init"] == init
        errors[init] = float(np.abs(encoder.encode(TEXTS) - reference).max())
    # gaussian starts with B = 0: exactly the NF4 base and its error
    assert errors["loftq"] < 0.7 * errors["gaussian"], errors


def test_loftq_run_is_recorded_and_merges_exactly(tiny_bert, tmp_path):
    from test_train import _config, _toy_rows

    from embedrag.engine.training.merge import merge
    from embedrag.engine.training.train import train
    from embedrag.engine.training.train_config import TrainConfig

    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in _toy_rows(0)) + "\n")
    assert TrainConfig.qlora_init == "gaussian"  # LoftQ is opt-in: it measured no better on SciFact
    result = train(_config(tiny_bert, data, tmp_path / "out", "qlora", max_steps=4, qlora_init="loftq"))
    record = json.loads((result.final_dir / "embedrag.json").read_text())["extra"]["finetune"]
    assert record["qlora_init"] == "loftq"
    assert json.loads((result.final_dir / "training_config.json").read_text())["qlora_init"] == "loftq"
    trained = Encoder.load(result.final_dir, device="cpu").encode(TEXTS)
    merge(result.final_dir, tmp_path / "merged", verify=False)
    merged = Encoder.load(tmp_path / "merged", device="cpu").encode(TEXTS)
    assert np.abs(merged - trained).max() < 1e-5
