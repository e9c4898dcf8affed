"""The machine failing under the tool rather than the input: unreadable files, full disks,
out-of-memory and GPU errors, 10 MB lines, and the LLM key that must never be shown.
Each failure is one error line naming the file or the fix, exit code != 0, no traceback,
and nothing half-written left behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from embedrag.cli import app

runner = CliRunner()
GOOD = {"query": "what is a cat", "pos": ["a cat is a small animal"], "neg": ["a dog barks"]}
SECRET = "sk-test-0123456789abcdefSECRET"


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _invoke(args: list[str], **kwargs):
    env = {"COLUMNS": "300", **kwargs.pop("env", {})}
    return runner.invoke(app, args, env=env, **kwargs)


def _one_error_line(result, *, report: bool = False) -> str:
    """The error line; ``report``: validate's form, FILE:LINE: problem lines then a count."""
    assert result.exit_code not in (0, None), result.output
    assert "Traceback" not in result.output, result.output
    if report:
        return result.output.splitlines()[0]
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def _staging_leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name or ".old-" in p.name]


# ---------------------------------------------------------------- unreadable files
@contextlib.contextmanager
def _unprivileged():
    """Run the block as an ordinary user: root reads every file whatever its mode, so as
    root the effective uid drops to nobody for the block (and comes back after)."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture(scope="module")
def open_folder(tiny_bert):
    """A folder everyone may enter (pytest's own tmp folders are root-only), holding a copy
    of the tiny model, a trained adapter and a small LanceDB table."""
    from embedrag import Encoder
    from embedrag.engine.data.documents import Document
    from embedrag.engine.retrieval.store import build_index
    from embedrag.engine.training.train import train
    from embedrag.engine.training.train_config import TrainConfig

    folder = Path(tempfile.mkdtemp(prefix="embedrag-perm-"))
    folder.chmod(0o755)
    model = shutil.copytree(tiny_bert, folder / "model")
    run = train(TrainConfig(train_datasets=[str(_jsonl(folder / "train.jsonl", [GOOD] * 4))],
                            output_dir=str(folder / "run"), model=str(model), finetune_type="lora",
                            batch_size=2, max_steps=1, tensorboard=False, save_on_epoch_end=False))
    build_index([Document(id="a", text="a small document")], Encoder.load(str(model), device="cpu"),
                db=folder / "db", table="docs", fts=False)
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IROTH | (stat.S_IXOTH if path.is_dir() else 0))
    yield {"root": folder, "model": str(model), "adapter": str(run.final_dir), "db": str(folder / "db")}
    shutil.rmtree(folder, ignore_errors=True)


def _case_folder(root: Path, name: str) -> Path:
    folder = root / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)
    return folder


def _locked(path: Path) -> Path:
    path.chmod(0)
    return path


def _beir(folder: Path) -> Path:
    (folder / "qrels").mkdir(parents=True)
    _jsonl(folder / "corpus.jsonl", [{"_id": "d1", "title": "", "text": "a cat is a small animal"}])
    _jsonl(folder / "queries.jsonl", [{"_id": "q1", "text": "what is a cat"}])
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


PERMISSION_CASES = {
    "validate: unreadable file": lambda t, m: (
        ["validate", str(_locked(_jsonl(t / "d.jsonl", [GOOD])))], "d.jsonl"),
    "train: unreadable data": lambda t, m: (
        ["train", "--train-dataset", str(_locked(_jsonl(t / "d.jsonl", [GOOD] * 4))), "--output-dir",
         str(t / "out"), "--model", m["model"], "--finetune-type", "lora", "--max-steps", "1"], "d.jsonl"),
    "train: output folder not writable": lambda t, m: (
        ["train", "--train-dataset", str(_jsonl(t / "d.jsonl", [GOOD] * 4)), "--output-dir",
         str(_readonly(t / "ro") / "out"), "--model", m["model"], "--finetune-type", "lora", "--max-steps", "1"], "ro"),
    "eval: unreadable BEIR corpus": lambda t, m: (
        ["eval", "--beir", str(_lock_in(_beir(t / "b"), "corpus.jsonl")), "-m", m["model"], "--no-cache"],
        "corpus.jsonl"),
    "mine: unreadable input": lambda t, m: (
        ["mine", "-i", str(_locked(_jsonl(t / "d.jsonl", [GOOD]))), "-o", str(t / "m.jsonl"), "-m", m["model"],
         "--no-cache"], "d.jsonl"),
    "index: unreadable document": lambda t, m: (
        ["index", "-i", str(_locked(_jsonl(t / "docs.jsonl", [{"text": "x"}]))), "-m", m["model"], "--db",
         str(t / "db")], "docs.jsonl"),
    "merge: unreadable adapter folder": lambda t, m: (
        ["merge", "--adapter", str(_locked(Path(shutil.copytree(m["adapter"], t / "adapter")))),
         "--output-path", str(t / "merged")], "adapter"),
    "ask: unreadable database": lambda t, m: (
        ["ask", "hello", "--db", str(_locked(Path(shutil.copytree(m["db"], t / "db"))))], "db"),
}


def _readonly(folder: Path) -> Path:
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def _lock_in(folder: Path, name: str) -> Path:
    _locked(folder / name)
    return folder


@pytest.mark.parametrize("name", list(PERMISSION_CASES))
def test_permission_denied_is_one_line_naming_the_file(name, open_folder):
    folder = _case_folder(open_folder["root"], name.replace(":", "").replace(" ", "-"))
    args, expect = PERMISSION_CASES[name](folder, open_folder)
    before = set(folder.rglob("*"))
    with _unprivileged():
        result = _invoke(args)
    error = _one_error_line(result, report=args[0] == "validate")
    assert "permission denied" in error.lower(), error
    assert expect in error, error
    new = set(folder.rglob("*")) - before
    assert not [p for p in new if p.name in {"out", "m.jsonl", "merged"} or ".tmp" in p.name], new


# ---------------------------------------------------------------- full disk
@pytest.fixture
def tiny_disk(tmp_path):
    """A real 64 KiB tmpfs, where the platform lets this process mount one."""
    mount = tmp_path / "tiny-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here; test_write_errors_* covers the same path")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def _fill(disk: Path, leave: int) -> None:
    """Leave ``leave`` bytes free on ``disk`` (within a page)."""
    free = shutil.disk_usage(disk).free
    if free > leave:
        (disk / "filler").write_bytes(b"\0" * (free - leave))


def _disk_full_cases(t: Path, m: dict, disk: Path) -> dict[str, list[str]]:
    many = _jsonl(t / "many.jsonl", [{"query": f"question {i}", "pos": [f"answer number {i} " * 20],
                                      "neg": []} for i in range(300)])
    return {
        "merge": ["merge", "--adapter", m["adapter"], "--output-path", str(disk / "merged")],
        "train": ["train", "--train-dataset", str(_jsonl(t / "d.jsonl", [GOOD] * 4)), "--output-dir",
                  str(disk / "out"), "--model", m["bert"], "--finetune-type", "full", "--max-steps", "1"],
        "mine": ["mine", "-i", str(many), "-o", str(disk / "mined.jsonl"), "-m", m["bert"], "--no-cache"],
        "eval": ["eval", "--test-dataset", str(many), "-m", m["bert"], "-o", str(disk / "report.json"),
                 "--no-cache"],
        "index": ["index", "-i", str(_jsonl(t / "docs.jsonl", [{"id": str(i), "text": f"document {i} " * 40}
                                                             for i in range(300)])),
                  "-m", m["bert"], "--db", str(disk / "db")],
    }


@pytest.fixture(scope="module")
def trained(tiny_bert, tmp_path_factory):
    from embedrag.engine.training.train import train
    from embedrag.engine.training.train_config import TrainConfig

    folder = tmp_path_factory.mktemp("hardening")
    run = train(TrainConfig(train_datasets=[str(_jsonl(folder / "d.jsonl", [GOOD] * 4))],
                            output_dir=str(folder / "run"), model=str(tiny_bert), finetune_type="lora",
                            batch_size=2, max_steps=1, tensorboard=False, save_on_epoch_end=False))
    return {"bert": str(tiny_bert), "adapter": str(run.final_dir)}


@pytest.mark.parametrize("command", ["merge", "train", "mine", "eval", "index"])
def test_full_disk_is_one_line_and_leaves_nothing(command, tiny_disk, trained, tmp_path):
    args = _disk_full_cases(tmp_path, trained, tiny_disk)[command]
    _fill(tiny_disk, leave=0 if command == "eval" else 8192)
    before = {p.name for p in tiny_disk.iterdir()}
    result = _invoke(args)
    error = _one_error_line(result)
    assert "no space left on device" in error.lower(), error
    left = {p.name for p in tiny_disk.iterdir()} - before
    assert not left or command == "train", left  # train keeps its (empty of weights) run folder
    assert not _staging_leftovers(tiny_disk)
    if command == "train":
        assert not (tiny_disk / "out" / "final").exists()


@pytest.mark.parametrize("command", ["merge", "mine", "eval"])
def test_write_errors_are_one_line_and_leave_nothing(command, trained, tmp_path, monkeypatch):
    """The same failure without a tmpfs: every file write raises ENOSPC."""
    import builtins
    import errno
    import io

    out = tmp_path / "out"
    out.mkdir()
    args = _disk_full_cases(tmp_path, trained, out)[command]
    real_open = builtins.open

    def full_disk_open(file, mode="r", *a, **k):
        if any(c in mode for c in "wax") and str(out) in str(file):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return real_open(file, mode, *a, **k)

    monkeypatch.setattr(builtins, "open", full_disk_open)
    monkeypatch.setattr(io, "open", full_disk_open)
    result = _invoke(args)
    monkeypatch.undo()
    error = _one_error_line(result)
    assert "no space left on device" in error.lower(), error
    assert list(out.iterdir()) == []


# ---------------------------------------------------------------- memory and GPU
def _raise(exc):
    def fail(*args, **kwargs):
        raise exc
    return fail


def test_training_out_of_memory_says_what_to_lower(monkeypatch, tmp_path):
    import torch

    import embedrag  # the command calls the public name

    monkeypatch.setattr(embedrag, "train", _raise(torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.1 GiB")))
    data = _jsonl(tmp_path / "d.jsonl", [GOOD] * 4)
    error = _one_error_line(_invoke(["train", "--train-dataset", str(data), "--output-dir", str(tmp_path / "o")]))
    assert "out of memory on the GPU" in error
    for hint in ("--batch-size", "--mini-batch-size", "--gradient-checkpointing", "qlora"):
        assert hint in error, error


def test_encoding_out_of_host_memory_says_lower_batch_size(monkeypatch, tmp_path, tiny_bert):
    import embedrag.engine.encoding.encoder as encoder

    monkeypatch.setattr(encoder.Encoder, "encode", _raise(RuntimeError(
        "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: "
        "you tried to allocate 85899345920 bytes.")))
    data = _jsonl(tmp_path / "d.jsonl", [GOOD] * 2)
    error = _one_error_line(_invoke(["eval", "--test-dataset", str(data), "-m", str(tiny_bert), "--no-cache"]))
    assert "out of memory on the host" in error and "--batch-size" in error, error
    assert "--gradient-checkpointing" not in error


def test_cuda_error_names_the_next_step(monkeypatch, tmp_path, tiny_bert):
    import embedrag.engine.encoding.encoder as encoder

    monkeypatch.setattr(encoder.Encoder, "encode", _raise(RuntimeError(
        "CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be reported...")))
    data = _jsonl(tmp_path / "d.jsonl", [GOOD] * 2)
    error = _one_error_line(_invoke(["eval", "--test-dataset", str(data), "-m", str(tiny_bert), "--no-cache"]))
    assert "illegal memory access" in error and "CUDA_LAUNCH_BLOCKING=1" in error, error
    assert "CUDA kernel errors" not in error  # one line


def test_debug_shows_the_traceback(monkeypatch, tmp_path, tiny_bert):
    import embedrag.engine.encoding.encoder as encoder

    monkeypatch.setattr(encoder.Encoder, "encode", _raise(RuntimeError("boom")))
    data = _jsonl(tmp_path / "d.jsonl", [GOOD] * 2)
    result = _invoke(["--debug", "eval", "--test-dataset", str(data), "-m", str(tiny_bert), "--no-cache"])
    assert result.exit_code == 1 and "Traceback" in result.output and "RuntimeError: boom" in result.output


# ---------------------------------------------------------------- 10 MB lines
def test_a_10mb_bad_line_is_reported_in_one_short_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + '{"query": "' + "x" * 10_000_000 + "\n", encoding="utf-8")
    result = _invoke(["validate", str(path)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "d.jsonl:2" in result.output
    assert max(len(line) for line in result.output.splitlines()) < 500


def test_a_10mb_passage_trains(tmp_path, tiny_bert):
    huge = {"query": "what is a cat", "pos": ["a cat is a small animal. " * 400_000], "neg": ["a dog barks"]}
    data = _jsonl(tmp_path / "d.jsonl", [huge, GOOD, GOOD, GOOD])
    assert data.stat().st_size > 10_000_000
    assert _invoke(["validate", str(data)]).exit_code == 0
    result = _invoke(["train", "--train-dataset", str(data), "--output-dir", str(tmp_path / "o"), "--model",
                      str(tiny_bert), "--finetune-type", "lora", "--max-steps", "1", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "final").is_dir()


# ---------------------------------------------------------------- the LLM key
@contextlib.contextmanager
def _echoing_llm_server():
    """An OpenAI-style server that rejects every key and, as some do, echoes it back."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            auth = self.headers.get("Authorization", "")
            seen.append(auth)
            body = json.dumps({"error": {"message": f"Incorrect API key provided: {auth}"}}).encode()
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1", seen
    finally:
        server.shutdown()


def _ask_args(db: str, url: str) -> list[str]:
    return ["ask", "what is a cat", "--db", db, "--llm", "openai", "--llm-base-url", url, "--llm-model", "m"]


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_api_key_never_shown_even_when_the_server_echoes_it(open_folder, debug):
    with _echoing_llm_server() as (url, seen):
        args = (["--debug"] if debug else []) + _ask_args(open_folder["db"], url)
        result = _invoke(args, env={"EMBEDRAG_LLM_API_KEY": SECRET})
    assert seen == [f"Bearer {SECRET}"]  # the key was really sent, so it could have leaked
    assert result.exit_code != 0 and "HTTP 401" in result.output
    assert SECRET not in result.output and "***" in result.output
    assert ("Traceback" in result.output) == debug


def test_api_key_absent_from_training_outputs(tmp_path, tiny_bert):
    data = _jsonl(tmp_path / "d.jsonl", [GOOD] * 4)
    result = _invoke(["train", "--train-dataset", str(data), "--output-dir", str(tmp_path / "o"), "--model",
                      str(tiny_bert), "--finetune-type", "lora", "--max-steps", "1", "--save-steps", "1"],
                     env={"EMBEDRAG_LLM_API_KEY": SECRET, "OPENAI_API_KEY": SECRET})
    assert result.exit_code == 0, result.output
    written = [p for p in (tmp_path / "o").rglob("*") if p.is_file()]
    assert any(p.name == "training_config.json" for p in written)
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), path


