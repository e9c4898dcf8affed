"""`embedrag generate`: queries written for documents, filtered, with mined negatives;
resumable, and safe with a flaky OpenAI-compatible server."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from embedrag.cli import app
from embedrag.engine.data.corpus import normalize_text
from embedrag.engine.data.documents import split_sentences
from embedrag.engine.data.examples import load_examples
from embedrag.engine.llm.generate import GenerateConfig, generate
from embedrag.engine.llm.query_writers import (
    DEFAULT_PROMPT,
    Chunk,
    HFQueryWriter,
    InverseClozeWriter,
    document_language,
    load_prompt,
    parse_queries,
)

SECRET = "sk-test-9f8e7d6c5b4a-never-show-me"
TOPICS = ["apples", "rivers", "pianos", "volcanoes", "glaciers", "comets", "violins", "deserts", "coral reefs",
          "owls", "bridges", "tea", "satellites", "mushrooms"]


def _corpus(folder: Path, count: int = len(TOPICS)) -> Path:
    """A JSONL corpus of short documents, a few sentences each; document 0 and 1 share a
    sentence (a duplicate query), document 2 has one sentence only."""
    rows = []
    for i, topic in enumerate(TOPICS[:count]):
        sentences = [f"{topic.capitalize()} are discussed in document {i} of this small collection.",
                     f"Many people find {topic} fascinating for reasons of history and science.",
                     f"The study of {topic} began long ago and continues to this day in labs."]
        if i in (0, 1):
            sentences.append("This sentence appears word for word in two different documents here.")
        rows.append({"_id": f"d{i}", "title": topic, "text": sentences[0] if i == 2 else " ".join(sentences)})
    path = folder / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


# ---------------------------------------------------------------------- inverse cloze
def test_inverse_cloze_lines_train_ready_deterministic_and_guarded(minilm_path, tmp_path):
    # The real model: a random one scores every candidate so close to the positive that
    # mine's false-negative margin drops them all.
    corpus = _corpus(tmp_path)
    config = GenerateConfig(chunk_size=0, negatives=3, range_start=0)
    first = generate([corpus], tmp_path / "a.jsonl", "none", model=minilm_path, config=config, n=2)
    second = generate([corpus], tmp_path / "b.jsonl", InverseClozeWriter(2), model=minilm_path,
                      config=GenerateConfig(chunk_size=0, negatives=3, range_start=0))
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    assert second.lines == first.lines
    assert len(load_examples(tmp_path / "a.jsonl")) == first.lines  # the training contract
    texts = {json.loads(x)["_id"]: json.loads(x)["text"] for x in corpus.read_text().splitlines()}
    assert first.chunks == len(texts) and first.chunks_skipped == {"fewer than two sentences": 1}
    assert first.dropped["duplicate"] == 1  # the shared sentence, asked of d0 and d1 alike (seeded)
    removed = negatives = 0
    for line in _lines(tmp_path / "a.jsonl"):
        source = next(t for t in texts.values() if line["query"] in split_sentences(t))
        assert line["pos"][0] in (source, " ".join(s for s in split_sentences(source) if s != line["query"]))
        removed += line["query"] not in line["pos"][0]
        assert normalize_text(source) not in {normalize_text(n) for n in line["neg"]}  # never its own chunk
        assert 1 <= len(line["neg"]) <= 3
        negatives += len(line["neg"])
    assert removed >= 0.7 * first.lines  # the sentence leaves its positive in ~90 % of cases
    assert first.queries_written == first.lines + first.dropped["duplicate"]
    assert first.negatives_per_query == round(negatives / first.lines, 3) >= 2


def test_filters_round_trip_and_no_negatives(tiny_bert, tmp_path):
    corpus = _corpus(tmp_path)
    short = generate([corpus], tmp_path / "short.jsonl", "none", model=tiny_bert,
                     config=GenerateConfig(chunk_size=0, negatives=0, max_query_chars=65), max_query_chars=65)
    assert all(len(x["query"]) <= 65 and x["neg"] == [] for x in _lines(tmp_path / "short.jsonl"))
    assert short.dropped["too_long"] == 0 and short.lines > 0  # the writer itself kept to the limit
    # The filter itself, past the writer: queries longer than the limit are dropped.
    loose = generate([corpus], tmp_path / "loose.jsonl", "none", model=tiny_bert, n=4,
                     config=GenerateConfig(chunk_size=0, negatives=0, max_query_chars=65))
    assert loose.dropped["too_long"] > 0 and all(len(x["query"]) <= 65 for x in _lines(tmp_path / "loose.jsonl"))
    # Round trip at k = 1 with a random tiny model: some queries miss their chunk and go.
    report = generate([corpus], tmp_path / "rt.jsonl", "none", model=tiny_bert,
                      config=GenerateConfig(chunk_size=0, negatives=0, round_trip_k=1))
    every = generate([corpus], tmp_path / "all.jsonl", "none", model=tiny_bert,
                     config=GenerateConfig(chunk_size=0, negatives=0))
    assert report.lines + report.dropped["round_trip"] == every.lines
    assert report.dropped["round_trip"] > 0


def test_max_chunks_is_a_trial_over_the_first_chunks(tiny_bert, tmp_path):
    report = generate([_corpus(tmp_path)], tmp_path / "t.jsonl", "none", model=tiny_bert,
                      config=GenerateConfig(chunk_size=0, negatives=2, max_chunks=4))
    assert report.chunks == len(TOPICS) and report.chunks_asked == 4
    assert report.lines <= 4


def test_titles_are_the_queries_of_their_documents(tiny_bert, tmp_path):
    rows = [{"_id": f"d{i}", "title": f"What we know about {topic} today",
             "text": f"{topic.capitalize()} are the subject of document {i}. They are studied widely."}
            for i, topic in enumerate(TOPICS[:6])]
    rows[4]["title"] = ""  # no title: skipped
    rows[5]["title"] = "Owls"  # too short to be a query
    corpus = tmp_path / "titled.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = generate([corpus], tmp_path / "t.jsonl", "title", model=tiny_bert,
                      config=GenerateConfig(chunk_size=0, negatives=0))
    lines = _lines(tmp_path / "t.jsonl")
    assert [(x["query"], x["pos"]) for x in lines] == [(r["title"], [r["text"]]) for r in rows[:4]]
    assert report.chunks_skipped == {"no title": 1, "title not of 10-300 characters": 1}
    assert report.writer["method"] == "title"
    result = CliRunner().invoke(app, ["generate", "-i", str(corpus), "-o", str(tmp_path / "q.jsonl"), "--llm", "title",
                                 "-q", "2", "--model", str(tiny_bert)])
    assert result.exit_code != 0 and "--llm title writes one query per chunk" in result.output
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------- prompts
def test_prompt_language_and_reply_parsing(tmp_path):
    assert document_language("台北的牛肉麵很好吃，湯頭濃郁。", "auto") == "Chinese"
    assert document_language("The river runs to the ocean.", "auto") == "the language of the passage"
    assert document_language("anything", "German") == "German"
    assert parse_queries('1. "what is x?"\n\n2) how does y work\n- why z', 2) == ["what is x?", "how does y work"]
    assert load_prompt(None) == DEFAULT_PROMPT
    bad = tmp_path / "bad.txt"
    bad.write_text("Ask about {pasage}")
    with pytest.raises(Exception, match=r"unknown field\(s\) \{pasage\}"):
        load_prompt(bad)
    bad.write_text("Ask {n} questions")
    with pytest.raises(Exception, match=r"no \{passage\}"):
        load_prompt(bad)


# ---------------------------------------------------------------------- a fake OpenAI server
class FakeLLM:
    """A deterministic chat-completions server on 127.0.0.1: the queries name the passage's
    first words; the first request for a passage containing ``fail_on`` answers 500, the
    first for ``slow_on`` sleeps past the client's timeout."""

    def __init__(self, fail_on: str = "document 3 ", slow_on: str = "document 5 ", delay: float = 0.0):
        self.requests: list[str] = []
        self.auth: set[str] = set()
        self.fail_on, self.slow_on, self.delay = fail_on, slow_on, delay
        self.failed = self.slowed = False
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                with owner.lock:
                    owner.requests.append(prompt)
                    owner.auth.add(self.headers.get("Authorization", ""))
                    fail = owner.fail_on in prompt and not owner.failed
                    slow = owner.slow_on in prompt and not owner.slowed
                    owner.failed |= fail
                    owner.slowed |= slow
                if fail:
                    return self._send(500, {"error": {"message": "boom"}})
                if slow:
                    time.sleep(2.5)
                time.sleep(owner.delay)
                passage = prompt.split("Passage:\n", 1)[1].split()
                text = f"1. what about {' '.join(passage[:4])}?\n2. tell me of {passage[5]} {passage[6]}"
                self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": text}}],
                                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

            def _send(self, code, payload):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout) and retried

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_llm():
    server = FakeLLM()
    yield server
    server.close()


