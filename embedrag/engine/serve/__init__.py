"""``embedrag serve``: an HTTP server over a loaded model and index.

- ``POST /v1/embeddings`` and ``GET /v1/models``: OpenAI's shapes, so the ``openai``
  client, LangChain's and LlamaIndex's OpenAI embedding classes work unchanged;
- ``POST /v1/search`` (vector or hybrid, filters) and ``POST /v1/ask`` (server-sent events);
- ``GET /`` a question page and ``GET /report`` an eval-report page, shipped with the
  package (no CDN); ``GET /health``.

Concurrent embedding work is batched (:mod:`.batching`); auth and limits are in
:mod:`.guards`. Modules: config -> batching, guards, schemas -> state -> api -> app -> runner.
"""

from embedrag.engine.serve.config import (
    API_KEY_VARIABLE,
    BatchingConfig,
    Limits,
    ServeConfig,
    is_loopback,
)

__all__ = ["API_KEY_VARIABLE", "BatchingConfig", "Limits", "ServeConfig", "create_app", "is_loopback",
           "load_state", "serve"]


def __getattr__(name: str):
    # FastAPI and uvicorn load only when a server is made, so `embedrag --help` stays light.
    if name == "create_app":
        from embedrag.engine.serve.app import create_app

        return create_app
    if name == "load_state":
        from embedrag.engine.serve.state import load_state

        return load_state
    if name == "serve":
        from embedrag.engine.serve.runner import serve

        return serve
    raise AttributeError(name)