def test_repl_history_is_private(open_folder, tmp_path):
    history = tmp_path / "history"
    history.write_text("")
    history.chmod(0o644)  # as an older version or another tool may have left it
    result = _invoke(["ask", "--db", open_folder["db"]], input="what is a cat\n/quit\n",
                     env={"EMBEDRAG_HISTORY": str(history)})
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(history.stat().st_mode) == 0o600
    fresh = tmp_path / "fresh-history"
    _invoke(["ask", "--db", open_folder["db"]], input="/quit\n", env={"EMBEDRAG_HISTORY": str(fresh)})
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600


# ---------------------------------------------------------------- index failing mid-way
@pytest.mark.parametrize("mode", ["create", "append", "overwrite"])
def test_an_index_run_that_fails_midway_leaves_the_table_as_it_was(mode, tiny_bert, tmp_path):
    from embedrag import Encoder
    from embedrag.engine.core.errors import ConfigError
    from embedrag.engine.data.documents import Document
    from embedrag.engine.retrieval.store import build_index, open_table

    encoder = Encoder.load(str(tiny_bert), device="cpu")
    db = tmp_path / "db"
    if mode != "create":
        build_index([Document(id=f"old{i}", text=f"old document {i}") for i in range(3)], encoder, db=db, fts=False)
    # Six new documents are written two at a time before the duplicate id stops the run.
    incoming = [Document(id=f"new{i}", text=f"new document {i}") for i in range(6)] + [Document(id="new0", text="x")]
    with pytest.raises(ConfigError, match="duplicate document id"):
        build_index(incoming, encoder, db=db, mode=mode, batch_documents=2, fts=False)
    if mode == "create":
        assert not db.exists()
    else:
        rows = open_table(db, "docs").search().select(["doc_id"]).limit(None).to_list()
        assert sorted(r["doc_id"] for r in rows) == ["old0", "old1", "old2"]