def _llm_args(corpus, output, url, *extra):
    return ["generate", "-i", str(corpus), "-o", str(output), "--llm", "openai", "--llm-model", "fake",
            "--base-url", url, "-q", "2", "--chunk-size", "0", "--negatives", "2", "--range", "0-100",
            "--timeout", "1",
            *extra]


def test_openai_writer_retries_without_duplicates_and_hides_the_key(tiny_bert, tmp_path, fake_llm, monkeypatch):
    monkeypatch.setenv("EMBEDRAG_LLM_API_KEY", SECRET)
    corpus = _corpus(tmp_path)
    out = tmp_path / "llm.jsonl"
    result = CliRunner().invoke(app, ["-v", *_llm_args(corpus, out, fake_llm.url, "-m", str(tiny_bert),
                                                       "--report", str(tmp_path / "r.json"))])
    assert result.exit_code == 0, result.output
    assert fake_llm.failed and fake_llm.slowed  # both faults happened, and were retried
    assert fake_llm.auth == {f"Bearer {SECRET}"}
    lines = _lines(out)
    assert len(lines) == 2 * len(TOPICS)  # every chunk, two queries each: complete
    assert len({x["query"] for x in lines}) == len(lines)  # nothing duplicated by the retries
    for i in range(len(TOPICS)):
        assert sum(f"document {i} " in x["pos"][0] for x in lines) == 2
    journal = Path(json.loads((tmp_path / "r.json").read_text())["journal"])
    assert len(journal.read_text().splitlines()) == len(TOPICS)
    for text in (result.output, out.read_text(), journal.read_text(), (tmp_path / "r.json").read_text()):
        assert SECRET not in text


