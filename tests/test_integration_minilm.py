"""Integration on the bundled all-MiniLM-L6-v2 and the SciFact slice (marked slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import DATASETS

from embedrag import Encoder
from embedrag.engine.training.train import train
from embedrag.engine.training.train_config import TrainConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slice_subset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slice")
    lines = (DATASETS / "scifact-slice" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    (folder / "train.jsonl").write_text("\n".join(lines[:16]) + "\n", encoding="utf-8")
    test = (DATASETS / "scifact-slice" / "test.jsonl").read_text(encoding="utf-8").splitlines()
    (folder / "test.jsonl").write_text("\n".join(test[:12]) + "\n", encoding="utf-8")
    return folder


def test_full_finetune_of_minilm_saves_a_sentence_transformers_model(slice_subset, tmp_path):
    from sentence_transformers import SentenceTransformer

    result = train(TrainConfig(
        train_datasets=[str(slice_subset / "train.jsonl")], output_dir=str(tmp_path / "out"),
        model="sentence-transformers/all-MiniLM-L6-v2", finetune_type="full", batch_size=8,
        max_steps=2, neg_nums=1, query_max_len=64, passage_max_len=128,
        eval_dataset=str(slice_subset / "test.jsonl"), save_on_epoch_end=False))
    summary = json.loads((tmp_path / "out" / "training_summary_report.json").read_text())
    assert set(summary["base_metrics"]) >= {"ndcg@10", "loss"}
    assert np.isfinite(summary["final_loss"])

    texts = ["Vitamin D deficiency is associated with tuberculosis.", "膽固醇與心臟病的關係"]
    ours = Encoder.load(result.final_dir, device="cpu")
    assert ours.config.passage_max_length == 128 and ours.config.pooling == "mean"
    reference = SentenceTransformer(str(result.final_dir), device="cpu")
    np.testing.assert_allclose(ours.encode(texts), reference.encode(texts), atol=1e-5)
    base = Encoder.load("all-MiniLM-L6-v2", device="cpu").encode(texts)
    assert np.abs(ours.encode(texts) - base).max() > 1e-4  # it did change


def test_qlora_adapter_on_minilm_reloads_quantised(slice_subset, tmp_path):
    result = train(TrainConfig(
        train_datasets=[str(slice_subset / "train.jsonl")], output_dir=str(tmp_path / "out"),
        model="all-MiniLM-L6-v2", finetune_type="qlora", batch_size=8, max_steps=2, neg_nums=1,
        query_max_len=64, passage_max_len=128, save_on_epoch_end=False))
    adapter = json.loads((result.final_dir / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    encoder = Encoder.load(result.final_dir, device="cpu")
    assert getattr(encoder.model.get_base_model(), "is_quantized", False)
    vectors = encoder.encode(["a claim about cells"])
    assert vectors.shape == (1, 384) and np.isfinite(vectors).all()
