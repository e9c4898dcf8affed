"""benchmarks/gpu_check.py, the prepared GPU check: its every stage on a CPU (``--device cpu
--quick``), its time guard, and the pack it carries to the GPU machine."""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPT = BENCHMARKS / "gpu_check.py"


@pytest.fixture
def gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("gpu_check")


def _run(tmp_path: Path, *args: str, timeout: float = 600) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out),
                           "--work", str(tmp_path / "work"), *args],
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, json.loads((out / "gpu_check.json").read_text())


@pytest.mark.slow  # 70 s (idle) to 110 s (busy) on 2 cores: five stage processes import torch
def test_quick_cpu_run_passes_every_stage(tmp_path):
    done, report = _run(tmp_path)
    stages = report["stages"]
    assert list(stages) == ["doctor", "train", "memory", "encode", "oom"]
    assert {name: stage["status"] for name, stage in stages.items()} == dict.fromkeys(stages, "ok"), \
        {name: stage["error"] for name, stage in stages.items()}

    train = stages["train"]["items"]
    assert set(train) == {"base", "full", "lora", "qlora-4bit", "qlora-8bit"}
    for name in ("full", "lora", "qlora-4bit", "qlora-8bit"):
        item = train[name]
        assert item["steps"] == 3 and all(math.isfinite(loss) for loss in item["losses"])
        assert 0 <= item["ndcg@10"] <= 1 and item["peak_memory_mib"] > 0
    assert "merge_max_abs_diff" not in train["full"]
    assert train["lora"]["merge_max_abs_diff"] < 1e-5 and train["lora"]["merge_verified"]
    for name in ("qlora-4bit", "qlora-8bit"):
        assert train[name]["merge_verified"] and train[name]["merge_min_cosine"] >= 0.999

    memory = stages["memory"]["items"]
    assert all(memory[name]["peak_memory_mib"] > 0 for name in ("qlora-4bit", "lora", "full"))
    assert "n/a" in memory["qlora-4bit / lora"]["figure"]  # no goal on a CPU's peak RSS

    encode = stages["encode"]["items"]
    for name in ("embedrag fp32", "embedrag fp16", "embedrag bf16", "sentence-transformers fp16"):
        assert encode[name]["passages_per_s"] > 0 and 0 <= encode[name]["ndcg_at_10"] <= 1
    comparison = encode["comparison"]
    assert comparison["embedrag vs sentence-transformers fp32 max abs diff"] < 1e-4
    assert comparison["embedrag fp16 / sentence-transformers fp16"] > 0

    oom = stages["oom"]["items"]["absurd batch"]
    assert oom["simulated"] and oom["returncode"] == 1 and not oom["traceback_shown"]
    assert oom["message"].startswith("error: out of memory on the GPU")

    table = (tmp_path / "out" / "gpu_check.md").read_text()
    assert table in done.stdout and table.count("| ok |") == 18
    assert all((tmp_path / "out" / "logs" / f"{name}.log").is_file() for name in stages)


def test_a_stage_past_its_limit_is_killed_and_the_run_goes_on(tmp_path):
    started = time.perf_counter()
    done, report = _run(tmp_path, "--only", "encode,oom", "--limit", "encode=2", "--limit", "oom=0")
    assert time.perf_counter() - started < 60
    stages = report["stages"]
    assert stages["encode"]["status"] == "timed out"
    assert stages["encode"]["error"].startswith("killed by its time guard after 2 s")
    assert stages["oom"]["status"] == "skipped" and stages["oom"]["error"].startswith("not started")
    assert stages["doctor"] == {"status": "skipped", "error": "not in --only", "seconds": 0.0, "items": {}}
    assert "| encode |  | timed out |" in done.stdout


def test_the_model_pack_halves_the_weights_and_restores_them_as_fp32(gpu_check, tiny_bert, tmp_path):
    import torch
    from safetensors.torch import load_file

    pack = gpu_check.pack_model(str(tiny_bert), tmp_path / "pack.tar.gz")
    restored = tmp_path / "restored"
    gpu_check.unpack_model(pack, restored)
    original = load_file(tiny_bert / "model.safetensors")
    weights = load_file(restored / "model.safetensors")
    assert weights.keys() == original.keys()
    for name, tensor in original.items():
        if tensor.is_floating_point():
            assert weights[name].dtype == torch.float32
            assert torch.equal(weights[name], tensor.half().float())
        else:
            assert torch.equal(weights[name], tensor)
    assert (restored / "tokenizer.json").is_file() and (restored / "gpu_check_pack.json").is_file()


def test_trimming_a_bitsandbytes_wheel_keeps_cpu_and_the_chosen_cuda(gpu_check, tmp_path):
    wheel = tmp_path / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl"
    libraries = ["cpu", "cuda118", "cuda130", "cuda132", "rocm64", "xpu2025"]
    names = ["bitsandbytes/__init__.py", *(f"bitsandbytes/libbitsandbytes_{lib}.so" for lib in libraries)]
    with zipfile.ZipFile(wheel, "w") as zf:
        for name in names:
            zf.writestr(name, b"x" * 1000)
        zf.writestr("bitsandbytes-0.50.2.dist-info/RECORD",
                    "".join(f"{name},sha256=abc,1000\n" for name in names))
    assert gpu_check.trim_wheel(wheel, {"130"}) > 0
    kept = ["bitsandbytes/__init__.py", "bitsandbytes/libbitsandbytes_cpu.so",
            "bitsandbytes/libbitsandbytes_cuda130.so"]
    with zipfile.ZipFile(wheel) as zf:
        assert zf.namelist() == [*kept, "bitsandbytes-0.50.2.dist-info/RECORD"]
        record = zf.read("bitsandbytes-0.50.2.dist-info/RECORD").decode().splitlines()
    assert [row.split(",")[0] for row in record] == kept


def test_the_table_shows_each_failure_with_its_error_line(gpu_check):
    report = {"device": "cuda", "plan": "gpu", "seconds": 12.0, "stages": {
        "train": {"status": "failed", "error": "lora: CheckFailed: x", "seconds": 9.0, "items": {
            "full": {"status": "ok", "seconds": 4.0, "figure": "bf16, 50 steps"},
            "lora": {"status": "failed", "seconds": 5.0, "figure": "fp16, 50 steps",
                     "error": "CheckFailed: merged LoRA differs by 1e-3"}}},
        "encode": {"status": "timed out", "seconds": 60.0, "items": {},
                   "error": "killed by its time guard after 60 s"}}}
    lines = gpu_check.table(report).splitlines()
    assert "| train | full | ok | 4.0 | bf16, 50 steps |" in lines
    assert "| train | lora | failed | 5.0 | fp16, 50 steps -- CheckFailed: merged LoRA differs by 1e-3 |" in lines
    assert "| encode |  | timed out | 60.0 | killed by its time guard after 60 s |" in lines