def test_a_dead_server_stops_with_one_line(tiny_bert, tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "dead.jsonl"
    result = CliRunner().invoke(app, _llm_args(_corpus(tmp_path), out, f"http://127.0.0.1:{port}/v1",
                                               "-m", str(tiny_bert), "--max-retries", "0"))
    assert result.exit_code != 0
    assert "cannot reach the LLM server" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_killed_run_resumes_to_the_lines_of_an_uninterrupted_run(tiny_bert, tmp_path):
    corpus = _corpus(tmp_path)
    slow = FakeLLM(fail_on="\0", slow_on="\0", delay=0.3)
    try:
        full = tmp_path / "full" / "train.jsonl"
        # Only the killed run needs a process of its own (a start costs ~7 s); the others run in-process.
        clean = CliRunner().invoke(app, _llm_args(corpus, full, slow.url, "-m", str(tiny_bert), "--concurrency", "1"))
        assert clean.exit_code == 0, clean.output
        killed = tmp_path / "killed" / "train.jsonl"
        args = _llm_args(corpus, killed, slow.url, "-m", str(tiny_bert), "--concurrency", "1")
        process = subprocess.Popen([sys.executable, "-m", "embedrag", *args], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        journal_dir = killed.parent / ".train.jsonl.generate"
        deadline = time.time() + 120
        while time.time() < deadline:
            journals = list(journal_dir.glob("queries-*.jsonl"))
            if journals and len(journals[0].read_text().splitlines()) >= 4:
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        done = len(journals[0].read_text().splitlines())
        assert 4 <= done < len(TOPICS) and not killed.exists()
        asked_before = len(slow.requests)
        rerun = CliRunner().invoke(app, args)
        assert rerun.exit_code == 0, rerun.output
        # The re-run asked only for the chunks the journal lacked (one may have been in flight).
        assert len(slow.requests) - asked_before <= len(TOPICS) - done + 1
        assert set(killed.read_text().splitlines()) == set(full.read_text().splitlines())
        assert len(killed.read_text().splitlines()) == len(full.read_text().splitlines())
    finally:
        slow.close()


def test_torn_journal_line_is_cut_off(tiny_bert, tmp_path):
    corpus = _corpus(tmp_path)
    first = generate([corpus], tmp_path / "a.jsonl", "none", model=tiny_bert,
                     config=GenerateConfig(chunk_size=0, negatives=0, max_chunks=5))
    journal = Path(first.journal)
    journal.write_bytes(journal.read_bytes() + b'{"chunk": "torn", "quer')  # a kill mid-write
    again = generate([corpus], tmp_path / "a.jsonl", "none", model=tiny_bert,
                     config=GenerateConfig(chunk_size=0, negatives=0))
    assert again.chunks_from_journal == 5 and again.chunks_asked == len(TOPICS) - 5
    assert all(json.loads(x) for x in journal.read_text().splitlines())


# ---------------------------------------------------------------------- a local causal LM
def test_hf_writer_runs_on_a_tiny_causal_lm(tiny_qwen2, tiny_bert, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Q for: {passage}")
    chunks = [Chunk(key=str(i), text=f"The {t} passage number {i} is {'long ' * i}here.")
              for i, t in enumerate(TOPICS[:5])]
    replies = {}
    for batch_size in (1, 3):
        writer = HFQueryWriter(str(tiny_qwen2), n=1, prompt=load_prompt(prompt), batch_size=batch_size,
                               max_new_tokens=8, max_passage_chars=80, device="cpu")
        results = []
        writer.write(chunks, results.append)
        assert [r.chunk.key for r in results] == ["0", "1", "2", "3", "4"]
        replies[batch_size] = [[q.query for q in r.queries] for r in results]
    assert replies[1] == replies[3]  # batched (left-padded) generation writes what one-by-one does
    assert all(replies[3])
    report = generate([_corpus(tmp_path)], tmp_path / "hf.jsonl", writer, model=tiny_bert,
                      config=GenerateConfig(chunk_size=0, negatives=0, max_chunks=4))
    assert report.chunks_asked == 4 and report.writer["llm"] == "hf"
    assert report.lines == report.queries_written - sum(report.dropped.values()) > 0
    assert all(x["pos"][0] in _corpus(tmp_path).read_text() for x in _lines(tmp_path / "hf.jsonl"))


def test_cli_errors_are_one_line(tiny_bert, tmp_path):
    runner = CliRunner()
    corpus = _corpus(tmp_path)
    for args, message in [
        (["-i", str(tmp_path / "nope"), "-o", str(tmp_path / "x.jsonl")], "no such file or folder"),
        (["-i", str(corpus), "-o", str(tmp_path / "x.jsonl"), "--llm", "gpt"], "--llm must be none, title, openai or hf:PATH"),
        (["-i", str(corpus), "-o", str(tmp_path / "x.jsonl"), "--llm", "openai"], "needs --llm-model"),
        (["-i", str(corpus), "-o", str(tmp_path / "x.jsonl"), "--prompt", str(corpus)], "--prompt needs an LLM"),
    ]:
        result = runner.invoke(app, ["generate", *args, "-m", str(tiny_bert)])
        assert result.exit_code != 0 and message in result.output, (args, result.output)
        assert "Traceback" not in result.output
    assert not (tmp_path / "x.jsonl").exists()
