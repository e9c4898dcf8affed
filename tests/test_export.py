"""``embedrag export`` and ``--backend``: exported files load in onnxruntime and OpenVINO on their
own, embedrag's backends give the PyTorch model's vectors, int8 stays close, a table records
what made its vectors, and broken or missing exports are one-line errors."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
from conftest import MIXED_TEXTS, REPO
from typer.testing import CliRunner

from embedrag.cli import app
from embedrag.engine.core.errors import ConfigError, DataError
from embedrag.engine.encoding.backends import EXPORT_RECORD, read_export_record
from embedrag.engine.encoding.encoder import Encoder
from embedrag.engine.tools.export import ExportCheckError, ExportConfig, export

runner = CliRunner()
TEXTS = [t for t in MIXED_TEXTS if t] + ["tea with milk", "green tea leaves"]


@pytest.fixture(scope="module")
def bert_export(tiny_bert, tmp_path_factory):
    """The tiny BERT exported to ONNX (fp32 and int8) and OpenVINO (fp32) in one folder."""
    folder = tmp_path_factory.mktemp("export") / "tiny-export"
    export(tiny_bert, folder, ExportConfig(format="onnx"))
    export(tiny_bert, folder, ExportConfig(format="onnx", quantize="int8", min_cosine=0.5))
    export(tiny_bert, folder, ExportConfig(format="openvino"))
    return folder


def _feed(encoder: Encoder, texts):
    batch = encoder.pad(encoder.tokenize(texts, "passage")["input_ids"])
    return {k: v.numpy().astype(np.int64) for k, v in batch.items()}


def _torch_hidden(tiny_bert, feed):
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_bert).eval()
    with torch.inference_mode():
        return model(input_ids=torch.from_numpy(feed["input_ids"]),
                     attention_mask=torch.from_numpy(feed["attention_mask"])).last_hidden_state.numpy()


def test_the_folder_has_sentence_transformers_layout_and_records_each_file(bert_export):
    from sentence_transformers import SentenceTransformer

    assert (bert_export / "onnx" / "model.onnx").is_file()
    assert (bert_export / "onnx" / "model_qint8.onnx").is_file()
    assert (bert_export / "openvino" / "openvino_model.xml").is_file()
    assert (bert_export / "openvino" / "openvino_model.bin").is_file()
    record = read_export_record(bert_export)
    assert set(record.files) == {"onnx/model.onnx", "onnx/model_qint8.onnx", "openvino/openvino_model.xml"}
    assert record.files["onnx/model_qint8.onnx"].quantize == "int8-dynamic"
    assert record.default == {"onnx": "onnx/model_qint8.onnx", "openvino": "openvino/openvino_model.xml"}
    assert record.files["onnx/model.onnx"].min_cosine >= 0.9999
    # The PyTorch weights stay: the folder is a complete sentence-transformers model too.
    st = SentenceTransformer(str(bert_export), device="cpu")
    ours = Encoder.load(bert_export, device="cpu").encode(TEXTS)
    np.testing.assert_allclose(st.encode(TEXTS, normalize_embeddings=True), ours, atol=1e-5)


def test_onnx_file_runs_in_onnxruntime_alone_like_the_torch_model(tiny_bert, bert_export):
    import onnxruntime as ort

    session = ort.InferenceSession(str(bert_export / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert {i.name for i in session.get_inputs()} == {"input_ids", "attention_mask"}
    assert [o.name for o in session.get_outputs()] == ["last_hidden_state"]
    feed = _feed(Encoder.load(tiny_bert, device="cpu"), TEXTS)
    got = session.run(None, feed)[0]
    want = _torch_hidden(tiny_bert, feed)
    mask = feed["attention_mask"].astype(bool)
    assert np.abs(got - want)[mask].max() < 1e-4


def test_openvino_file_runs_in_openvino_alone_like_the_torch_model(tiny_bert, bert_export):
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(bert_export / "openvino" / "openvino_model.xml")), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    feed = _feed(Encoder.load(tiny_bert, device="cpu"), TEXTS)
    got = next(iter(compiled(feed).values()))
    want = _torch_hidden(tiny_bert, feed)
    mask = feed["attention_mask"].astype(bool)
    assert np.abs(got - want)[mask].max() < 1e-4


@pytest.mark.parametrize("backend", ["onnx:onnx/model.onnx", "openvino"])
def test_backends_give_the_torch_vectors(tiny_bert, bert_export, backend):
    reference = Encoder.load(tiny_bert, device="cpu")
    exported = Encoder.load(bert_export, backend=backend)
    assert exported.exported and exported.vector_precision("fp32") == "fp32"
    for kind in ("query", "passage"):
        want = reference.encode(TEXTS, kind, batch_size=3)
        got = exported.encode(TEXTS, kind, batch_size=3)
        assert np.abs(got - want).max() < 1e-5


def test_int8_is_close_and_its_own_model(tiny_bert, bert_export):
    from embedrag.engine.encoding.fingerprint import model_fingerprint

    reference = Encoder.load(tiny_bert, device="cpu").encode(TEXTS)
    quantized = Encoder.load(bert_export, backend="onnx")  # the default file is the last exported: int8
    assert quantized.vector_precision("auto") == "int8"
    got = quantized.encode(TEXTS)
    assert float((got * reference).sum(1).min()) > 0.5 and np.abs(got - reference).max() > 1e-6
    torch_fp = model_fingerprint(Encoder.load(bert_export, device="cpu"))
    assert model_fingerprint(Encoder.load(bert_export, backend="onnx:onnx/model.onnx")) == torch_fp
    assert model_fingerprint(Encoder.load(bert_export, backend="openvino")) == torch_fp
    assert model_fingerprint(quantized) != torch_fp
    assert torch_fp == model_fingerprint(Encoder.load(tiny_bert, device="cpu"))


@pytest.mark.slow
def test_minilm_int8_exports_stay_within_the_documented_floor(minilm_path, tmp_path):
    calibration = REPO / "datasets" / "scifact-slice" / "corpus.jsonl"  # passages as a user would index
    result = export(minilm_path, tmp_path / "minilm", ExportConfig(format="openvino", quantize="int8",
                                                                   calibration=calibration, calibration_texts=48))
    assert 0.95 <= result.min_cosine < 0.99999 and result.mean_cosine > 0.98
    record = read_export_record(tmp_path / "minilm")
    assert record.files["openvino/openvino_model_qint8.xml"].settings == {"calibration": str(calibration)}
    reference = Encoder.load(minilm_path, device="cpu").encode(TEXTS[:4])
    got = Encoder.load(tmp_path / "minilm", backend="openvino").encode(TEXTS[:4], precision="fp32")
    assert float((got * reference).sum(1).min()) > 0.95
    import openvino as ov  # the file alone, in OpenVINO: the same vectors as embedrag's backend

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(tmp_path / "minilm" / "openvino" / "openvino_model_qint8.xml")),
                                  "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    encoder = Encoder.load(minilm_path, device="cpu")
    feed = _feed(encoder, TEXTS[:4])
    hidden = next(iter(compiled(feed).values()))
    mask = feed["attention_mask"][..., None]
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    assert np.abs(pooled - got).max() < 1e-3


def test_index_with_one_backend_search_with_another_by_the_documented_rule(tiny_bert, bert_export, tmp_path):
    from embedrag.engine.retrieval.store import table_settings

    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)),
                    encoding="utf-8")
    for table, backend, allowed in (("fp32", "onnx:onnx/model.onnx", True), ("int8", "onnx", False)):
        result = runner.invoke(app, ["index", "--input", str(docs), "--model", str(bert_export), "--db",
                                     str(tmp_path / "db"), "--table", table, "--backend", backend, "--no-fts"])
        assert result.exit_code == 0, result.output
        from embedrag.engine.retrieval.store import open_table

        settings = table_settings(open_table(tmp_path / "db", table))
        assert settings.backend == backend and settings.precision == ("fp32" if allowed else "int8")
        result = runner.invoke(app, ["ask", "green tea", "--db", str(tmp_path / "db"), "--table", table,
                                     "--backend", "torch", "--json"])
        if allowed:  # an unquantized export gives the PyTorch model's vectors: either may search
            assert result.exit_code == 0, result.output
            assert json.loads(result.output)["passages"][0]["text"] == "green tea leaves"
        else:  # int8 vectors are another model's: only the same file searches them
            lines = [line for line in result.output.splitlines() if line.strip()]
            assert result.exit_code == 2 and len(lines) == 1, result.output
            assert "(onnx, int8)" in lines[0] and "gives different vectors" in lines[0]
            again = runner.invoke(app, ["ask", "green tea", "--db", str(tmp_path / "db"), "--table", table,
                                        "--backend", "onnx", "--json"])
            assert again.exit_code == 0, again.output


def test_eval_runs_an_exported_backend(bert_export, tmp_path):
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"query": t, "pos": [t]}) + "\n" for t in TEXTS[:6]), encoding="utf-8")
    out = tmp_path / "report.json"
    result = runner.invoke(app, ["eval", "--test-dataset", str(test), "-m", f"ov={bert_export}",
                                 "--backend", "openvino", "--no-cache", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["models"][0]["metrics"]["hit@1"] > 0.5


def test_adding_to_an_export_of_another_model_is_refused(tiny_qwen2, bert_export, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(bert_export, target)
    before = sorted(p.name for p in target.rglob("*"))
    with pytest.raises(ConfigError, match="export of another model"):
        export(tiny_qwen2, target, ExportConfig(format="openvino"))
    assert sorted(p.name for p in target.rglob("*")) == before


def test_a_failed_check_writes_nothing(tiny_bert, tmp_path):
    with pytest.raises(ExportCheckError, match="nothing written"):
        export(tiny_bert, tmp_path / "out", ExportConfig(format="onnx", min_cosine=1.5))
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("case", ["corrupt", "missing"])
def test_a_corrupt_or_missing_export_is_one_line(tiny_bert, bert_export, tmp_path, case):
    folder = tmp_path / "model"
    shutil.copytree(bert_export if case == "corrupt" else tiny_bert, folder)
    if case == "corrupt":
        (folder / "onnx" / "model_qint8.onnx").write_bytes(b"\x08\x07not a protobuf graph" * 10)
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps({"query": "tea", "pos": ["tea"]}) + "\n", encoding="utf-8")
    result = runner.invoke(app, ["eval", "--test-dataset", str(test), "-m", str(folder), "--backend", "onnx",
                                 "--no-cache"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1, result.output
    assert "Traceback" not in result.output
    expected = "is not a loadable ONNX model" if case == "corrupt" else "has no onnx export"
    assert expected in lines[0]


def test_an_adapter_needs_exporting_and_a_missing_runtime_names_its_extra(tiny_bert, monkeypatch, tmp_path):
    from embedrag.engine.encoding.backends import load_backbone

    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="is an adapter: export it first"):
        Encoder.load(tmp_path / "adapter", backend="onnx")
    with pytest.raises(ConfigError, match="--backend must be one of"):
        Encoder.load(tiny_bert, backend="tensorrt")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'embedrag\[onnx\]'"):
        load_backbone(tmp_path, "onnx", None, None)


def test_a_broken_export_record_is_a_data_error(bert_export, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(bert_export, folder)
    (folder / EXPORT_RECORD).write_text("{not json")
    with pytest.raises(DataError, match="not a valid export record"):
        read_export_record(folder)


def test_serve_embeds_through_an_exported_backend(tiny_bert, bert_export):
    from _serving import request, running_app

    from embedrag.engine.serve import ServeConfig

    want = Encoder.load(tiny_bert, device="cpu").encode(TEXTS[:3], "passage")
    config = ServeConfig(model=str(bert_export), backend="openvino", device="cpu")
    with running_app(config) as (url, state):
        assert state.encoder.backend == "openvino"
        status, body, _ = request(f"{url}/v1/embeddings", {"input": TEXTS[:3]})
    assert status == 200, body
    got = np.array([row["embedding"] for row in body["data"]], dtype=np.float32)
    assert np.abs(got - want).max() < 1e-5
