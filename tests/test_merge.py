"""Merging adapters: the merged folder reproduces the adapter model everywhere it loads."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from safetensors import safe_open
from test_train import _config, _toy_rows
from typer.testing import CliRunner

from embedrag import Encoder
from embedrag.cli import app
from embedrag.engine.core.errors import ConfigError
from embedrag.engine.training.merge import merge
from embedrag.engine.training.train import train

TEXTS = ["tell me about apple", "apple apple: all about the apple", "牛肉麵", "x", "glass " * 40]
runner = CliRunner()


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("merge-data") / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in _toy_rows()) + "\n")
    return path


def _adapter(model, data, out, finetune_type="lora", **overrides):
    return train(_config(model, data, out, finetune_type, max_steps=8, **overrides)).final_dir


@pytest.fixture(scope="module")
def bert_lora(tiny_bert, toy_file, tmp_path_factory):
    return _adapter(tiny_bert, toy_file, tmp_path_factory.mktemp("bert-lora") / "out")


@pytest.fixture(scope="module")
def qwen_lora(tiny_qwen2, toy_file, tmp_path_factory):
    return _adapter(tiny_qwen2, toy_file, tmp_path_factory.mktemp("qwen-lora") / "out",
                    query_instruction="Query: ")


def _hand_pooled(folder, texts, kind="passage"):
    """Plain transformers + the pooling recorded in embedrag.json, by explicit indexing."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    settings = json.loads((folder / "embedrag.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    prefix = settings["query_instruction"] if kind == "query" else settings["passage_instruction"]
    rows = []
    for text in texts:
        ids = tokenizer(prefix + text, truncation=True, max_length=settings["passage_max_length"],
                        return_tensors="pt")
        with torch.no_grad():
            hidden = model(**ids).last_hidden_state[0]
        vector = {"mean": hidden.mean(0), "cls": hidden[0], "last": hidden[-1]}[settings["pooling"]]
        rows.append((vector / vector.norm()).numpy())
    return np.stack(rows)


@pytest.mark.parametrize("adapter_fixture", ["bert_lora", "qwen_lora"])
def test_lora_merge_reproduces_the_adapter_model(adapter_fixture, request, tmp_path):
    from sentence_transformers import SentenceTransformer

    adapter = request.getfixturevalue(adapter_fixture)
    result = merge(adapter, tmp_path / "merged")
    assert result.verified and result.max_abs_diff < 1e-5
    reference = Encoder.load(adapter, device="cpu")
    merged = Encoder.load(tmp_path / "merged", device="cpu")
    for kind in ("query", "passage"):
        expected = reference.encode(TEXTS, kind)
        assert np.abs(merged.encode(TEXTS, kind) - expected).max() < 1e-5
    st = SentenceTransformer(str(tmp_path / "merged"), device="cpu")
    assert np.abs(st.encode(TEXTS) - reference.encode(TEXTS, "passage")).max() < 1e-5
    assert np.abs(_hand_pooled(tmp_path / "merged", TEXTS) - reference.encode(TEXTS)).max() < 1e-5
    if adapter_fixture == "qwen_lora":
        assert np.abs(st.encode(TEXTS, prompt_name="query") - reference.encode(TEXTS, "query")).max() < 1e-5


