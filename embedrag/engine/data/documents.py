"""Reading documents to index and cutting them into token-sized chunks.

Inputs: ``.jsonl`` (a text field, optional id and title fields, every other field kept
as metadata; BEIR ``corpus.jsonl`` works as is), ``.txt`` and Markdown files, ``.pdf``,
``.html``/``.htm`` and ``.docx`` files (the ``embedrag[documents]`` extra: pypdf,
trafilatura, python-docx, each imported only when a file of its kind is read), and
folders of them. Chunks respect paragraph and sentence boundaries where they can and are
measured in the embedding model's own tokens.

What each reader makes (a Document's metadata is copied to every chunk's row, so it is
what a search hit, and ``ask``'s sources, can cite):

- PDF: one Document per page with text, id ``<file>#p<N>``, metadata ``page`` (1-based)
  and ``pages``; the title is the PDF's own title, else the file's stem.
- HTML: one Document, the page's main text (trafilatura; its plain text extraction when
  the main-content heuristic finds nothing), one paragraph per extracted block; the title
  from the page's metadata (og/meta title, a single ``<h1>``, ``<title>``), else the stem.
- Markdown (``.md``, ``.markdown``): with headings (ATX ``#`` or setext, found by
  markdown-it, so a ``#`` line in a code fence is no heading), one Document per section as
  for DOCX below (id ``<file>#s<N>``, metadata ``heading_path``, ``section``,
  ``sections``), the section's source lines kept as written; without headings one
  Document, id the file's name. The title is the first line when it is a heading, else
  the stem.
- DOCX: one Document per section, a section being a heading (styles ``Heading 1``,
  ``Heading 2``, ...) with the paragraphs and tables up to the next heading (text before
  the first heading is a section too); id ``<file>#s<N>``, metadata ``heading_path``
  (``"Intro > Scope"``, ``""`` before the first heading), ``section`` and ``sections``; the
  title is the file's core title, else the stem. Per section rather than one Document per
  file with a list of offsets: chunks keep no offsets, only their Document's metadata, so
  only per-section Documents let each chunk cite its section. A heading with no text under
  it (directly followed by a sub-heading) makes no Document of its own; it lives on in its
  sub-sections' ``heading_path``.
- Images (``.png``, ``.jpg``, ``.jpeg``, ``.webp``): one Document, the caption a
  ``captioner`` writes (``embedrag.engine.llm.captions``: a local image-to-text model or an
  OpenAI-compatible vision endpoint, cached by image content), id the file's name,
  metadata ``image`` (the path) and ``caption_model``. A JSONL row with an ``image`` path
  (relative to the JSONL file) gets its caption after its text. An image without a
  captioner is a ConfigError; an unreadable image a WARNING, and it is skipped.

Paragraphs are separated by blank lines (a DOCX table is one paragraph, a line per row),
so the Chunker packs whole paragraphs. Re-indexing a PDF or DOCX that lost pages or sections with
``--mode upsert`` leaves the rows of the lost ids; use ``overwrite`` for such changes.

Failures, always one line naming the file:

- a PDF page without extractable text (a scanned page), or a PDF, HTML or DOCX file with
  no text at all: a WARNING, and that page or file is skipped (never an empty Document);
- an encrypted PDF that an empty password does not open, a corrupt PDF or DOCX, a file
  that cannot be read: DataError, which stops the run, also inside a folder;
- a missing library of the extra: ConfigError, ``reading F needs pypdf: pip install
  'embedrag[documents]'``;
- an unsupported file type given as a file: DataError naming the supported types; inside
  a folder, files of other types (and Word's ``~$`` lock files) are skipped, and a folder
  with no supported file is a DataError.
"""

from __future__ import annotations

import importlib
import io
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from embedrag.engine.core.errors import ConfigError, DataError, EmbedragError

TEXT_SUFFIXES = (".txt",)
MARKDOWN_SUFFIXES = (".md", ".markdown")
PDF_SUFFIXES = (".pdf",)
HTML_SUFFIXES = (".html", ".htm")
DOCX_SUFFIXES = (".docx",)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
SUPPORTED_SUFFIXES = (".jsonl", *TEXT_SUFFIXES, *MARKDOWN_SUFFIXES, *PDF_SUFFIXES, *HTML_SUFFIXES,
                      *DOCX_SUFFIXES, *IMAGE_SUFFIXES)
