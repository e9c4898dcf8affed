"""The JSONL data contract: one ``{"query", "pos", "neg"}`` object a line.

``read_examples`` streams a file and stops at the first problem; ``load_examples``
reads whole files and reports every problem at once (capped); ``validate_files`` also
gathers the statistics ``embedrag validate`` prints. Every problem reads
``FILE:LINE: what is wrong``. A UTF-8 BOM, CRLF line ends, blank lines and any Unicode
text are normal input.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from embedrag.engine.core.errors import DataError

_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
DEFAULT_MAX_PROBLEMS = 50


@dataclass(frozen=True)
class Example:
    """One training or evaluation line. ``neg`` may be empty (in-batch negatives only)."""

    query: str
    pos: tuple[str, ...]
    neg: tuple[str, ...] = ()
    id: str | None = None
    source: str = ""
    line: int = 0


@dataclass(frozen=True)
class Problem:
    """Something wrong with a file or one of its lines (``line`` 0 = the whole file)."""

    source: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.message}" if self.line else f"{self.source}: {self.message}"


def _type_name(value) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _string_list(obj: dict, key: str, *, required: bool) -> tuple[tuple[str, ...], str | None]:
    """The list of strings under ``key``, or the reason it is not one."""
    if key not in obj or obj[key] is None:
        return (), (f'missing "{key}" (a non-empty list of strings)' if required else None)
    value = obj[key]
    if not isinstance(value, list):
        hint = f' (wrap a single passage in a list: "{key}": ["..."])' if isinstance(value, str) else ""
        what = "a non-empty list of strings" if required else "a list of strings"
        return (), f'"{key}" must be {what}, got {_type_name(value)}{hint}'
    if required and not value:
        return (), f'"{key}" must be a non-empty list of strings, got an empty list'
    for i, item in enumerate(value):
        if not isinstance(item, str):
            return (), f'"{key}"[{i}] must be a string, got {_type_name(item)}'
        if not item.strip():
            return (), f'"{key}"[{i}] is an empty string'
    return tuple(value), None


def parse_example(obj, source: str = "", line: int = 0) -> Example | str:
    """An :class:`Example` from a decoded JSON value, or the reason it is not one."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {_type_name(obj)}"
    if "query" not in obj:
        return 'missing "query"'
    query = obj["query"]
    if not isinstance(query, str):
        return f'"query" must be a string, got {_type_name(query)}'
    if not query.strip():
        return '"query" is empty'
    pos, why = _string_list(obj, "pos", required=True)
    if why:
        return why
    neg, why = _string_list(obj, "neg", required=False)
    if why:
        return why
    ident = obj.get("id")
    if ident is not None and (isinstance(ident, bool) or not isinstance(ident, (str, int))):
        return f'"id" must be a string or an integer, got {_type_name(ident)}'
    return Example(query=query, pos=pos, neg=neg, id=None if ident is None else str(ident),
                   source=source, line=line)


def _open_error(path: Path) -> Problem | None:
    source = str(path)
    if not path.exists():
        return Problem(source, 0, "no such file")
    if path.is_dir():
        return Problem(source, 0, "is a directory, expected a JSONL file")
    if not os.access(path, os.R_OK):
        return Problem(source, 0, "cannot read the file (permission denied)")
    return None


def scan(path: str | os.PathLike) -> Iterator[Example | Problem]:
    """Every example and every problem of a file, in line order.

    Stops after a file-level problem (unreadable, UTF-16, no examples at all)."""
    path = Path(path)
    source = str(path)
    error = _open_error(path)
    if error:
        yield error
        return
    nonblank = 0
    try:
        handle = path.open("rb")
    except OSError as exc:
        yield Problem(source, 0, f"cannot read the file ({exc.strerror or exc})")
        return
    with handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1:
                if raw.startswith(_UTF16_BOMS):
                    yield Problem(source, 0, "file is UTF-16 encoded; save it as UTF-8")
                    return
                if raw.startswith(_UTF8_BOM):
                    raw = raw[len(_UTF8_BOM):]
            complete = raw.endswith(b"\n")
            raw = raw.rstrip(b"\r\n")
            if not raw.strip():
                continue
            nonblank += 1
            if b"\x00" in raw:
                yield Problem(source, number, "binary data (NUL bytes): not a line of JSON text")
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield Problem(source, number,
                              f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                              "save the file as UTF-8")
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                hint = " (the last line looks truncated)" if not complete else ""
                yield Problem(source, number, f"invalid JSON ({exc.msg}, column {exc.colno}){hint}")
                continue
            except RecursionError:
                yield Problem(source, number, "invalid JSON: nested too deeply")
                continue
            result = parse_example(obj, source, number)
            if isinstance(result, str):
                yield Problem(source, number, result)
            else:
                yield result
    if nonblank == 0:
        yield Problem(source, 0, "no examples (the file is empty or has only blank lines)")


