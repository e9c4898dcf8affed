"""Who writes the training queries of ``embedrag generate``: two methods that need no LLM
(inverse cloze, document titles), any OpenAI-compatible chat server, or a local
transformers causal LM.

Every writer takes chunks and reports, per chunk, either its queries or why it has none;
the caller (``generate``) stores each chunk's result as it arrives, so a writer keeps no
state of its own and a re-run asks only for the chunks not yet stored.

Inverse cloze (Lee et al., 2019, "Latent Retrieval for Weakly Supervised Open Domain
Question Answering"): a sentence of the chunk is the query and the rest of the chunk is
its positive; in ``keep_sentence`` of the cases (0.1, the paper's rate) the sentence stays
in the positive, so the model also learns that a passage matches its own words. The
sentences are drawn with a random generator seeded by the chunk's key, so a chunk gets
the same queries whatever the order, the number of chunks or an interruption.

Titles: the document's title is the query of each of its chunks, the whole chunk its
positive (title-body pairs, a classic weak supervision for retrieval, e.g. SPECTER's and
the title-abstract pairs among sentence-transformers' training data). Only for documents
with a title: JSONL ``title`` fields, PDF/DOCX/HTML metadata titles, Markdown headings.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from embedrag.engine.core.errors import ConfigError, api_key_from_environment, redact
from embedrag.engine.data.documents import split_sentences

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = (
    "Write {n} different search queries that a user could type to find the passage below. "
    "Each query must be answerable from the passage alone, be at most 25 words long and be "
    "written in {language}. Write one query per line: no numbering, no quotes, nothing else.\n\n"
    "Title: {title}\n"
    "Passage:\n{passage}\n"
)
PROMPT_FIELDS = ("n", "language", "title", "passage")
_LIST_MARK = re.compile(r"^\s*(?:[-*\u2022]+|\(?\d{1,2}[.):]|q\d*[.:)]|query\s*\d*[.:)])\s*", re.IGNORECASE)
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
# After this many failed chunks in a row, with none succeeding, the server is taken to be
# down: stop with its error rather than walk the whole corpus failing.
FAILURES_BEFORE_GIVING_UP = 8


@dataclass
class Chunk:
    """A piece of a document that queries are written for; ``key`` is stable across runs."""

    key: str
    text: str
    title: str = ""
    source: str = ""
    document: str = ""  # the document's id: its other chunks are never a query's negatives


@dataclass
class WrittenQuery:
    """A query and the passage it should find (the chunk, or for inverse cloze the chunk
    without the query's sentence)."""

    query: str
    positive: str


@dataclass
class ChunkResult:
    """What a writer made of one chunk: queries, or the reason there are none."""

    chunk: Chunk
    queries: list[WrittenQuery] = field(default_factory=list)
    skipped: str | None = None  # a chunk the method cannot use (e.g. one sentence): stored, not retried
    error: str | None = None  # a failed request: not stored, so a re-run retries it


Report = Callable[[ChunkResult], None]


class QueryWriter:
    """Writes ``n`` queries per chunk; ``settings`` identify what it writes (the resume key)."""

    name = "writer"

    def settings(self) -> dict:
        raise NotImplementedError

    def write(self, chunks: Sequence[Chunk], report: Report) -> None:
        raise NotImplementedError


class _LocalWriter(QueryWriter):
    """A writer that needs no model: each chunk's queries come from :meth:`queries` at once."""

    def queries(self, chunk: Chunk) -> ChunkResult:
        raise NotImplementedError

    def write(self, chunks: Sequence[Chunk], report: Report) -> None:
        for chunk in chunks:
            report(self.queries(chunk))


class InverseClozeWriter(_LocalWriter):
    """A sentence of the chunk as the query; no model, no network."""

    name = "inverse-cloze"

    def __init__(self, n: int = 1, *, keep_sentence: float = 0.1, min_chars: int = 20,
                 max_chars: int = 300, seed: int = 42):
        self.n, self.keep_sentence, self.seed = n, keep_sentence, seed
        self.min_chars, self.max_chars = min_chars, max_chars

    def settings(self) -> dict:
        return {"method": self.name, "n": self.n, "keep_sentence": self.keep_sentence,
                "min_chars": self.min_chars, "max_chars": self.max_chars, "seed": self.seed}

    def queries(self, chunk: Chunk) -> ChunkResult:
        units = split_sentences(chunk.text)
        if len(units) < 2:
            return ChunkResult(chunk, skipped="fewer than two sentences")
        eligible = [i for i, s in enumerate(units) if self.min_chars <= len(s) <= self.max_chars]
        if not eligible:
            return ChunkResult(chunk, skipped=f"no sentence of {self.min_chars}-{self.max_chars} characters")
        rng = random.Random(f"{self.seed}:{chunk.key}")
        picked = rng.sample(eligible, min(self.n, len(eligible)))
        written = []
        for index in picked:
            keep = rng.random() < self.keep_sentence
            rest = units if keep else units[:index] + units[index + 1:]
            written.append(WrittenQuery(units[index], " ".join(rest)))
        return ChunkResult(chunk, written)


class TitleWriter(_LocalWriter):
    """The document's title as the query of its chunks; no model, no network."""

    name = "title"

    def __init__(self, *, min_chars: int = 10, max_chars: int = 300):
        self.min_chars, self.max_chars = min_chars, max_chars

    def settings(self) -> dict:
        return {"method": self.name, "min_chars": self.min_chars, "max_chars": self.max_chars}

    def queries(self, chunk: Chunk) -> ChunkResult:
        title = " ".join(chunk.title.split())
        if not title:
            return ChunkResult(chunk, skipped="no title")
        if not self.min_chars <= len(title) <= self.max_chars:
            return ChunkResult(chunk, skipped=f"title not of {self.min_chars}-{self.max_chars} characters")
        if title == " ".join(chunk.text.split()):
            return ChunkResult(chunk, skipped="the chunk is its title")
        return ChunkResult(chunk, [WrittenQuery(title, chunk.text)])


# ---------------------------------------------------------------------- LLM writers
def load_prompt(path: str | Path | None) -> str:
    """The prompt template: ``path``'s text, or the default. Fields: ``{n}``, ``{language}``,
    ``{title}``, ``{passage}`` (``{passage}`` is required; write ``{{`` for a brace)."""
    if path is None:
        return DEFAULT_PROMPT
    path = Path(path)
    try:
        template = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--prompt {path}: cannot read it ({exc})") from None
    names = {m.group(1) for m in re.finditer(r"(?<!\{)\{(\w*)[^{}]*\}(?!\})", template)}
    unknown = sorted(names - set(PROMPT_FIELDS))
    if unknown:
        raise ConfigError(f"--prompt {path}: unknown field(s) {', '.join('{' + u + '}' for u in unknown)}; "
                          f"use {', '.join('{' + f + '}' for f in PROMPT_FIELDS)}")
    if "passage" not in names:
        raise ConfigError(f"--prompt {path}: the template has no {{passage}} field")
    return template


def document_language(text: str, language: str) -> str:
    """The language the queries are asked in: ``language`` unless it is ``auto``, then
    Chinese/Japanese/Korean text by its script, else "the language of the passage"."""
    if language != "auto":
        return language
    letters = [c for c in text if c.isalpha()]
    cjk = sum(1 for c in letters if _CJK.match(c))
    if letters and cjk / len(letters) > 0.3:
        if re.search(r"[\u3040-\u30ff]", text):
            return "Japanese"
        if re.search(r"[\uac00-\ud7af]", text):
            return "Korean"
        return "Chinese"
    return "the language of the passage"


def parse_queries(reply: str, n: int) -> list[str]:
    """The first ``n`` queries of a reply: one per line, list marks and quotes removed."""
    found = []
    for line in reply.splitlines():
        line = _LIST_MARK.sub("", line).strip().strip("\"'\u201c\u201d\u300c\u300d").strip()
        if line:
            found.append(line)
    return found[:n]


class _PromptedWriter(QueryWriter):
    """What the two LLM writers share: the prompt and the reply's parsing."""

    def __init__(self, n: int, prompt: str, language: str, max_passage_chars: int):
        self.n, self.prompt, self.language, self.max_passage_chars = n, prompt, language, max_passage_chars

    def message(self, chunk: Chunk) -> str:
        passage = chunk.text[: self.max_passage_chars]
        return self.prompt.format(n=self.n, language=document_language(passage, self.language),
                                  title=chunk.title or "(none)", passage=passage)

    def result(self, chunk: Chunk, reply: str) -> ChunkResult:
        queries = parse_queries(reply, self.n)
        if not queries:
            return ChunkResult(chunk, skipped="the model wrote no query")
        return ChunkResult(chunk, [WrittenQuery(q, chunk.text) for q in queries])

    def prompt_settings(self) -> dict:
        import hashlib

        return {"n": self.n, "language": self.language, "max_passage_chars": self.max_passage_chars,
                "prompt": hashlib.sha256(self.prompt.encode("utf-8")).hexdigest()[:16]}


class OpenAIQueryWriter(_PromptedWriter):
    """Any OpenAI-compatible chat-completions server through the ``openai`` client:
    ``concurrency`` requests in flight, each with ``timeout`` seconds and up to
    ``max_retries`` retries (the client's exponential backoff with jitter, on timeouts,
    connection errors, 408/409/429 and 5xx). The key comes from ``api_key`` or the
    environment (``EMBEDRAG_LLM_API_KEY``, ``OPENAI_API_KEY``) and is never shown."""

    name = "openai"

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None, n: int = 1,
                 prompt: str = DEFAULT_PROMPT, language: str = "auto", concurrency: int = 4,
                 timeout: float = 60.0, max_retries: int = 3, temperature: float = 0.0,
                 max_tokens: int = 256, max_passage_chars: int = 6000):
        super().__init__(n, prompt, language, max_passage_chars)
        from embedrag.engine.llm.rag import openai_client, shown_url

        self.model, self.base_url = model, base_url or "https://api.openai.com/v1"
        self._shown_url = shown_url(self.base_url)  # messages never show a user:password@ part
        self._key = api_key if api_key is not None else api_key_from_environment()
        self.client = openai_client(self.base_url, self._key, timeout=timeout, max_retries=max_retries)
        self.concurrency, self.temperature, self.max_tokens = concurrency, temperature, max_tokens

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIQueryWriter(model={self.model!r}, base_url={self._shown_url!r})"

    def settings(self) -> dict:
        return {"method": "llm", "llm": "openai", "model": self.model, "temperature": self.temperature,
                **self.prompt_settings()}

    def _ask(self, chunk: Chunk) -> ChunkResult:
        import openai

        try:
            reply = self.client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": self.message(chunk)}],
                temperature=self.temperature, max_tokens=self.max_tokens)
        except openai.APIStatusError as exc:
            return ChunkResult(chunk, error=redact(f"HTTP {exc.status_code} from {self._shown_url}", (self._key,)))
        except openai.APITimeoutError:
            return ChunkResult(chunk, error=f"timed out waiting for {self._shown_url}")
        except openai.APIConnectionError:
            return ChunkResult(chunk, error=f"cannot reach the LLM server at {self._shown_url}")
        try:
            content = reply.choices[0].message.content or ""
        except (AttributeError, IndexError, TypeError):
            return ChunkResult(chunk, error=f"unexpected reply from {self._shown_url}")
        return self.result(chunk, content)

    def write(self, chunks: Sequence[Chunk], report: Report) -> None:
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
        from itertools import islice

        from embedrag.engine.llm.rag import LLMError

        failures_in_a_row = 0
        pending = iter(chunks)
        with ThreadPoolExecutor(self.concurrency) as pool:
            running = {pool.submit(self._ask, c) for c in islice(pending, self.concurrency * 2)}
            while running:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    result = future.result()
                    failures_in_a_row = failures_in_a_row + 1 if result.error else 0
                    report(result)
                    if failures_in_a_row >= FAILURES_BEFORE_GIVING_UP:
                        for other in running:
                            other.cancel()
                        raise LLMError(f"{failures_in_a_row} requests in a row failed, the last: {result.error}")
                running |= {pool.submit(self._ask, c) for c in islice(pending, len(done))}