SUPPORTED_TYPES = ".jsonl, .txt, .md, .pdf, .html, .docx, images (.png, .jpg, .webp)"
NEEDS_CAPTIONS = "caption it with --caption-model hf:PATH or --caption-llm openai"
DOCUMENTS_EXTRA = "pip install 'embedrag[documents]'"
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|(?<=[。！？])")
_PARAGRAPH = re.compile(r"\n\s*\n")
_HEADING_STYLE = re.compile(r"heading ?(\d+)", re.IGNORECASE)

logger = logging.getLogger(__name__)


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
    """Which JSONL fields hold the text, id, title and an image path (BEIR: text, _id, title)."""

    text: str = "text"
    id: str | None = None
    title: str = "title"
    image: str = "image"


class Captioner(Protocol):
    """Turns an image file into text (``embedrag.engine.llm.captions``); None for an image it
    cannot read (it warns)."""

    name: str

    def __call__(self, path: Path) -> str | None: ...


def _row_image(record: dict, path: Path, number: int, fields: JsonlFields, captioner: Captioner | None):
    """(caption, image path) of a row's image field when there is a captioner, else None."""
    image = record.get(fields.image)
    if captioner is None or not isinstance(image, str) or not image.strip():
        return None
    image_path = (path.parent / image) if not Path(image).is_absolute() else Path(image)
    if not image_path.is_file():
        logger.warning("%s:%d: image %s not found; the row keeps its text only", path, number, image_path)
        return None
    caption = captioner(image_path)
    if not caption:
        logger.warning("%s:%d: its image %s gave no caption; the row keeps its text only", path, number, image_path)
        return None
    return caption, image_path


def _jsonl_documents(path: Path, fields: JsonlFields, captioner: Captioner | None = None) -> Iterator[Document]:
    from embedrag.engine.data.examples import iter_json_objects

    id_field = fields.id
    for number, record in iter_json_objects(path):
        text = record.get(fields.text)
        captioned = _row_image(record, path, number, fields, captioner)
        if captioned is not None:
            text = f"{text}\n{captioned[0]}" if isinstance(text, str) and text.strip() else captioned[0]
            record = {**record, fields.image: str(captioned[1]), "caption_model": captioner.name}
        if not isinstance(text, str):
            raise DataError([f"{path}:{number}: missing or non-string {fields.text!r} field "
                             "(choose it with --text-field)"])
        key = id_field or ("_id" if "_id" in record else "id" if "id" in record else None)
        doc_id = str(record[key]) if key and record.get(key) is not None else f"{path.name}:{number}"
        title = record.get(fields.title) or ""
        metadata = {k: v for k, v in record.items() if k not in {fields.text, key, fields.title}}
        yield Document(id=doc_id, text=text, title=str(title), source=str(path), metadata=metadata)


def _doc_id(path: Path, root: Path | None) -> str:
    return str(path.relative_to(root)) if root else path.name


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError([f"{path}: cannot read it ({(exc.strerror or str(exc)).lower()})"]) from exc


def _read_text(path: Path) -> str:
    try:
        text = _read_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError([f"{path}: not valid UTF-8"]) from exc
    return text.replace("\r\n", "\n").replace("\r", "\n")  # as read_text's universal newlines


def _text_document(path: Path, root: Path | None) -> Document:
    text = _read_text(path)
    title = ""
    for line in text.splitlines():
        if line.strip():
            title = line.lstrip("#").strip() if line.lstrip().startswith("#") else ""
            break
    return Document(id=_doc_id(path, root), text=text, title=title or path.stem, source=str(path))


def _markdown_blocks(text: str) -> Iterator[tuple[int, str]]:
    """Headings (found by markdown-it, so ``#`` inside code fences is no heading and
    underlined setext headings are) and the source lines between them, untouched."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").parse(text)
    lines = text.split("\n")
    position = 0
    for index, token in enumerate(tokens):
        if token.type != "heading_open" or token.map is None:
            continue
        start, end = token.map
        body = "\n".join(lines[position:start]).strip()
        if body:
            yield 0, body
        yield int(token.tag[1:]), tokens[index + 1].content.strip()
        position = end
    rest = "\n".join(lines[position:]).strip()
    if rest:
        yield 0, rest


def _markdown_documents(path: Path, root: Path | None) -> list[Document]:
    """One Document per section when the file has headings (as DOCX), else one Document."""
    document = _text_document(path, root)
    blocks = list(_markdown_blocks(document.text))
    if not any(level for level, _ in blocks):
        return [document]
    sections = _sections(blocks)
    if not sections:
        return _skipped(path, "no text under its headings")
    return [Document(id=f"{document.id}#s{number}", text="\n\n".join(paragraphs), title=document.title,
                     source=str(path), metadata={"heading_path": heading_path, "section": number,
                                                 "sections": len(sections)})
            for number, (heading_path, paragraphs) in enumerate(sections, 1)]


# ------------------------------------------------------- PDF, HTML and DOCX readers
def _library(module: str, package: str, path: Path):
    """``module``, imported on first use; a one-line ConfigError naming the extra if absent."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"reading {path} needs {package}: {DOCUMENTS_EXTRA}") from exc


