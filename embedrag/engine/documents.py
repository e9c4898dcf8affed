"""Reading documents to index and cutting them into token-sized chunks.

Inputs: ``.jsonl`` (a text field, optional id and title fields, every other field kept
as metadata; BEIR ``corpus.jsonl`` works as is), ``.txt`` and ``.md`` files, and folders
of them. Chunks respect paragraph and sentence boundaries where they can and are
measured in the embedding model's own tokens.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedrag.engine.errors import ConfigError, DataError

TEXT_SUFFIXES = (".txt", ".md", ".markdown")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|(?<=[。！？])")
_PARAGRAPH = re.compile(r"\n\s*\n")


@dataclass
class Document:
    """One document: its id (unique within an index), text, title, source and metadata."""

    id: str
    text: str
    title: str = ""
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class JsonlFields:
    """Which JSONL fields hold the text, id and title (BEIR: text, _id, title)."""

    text: str = "text"
    id: str | None = None
    title: str = "title"


def _jsonl_documents(path: Path, fields: JsonlFields) -> Iterator[Document]:
    from embedrag.engine.data import iter_json_objects

    id_field = fields.id
    for number, record in iter_json_objects(path):
        text = record.get(fields.text)
        if not isinstance(text, str):
            raise DataError([f"{path}:{number}: missing or non-string {fields.text!r} field "
                             "(choose it with --text-field)"])
        key = id_field or ("_id" if "_id" in record else "id" if "id" in record else None)
        doc_id = str(record[key]) if key and record.get(key) is not None else f"{path.name}:{number}"
        title = record.get(fields.title) or ""
        metadata = {k: v for k, v in record.items() if k not in {fields.text, key, fields.title}}
        yield Document(id=doc_id, text=text, title=str(title), source=str(path), metadata=metadata)


def _text_document(path: Path, root: Path | None) -> Document:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError([f"{path}: not valid UTF-8"]) from exc
    title = ""
    for line in text.splitlines():
        if line.strip():
            title = line.lstrip("#").strip() if line.lstrip().startswith("#") else ""
            break
    doc_id = str(path.relative_to(root)) if root else path.name
    return Document(id=doc_id, text=text, title=title or path.stem, source=str(path))


def read_documents(inputs: Sequence[str | os.PathLike], *, fields: JsonlFields | None = None,
                   glob: str = "**/*") -> Iterator[Document]:
    """Every document of the given files and folders, in a stable order."""
    fields = fields or JsonlFields()
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise DataError([f"{path}: no such file or folder"])
        if path.is_dir():
            files = sorted(p for p in path.glob(glob) if p.is_file()
                           and p.suffix.lower() in (".jsonl", *TEXT_SUFFIXES))
            if not files:
                raise DataError([f"{path}: no .jsonl, .txt or .md files (glob {glob!r})"])
            for file in files:
                yield from _file_documents(file, fields, root=path)
        else:
            yield from _file_documents(path, fields, root=None)


def _file_documents(path: Path, fields: JsonlFields, root: Path | None) -> Iterator[Document]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _jsonl_documents(path, fields)
    elif suffix in TEXT_SUFFIXES:
        yield _text_document(path, root)
    else:
        raise DataError([f"{path}: unsupported file type {suffix or '(none)'}; use .jsonl, .txt or .md"])


# ---------------------------------------------------------------------- chunking
def _pieces(text: str) -> list[str]:
    """Paragraphs split into sentences: the units a chunk is packed from."""
    pieces = []
    for paragraph in _PARAGRAPH.split(text):
        paragraph = paragraph.strip()
        if paragraph:
            pieces.extend(s.strip() for s in _SENTENCE_END.split(paragraph) if s.strip())
    return pieces


class Chunker:
    """Packs sentences into chunks of at most ``chunk_size`` tokens, repeating about
    ``chunk_overlap`` tokens of whole sentences at the start of the next chunk; a
    sentence longer than a chunk is cut at token boundaries."""

    def __init__(self, tokenizer, chunk_size: int, chunk_overlap: int = 0):
        if chunk_size <= 0:
            raise ConfigError(f"--chunk-size must be positive, got {chunk_size}")
        if not 0 <= chunk_overlap < chunk_size:
            raise ConfigError(f"--chunk-overlap must be in [0, chunk size), got {chunk_overlap}")
        self.tokenizer = tokenizer
        self.chunk_size = chunk_size
        self.chunk_overlap = chunk_overlap

    def _count(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        ids = self.tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        return [len(x) for x in ids]

    def _split_long(self, sentence: str) -> list[str]:
        encoded = self.tokenizer(sentence, add_special_tokens=False, return_offsets_mapping=True,
                                 truncation=False, verbose=False)
        offsets = encoded["offset_mapping"]
        parts = []
        for start in range(0, len(offsets), self.chunk_size):
            window = offsets[start:start + self.chunk_size]
            parts.append(sentence[window[0][0]:window[-1][1]].strip())
        return [p for p in parts if p]

    def split(self, text: str) -> list[str]:
        pieces = _pieces(text)
        if not pieces:
            return []
        units: list[tuple[str, int]] = []
        for piece, count in zip(pieces, self._count(pieces)):
            if count > self.chunk_size:
                parts = self._split_long(piece)
                units.extend(zip(parts, self._count(parts)))
            else:
                units.append((piece, count))
        chunks: list[str] = []
        current: list[tuple[str, int]] = []
        size = 0
        for unit in units:
            if current and size + unit[1] > self.chunk_size:
                chunks.append(" ".join(p for p, _ in current))
                current, size = self._overlap_tail(current)
                if size + unit[1] > self.chunk_size:
                    current, size = [], 0
            current.append(unit)
            size += unit[1]
        if current:
            chunks.append(" ".join(p for p, _ in current))
        return chunks

    def _overlap_tail(self, units: list[tuple[str, int]]) -> tuple[list[tuple[str, int]], int]:
        tail: list[tuple[str, int]] = []
        size = 0
        for unit in reversed(units):
            if size + unit[1] > self.chunk_overlap:
                break
            tail.insert(0, unit)
            size += unit[1]
        return tail, size
