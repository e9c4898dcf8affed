"""Retrieval-augmented answers: retrieve chunks, number them in a prompt, let a generator
answer with citations ([1], [2] ...).

Generators: ``none`` (the passages are the answer), ``openai`` (any OpenAI-compatible
chat-completions server: vLLM, Ollama, llama.cpp, LM Studio, DashScope's compatible
mode; streamed through the official ``openai`` client, the ``llm`` extra) and ``hf:PATH``
(a local transformers causal LM, streamed).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from embedrag.engine.core.errors import ConfigError, EmbedragError, api_key_from_environment, redact
from embedrag.engine.retrieval.store import Hit, Retriever

SYSTEM_PROMPT = (
    "You answer questions using only the numbered passages provided. Cite the passages you "
    "use as [1], [2], ... If the passages do not contain the answer, say so."
)


class LLMError(EmbedragError):
    """The language model could not answer (server down, bad reply, missing model)."""


def build_messages(question: str, hits: Sequence[Hit]) -> list[dict[str, str]]:
    """System and user messages with the passages numbered from 1."""
    blocks = []
    for hit in hits:
        heading = f"[{hit.rank}] {hit.title}".rstrip()
        blocks.append(f"{heading}\n{hit.text}")
    context = "\n\n".join(blocks) if blocks else "(no passages found)"
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"Passages:\n\n{context}\n\nQuestion: {question}"}]


_WORD = re.compile(r"\w+", re.UNICODE)
_SENTENCE = re.compile(r"(?<=[.!?。！？])\s+")


def best_sentence(question: str, text: str) -> str:
    """The sentence of ``text`` sharing the most words with the question (CJK: characters)."""
    words = {w.lower() for w in _WORD.findall(question) if len(w) > 2 or not w.isascii()}
    characters = {c for c in question if not c.isascii() and c.strip()}
    best, best_score = "", 0.0
    for sentence in _SENTENCE.split(text):
        tokens = {w.lower() for w in _WORD.findall(sentence)}
        score = len(words & tokens) + 0.5 * len(characters & set(sentence))
        if score > best_score:
            best, best_score = sentence.strip(), score
    return best


def extractive_answer(question: str, hits: Sequence[Hit], sentences: int = 2) -> str:
    """An answer with no LLM: the best sentence (:func:`best_sentence`) of each of the first
    ``sentences`` passages that has one, each cited; the first passage's opening if none."""
    parts = []
    for hit in hits:
        sentence = best_sentence(question, hit.text)
        if sentence:
            parts.append(f"{sentence} [{hit.rank}]")
        if len(parts) == sentences:
            break
    if not parts and hits:
        opening = _SENTENCE.split(hits[0].text.strip(), maxsplit=1)[0]
        parts.append(f"{opening} [{hits[0].rank}]")
    return " ".join(parts)


_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


def cited_numbers(answer: str, passages: int) -> list[int]:
    """The passage numbers an answer cites (``[1]``, ``[2, 3]``), in order of first
    citation, ignoring numbers no passage has."""
    numbers: dict[int, None] = {}
    for group in _CITATION.findall(answer):
        for number in group.split(","):
            if 1 <= int(number) <= passages:
                numbers.setdefault(int(number), None)
    return list(numbers)


class Generator:
    """Turns messages into a stream of text pieces."""

    name = "none"

    def stream(self, messages: list[dict[str, str]]) -> Iterator[str]:
        return iter(())


class NoGenerator(Generator):
    """No language model: the retrieved passages are the answer."""


def openai_client(base_url: str, api_key: str | None, *, timeout: float, max_retries: int):
    """The official ``openai`` client for any OpenAI-compatible server (retries with
    exponential backoff on timeouts, connection errors, 408/409/429 and 5xx)."""
    try:
        import openai
    except ImportError:
        raise ConfigError("--llm openai needs the openai package: pip install 'embedrag[llm]'") from None
    # Local servers need no key; the client insists on one, and sends this placeholder.
    return openai.OpenAI(base_url=base_url, api_key=api_key or "no-key", timeout=timeout,
                         max_retries=max_retries)


class OpenAIChatGenerator(Generator):
    """Any server speaking the OpenAI chat-completions protocol, streamed through the
    ``openai`` client. The key comes from ``api_key`` or the environment
    (``EMBEDRAG_LLM_API_KEY``, ``OPENAI_API_KEY``) and never appears in a message."""

    name = "openai"

    def __init__(self, model: str, base_url: str = "https://api.openai.com/v1", api_key: str | None = None,
                 timeout: float = 120.0, max_retries: int = 2, temperature: float = 0.0,
                 max_tokens: int | None = None):
        self.model = model
        self.base_url = base_url.rstrip("/")
        self._key = api_key if api_key is not None else api_key_from_environment()
        self._shown_url = shown_url(self.base_url)
        self.client = openai_client(self.base_url, self._key, timeout=timeout, max_retries=max_retries)
        self.temperature = temperature
        self.max_tokens = max_tokens

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIChatGenerator(model={self.model!r}, base_url={self._shown_url!r})"

    def stream(self, messages: list[dict[str, str]]) -> Iterator[str]:
        import openai

        options: dict[str, Any] = {"temperature": self.temperature}
        if self.max_tokens:
            options["max_tokens"] = self.max_tokens
        try:
            events = self.client.chat.completions.create(model=self.model, messages=messages, stream=True,
                                                         **options)
            for event in events:
                choices = getattr(event, "choices", None) or ()
                delta = getattr(choices[0], "delta", None) if choices else None
                if delta is not None and delta.content:
                    yield delta.content
        except openai.APIStatusError as exc:
            detail = str(getattr(exc, "message", "") or "").replace("\n", " ")[:300]
            raise LLMError(redact(f"LLM server {self._shown_url} answered HTTP {exc.status_code}: {detail}",
                                  (self._key,))) from None
        except openai.APITimeoutError:
            raise LLMError(f"timed out waiting for the LLM server at {self._shown_url}") from None
        except openai.APIConnectionError:
            raise LLMError(f"cannot reach the LLM server at {self._shown_url}") from None
        except openai.OpenAIError as exc:  # a reply the client cannot parse
            raise LLMError(redact(f"unexpected reply from {self._shown_url}: {exc}", (self._key,))) from None


