"""One precision vocabulary (auto, fp32, bf16, fp16) with the original scripts' spellings as aliases."""

from __future__ import annotations

import pytest

from embedrag.engine.core.errors import ConfigError
from embedrag.engine.encoding.encoder import resolve_precision
from embedrag.engine.encoding.precision import accelerate_mixed_precision, canonical_precision
from embedrag.engine.training.train_config import TrainConfig


@pytest.mark.parametrize(("spelled", "canonical"), [
    ("auto", "auto"), ("fp32", "fp32"), ("no", "fp32"), ("float32", "fp32"), ("BF16", "bf16"),
    ("bfloat16", "bf16"), ("fp16", "fp16"), ("float16", "fp16"), ("half", "fp16")])
def test_every_spelling_maps_to_one_word(spelled, canonical):
    assert canonical_precision(spelled) == canonical


def test_unknown_spellings_and_auto_where_it_has_no_meaning_name_the_option():
    with pytest.raises(ConfigError, match="--precision must be one of auto, fp32, bf16, fp16, got 'int8'"):
        canonical_precision("int8", "--precision")
    with pytest.raises(ConfigError, match="--mixed-precision must be one of fp32, bf16, fp16"):
        accelerate_mixed_precision("auto")
    assert [accelerate_mixed_precision(p) for p in ("fp32", "no", "bf16", "float16")] == ["no", "no", "bf16", "fp16"]
    assert resolve_precision("float32") == "fp32" and resolve_precision("bfloat16") == "bf16"


def test_train_accepts_both_vocabularies(tmp_path):
    base = dict(train_datasets=[str(tmp_path / "t.jsonl")], output_dir=str(tmp_path / "o"))
    (tmp_path / "t.jsonl").write_text('{"query": "q", "pos": ["p"]}\n')
    for value in ("fp32", "no", "bf16", "fp16"):
        TrainConfig(**base, mixed_precision=value).validate()
    with pytest.raises(ConfigError, match="--mixed-precision"):
        TrainConfig(**base, mixed_precision="int8").validate()