@contextmanager
def _parsing(path: Path, kind: str, quiet: str):
    """Any failure of the parser as one DataError naming the file; the parser's own log
    (``quiet``: its logger, which talks about every oddity it repairs) below ERROR muted."""
    parser_logger = logging.getLogger(quiet)
    level = parser_logger.level
    parser_logger.setLevel(logging.ERROR)
    try:
        yield
    except (EmbedragError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt file can fail a parser anywhere
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        if type(exc).__name__ == "DependencyError":  # pypdf: AES needs cryptography
            raise ConfigError(f"reading {path} needs a library pypdf lacks ({detail}): "
                              f"{DOCUMENTS_EXTRA}") from exc
        raise DataError([f"{path}: not a readable {kind} file ({detail})"]) from exc
    finally:
        parser_logger.setLevel(level)


def _skipped(path: Path, what: str) -> list[Document]:
    logger.warning("%s: %s; skipped", path, what)
    return []


def _pdf_documents(path: Path, root: Path | None) -> list[Document]:
    pypdf = _library("pypdf", "pypdf", path)
    raw = _read_bytes(path)
    with _parsing(path, "PDF", "pypdf"):
        reader = pypdf.PdfReader(io.BytesIO(raw))
        if reader.is_encrypted and not reader.decrypt(""):
            raise DataError([f"{path}: encrypted PDF that needs a password; decrypt it first "
                             "(qpdf --decrypt --password=... IN OUT)"])
        texts = [(page.extract_text() or "").strip() for page in reader.pages]
        try:
            title = str(getattr(reader.metadata, "title", None) or "").strip()
        except Exception:  # noqa: BLE001 - a broken info dictionary costs only the title
            title = ""
    empty = [number for number, text in enumerate(texts, 1) if not text]
    if len(empty) == len(texts):
        return _skipped(path, "no extractable text (a scanned PDF without a text layer?)")
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
        logger.warning("%s: page(s) %s have no extractable text (scanned?); skipped those pages", path, shown)
    base = _doc_id(path, root)
    return [Document(id=f"{base}#p{number}", text=text, title=title or path.stem, source=str(path),
                     metadata={"page": number, "pages": len(texts)})
            for number, text in enumerate(texts, 1) if text]


def _html_documents(path: Path, root: Path | None) -> list[Document]:
    trafilatura = _library("trafilatura", "trafilatura", path)
    raw = _read_bytes(path)
    with _parsing(path, "HTML", "trafilatura"):
        text = trafilatura.extract(raw, include_comments=False, include_tables=True) or ""
        if not text.strip():  # the main-content heuristic found nothing: take all the text
            text = trafilatura.html2txt(raw) or ""
        title = str(getattr(trafilatura.extract_metadata(raw), "title", None) or "").strip()
    paragraphs = [line.strip() for line in text.splitlines() if line.strip()]
    if not paragraphs:
        return _skipped(path, "no text found")
    return [Document(id=_doc_id(path, root), text="\n\n".join(paragraphs), title=title or path.stem,
                     source=str(path))]


def _docx_blocks(document) -> Iterator[tuple[int, str]]:
    """(heading level or 0, text) of each non-empty paragraph and table, in order; a table
    is one block, a row a line of ``cell | cell``."""
    for block in document.iter_inner_content():
        if hasattr(block, "rows"):
            lines = []
            for row in block.rows:
                cells, seen = [], set()
                for cell in row.cells:  # a merged cell comes once per grid column it spans
                    if id(cell._tc) not in seen:
                        seen.add(id(cell._tc))
                        cells.append(cell.text.strip())
                if any(cells):
                    lines.append(" | ".join(cells))
            if lines:
                yield 0, "\n".join(lines)
            continue
        text = block.text.strip()
        if text:
            style = getattr(getattr(block, "style", None), "name", None) or ""
            match = _HEADING_STYLE.fullmatch(style.strip())
            yield (int(match.group(1)) if match else 0), text


def _sections(blocks: Iterable[tuple[int, str]]) -> list[tuple[str, list[str]]]:
    """(heading path, paragraphs) per section that has text under its heading, from
    (heading level or 0 for body text, text) blocks in reading order."""
    sections: list[tuple[str, list[str]]] = []
    headings: list[tuple[int, str]] = []
    paragraphs: list[str] = []
    has_body = False
    for level, text in blocks:
        if level:
            if has_body:
                sections.append((" > ".join(h for _, h in headings), paragraphs))
            while headings and headings[-1][0] >= level:
                headings.pop()
            headings.append((level, text))
            paragraphs, has_body = [text], False
        else:
            paragraphs.append(text)
            has_body = True
    if has_body:
        sections.append((" > ".join(h for _, h in headings), paragraphs))
    return sections


def _docx_documents(path: Path, root: Path | None) -> list[Document]:
    docx = _library("docx", "python-docx", path)
    raw = _read_bytes(path)
    with _parsing(path, "DOCX", "docx"):
        document = docx.Document(io.BytesIO(raw))
        title = str(document.core_properties.title or "").strip()
        sections = _sections(_docx_blocks(document))
    if not sections:
        return _skipped(path, "no text found")
    base = _doc_id(path, root)
    return [Document(id=f"{base}#s{number}", text="\n\n".join(paragraphs), title=title or path.stem,
                     source=str(path), metadata={"heading_path": heading_path, "section": number,
                                                 "sections": len(sections)})
            for number, (heading_path, paragraphs) in enumerate(sections, 1)]


_READERS = {**{s: _markdown_documents for s in MARKDOWN_SUFFIXES}, **{s: _pdf_documents for s in PDF_SUFFIXES},
            **{s: _html_documents for s in HTML_SUFFIXES},
            **{s: _docx_documents for s in DOCX_SUFFIXES}}


def read_documents(inputs: Sequence[str | os.PathLike], *, fields: JsonlFields | None = None,
                   glob: str = "**/*", captioner: Captioner | None = None) -> Iterator[Document]:
    """Every document of the given files and folders, in a stable order (see the module's
    docstring for what each file type becomes and how failures are reported). Images, and
    JSONL rows with an image path, need a ``captioner``."""
    fields = fields or JsonlFields()
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise DataError([f"{path}: no such file or folder"])
        if path.is_dir():
            files = sorted(p for p in path.glob(glob) if p.is_file() and not p.name.startswith("~$")
                           and p.suffix.lower() in SUPPORTED_SUFFIXES)  # ~$x.docx: Word's lock file
            if not files:
                raise DataError([f"{path}: no {SUPPORTED_TYPES} files (glob {glob!r})"])
            for file in files:
                yield from _file_documents(file, fields, root=path, captioner=captioner)
        else:
            yield from _file_documents(path, fields, root=None, captioner=captioner)


def _image_documents(path: Path, root: Path | None, captioner: Captioner | None) -> list[Document]:
    if captioner is None:
        raise ConfigError(f"{path} is an image: {NEEDS_CAPTIONS}")
    caption = captioner(path)
    if not caption:
        return []  # the captioner said why
    return [Document(id=_doc_id(path, root), text=caption, title=path.name, source=str(path),
                     metadata={"image": str(path), "caption_model": captioner.name})]


def _file_documents(path: Path, fields: JsonlFields, root: Path | None,
                    captioner: Captioner | None = None) -> Iterator[Document]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _jsonl_documents(path, fields, captioner)
    elif suffix in IMAGE_SUFFIXES:
        yield from _image_documents(path, root, captioner)
    elif suffix in TEXT_SUFFIXES:
        yield _text_document(path, root)
    elif suffix in _READERS:
        yield from _READERS[suffix](path, root)
    else:
        raise DataError([f"{path}: unsupported file type {suffix or '(none)'}; supported: {SUPPORTED_TYPES}"])


# ---------------------------------------------------------------------- chunking
def split_sentences(text: str) -> list[str]:
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
        pieces = split_sentences(text)
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
