"""What a server is started with: the index, the model, the generator, limits and access."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from embedrag.engine.core.errors import ConfigError

# The variable a server reads its own key from (clients send it as a bearer token). The
# LLM's key is another (errors.API_KEY_VARIABLES).
API_KEY_VARIABLE = "EMBEDRAG_API_KEY"


@dataclass
class Limits:
    """Bounds on one request; each breach is a 4xx JSON error, never a 5xx or a crash.
    The defaults follow OpenAI's embeddings endpoint (2,048 inputs, 8,192 tokens each)."""

    max_body_bytes: int = 8 * 1024 * 1024
    max_inputs: int = 2048
    max_input_tokens: int = 8192
    max_k: int = 100
    max_question_chars: int = 4000


@dataclass
class BatchingConfig:
    """Dynamic batching of concurrent embedding work: a request waits at most
    ``max_wait_ms`` for others to join it, a batch holds at most ``max_texts`` texts.
    ``enabled=False`` encodes each request alone, in arrival order."""

    enabled: bool = True
    max_wait_ms: float = 2.0
    max_texts: int = 256


@dataclass
class ServeConfig:
    """Everything ``embedrag serve`` needs. ``db`` may be None: then only the embedding
    endpoints answer (with ``model``)."""

    db: str | None = None
    table: str = "docs"
    model: str | None = None
    model_name: str | None = None  # the id clients send; default: the model folder's name
    llm: str = "none"
    llm_base_url: str = "https://api.openai.com/v1"
    llm_model: str | None = None
    max_new_tokens: int = 256
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    no_auth: bool = False
    report: str | None = None  # an `embedrag eval` JSON shown at /report
    device: str | None = None
    backend: str = "torch"  # or a model folder's export: onnx, openvino (see embedrag export)
    precision: str = "fp32"  # of /v1/embeddings vectors; queries for search are fp32 as in `ask`
    # Search a table without an ANN index (up to memory.MAX_MEMORY_ROWS rows) from memory.
    memory_search: bool = True
    limits: Limits = field(default_factory=Limits)
    batching: BatchingConfig = field(default_factory=BatchingConfig)

    def __post_init__(self) -> None:
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_VARIABLE) or None

    def check(self) -> None:
        """Refuse settings that would expose an open server, or cannot work."""
        if self.db is None and self.model is None:
            raise ConfigError("serve needs --db (an index to search) or --model (embeddings only)")
        if self.db is not None and not Path(self.db).exists():
            raise ConfigError(f"no LanceDB database at {self.db}")
        if self.report is not None and not Path(self.report).is_file():
            raise ConfigError(f"no eval report at {self.report}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be 0-65535, got {self.port}")
        if self.api_key is not None and len(self.api_key) < 8:
            raise ConfigError("the API key must be at least 8 characters")
        if not is_loopback(self.host) and self.api_key is None and not self.no_auth:
            raise ConfigError(f"serving on {self.host} (not loopback) needs an API key "
                              f"(--api-key or {API_KEY_VARIABLE}) or an explicit --no-auth")

    @property
    def auth_required(self) -> bool:
        return self.api_key is not None and not self.no_auth


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; every other name or address (0.0.0.0
    included) can be reached from elsewhere."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
