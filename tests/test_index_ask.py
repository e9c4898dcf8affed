"""index + ask: exact upserts, model checks, hybrid search, generators and the REPL."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from embedrag import Encoder
from embedrag.cli import app
from embedrag.engine.core.errors import ConfigError
from embedrag.engine.data.documents import Chunker, Document, read_documents
from embedrag.engine.llm.rag import RAG, OpenAIChatGenerator, build_messages
from embedrag.engine.retrieval.store import Retriever, TableMismatchError, build_index, open_table

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
WORDS = "river stone cloud paper light sugar horse glass tiger ocean piano maple".split()


def _docs(n=12, prefix="doc", long_every=4):
    docs = []
    for i in range(n):
        sentences = [f"{WORDS[(i + j) % len(WORDS)]} sentence {j} of {prefix} {i}." for j in range(
            12 if i % long_every == 0 else 2)]
        docs.append(Document(id=f"{prefix}{i}", text=" ".join(sentences), title=f"{prefix} {i}", source="t"))
    return docs


@pytest.fixture(scope="module")
def bert_encoder(tiny_bert):
    return Encoder.load(tiny_bert, device="cpu")


def _chunk_count(encoder, docs, chunk_size=24):
    chunker = Chunker(encoder.tokenizer, chunk_size, 4)
    return sum(len(chunker.split(d.text)) for d in docs)


def test_chunker_respects_size_and_sentences(bert_encoder):
    chunker = Chunker(bert_encoder.tokenizer, 60, 25)  # the tiny tokenizer is character-level
    text = " ".join(f"Sentence number {i} is here." for i in range(20)) + " " + "x" * 200
    chunks = chunker.split(text)
    assert len(chunks) > 3
    for chunk in chunks:
        assert len(bert_encoder.tokenizer(chunk, add_special_tokens=False)["input_ids"]) <= 60 + 2
    assert chunks[0].startswith("Sentence number 0") and chunks[0].endswith(".")
    assert chunks[1].split(".")[0] in chunks[0]  # whole sentences carried over as overlap


def test_upsert_keeps_rows_exact_and_survives_reopening(bert_encoder, tmp_path):
    db = tmp_path / "db"
    first = _docs(8)
    build_index(first, bert_encoder, db=db, mode="create", chunk_size=24, chunk_overlap=4, fts=False)
    assert open_table(db, "docs").count_rows() == _chunk_count(bert_encoder, first)
    changed = [Document(id="doc0", text="now a single short sentence.", title="doc 0"),
               Document(id="doc4", text=" ".join(f"grown sentence {j} here." for j in range(30)), title="x"),
               *_docs(2, prefix="new")]
    expected = _chunk_count(bert_encoder, [d for d in first if d.id not in ("doc0", "doc4")] + changed)
    for replaced in (2, 4):  # a second identical run changes nothing
        stats = build_index(changed, bert_encoder, db=db, mode="upsert", chunk_size=24, chunk_overlap=4, fts=False)
        assert stats.rows == expected
        assert stats.replaced_documents == replaced
    code = (f"import lancedb; t = lancedb.connect({str(db)!r}).open_table('docs'); "
            "rows = t.to_arrow().to_pylist(); ids = [r['chunk_id'] for r in rows]; "
            "print(len(rows), len(set(ids)), sorted({r['doc_id'] for r in rows}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "LANCEDB_LOG": "error"})
    count, unique, doc_ids = out.stdout.strip().split(" ", 2)
    assert int(count) == int(unique) == expected
    assert "'new0'" in doc_ids and "'doc7'" in doc_ids
    texts = [r["text"] for r in open_table(db, "docs").to_arrow().to_pylist() if r["doc_id"] == "doc0"]
    assert texts == ["now a single short sentence."]


def test_another_model_is_refused(bert_encoder, tiny_qwen2, tmp_path):
    db = tmp_path / "db"
    build_index(_docs(3), bert_encoder, db=db, fts=False)
    with pytest.raises(TableMismatchError, match="was embedded with"):
        Retriever(db, "docs", model=str(tiny_qwen2))
    with pytest.raises(TableMismatchError):
        build_index(_docs(2, "more"), Encoder.load(tiny_qwen2, device="cpu"), db=db, mode="append")
    result = runner.invoke(app, ["ask", "question", "--db", str(db), "--model", str(tiny_qwen2)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "was embedded with" in lines[0]


def test_a_table_records_its_precision_and_opens_with_unknown_keys(bert_encoder, tmp_path):
    import numpy as np
    import pyarrow as pa

    from embedrag.engine.retrieval.store import METADATA_KEY, table_settings

    docs = _docs(3)
    db = tmp_path / "db"
    build_index(docs, bert_encoder, db=db, fts=False, chunk_size=500, precision="bf16")
    handle = open_table(db, "docs")
    assert table_settings(handle).precision == "bf16"
    rows = sorted(handle.search().limit(None).to_list(), key=lambda row: row["doc_id"])
    expected = bert_encoder.encode([r["text"] for r in rows], "passage", precision="bf16")
    np.testing.assert_allclose(np.array([r["vector"] for r in rows]), expected, atol=1e-6)
    # A table from a newer embedrag may record keys this one does not know.
    metadata = json.loads(handle.schema.metadata[METADATA_KEY])
    schema = pa.schema(handle.schema, metadata={METADATA_KEY: json.dumps({**metadata, "new_key": 1}).encode()})
    newer = tmp_path / "newer"
    import lancedb

    lancedb.connect(str(newer)).create_table("docs", handle.to_arrow().cast(schema), schema=schema)
    assert table_settings(open_table(newer, "docs")).precision == "bf16"


def test_hybrid_finds_an_exact_keyword_that_vectors_miss(bert_encoder, tmp_path):
    db = tmp_path / "db"
    filler = " ".join(f"{WORDS[j % 12]} words about {WORDS[(j + 5) % 12]} things." for j in range(10))
    # Near-duplicates by characters, but sharing no word with the query.
    docs = [Document(id=f"near{i}", text=f"QX-{9000 + i} QX-{9000 + i}", title="") for i in range(1, 9)]
    docs.append(Document(id="target", text=f"{filler} The part number is QZ-9000. {filler}", title=""))
    docs += _docs(10)
    build_index(docs, bert_encoder, db=db, chunk_size=120, fts=True)
    retriever = Retriever(db, "docs", model=str(bert_encoder.path))
    vector_ids = [h.doc_id for h in retriever.search("QZ-9000", 3)]
    hybrid_ids = [h.doc_id for h in retriever.search("QZ-9000", 3, hybrid=True)]
    assert "target" not in vector_ids
    assert "target" in hybrid_ids


def test_read_documents_from_folders_and_jsonl(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "note.md").write_text("# Title here\n\nBody text.")
    (tmp_path / "a" / "plain.txt").write_text("Just text.")
    (tmp_path / "c.jsonl").write_text(json.dumps({"_id": "7", "title": "T", "text": "X", "year": 2020}) + "\n")
    docs = list(read_documents([tmp_path / "a", tmp_path / "c.jsonl"]))
    assert [(d.id, d.title) for d in docs] == [("note.md#s1", "Title here"), ("plain.txt", "plain"), ("7", "T")]
    assert docs[2].metadata == {"year": 2020}


@pytest.fixture(scope="module")
def sample_db(tiny_bert, tmp_path_factory):
    db = tmp_path_factory.mktemp("sample") / "db"
    result = runner.invoke(app, ["index", "--input", str(REPO / "datasets" / "sample_data.jsonl"),
                                 "--text-field", "query", "--model", str(tiny_bert), "--db", str(db)])
    assert result.exit_code == 0, result.output
    return db



def test_index_max_batch_tokens_reaches_the_encoder_and_keeps_the_vectors(tiny_bert, tmp_path, batch_budgets):
    import lancedb
    import numpy as np

    budgets = batch_budgets
    sample = str(REPO / "datasets" / "sample_data.jsonl")
    vectors = {}
    for name, extra in (("default", []), ("capped", ["--max-batch-tokens", "12"])):
        result = runner.invoke(app, ["index", "--input", sample, "--text-field", "query", "--model", str(tiny_bert),
                                     "--db", str(tmp_path / name), *extra])
        assert result.exit_code == 0, result.output
        rows = lancedb.connect(str(tmp_path / name)).open_table("docs").to_arrow().to_pylist()
        vectors[name] = {(r["doc_id"], r["chunk"]): np.asarray(r["vector"]) for r in rows}
        assert budgets and all((b == 12) == (name == "capped") for b in budgets)
        budgets.clear()
    assert vectors["capped"].keys() == vectors["default"].keys()
    for key, vector in vectors["default"].items():
        np.testing.assert_allclose(vectors["capped"][key], vector, atol=1e-5)
    with pytest.raises(ConfigError, match="max-batch-tokens"):
        build_index([Document(id="a", text="x")], Encoder.load(tiny_bert), db=tmp_path / "bad", max_batch_tokens=0)
    assert not (tmp_path / "bad").exists()

def test_hf_generator_answers_with_sources(sample_db, tiny_qwen2):
    result = runner.invoke(app, ["ask", "beef noodles", "--db", str(sample_db), "--llm", f"hf:{tiny_qwen2}",
                                 "--max-new-tokens", "8", "-k", "2"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    before_sources = result.output.split("sources")[0]
    assert before_sources.strip(), "the model produced no text"
    assert "sample_data.jsonl" in result.output


class _ChatHandler(http.server.BaseHTTPRequestHandler):
    requests: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _ChatHandler.requests.append({"path": self.path, "body": body,
                                      "auth": self.headers.get("Authorization")})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for piece in ("The answer ", "is in ", "[1]."):
            event = {"choices": [{"delta": {"content": piece}}]}
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, *args):
        pass


def test_openai_compatible_server_streaming(sample_db, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ChatHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("EMBEDRAG_LLM_API_KEY", "sk-test-secret")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        result = runner.invoke(app, ["ask", "how long to rest a steak", "--db", str(sample_db), "--llm", "openai",
                                     "--llm-base-url", url, "--llm-model", "qwen-max", "-k", "3"],
                               env={"COLUMNS": "160"})
    finally:
        server.shutdown()
    assert result.exit_code == 0, result.output
    assert "The answer is in [1]." in result.output
    request = _ChatHandler.requests[-1]
    assert request["path"] == "/v1/chat/completions"
    assert request["body"]["model"] == "qwen-max" and request["body"]["stream"] is True
    user = request["body"]["messages"][-1]["content"]
    assert "[1]" in user and "[3]" in user and "how long to rest a steak" in user
    assert request["auth"] == "Bearer sk-test-secret"
    assert "sk-test-secret" not in repr(OpenAIChatGenerator("m"))


def test_refused_connection_is_one_line(sample_db):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = runner.invoke(app, ["ask", "question", "--db", str(sample_db), "--llm", "openai",
                                 "--llm-base-url", f"http://127.0.0.1:{port}/v1", "--llm-model", "m"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach the LLM server"), result.output


def test_json_output(sample_db):
    result = runner.invoke(app, ["ask", "best beef noodles in Taipei", "--db", str(sample_db), "--json", "-k", "3"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["question"] == "best beef noodles in Taipei" and len(payload["passages"]) == 3
    assert payload["answer"] is None and payload["passages"][0]["rank"] == 1


def test_repl_through_stdin(sample_db):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "160", "EMBEDRAG_HISTORY": os.devnull}
    out = subprocess.run([sys.executable, "-m", "embedrag", "ask", "--db", str(sample_db)],
                         input="/k 2\nhow long to rest a steak\n/sources\n/hybrid on\n/quit\n",
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "top-k = 2" in out.stdout and "hybrid = on" in out.stdout
    assert out.stdout.count("sources") >= 2  # after the answer and for /sources
    assert "Traceback" not in out.stderr


def test_messages_number_the_passages():
    from embedrag.engine.retrieval.store import Hit

    hits = [Hit(1, 0.9, "a#0", "a", 0, "alpha text", "A", "s"), Hit(2, 0.5, "b#0", "b", 0, "beta", "", "s")]
    messages = build_messages("q?", hits)
    assert messages[0]["role"] == "system"
    assert "[1] A\nalpha text" in messages[1]["content"] and "[2]\nbeta" in messages[1]["content"]
    assert RAG  # the public name exists


def test_ann_index_is_built_and_searched(bert_encoder, tmp_path):
    db = tmp_path / "db"
    stats = build_index(_docs(300), bert_encoder, db=db, chunk_size=200, fts=False, ann="ivf_pq")
    assert stats.ann_index == "IVF_PQ"
    retriever = Retriever(db, "docs", model=str(bert_encoder.path))
    hits = retriever.search("river sentence 0 of doc 3", 5)
    assert len(hits) == 5 and hits[0].score >= hits[-1].score


def test_hnsw_index_recalls_like_exact_and_appends_update_it(bert_encoder, tmp_path):
    from embedrag.engine.retrieval.store import vector_index_type

    db = tmp_path / "db"
    build_index(_docs(300), bert_encoder, db=db, chunk_size=200, fts=False, ann="none")
    exact = Retriever(db, "docs", model=str(bert_encoder.path))
    questions = [f"river sentence {i} of doc {j}" for i, j in [(0, 3), (1, 17), (2, 101), (0, 250)]]
    expected = [[h.chunk_id for h in exact.search(q, 10)] for q in questions]

    stats = build_index(_docs(300), bert_encoder, db=db, chunk_size=200, fts=False, mode="overwrite",
                        ann="ivf_hnsw_sq")
    assert stats.ann_index == "IVF_HNSW_SQ"
    retriever = Retriever(db, "docs", model=str(bert_encoder.path))
    assert retriever.index_type == vector_index_type(retriever.table) == "IvfHnswSq"
    found = [retriever.search(q, 10) for q in questions]
    recall = sum(len({h.chunk_id for h in f} & set(e)) for f, e in zip(found, expected)) / (10 * len(questions))
    assert recall >= 0.9
    import numpy as np

    for question, hits in zip(questions, found):  # exact re-scoring: the score is the cosine itself
        vectors = bert_encoder.encode([h.text for h in hits], "passage")
        query = bert_encoder.encode([question], "query")[0]
        assert np.allclose([h.score for h in hits], vectors @ query, atol=1e-4)

    more = build_index(_docs(20, prefix="late"), bert_encoder, db=db, chunk_size=200, fts=False, mode="append",
                       ann="ivf_hnsw_sq")
    assert more.ann_index == "existing vector index, updated"
    table = Retriever(db, "docs", model=str(bert_encoder.path)).table
    name = next(c.name for c in table.list_indices() if "vector" in c.columns)
    assert table.index_stats(name).num_unindexed_rows == 0