def test_merged_folder_has_no_adapter_files_and_needs_no_peft(bert_lora, tmp_path):
    merge(bert_lora, tmp_path / "merged")
    names = {p.name for p in (tmp_path / "merged").iterdir()}
    assert "adapter_config.json" not in names and "adapter_model.safetensors" not in names
    assert {"model.safetensors", "config.json", "modules.json", "embedrag.json", "README.md"} <= names
    code = ("import sys; from transformers import AutoModel; "
            f"AutoModel.from_pretrained({str(tmp_path / 'merged')!r}); print('peft' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
    assert not list(tmp_path.glob(".merged.tmp-*"))


@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_merges_into_the_dequantized_base(tiny_bert, toy_file, tmp_path, bits):
    # LoftQ (opt-in) for 4-bit: its start must not break the exact merge either
    adapter = _adapter(tiny_bert, toy_file, tmp_path / "out", "qlora", quantization_bits=bits, qlora_init="loftq")
    result = merge(adapter, tmp_path / "merged")
    assert result.qlora_base == "dequantized" and result.verified
    assert result.min_cosine >= 0.999
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert "quantization_config" not in config
    original = merge(adapter, tmp_path / "original", qlora_base="original")
    assert original.verified is None and original.min_cosine <= result.min_cosine
    started = json.loads((adapter / "embedrag.json").read_text())["extra"]["finetune"]["qlora_init"]
    assert started == ("loftq" if bits == 4 else "gaussian")
    assert any("LoftQ" in note for note in original.notes) == (bits == 4)


@pytest.mark.parametrize("spelled", ["bfloat16", "bf16"])  # the original's word and embedrag's
def test_bfloat16_weights_on_disk(bert_lora, tmp_path, spelled):
    assert merge(bert_lora, tmp_path / "bf16", training_precision=spelled).precision == "bfloat16"
    with safe_open(tmp_path / "bf16" / "model.safetensors", "pt") as handle:
        dtypes = {str(handle.get_tensor(k).dtype) for k in handle.keys()}
    assert dtypes == {"torch.bfloat16"}
    vectors = Encoder.load(tmp_path / "bf16", device="cpu").encode(TEXTS)
    assert np.isfinite(vectors).all() and vectors.shape == (len(TEXTS), 32)


def _tiny_distilbert(folder, tiny_bert):
    """Same hidden size as the tiny BERT, an encoder too, but no 'query' modules."""
    import shutil

    from transformers import DistilBertConfig, DistilBertModel

    config = DistilBertConfig(vocab_size=2000, dim=32, n_layers=1, n_heads=2, hidden_dim=64)
    DistilBertModel(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_bert / name, folder / name)
    return folder


def test_errors_are_one_line_and_leave_nothing(bert_lora, tiny_bert, tiny_qwen2, toy_file, tmp_path):
    named = _adapter(tiny_bert, toy_file, tmp_path / "named", lora_target_modules="query,value")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("x")
    cases = [
        (["--lora-adapter-path", str(bert_lora), "--base-model-path", str(tiny_qwen2)], "hidden size|encoder"),
        (["--lora-adapter-path", str(named), "--base-model-path",
          str(_tiny_distilbert(tmp_path / "distil", tiny_bert))], "does not fit base"),
        (["--lora-adapter-path", str(bert_lora), "--output-path", str(occupied)], "exists and is not empty"),
        (["--lora-adapter-path", str(bert_lora), "--training-precision", "int4"], "--training-precision"),
        (["--lora-adapter-path", str(tmp_path / "nowhere")], "does not exist"),
        (["--lora-adapter-path", str(tiny_bert)], "not a LoRA adapter"),
    ]
    for args, expected in cases:
        out = tmp_path / "out-merged"
        if "--output-path" not in args:
            args = [*args, "--output-path", str(out)]
        result = runner.invoke(app, ["merge", *args])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code != 0, args
        assert len(lines) == 1 and lines[0].startswith("error: "), result.output
        import re

        assert re.search(expected, lines[0]), lines[0]
        assert not out.exists()
        assert not list(tmp_path.glob(".out-merged.tmp-*"))
    assert (occupied / "keep.txt").read_text() == "x"


def test_cli_merge_reports_the_check(bert_lora, tmp_path):
    result = runner.invoke(app, ["merge", "--lora_adapter_path", str(bert_lora / "adapter_model.safetensors"),
                                 "--output_path", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert "verify ok" in result.output


def test_python_api_name():
    import embedrag

    assert embedrag.merge is merge
    with pytest.raises(ConfigError):
        merge("x", "y", qlora_base="requantized")