class HFQueryWriter(_PromptedWriter):
    """A local transformers causal LM, greedy, ``batch_size`` chunks a ``generate`` call
    (left-padded); the chat template when its tokenizer has one."""

    name = "hf"

    def __init__(self, path: str, *, n: int = 1, prompt: str = DEFAULT_PROMPT, language: str = "auto",
                 batch_size: int = 8, max_new_tokens: int = 96, max_passage_chars: int = 6000,
                 device: str | None = None):
        super().__init__(n, prompt, language, max_passage_chars)
        from embedrag.engine.llm.rag import load_causal_lm

        self.tokenizer, self.model, self.device, self.path = load_causal_lm(path, device, padding_side="left")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens

    def settings(self) -> dict:
        return {"method": "llm", "llm": "hf", "model": self.path, "max_new_tokens": self.max_new_tokens,
                **self.prompt_settings()}

    def _text(self, chunk: Chunk) -> str:
        message = self.message(chunk)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": message}],
                                                      add_generation_prompt=True, tokenize=False)
        # A model without a chat template continues text: cue the default prompt's answer; a
        # template of the user's own is sent as written.
        return message + "\nQueries:\n" if self.prompt == DEFAULT_PROMPT else message

    def write(self, chunks: Sequence[Chunk], report: Report) -> None:
        import torch

        for start in range(0, len(chunks), self.batch_size):
            batch = list(chunks[start:start + self.batch_size])
            inputs = self.tokenizer([self._text(c) for c in batch], return_tensors="pt", padding=True,
                                    add_special_tokens=False).to(self.device)
            with torch.inference_mode():
                output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                             pad_token_id=self.tokenizer.pad_token_id)
            replies = self.tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            for chunk, reply in zip(batch, replies):
                report(self.result(chunk, reply))