def iter_json_objects(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file other than the
    query/pos/neg contract (corpora, queries); the first bad line is a DataError."""
    path = Path(path)
    error = _open_error(path)
    if error:
        raise DataError([str(error)])
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(_UTF8_BOM):
                raw = raw[len(_UTF8_BOM):]
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise DataError([f"{path}:{number}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column "
                                 f"{exc.start + 1})"]) from None
            except json.JSONDecodeError as exc:
                raise DataError([f"{path}:{number}: invalid JSON ({exc.msg}, column {exc.colno})"]) from None
            if not isinstance(record, dict):
                raise DataError([f"{path}:{number}: expected a JSON object, got {_type_name(record)}"])
            yield number, record


def read_examples(path: str | os.PathLike) -> Iterator[Example]:
    """Stream the examples of one file; raise :class:`DataError` at the first problem."""
    for item in scan(path):
        if isinstance(item, Problem):
            raise DataError([str(item)])
        yield item


def load_examples(paths: str | os.PathLike | Iterable[str | os.PathLike],
                  *, max_problems: int = DEFAULT_MAX_PROBLEMS) -> list[Example]:
    """All examples of one or more files; :class:`DataError` listing every problem."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    examples: list[Example] = []
    problems: list[str] = []
    extra = 0
    for path in paths:
        for item in scan(path):
            if isinstance(item, Problem):
                if len(problems) < max_problems:
                    problems.append(str(item))
                else:
                    extra += 1
            else:
                examples.append(item)
    if problems:
        raise DataError(problems, truncated=extra)
    return examples


@dataclass
class Summary:
    """Count, min, mean and max of a list of numbers."""

    count: int = 0
    minimum: float = 0
    mean: float = 0.0
    maximum: float = 0

    @classmethod
    def of(cls, values: list[int]) -> Summary:
        if not values:
            return cls()
        return cls(len(values), min(values), sum(values) / len(values), max(values))


@dataclass
class FileReport:
    """What ``validate`` found in one file."""

    path: str
    lines: int = 0
    blank_lines: int = 0
    examples: int = 0
    unique_queries: int = 0
    duplicate_queries: int = 0
    pos_per_query: Summary = field(default_factory=Summary)
    neg_per_query: Summary = field(default_factory=Summary)
    lines_without_neg: int = 0
    neg_equal_to_pos: int = 0
    duplicate_negs: int = 0
    problems: list[str] = field(default_factory=list)
    truncated_problems: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def validate_file(path: str | os.PathLike, *, max_problems: int = DEFAULT_MAX_PROBLEMS
                  ) -> tuple[FileReport, list[Example]]:
    report = FileReport(path=str(path))
    examples: list[Example] = []
    for item in scan(path):
        if isinstance(item, Problem):
            if len(report.problems) < max_problems:
                report.problems.append(str(item))
            else:
                report.truncated_problems += 1
        else:
            examples.append(item)
    report.lines, report.blank_lines = _count_lines(Path(path))
    report.examples = len(examples)
    queries = [e.query for e in examples]
    report.unique_queries = len(set(queries))
    report.duplicate_queries = len(queries) - report.unique_queries
    report.pos_per_query = Summary.of([len(e.pos) for e in examples])
    report.neg_per_query = Summary.of([len(e.neg) for e in examples])
    report.lines_without_neg = sum(1 for e in examples if not e.neg)
    report.neg_equal_to_pos = sum(1 for e in examples for n in e.neg if n in set(e.pos))
    report.duplicate_negs = sum(len(e.neg) - len(set(e.neg)) for e in examples)
    return report, examples


def _count_lines(path: Path) -> tuple[int, int]:
    """(lines, blank lines) of a readable file; (0, 0) otherwise."""
    lines = blank = 0
    try:
        with path.open("rb") as handle:
            for raw in handle:
                lines += 1
                blank += not raw.strip(b" \t\r\n\xef\xbb\xbf")
    except OSError:
        pass
    return lines, blank


def validate_files(paths: Iterable[str | os.PathLike], *, max_problems: int = DEFAULT_MAX_PROBLEMS
                   ) -> list[tuple[FileReport, list[Example]]]:
    """One report (and the valid examples) per file."""
    return [validate_file(p, max_problems=max_problems) for p in paths]
