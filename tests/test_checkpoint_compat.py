"""A checkpoint written by the code before the trainer split resumes with today's code.

``tests/fixtures/checkpoint-bbc09e8/`` was made by ``tests/fixtures/make_checkpoint_fixture.py``
run on commit bbc09e8 (before the engine became subpackages and the trainer was split):
the JSON files of its ``checkpoint-epoch-1/`` as that code wrote them, and the structure of
its binary files (no weights are committed). Today's code trains the same run; its
checkpoint must have the same files and structure, and resuming it with the old
``trainer_state.json`` in place must end on the weights of an uninterrupted run.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from embedrag import TrainCallback, TrainConfig, train

FIXTURES = Path(__file__).parent / "fixtures"
OLD = FIXTURES / "checkpoint-bbc09e8"


def _maker():
    spec = importlib.util.spec_from_file_location("make_checkpoint_fixture", FIXTURES / "make_checkpoint_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _StopAfterFirstEpoch(TrainCallback):
    def on_save(self, path):
        if path.name == "checkpoint-epoch-1":
            raise KeyboardInterrupt


def _keys(value):
    """A JSON value's shape: the nested keys, not the numbers (losses and clocks differ by run)."""
    if isinstance(value, dict):
        return {k: _keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_keys(v) for v in value]
    return type(value).__name__


def _owned_by_embedrag(name: str, shape):
    """The part of a binary file's structure embedrag decides (torch decides the rest of its states)."""
    if name == "optimizer.pt":
        return len(shape["state"]), len(shape["param_groups"]), [len(g["params"]) if isinstance(g["params"], list)
                                                                 else g["params"]["times"]
                                                                 for g in shape["param_groups"]]
    if name == "scheduler.pt":
        return shape["base_lrs"], shape["last_epoch"]
    if name == "rng_state.pt":
        return sorted(shape)
    return shape  # safetensors: every tensor name, shape and dtype


@pytest.fixture(scope="module")
def runs(tiny_bert, tmp_path_factory):
    maker = _maker()
    folder = tmp_path_factory.mktemp("compat")
    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in maker.training_rows()))

    def config(out, **extra):
        return TrainConfig(train_datasets=[str(data)], output_dir=str(folder / out), model=str(tiny_bert),
                           **maker.OPTIONS, **extra)

    straight = train(config("straight"))
    with pytest.raises(KeyboardInterrupt):
        train(config("resumed"), _StopAfterFirstEpoch())
    return maker, config, straight, folder / "resumed" / "checkpoint-epoch-1"


def test_todays_checkpoint_has_the_old_files_and_structure(runs):
    maker, _, _, checkpoint = runs
    manifest = json.loads((OLD / "manifest.json").read_text())
    assert sorted(p.name for p in checkpoint.iterdir()) == manifest["files"]
    for name, old_shape in manifest["binary"].items():
        new_shape = json.loads(json.dumps(maker.file_structure(checkpoint / name)))
        assert _owned_by_embedrag(name, new_shape) == _owned_by_embedrag(name, old_shape), name
    for old_file in (OLD / checkpoint.name).iterdir():
        old = json.loads(old_file.read_text())
        new = json.loads((checkpoint / old_file.name).read_text())
        assert _keys(new) == _keys(old), old_file.name


@pytest.mark.parametrize("older", [False, True], ids=["bbc09e8", "before-the-validation-guard"])
def test_the_old_trainer_state_resumes_to_the_uninterrupted_weights(runs, tmp_path, older):
    _, config, straight, checkpoint = runs
    old_state = json.loads((OLD / checkpoint.name / "trainer_state.json").read_text())
    assert (old_state["global_step"], old_state["epoch"]) == (4, 1)
    if older:  # a checkpoint from before the validation guard has no per-query scores
        for key in ("base_per_query", "best_per_query", "last_eval_step"):
            del old_state[key]
    output = tmp_path / "run"
    shutil.copytree(checkpoint, output / checkpoint.name)
    (output / checkpoint.name / "trainer_state.json").write_text(json.dumps(old_state))
    resumed = train(config(output, resume_from_checkpoint="latest"))
    assert resumed.global_step == straight.global_step == 8
    a = load_file(straight.final_dir / "adapter_model.safetensors")
    b = load_file(resumed.final_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    summary = json.loads((output / "training_summary_report.json").read_text())
    assert summary["global_step"] == 8 and summary["epochs_completed"] == 2
