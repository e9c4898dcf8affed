"""The JSONL contract: every kind of bad line is named with its line number; BOM, CRLF,
blank lines and Chinese text are normal input."""

from __future__ import annotations

import json

import pytest

from embedrag.engine.core.errors import DataError
from embedrag.engine.data.examples import load_examples, read_examples, validate_file

GOOD = {"query": "q", "pos": ["p"], "neg": ["n"]}

# (raw line bytes, expected fragment of the message)
BAD_LINES = [
    (b'{"query": "q", "pos": ["p"]', "invalid JSON"),
    (b'["query", "pos"]', "expected a JSON object, got a list"),
    (b'"just a string"', "expected a JSON object, got a string"),
    (b'{"pos": ["p"]}', 'missing "query"'),
    (b'{"query": 42, "pos": ["p"]}', '"query" must be a string, got a number'),
    (b'{"query": "   ", "pos": ["p"]}', '"query" is empty'),
    (b'{"query": "q"}', 'missing "pos"'),
    (b'{"query": "q", "pos": "p"}', '"pos" must be a non-empty list of strings, got a string'),
    (b'{"query": "q", "pos": []}', '"pos" must be a non-empty list of strings, got an empty list'),
    (b'{"query": "q", "pos": ["p", 3]}', '"pos"[1] must be a string, got a number'),
    (b'{"query": "q", "pos": [""]}', '"pos"[0] is an empty string'),
    (b'{"query": "q", "pos": ["p"], "neg": "n"}', '"neg" must be a list of strings, got a string'),
    (b'{"query": "q", "pos": ["p"], "neg": [null]}', '"neg"[0] must be a string, got null'),
    (b'{"query": "q", "pos": ["p"], "neg": [" "]}', '"neg"[0] is an empty string'),
    (b'{"query": "q", "pos": ["p"], "id": [1]}', '"id" must be a string or an integer'),
    (b'{"query": "caf\xe9", "pos": ["p"]}', "not valid UTF-8 (byte 0xe9"),
    (b'\x00\x01\x02garbage', "binary data"),
]


def _write(path, lines: list[bytes], *, ending=b"\n", bom=False):
    data = ending.join(lines) + ending
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    return path


def test_every_bad_line_is_reported_with_its_line_number(tmp_path):
    good = json.dumps(GOOD).encode()
    lines = [good]
    for raw, _ in BAD_LINES:
        lines += [raw, good]
    path = _write(tmp_path / "bad.jsonl", lines)
    report, examples = validate_file(path)
    assert len(examples) == len(BAD_LINES) + 1
    assert len(report.problems) == len(BAD_LINES) >= 12
    for index, ((_, expected), problem) in enumerate(zip(BAD_LINES, report.problems)):
        line_number = 2 + 2 * index
        assert problem.startswith(f"{path}:{line_number}: "), problem
        assert expected in problem, (expected, problem)


def test_truncated_last_line_is_called_truncated(tmp_path):
    path = tmp_path / "cut.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b'\n{"query": "q", "pos": ["unfinish')
    report, _ = validate_file(path)
    assert report.problems == [f"{path}:2: invalid JSON (Unterminated string starting at, column 24)"
                               " (the last line looks truncated)"]


@pytest.mark.parametrize("content, message", [
    (b"", "no examples"),
    (b"\n\n  \n", "no examples"),
    ("\ufeff".encode("utf-16") + json.dumps(GOOD).encode("utf-16-le"), "UTF-16"),
])
def test_file_level_problems(tmp_path, content, message):
    path = tmp_path / "f.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        load_examples(path)
    assert info.value.problems[0].startswith(f"{path}: ")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_examples(tmp_path / "absent.jsonl")
    with pytest.raises(DataError, match="is a directory"):
        load_examples(tmp_path)


def test_bom_crlf_blank_lines_and_chinese_are_valid(tmp_path):
    lines = [
        json.dumps({"query": "台北最好吃的牛肉麵", "pos": ["老張牛肉麵，湯頭濃郁。"], "neg": ["台北101是地標。"]},
                   ensure_ascii=False).encode(),
        b"",
        json.dumps({"query": "北京烤鸭哪家好", "pos": ["全聚德烤鸭店"]}, ensure_ascii=False).encode(),
        b"   ",
        json.dumps({"query": "q", "pos": ["p"], "neg": [], "id": 7}).encode(),
    ]
    path = _write(tmp_path / "ok.jsonl", lines, ending=b"\r\n", bom=True)
    examples = load_examples(path)
    assert [e.query for e in examples] == ["台北最好吃的牛肉麵", "北京烤鸭哪家好", "q"]
    assert examples[0].neg == ("台北101是地標。",)
    assert examples[1].neg == ()
    assert examples[2].id == "7"
    assert [e.line for e in examples] == [1, 3, 5]
    assert all("\r" not in e.query for e in examples)


def test_read_examples_streams_and_stops_at_the_first_problem(tmp_path):
    path = _write(tmp_path / "s.jsonl", [json.dumps(GOOD).encode(), b"{}", b"{oops"])
    stream = read_examples(path)
    assert next(stream).query == "q"
    with pytest.raises(DataError, match=r":2: missing \"query\""):
        next(stream)


def test_load_examples_caps_the_problem_list(tmp_path):
    path = _write(tmp_path / "many.jsonl", [b"{}"] * 80)
    with pytest.raises(DataError) as info:
        load_examples(path, max_problems=10)
    assert len(info.value.problems) == 10
    assert info.value.truncated == 70
    assert "and 79 more" in str(info.value)


def test_report_statistics(tmp_path):
    rows = [
        {"query": "a", "pos": ["p1", "p2"], "neg": ["n1", "n1", "p1"]},
        {"query": "a", "pos": ["p3"]},
        {"query": "b", "pos": ["p4"], "neg": ["n2"]},
    ]
    path = _write(tmp_path / "stats.jsonl", [json.dumps(r).encode() for r in rows] + [b""])
    report, _ = validate_file(path)
    assert (report.lines, report.blank_lines, report.examples) == (4, 1, 3)
    assert (report.unique_queries, report.duplicate_queries) == (2, 1)
    assert (report.pos_per_query.minimum, report.pos_per_query.maximum) == (1, 2)
    assert report.neg_per_query.mean == pytest.approx(4 / 3)
    assert report.lines_without_neg == 1
    assert report.neg_equal_to_pos == 1
    assert report.duplicate_negs == 1
