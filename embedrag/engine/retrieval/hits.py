"""What a search returns (:class:`Hit`) and the metadata filters every search takes."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from embedrag.engine.core.errors import ConfigError

# The columns of a table row a hit is made from (the vector is not among them).
COLUMNS = ["chunk_id", "doc_id", "chunk", "text", "title", "source", "metadata"]
FILTER_COLUMNS = ("doc_id", "chunk_id", "source", "title")


@dataclass
class Hit:
    """One retrieved chunk."""

    rank: int
    score: float
    chunk_id: str
    doc_id: str
    chunk: int
    text: str
    title: str
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def location(self) -> str:
        """The source with the place in it: ``report.pdf p. 3``, ``guide.docx § Intro > Scope``."""
        metadata = self.metadata if isinstance(self.metadata, dict) else {}
        if metadata.get("page"):
            return f"{self.source} p. {metadata['page']}"
        if metadata.get("heading_path"):
            return f"{self.source} § {metadata['heading_path']}"
        return self.source


def hit_from_row(rank: int, row: dict, score: float) -> Hit:
    try:
        metadata = json.loads(row.get("metadata") or "{}")
    except ValueError:
        metadata = {}
    return Hit(rank=rank, score=score, chunk_id=row["chunk_id"], doc_id=row["doc_id"], chunk=int(row["chunk"]),
               text=row["text"], title=row.get("title") or "", source=row.get("source") or "", metadata=metadata)


def filter_values(filters: dict[str, Any] | None) -> dict[str, list[str]]:
    """``{column: value or [values]}`` checked against :data:`FILTER_COLUMNS`, as lists."""
    checked = {}
    for column, value in (filters or {}).items():
        if column not in FILTER_COLUMNS:
            raise ConfigError(f"cannot filter on {column!r}; filters take {', '.join(FILTER_COLUMNS)}")
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if not values or not all(isinstance(v, str) for v in values):
            raise ConfigError(f"filter {column!r} takes a string or a non-empty list of strings")
        checked[column] = values
    return checked


def filter_clause(filters: dict[str, Any] | None) -> str | None:
    """A SQL ``WHERE`` for LanceDB from ``{column: value or [values]}`` over
    :data:`FILTER_COLUMNS` (values quoted, so no filter can inject SQL); None for none."""
    checked = filter_values(filters)
    if not checked:
        return None
    return " AND ".join(f"{column} IN ({quote_sql(values)})" for column, values in checked.items())


def quote_sql(values: Iterable[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)