def make_query_writer(llm: str, *, n: int = 1, llm_model: str | None = None, base_url: str | None = None,
                      prompt_file: str | Path | None = None, language: str = "auto", concurrency: int = 4,
                      timeout: float = 60.0, max_retries: int = 3, batch_size: int = 8,
                      max_query_chars: int = 300, seed: int = 42, device: str | None = None) -> QueryWriter:
    """``none`` (inverse cloze), ``title``, ``openai`` or ``hf:PATH``."""
    if n < 1:
        raise ConfigError(f"--questions-per-chunk must be at least 1, got {n}")
    if llm == "none":
        if prompt_file is not None:
            raise ConfigError("--prompt needs an LLM (--llm openai or hf:PATH); inverse cloze writes no prompt")
        return InverseClozeWriter(n, max_chars=max_query_chars, seed=seed)
    if llm == "title":
        if prompt_file is not None or n != 1:
            raise ConfigError("--llm title writes one query per chunk, its document's title: no --prompt, "
                              "no --questions-per-chunk")
        return TitleWriter(max_chars=max_query_chars)
    prompt = load_prompt(prompt_file)
    if llm == "openai":
        if not llm_model:
            raise ConfigError("--llm openai needs --llm-model (the model name the server knows)")
        if concurrency < 1 or timeout <= 0 or max_retries < 0:
            raise ConfigError("--concurrency must be >= 1, --timeout > 0 and --max-retries >= 0")
        return OpenAIQueryWriter(llm_model, base_url=base_url, n=n, prompt=prompt, language=language,
                                 concurrency=concurrency, timeout=timeout, max_retries=max_retries)
    if llm.startswith("hf:") and len(llm) > 3:
        return HFQueryWriter(llm[3:], n=n, prompt=prompt, language=language, batch_size=batch_size,
                             device=device)
    raise ConfigError(f"--llm must be none, title, openai or hf:PATH, got {llm!r}")
