"""Question-answer sets for answer evaluation (``embedrag eval --answers``).

One JSON object a line: ``question`` and ``answer`` (the reference answer; for a
multiple-choice question the correct option's text will do), optional ``choices`` (a list
of option texts) with ``gold`` (the correct option: a 0-based index or a letter, ``"B"``),
optional ``pos`` (the passages that should be retrieved) and ``id``.
"""

from __future__ import annotations

import os
import string
from dataclasses import dataclass, field
from pathlib import Path

from embedrag.engine.core.errors import DataError

LETTERS = string.ascii_uppercase


@dataclass
class AnswerItem:
    id: str
    question: str
    answer: str
    choices: list[str] = field(default_factory=list)
    gold: int | None = None  # index into choices
    pos: list[str] = field(default_factory=list)

    @property
    def multiple_choice(self) -> bool:
        return self.gold is not None


@dataclass
class AnswerSet:
    name: str
    source: str
    items: list[AnswerItem]

    def corpus(self) -> dict[str, str]:
        """Every distinct ``pos`` passage, as an id -> text corpus (ids ``p0``, ``p1``...)."""
        seen: dict[str, str] = {}
        for item in self.items:
            for text in item.pos:
                seen.setdefault(text, f"p{len(seen)}")
        return {doc_id: text for text, doc_id in seen.items()}

    def describe(self) -> dict:
        return {"name": self.name, "source": self.source, "split": None, "queries": len(self.items),
                "multiple_choice": sum(item.multiple_choice for item in self.items),
                "with_pos": sum(bool(item.pos) for item in self.items)}


def _text(record: dict, key: str, where: str, *, required: bool) -> str:
    value = record.get(key)
    if value is None:
        if required:
            raise DataError([f"{where}: missing \"{key}\""])
        return ""
    if not isinstance(value, str) or not value.strip():
        raise DataError([f"{where}: \"{key}\" must be a non-empty string"])
    return value


def _gold(value, choices: list[str], where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DataError([f"{where}: \"gold\" must be an option index (0-based) or letter"])
    if isinstance(value, str):
        letter = value.strip().strip("()").upper()
        if len(letter) != 1 or letter not in LETTERS:
            raise DataError([f"{where}: \"gold\" {value!r} is not an option letter"])
        value = LETTERS.index(letter)
    if not 0 <= value < len(choices):
        raise DataError([f"{where}: \"gold\" {value} is out of range for {len(choices)} choices "
                         f"(0-{len(choices) - 1} or A-{LETTERS[len(choices) - 1]})"])
    return value


def load_answer_set(path: str | os.PathLike) -> AnswerSet:
    """Read and check an answers JSONL; the first bad line is a ``file:line`` DataError."""
    from embedrag.engine.data.examples import iter_json_objects

    path = Path(path)
    items: list[AnswerItem] = []
    ids: set[str] = set()
    for number, record in iter_json_objects(path):
        where = f"{path}:{number}"
        question = _text(record, "question", where, required=True)
        answer = _text(record, "answer", where, required=True)
        choices = record.get("choices") or []
        if not isinstance(choices, list) or not all(isinstance(c, str) and c.strip() for c in choices):
            raise DataError([f"{where}: \"choices\" must be a list of non-empty strings"])
        if len(choices) > len(LETTERS):
            raise DataError([f"{where}: at most {len(LETTERS)} choices"])
        gold = record.get("gold")
        if gold is not None and not choices:
            raise DataError([f"{where}: \"gold\" needs \"choices\""])
        pos = record.get("pos") or []
        if isinstance(pos, str):
            pos = [pos]
        if not isinstance(pos, list) or not all(isinstance(p, str) and p.strip() for p in pos):
            raise DataError([f"{where}: \"pos\" must be a list of non-empty strings"])
        item_id = str(record.get("id", number))
        if item_id in ids:
            raise DataError([f"{where}: duplicate id {item_id!r}"])
        ids.add(item_id)
        items.append(AnswerItem(id=item_id, question=question, answer=answer, choices=list(choices),
                                gold=_gold(gold, choices, where) if gold is not None else None, pos=list(pos)))
    if not items:
        raise DataError([f"{path}: no questions"])
    return AnswerSet(name=path.stem, source=str(path), items=items)
