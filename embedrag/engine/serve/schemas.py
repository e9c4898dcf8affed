"""Request bodies of the HTTP API (pydantic models; FastAPI validates them)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# The kinds of text /v1/embeddings accepts in its `input_type` extension, and what they
# mean to the encoder (whose query and passage instructions then apply).
INPUT_TYPES = {"query": "query", "search_query": "query", "passage": "passage", "document": "passage",
               "search_document": "passage"}
Filters = dict[str, str | list[str]]


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request, plus ``input_type`` (query or passage; default passage)."""

    model_config = ConfigDict(extra="ignore")

    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    input_type: Literal["query", "passage", "document", "search_query", "search_document"] = "passage"


class _Retrieval(BaseModel):
    """How /v1/search and /v1/ask retrieve: how many passages, which search, which rows."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(5, ge=1)
    mode: Literal["vector", "hybrid"] = "vector"
    filters: Filters | None = None


class SearchRequest(_Retrieval):
    query: str = Field(min_length=1)


class AskRequest(_Retrieval):
    question: str = Field(min_length=1)
    stream: bool = True
