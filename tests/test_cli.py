"""The command line: help, validate, doctor and one-line errors without tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_data import BAD_LINES
from typer.testing import CliRunner

from embedrag.cli import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def _run_module(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    env.pop("EMBEDRAG_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "embedrag", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("validate", "doctor"):
        assert command in result.output


def test_help_does_not_import_heavy_libraries():
    code = ("import sys; from embedrag.cli import app; "
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'lancedb', 'bitsandbytes') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_validate_reports_every_bad_line_and_exits_2(tmp_path):
    good = json.dumps({"query": "q", "pos": ["p"]}).encode()
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join([good] + [raw for raw, _ in BAD_LINES]) + b"\n")
    result = _run_module("validate", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    for index, (_, expected) in enumerate(BAD_LINES):
        assert f"{path}:{index + 2}: " in result.stderr
        assert expected in result.stderr
    assert f"{len(BAD_LINES)} problem(s)" in result.stderr


def test_validate_accepts_bom_crlf_and_cjk(tmp_path):
    rows = [{"query": "台北最好吃的牛肉麵", "pos": ["老張牛肉麵"], "neg": ["台北101"]},
            {"query": "北京烤鸭", "pos": ["全聚德"]}]
    path = tmp_path / "ok.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(json.dumps(r, ensure_ascii=False).encode()
                                                     for r in rows) + b"\r\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "ok: 2 examples" in result.output


def test_validate_with_a_model_reports_token_lengths(tmp_path, tiny_bert):
    path = tmp_path / "ok.jsonl"
    path.write_text(json.dumps({"query": "short query", "pos": ["word " * 300], "neg": ["tiny"]}) + "\n")
    result = runner.invoke(app, ["validate", str(path), "--model", str(tiny_bert),
                                 "--passage-max-len", "100"])
    assert result.exit_code == 0, result.output
    assert "token lengths" in result.output
    passages_row = next(line for line in result.output.splitlines() if "passages" in line)
    assert "100" in passages_row and "1 (50.0%)" in passages_row


def test_unknown_model_is_one_line_without_traceback(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text(json.dumps({"query": "q", "pos": ["p"]}) + "\n")
    result = _run_module("validate", str(path), "--model", "embedrag-tests/no-such-model")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(error_lines) == 1, result.stderr
    assert error_lines[0].startswith("error: model 'embedrag-tests/no-such-model' not found: tried")


def test_missing_file_is_one_line(tmp_path):
    result = runner.invoke(app, ["validate", str(tmp_path / "absent.jsonl")])
    assert result.exit_code == 2
    assert "absent.jsonl: no such file" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_doctor_reports_torch_and_the_bundled_model():
    result = runner.invoke(app, ["doctor"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for area in ("torch", "bitsandbytes", "accelerate", "lancedb", "bundled"):
        assert area in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("embedrag ")
