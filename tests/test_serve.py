"""embedrag serve: OpenAI-compatible embeddings (real `openai` client), search, streamed
ask, batching, limits, auth, pages and shutdown."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from _serving import FakeChat, events, free_port, request, running_app
from typer.testing import CliRunner

from embedrag import Encoder
from embedrag.cli import app
from embedrag.engine.data.documents import Document
from embedrag.engine.retrieval.store import build_index
from embedrag.engine.serve import BatchingConfig, Limits, ServeConfig

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
TEXTS = {
    "noodles": ("Beef noodles", "The night market sells beef noodle soup with pickled greens. It opens at six."),
    "steak": ("Resting steak", "Rest a steak for five minutes after cooking so the juices settle."),
    "tea": ("Oolong tea", "Oolong tea is brewed at ninety degrees for about three minutes."),
    "bread": ("Sourdough", "Sourdough bread needs a starter fed with flour and water every day."),
    "rice": ("Rice", "Rinse rice until the water runs clear, then cook it with one and a half cups of water."),
}


@pytest.fixture(scope="module")
def food_db(tiny_bert, tmp_path_factory):
    db = tmp_path_factory.mktemp("serve") / "db"
    documents = [Document(id=key, text=text, title=title, source=f"{key}.pdf", metadata={"page": i + 1})
                 for i, (key, (title, text)) in enumerate(TEXTS.items())]
    build_index(documents, Encoder.load(tiny_bert, device="cpu"), db=db, chunk_size=0)
    return db


@pytest.fixture(scope="module")
def server(food_db):
    with running_app(ServeConfig(db=str(food_db), device="cpu")) as (url, state):
        yield url, state


def test_search_returns_hits_with_sources_and_filters(server):
    url, state = server
    status, body, _ = request(f"{url}/v1/search", {"query": "beef noodle soup", "k": 3})
    assert status == 200, body
    expected = state.retriever.search("beef noodle soup", 3)
    assert [h["id"] for h in body["data"]] == [h.chunk_id for h in expected]
    assert [h["score"] for h in body["data"]] == pytest.approx([h.score for h in expected], abs=1e-6)
    first = body["data"][0]
    assert first["source"].endswith(".pdf") and first["page"] == first["metadata"]["page"]
    assert first["location"] == f"{first['source']} p. {first['page']}"

    status, body, _ = request(f"{url}/v1/search", {"query": "anything", "k": 5, "filters": {"doc_id": ["tea", "rice"]}})
    assert status == 200 and {h["doc_id"] for h in body["data"]} == {"tea", "rice"}
    status, body, _ = request(f"{url}/v1/search", {"query": "tea", "k": 2, "mode": "hybrid"})
    assert status == 200 and body["mode"] == "hybrid" and len(body["data"]) == 2


def test_ask_streams_the_extractive_answer_without_an_llm(server):
    url, _ = server
    status, text, headers = request(f"{url}/v1/ask", {"question": "How long do I rest a steak?", "k": 2})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    names = [name for name, _ in events(text)]
    assert names[0] == "passages" and names[-1] == "done" and "token" in names
    done = events(text)[-1][1]
    assert "Rest a steak for five minutes" in done["answer"]
    assert done["citations"] and done["citations"][0]["doc_id"] == "steak"
    assert done["citations"][0]["location"] == "steak.pdf p. 2"


def test_ask_streams_an_openai_compatible_llm_and_resolves_citations(food_db, monkeypatch):
    monkeypatch.setenv("EMBEDRAG_LLM_API_KEY", "sk-llm-secret-123")
    with FakeChat() as chat, running_app(ServeConfig(db=str(food_db), llm="openai", llm_base_url=chat.url,
                                                     llm_model="fake", device="cpu")) as (url, _):
        status, text, _ = request(f"{url}/v1/ask", {"question": "where are beef noodles?", "k": 3})
        assert status == 200
        pairs = events(text)
        tokens = [data["text"] for name, data in pairs if name == "token"]
        assert tokens == chat.pieces  # streamed piece by piece, as the LLM wrote them
        passages, done = pairs[0][1]["passages"], pairs[-1][1]
        assert done["answer"] == "".join(chat.pieces)
        assert [c["n"] for c in done["citations"]] == [1, 2]
        assert [c["id"] for c in done["citations"]] == [passages[0]["id"], passages[1]["id"]]
        assert chat.requests[-1]["auth"] == "Bearer sk-llm-secret-123"
        assert "sk-llm-secret-123" not in text

        status, body, _ = request(f"{url}/v1/ask", {"question": "where are beef noodles?", "k": 3, "stream": False})
        assert status == 200 and body["answer"] == "".join(chat.pieces) and len(body["passages"]) == 3


def test_an_llm_that_is_down_is_an_error_event_not_a_crash(food_db):
    with running_app(ServeConfig(db=str(food_db), llm="openai", llm_base_url=f"http://127.0.0.1:{free_port()}/v1",
                                 llm_model="m", device="cpu")) as (url, _):
        status, text, _ = request(f"{url}/v1/ask", {"question": "tea?", "k": 1})
        assert status == 200
        name, data = events(text)[-1]
        assert name == "error" and data["message"].startswith("cannot reach the LLM server")
        status, body, _ = request(f"{url}/v1/ask", {"question": "tea?", "k": 1, "stream": False})
        assert status == 502 and "cannot reach the LLM server" in body["error"]["message"]


@pytest.fixture(scope="module")
def small_server(food_db):
    """A server with small limits: 4 KiB bodies, 8 inputs, 64 tokens an input."""
    limits = Limits(max_body_bytes=4096, max_inputs=8, max_input_tokens=64)
    with running_app(ServeConfig(db=str(food_db), limits=limits, device="cpu")) as (url, _):
        yield url


@pytest.mark.parametrize("case", [
    ("/v1/embeddings", b'{"input": "x"', 400, "not valid JSON"),
    ("/v1/embeddings", b'[1, 2]', 400, "JSON object"),
    ("/v1/embeddings", b'{"model": "m"}', 400, "input is required"),
    ("/v1/embeddings", b'{"input": []}', 400, "input is empty"),
    ("/v1/embeddings", b'{"input": [[1, 2], [3]]}', 400, "token-id arrays"),
    ("/v1/embeddings", b'{"input": "x", "encoding_format": "hex"}', 400, "encoding_format"),
    ("/v1/embeddings", b'{"input": "x", "model": "text-embedding-3-small"}', 404, "not served here"),
    ("/v1/embeddings", b'{"input": "x", "dimensions": 7}', 400, "dimensions"),
    ("/v1/embeddings", json.dumps({"input": ["a"] * 9}).encode(), 400, "limit is 8"),
    ("/v1/embeddings", json.dumps({"input": "word " * 200}).encode(), 400, "tokens; the limit is 64"),
    ("/v1/embeddings", json.dumps({"input": "x" * 5000}).encode(), 413, "over the server's limit"),
    ("/v1/search", b'{"query": "tea", "k": 0}', 400, "k"),
    ("/v1/search", b'{"query": "tea", "k": 101}', 400, "over the limit of 100"),
    ("/v1/search", b'{"query": "  "}', 400, "query is empty"),
    ("/v1/search", b'{"query": "tea", "filters": {"text": "x"}}', 400, "cannot filter on 'text'"),
    ("/v1/search", b'{"query": "tea", "mode": "fuzzy"}', 400, "mode"),
    ("/v1/search", b'{"query": "tea", "top": 3}', 400, "unknown field"),
    ("/v1/ask", b'{"question": 3}', 400, "question"),
    ("/v1/nothing", b'{}', 404, "no such endpoint"),
], ids=lambda case: f"{case[0]}:{case[3]}")
def test_bad_requests_are_4xx_json_with_one_clear_message(small_server, case):
    path, raw, status, message = case
    got, body, headers = request(f"{small_server}{path}", raw=raw)
    assert got == status, body
    assert headers["content-type"] == "application/json"
    assert message in body["error"]["message"], body


def test_a_filter_value_cannot_inject_sql(server):
    url, _ = server
    status, body, _ = request(f"{url}/v1/search", {"query": "tea", "filters": {"doc_id": "tea' OR '1'='1"}})
    assert status == 200 and body["data"] == []


def test_only_the_pages_own_files_are_served(server):
    url, _ = server
    for path in ("/", "/report", "/static/app.js", "/static/style.css"):
        status, _, headers = request(f"{url}{path}")
        assert status == 200 and "default-src 'self'" in headers["content-security-policy"]
    for path in ("/static/../pyproject.toml", "/static/..%2F..%2Fpyproject.toml", "/static/index.html",
                 "/static/%2e%2e/app.py", "/../../etc/passwd", "/static/__init__.py"):
        quoted = path.replace("/../../", "/%2e%2e/%2e%2e/")
        status, body, _ = request(f"{url}{quoted}")
        assert status == 404, (path, body)


def test_dynamic_batching_joins_concurrent_requests_and_keeps_the_vectors(food_db, tiny_bert):
    texts = [f"question number {i} about {word}" for i, word in enumerate(["tea", "rice", "steak", "bread"] * 4)]
    reference = Encoder.load(tiny_bert, device="cpu").encode(texts, "passage")
    for enabled in (True, False):
        config = ServeConfig(db=str(food_db), device="cpu",
                             batching=BatchingConfig(enabled=enabled, max_wait_ms=50))
        with running_app(config) as (url, state):
            results = [None] * len(texts)

            def call(i, results=results):
                results[i] = request(f"{url}/v1/embeddings", {"input": texts[i]})

            threads = [threading.Thread(target=call, args=(i,)) for i in range(len(texts))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            got = np.array([r[1]["data"][0]["embedding"] for r in results], dtype=np.float32)
            assert np.abs(got - reference).max() < 1e-5
            stats = state.batcher.stats
            assert stats.requests == len(texts)
            if enabled:
                assert stats.batches < len(texts) / 2, stats  # requests shared forward passes
            else:
                assert stats.batches == len(texts)


def test_non_loopback_needs_a_key_and_wrong_or_missing_keys_get_401(food_db, monkeypatch):
    monkeypatch.delenv("EMBEDRAG_API_KEY", raising=False)
    result = runner.invoke(app, ["serve", "--db", str(food_db), "--host", "0.0.0.0"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "needs an API key" in lines[0], result.output

    key = "s3cret-key-for-tests"
    with running_app(ServeConfig(db=str(food_db), api_key=key, device="cpu")) as (url, _):
        body = {"input": "tea"}
        for headers in ({}, {"Authorization": "Bearer wrong-key-123"}, {"Authorization": key},
                        {"Authorization": f"Basic {key}"}):
            status, answer, got = request(f"{url}/v1/embeddings", body, headers=headers)
            assert status == 401 and answer["error"]["code"] == "invalid_api_key"
            assert got["www-authenticate"] == "Bearer" and key not in json.dumps(answer)
        for path in ("/v1/models", "/v1/search"):
            status, _, _ = request(f"{url}{path}", None if path.endswith("models") else {"query": "x"})
            assert status == 401
        status, _, _ = request(f"{url}/v1/embeddings", body, headers={"Authorization": f"Bearer {key}"})
        assert status == 200
        assert request(f"{url}/health")[0] == 200 and request(f"{url}/")[0] == 200  # no data in either


def test_a_busy_port_and_a_missing_table_are_one_line(food_db):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = runner.invoke(app, ["serve", "--db", str(food_db), "--port", str(taken.getsockname()[1])])
    assert result.exit_code == 2 and "cannot listen on 127.0.0.1" in result.output
    result = runner.invoke(app, ["serve", "--db", str(food_db), "--table", "nope"])
    assert result.exit_code == 2 and "table 'nope' not found" in result.output


def test_models_and_health(server):
    url, state = server
    status, body, _ = request(f"{url}/v1/models")
    assert status == 200 and body["data"][0]["id"] == state.model_name
    status, body, _ = request(f"{url}/health")
    assert body["status"] == "ok" and body["rows"] == len(TEXTS)
    assert body["search"] == "memory"  # a small flat table is searched from memory (test_memory_search)


def test_sigterm_lets_the_answer_in_flight_finish(food_db):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "EMBEDRAG_LLM_API_KEY": "sk-x-12345"}
    port = free_port()
    with FakeChat(pieces=["one ", "two ", "three [1]"], delay=0.7) as chat:
        process = subprocess.Popen(
            [sys.executable, "-m", "embedrag", "serve", "--db", str(food_db), "--port", str(port), "--llm", "openai",
             "--llm-base-url", chat.url, "--llm-model", "m", "--device", "cpu"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if request(f"http://127.0.0.1:{port}/health", timeout=2)[0] == 200:
                        break
                except OSError:
                    pass
                assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
                time.sleep(0.2)
            answer = {}
            thread = threading.Thread(target=lambda: answer.update(
                zip(("status", "text"), request(f"http://127.0.0.1:{port}/v1/ask", {"question": "tea?", "k": 1})[:2])))
            thread.start()
            time.sleep(1.0)  # the first piece is out, two are still coming
            process.send_signal(signal.SIGTERM)
            thread.join(30)
            assert process.wait(30) == 0
        finally:
            if process.poll() is None:
                process.kill()
    assert answer["status"] == 200
    assert events(answer["text"])[-1][1]["answer"] == "one two three [1]"
    output = process.stdout.read()
    assert "Traceback" not in output and "sk-x-12345" not in output


@pytest.mark.slow
def test_openai_client_gets_the_vectors_encoder_encode_gives(minilm_path):
    import openai

    encoder = Encoder.load(minilm_path, device="cpu")
    texts = ["How do I rest a steak?", "Oolong tea is brewed at ninety degrees.", "台北最好吃的牛肉麵在哪裡？"]
    with running_app(ServeConfig(model=str(minilm_path), model_name="minilm", device="cpu")) as (url, _):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        one = client.embeddings.create(model="minilm", input=texts[0], encoding_format="float")
        assert one.model == "minilm" and len(one.data) == 1 and one.usage.prompt_tokens > 0
        assert np.abs(np.array(one.data[0].embedding) - encoder.encode([texts[0]])[0]).max() < 1e-6
        for fmt in ("float", "base64"):
            many = client.embeddings.create(model="minilm", input=texts, encoding_format=fmt)
            got = np.array([d.embedding for d in many.data]) if fmt == "float" else np.stack(
                [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in many.data])
            assert np.abs(got - encoder.encode(texts)).max() < 1e-6, fmt
        # The client's default asks for base64 and decodes it itself.
        default = client.embeddings.create(model="minilm", input=texts)
        assert np.abs(np.array([d.embedding for d in default.data]) - encoder.encode(texts)).max() < 1e-6
        queries = client.embeddings.create(model="minilm", input=texts, extra_body={"input_type": "query"})
        assert np.abs(np.array([d.embedding for d in queries.data]) - encoder.encode(texts, "query")).max() < 1e-6
        assert [m.id for m in client.models.list()] == ["minilm"]
        with pytest.raises(openai.NotFoundError, match="not served here"):
            client.embeddings.create(model="text-embedding-3-small", input="x")


def test_ask_with_a_local_hf_model_streams_its_tokens(food_db, tiny_qwen2):
    with running_app(ServeConfig(db=str(food_db), llm=f"hf:{tiny_qwen2}", max_new_tokens=6, device="cpu")) as (url, _):
        status, text, _ = request(f"{url}/v1/ask", {"question": "tea?", "k": 2})
    assert status == 200
    pairs = events(text)
    assert pairs[0][1]["generator"] == "hf" and pairs[-1][0] == "done"
    tokens = "".join(data["text"] for name, data in pairs if name == "token")
    assert tokens and pairs[-1][1]["answer"] == tokens


def test_only_the_batcher_thread_uses_the_encoders_tokenizer(food_db):
    """A fast tokenizer's truncation setting is shared state that every encode changes:
    request checks that counted tokens with it from other threads saw counts cut to the
    model's length (and let over-limit inputs through). They count with their own copy."""
    import threading as threads

    with running_app(ServeConfig(db=str(food_db), limits=Limits(max_input_tokens=200), device="cpu")) as (url, state):
        tokenizer, callers = state.encoder.tokenizer, set()

        class Recording:
            def __call__(self, *args, **kwargs):
                callers.add(threads.current_thread().name)
                return tokenizer(*args, **kwargs)

            def __getattr__(self, name):
                return getattr(tokenizer, name)

        state.encoder.tokenizer = Recording()
        statuses = [request(f"{url}/v1/embeddings", {"input": text})[0]
                    for text in ("tea", "word " * 300, "rice and tea")]
        assert request(f"{url}/v1/search", {"query": "tea"})[0] == 200
    assert statuses == [200, 400, 200]
    assert callers == {"embedrag-batcher"}


def test_the_listening_socket_is_tcp_so_replies_are_not_held_by_nagle():
    import socket

    from embedrag.engine.serve.runner import bind

    listener = bind("127.0.0.1", 0)
    try:
        # asyncio turns TCP_NODELAY on for accepted connections only on an IPPROTO_TCP socket.
        assert listener.proto == socket.IPPROTO_TCP
    finally:
        listener.close()