def shown_url(url: str) -> str:
    """``url`` without a ``user:password@`` part, for messages."""
    return re.sub(r"//[^/@]*@", "//", url, count=1)


def load_causal_lm(path: str, device: str | None = None, *, padding_side: str | None = None):
    """(tokenizer, model in eval mode on ``device``, device, resolved path) of a local
    transformers causal LM."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from embedrag.engine.encoding.encoder import default_device, quiet_transformers
    from embedrag.engine.encoding.models import resolve_model

    resolved = resolve_model(path)
    options = {"padding_side": padding_side} if padding_side else {}
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(resolved.path, **options)
        model = AutoModelForCausalLM.from_pretrained(resolved.path)
    device = device or default_device()
    model.to(device).eval()
    return tokenizer, model, device, str(resolved.path)


class HFGenerator(Generator):
    """A local transformers causal LM; the chat template when its tokenizer has one."""

    name = "hf"

    def __init__(self, path: str, max_new_tokens: int = 256, device: str | None = None):
        self.tokenizer, self.model, self.device, self.path = load_causal_lm(path, device)
        self.max_new_tokens = max_new_tokens

    def _prompt_ids(self, messages: list[dict[str, str]]):
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                      return_tensors="pt", return_dict=True)
        text = "\n\n".join(m["content"] for m in messages) + "\n\nAnswer:"
        return self.tokenizer(text, return_tensors="pt")

    def stream(self, messages: list[dict[str, str]]) -> Iterator[str]:
        from transformers import TextIteratorStreamer

        inputs = {k: v.to(self.device) for k, v in self._prompt_ids(messages).items()}
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        kwargs = dict(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, streamer=streamer,
                      pad_token_id=pad)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                self.model.generate(**kwargs)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(exc)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        yield from streamer
        worker.join()
        if errors:
            raise LLMError(f"local model {self.path} failed: {errors[0]}")


def make_generator(spec: str, *, base_url: str | None = None, model: str | None = None,
                   max_new_tokens: int = 256, device: str | None = None) -> Generator:
    """``none``, ``openai`` or ``hf:PATH``."""
    if spec == "none":
        return NoGenerator()
    if spec == "openai":
        if not model:
            raise ConfigError("--llm openai needs --llm-model (the model name the server knows)")
        return OpenAIChatGenerator(model=model, base_url=base_url or "https://api.openai.com/v1")
    if spec.startswith("hf:") and len(spec) > 3:
        return HFGenerator(spec[3:], max_new_tokens=max_new_tokens, device=device)
    raise ConfigError(f"--llm must be none, openai or hf:PATH, got {spec!r}")


@dataclass
class Answer:
    """A question, the passages retrieved for it and the generated answer (if any)."""

    question: str
    passages: list[Hit]
    answer: str | None
    generator: str
    retrieval_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"question": self.question, "answer": self.answer, "generator": self.generator,
                "retrieval_ms": round(self.retrieval_ms, 2),
                "passages": [asdict(h) for h in self.passages]}


class RAG:
    """Retriever + generator. ``ask`` streams answer pieces to ``on_text``."""

    def __init__(self, retriever: Retriever, generator: Generator | None = None, *, top_k: int = 5,
                 hybrid: bool = False):
        self.retriever = retriever
        self.generator = generator or NoGenerator()
        self.top_k = top_k
        self.hybrid = hybrid

    @classmethod
    def from_table(cls, db: str, table: str = "docs", *, llm: str = "none", model: str | None = None,
                   **options) -> RAG:
        generator_options = {k: options.pop(k) for k in ("base_url", "max_new_tokens") if k in options}
        llm_model = options.pop("llm_model", None)
        return cls(Retriever(db, table, model=model), make_generator(llm, model=llm_model, **generator_options),
                   **options)

    def retrieve(self, question: str) -> tuple[list[Hit], float]:
        import time

        started = time.perf_counter()
        hits = self.retriever.search(question, self.top_k, hybrid=self.hybrid)
        return hits, (time.perf_counter() - started) * 1000

    def ask(self, question: str, on_text: Callable[[str], None] | None = None) -> Answer:
        if not question.strip():
            raise ConfigError("the question is empty")
        hits, milliseconds = self.retrieve(question)
        if isinstance(self.generator, NoGenerator):
            return Answer(question, hits, None, "none", milliseconds)
        pieces = []
        for piece in self.generator.stream(build_messages(question, hits)):
            pieces.append(piece)
            if on_text:
                on_text(piece)
        return Answer(question, hits, "".join(pieces), self.generator.name, milliseconds)
