"""The ``/v1`` routes: OpenAI-compatible embeddings and models, search, and ask (streamed
with server-sent events)."""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from embedrag.engine.core.errors import ConfigError, EmbedragError, redact
from embedrag.engine.serve.guards import APIError
from embedrag.engine.serve.schemas import INPUT_TYPES, AskRequest, EmbeddingRequest, SearchRequest

if TYPE_CHECKING:
    from embedrag.engine.retrieval.store import Hit
    from embedrag.engine.serve.state import ServerState

router = APIRouter(prefix="/v1")


def _state(request: Request) -> ServerState:
    return request.app.state.embedrag


@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    state = _state(request)
    return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": int(state.started),
                                        "owned_by": "embedrag", "dimension": state.encoder.dimension}]}


@router.post("/embeddings")
async def create_embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
    state = _state(request)
    _check_model(state, body.model)
    texts = _texts(body.input, state.config.limits.max_inputs)
    if body.dimensions is not None and body.dimensions != state.encoder.dimension:
        raise APIError(400, f"this model gives {state.encoder.dimension}-dimensional vectors; "
                       f"dimensions={body.dimensions} is not available", param="dimensions")
    kind = INPUT_TYPES[body.input_type]
    tokens = await run_in_threadpool(_token_counts, state, texts, kind)
    vectors = await state.batcher.encode(texts, kind)
    if body.encoding_format == "base64":
        data = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
    else:
        data = vectors.tolist()
    used = sum(tokens)
    return {"object": "list", "model": state.model_name, "usage": {"prompt_tokens": used, "total_tokens": used},
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)]}


@router.post("/search")
async def search(body: SearchRequest, request: Request) -> dict[str, Any]:
    state = _state(request)
    started = time.perf_counter()
    hits = await _retrieve(state, body.query, body.k, body.mode, body.filters)
    return {"object": "list", "query": body.query, "model": state.model_name, "mode": body.mode,
            "took_ms": round((time.perf_counter() - started) * 1000, 2), "data": [hit_json(h) for h in hits]}


@router.post("/ask")
async def ask(body: AskRequest, request: Request):
    state = _state(request)
    started = time.perf_counter()
    hits = await _retrieve(state, body.question, body.k, body.mode, body.filters)
    retrieval_ms = round((time.perf_counter() - started) * 1000, 2)
    events = _answer_events(state, body.question, hits, retrieval_ms)
    if body.stream:
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    final: dict[str, Any] = {}
    for event in await run_in_threadpool(list, events):
        name, payload = _parse_event(event)
        if name == "error":
            raise APIError(502, payload["message"], code="llm_error", kind="server_error")
        if name in ("passages", "done"):
            final.update(payload)
    return JSONResponse(final)


@router.get("/report")
async def report(request: Request) -> dict[str, Any]:
    state = _state(request)
    if state.report is None:
        raise APIError(404, "this server was started without --report", code="no_report")
    return state.report


def hit_json(hit: Hit) -> dict[str, Any]:
    row = asdict(hit)
    row["id"] = row.pop("chunk_id")
    metadata = hit.metadata if isinstance(hit.metadata, dict) else {}
    row["page"] = metadata.get("page")
    row["heading_path"] = metadata.get("heading_path")
    row["location"] = hit.location()
    return row


def _check_model(state: ServerState, model: str | None) -> None:
    if model is not None and model not in (state.model_name, state.encoder.name):
        raise APIError(404, f"model {model!r} is not served here; this server serves {state.model_name!r}",
                       code="model_not_found", param="model", kind="invalid_request_error")


def _texts(value, max_inputs: int) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not texts:
        raise APIError(400, "input is empty", param="input")
    if not all(isinstance(t, str) for t in texts):
        raise APIError(400, "input must be a string or a list of strings; token-id arrays are not accepted "
                       "(LangChain: OpenAIEmbeddings(check_embedding_ctx_length=False))", param="input")
    if len(texts) > max_inputs:
        raise APIError(400, f"{len(texts):,} inputs in one request; the limit is {max_inputs:,}",
                       code="too_many_inputs", param="input")
    return texts


def _token_counts(state: ServerState, texts: list[str], kind: str) -> list[int]:
    """Tokens embedded per text (the model reads at most its maximum length); a text over the
    server's per-input limit is refused rather than cut silently."""
    limit = state.config.limits.max_input_tokens
    with state.counting_lock:
        encoded = state.counting_tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)
    counts = [len(ids) for ids in encoded["input_ids"]]
    for index, count in enumerate(counts):
        if count > limit:
            raise APIError(400, f"input[{index}] has {count:,} tokens; the limit is {limit:,} per input",
                           code="input_too_long", param="input")
    model_limit = state.encoder.max_length(kind)
    return [min(count, model_limit) for count in counts]


async def _retrieve(state: ServerState, question: str, k: int, mode: str, filters) -> list[Hit]:
    if state.retriever is None:
        raise APIError(404, "this server has no index (start it with --db)", code="no_index")
    limits = state.config.limits
    if not question.strip():
        raise APIError(400, "the query is empty", param="query")
    if len(question) > limits.max_question_chars:
        raise APIError(400, f"the query has {len(question):,} characters; the limit is "
                       f"{limits.max_question_chars:,}", code="query_too_long", param="query")
    if k > limits.max_k:
        raise APIError(400, f"k={k} is over the limit of {limits.max_k}", param="k")
    vector = (await state.batcher.encode([question], "query"))[0]
    try:
        return await run_in_threadpool(state.retriever.search_vector, question, vector, k,
                                       hybrid=mode == "hybrid", filters=filters)
    except ConfigError as exc:
        raise APIError(400, str(exc), param="filters") from None


def _sse(event: str, payload: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _parse_event(text: str) -> tuple[str, dict[str, Any]]:
    head, _, data = text.partition("\ndata: ")
    return head.removeprefix("event: "), json.loads(data)


def _answer_events(state: ServerState, question: str, hits: list[Hit], retrieval_ms: float) -> Iterator[str]:
    """passages, then token pieces as the generator writes them, then done (the whole
    answer and the passages it cites); an LLM failure mid-stream is an ``error`` event."""
    from embedrag.engine.llm.rag import (
        NoGenerator,
        build_messages,
        cited_numbers,
        extractive_answer,
    )

    generator = state.generator or NoGenerator()
    passages = [hit_json(h) for h in hits]
    yield _sse("passages", {"question": question, "passages": passages, "retrieval_ms": retrieval_ms,
                            "generator": generator.name})
    pieces: list[str] = []
    try:
        if isinstance(generator, NoGenerator):
            pieces.append(extractive_answer(question, hits))
            yield _sse("token", {"text": pieces[-1]})
        else:
            lock = state.generate_lock if generator.name == "hf" else None
            with lock or contextlib.nullcontext():
                for piece in generator.stream(build_messages(question, hits)):
                    pieces.append(piece)
                    yield _sse("token", {"text": piece})
    except EmbedragError as exc:
        yield _sse("error", {"message": redact(str(exc))})
        return
    answer = "".join(pieces)
    cited = [passages[n - 1] for n in cited_numbers(answer, len(passages))]
    yield _sse("done", {"answer": answer, "citations": [{"n": c["rank"], **c} for c in cited]})

