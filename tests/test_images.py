"""Images as documents: captions by a local image-to-text model (a tiny random BLIP built
from a config) or an OpenAI-compatible vision server, cached by image content."""

from __future__ import annotations

import base64
import io
import json

import pytest
from _serving import FakeChat
from typer.testing import CliRunner

from embedrag import Encoder
from embedrag.cli import app
from embedrag.engine.core.errors import ConfigError
from embedrag.engine.data.documents import read_documents
from embedrag.engine.llm import captions
from embedrag.engine.retrieval.store import build_index, open_table

runner = CliRunner()


def _pictures(folder, count=3):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (40 + i, 30), (60 * i, 100, 200 - 50 * i)).save(folder / f"picture{i}.png")
    return folder


@pytest.fixture
def counted_hf(monkeypatch):
    calls = []
    original = captions.HFCaptionWriter.caption

    def counting(self, image, data, path):
        calls.append(path.name)
        return original(self, image, data, path)

    monkeypatch.setattr(captions.HFCaptionWriter, "caption", counting)
    return calls


def _rows(db):
    return sorted(open_table(db, "docs").search().limit(None).to_list(), key=lambda r: r["doc_id"])


def test_a_folder_of_images_becomes_one_caption_row_each_and_reindexing_captions_nothing(
        tiny_bert, tiny_blip, tmp_path, counted_hf):
    folder = _pictures(tmp_path / "pictures")
    encoder = Encoder.load(tiny_bert, device="cpu")
    for attempt in range(2):
        captioner = captions.make_captioner(f"hf:{tiny_blip}", cache_dir=tmp_path / "cache", device="cpu")
        documents = list(read_documents([folder], captioner=captioner))
        build_index(documents, encoder, db=tmp_path / "db", mode="create" if attempt == 0 else "overwrite",
                    chunk_size=0)
        assert captioner.calls == (3 if attempt == 0 else 0)
    assert counted_hf == ["picture0.png", "picture1.png", "picture2.png"]  # the first run only
    rows = _rows(tmp_path / "db")
    assert [r["doc_id"] for r in rows] == ["picture0.png", "picture1.png", "picture2.png"]
    for row in rows:
        metadata = json.loads(row["metadata"])
        assert metadata["image"] == str(folder / row["doc_id"]) and metadata["caption_model"].startswith("hf:")
        assert row["text"].strip() and row["source"] == metadata["image"]


def test_an_openai_compatible_vision_server_gets_the_image_and_its_caption_is_indexed(tiny_bert, tmp_path,
                                                                                      monkeypatch):
    from PIL import Image

    monkeypatch.setenv("EMBEDRAG_LLM_API_KEY", "sk-vision-secret")
    folder = _pictures(tmp_path / "pictures", count=2)
    with FakeChat(pieces=["A blue square ", "on a white page."]) as server:
        for _ in range(2):
            result = runner.invoke(app, [
                "index", "--input", str(folder), "--model", str(tiny_bert), "--db", str(tmp_path / "db"),
                "--mode", "upsert", "--caption-llm", "openai", "--caption-llm-model", "vision-model",
                "--caption-llm-base-url", server.url, "--caption-cache", str(tmp_path / "cache")])
            assert result.exit_code == 0, result.output
    assert len(server.requests) == 2  # one per image, none on the second run
    content = server.requests[0]["body"]["messages"][0]["content"]
    image_part = next(part for part in content if part["type"] == "image_url")
    header, encoded = image_part["image_url"]["url"].split(",", 1)
    assert header == "data:image/png;base64"
    sent = Image.open(io.BytesIO(base64.b64decode(encoded)))
    assert sent.size == Image.open(folder / "picture0.png").size
    assert server.requests[0]["auth"] == "Bearer sk-vision-secret"
    rows = _rows(tmp_path / "db")
    assert [r["text"] for r in rows] == ["A blue square on a white page."] * 2
    assert "sk-vision-secret" not in result.output


def test_jsonl_rows_get_the_caption_of_the_image_they_name(tiny_blip, tmp_path):
    _pictures(tmp_path / "pictures", count=1)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"id": "fig1", "text": "Figure 1 of the report.", "image": "pictures/picture0.png"})
                      + "\n" + json.dumps({"id": "plain", "text": "No picture here."}) + "\n")
    captioner = captions.make_captioner(f"hf:{tiny_blip}", use_cache=False, device="cpu")
    documents = {d.id: d for d in read_documents([corpus], captioner=captioner)}
    assert documents["fig1"].text.startswith("Figure 1 of the report.\n") and len(documents["fig1"].text) > 24
    assert documents["fig1"].metadata["image"] == str(tmp_path / "pictures" / "picture0.png")
    assert documents["plain"].text == "No picture here."


def test_a_corrupt_image_is_a_one_line_warning_and_an_image_without_a_captioner_an_error(tiny_bert, tiny_blip,
                                                                                        tmp_path, caplog):
    folder = _pictures(tmp_path / "pictures", count=1)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    captioner = captions.make_captioner(f"hf:{tiny_blip}", use_cache=False, device="cpu")
    with caplog.at_level("WARNING"):
        documents = list(read_documents([folder], captioner=captioner))
    assert [d.id for d in documents] == ["picture0.png"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "broken.png: not a readable image" in warnings[0] and "\n" not in warnings[0]

    with pytest.raises(ConfigError, match="picture0.png is an image: caption it with --caption-model"):
        list(read_documents([folder / "picture0.png"]))
    result = runner.invoke(app, ["index", "--input", str(folder), "--model", str(tiny_bert), "--db",
                                 str(tmp_path / "db")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "is an image: caption it" in lines[0], result.output


def test_eval_answers_retrieves_from_captioned_images(tiny_bert, tiny_blip, tmp_path):
    folder = _pictures(tmp_path / "pictures", count=2)
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"question": "what is in the picture?", "answer": "a picture"}) + "\n")
    result = runner.invoke(app, ["eval", "--answers", str(answers), "--corpus", str(folder), "--model", str(tiny_bert),
                                 "--top-k", "2", "--caption-model", f"hf:{tiny_blip}", "--judge", str(tiny_bert),
                                 "--bertscore-model", "none", "--no-cache", "--caption-cache", str(tmp_path / "c"),
                                 "--per-query", "-o", str(tmp_path / "report.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["test_set"]["corpus"] == 2
    assert sorted(report["models"][0]["answers"][0]["retrieved"]) == ["picture0.png", "picture1.png"]
