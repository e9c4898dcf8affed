"""GPU check: one short run that proves training, merge, encoding and memory on a CUDA GPU.

Device run (the GPU machine is bare and offline; pack what it lacks here first, with
``make gpu-check-pack``, which fills the git-ignored ``.gpu-check/``)::

    run(command="bash scripts/gpu_check.sh", carry=[".gpu-check"], timeout_s=420)

``scripts/gpu_check.sh`` installs the carried wheels (``pip install --no-index --target``),
puts embedrag on PYTHONPATH and runs this file with ``--device cuda``; results go to
``--out DIR``, else ``$EMBEDRAG_GPU_CHECK_OUT``, else ``$OUT/gpu-check`` where ``$OUT`` is set
(the device machine's returned folder), else ``benchmarks/results/gpu-check``. On a CPU the
same stages run in seconds on tiny models (what ``tests/test_gpu_check.py`` runs)::

    .venv/bin/python benchmarks/gpu_check.py --device cpu --quick --out /tmp/gpu-check

Stages, in this order, each in its own process under its own time limit (``Plan.limits``;
``--limit STAGE=SECONDS`` overrides) inside a total budget (``Plan.budget``, 330 s on a GPU,
so that with the wheel install it stays under 6 minutes of GPU time):

1. ``doctor``: ``embedrag doctor`` and the GPU, driver, CUDA and bitsandbytes backend.
2. ``train``: ~50 steps each of full (bf16), lora (fp16), qlora-4bit (bf16) and qlora-8bit
   (fp16 autocast) on the SciFact slice's ``train.jsonl``; each adapter merged
   (``embedrag.merge``, which checks merged against trained: max abs diff, min cosine) and
   every result evaluated on the slice (BEIR folder: 1,500 docs, 100 test queries).
3. ``memory``: peak ``torch.cuda.max_memory_allocated`` of qlora-4bit, lora and full on a
   decoder of Qwen2-0.5B's shape (494M parameters, random weights from a config, never
   downloaded); goal qlora-4bit <= 0.6x lora.
4. ``encode``: the slice corpus with embedrag fp32/fp16/bf16 and sentence-transformers
   fp32/fp16 in the same process: passages/s, ratios, nDCG@10.
5. ``oom``: ``embedrag train`` with an absurd batch: a real CUDA out-of-memory, and the
   one-line message the CLI prints for it (on a CPU the same command with the OOM
   simulated, and said so).

The embedding model is the half-precision copy of all-MiniLM-L6-v2 that the pack carries
(restored to fp32 before use, so it trains and encodes as the original does, within fp16
rounding of its weights); without a pack, a random BERT of MiniLM's shape. The JSON
(``gpu_check.json``) is rewritten after every stage, and every stage process rewrites its
own results after every item, so whatever stops the run leaves what it finished. The check
always exits 0; failures are rows of the table, with their error line.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from _machine import cpu_name, versions
from bench_encode import ndcg_at_10, row_cosines, timed

from embedrag.engine.core.atomic import write_folder_atomically, write_json

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SLICE = ROOT / "datasets" / "scifact-slice"
PACK_DIR = ROOT / ".gpu-check"
DEFAULT_MODEL_PACK = PACK_DIR / "all-MiniLM-L6-v2-fp16.tar.gz"
OUT_VARIABLE = "EMBEDRAG_GPU_CHECK_OUT"
STAGES = ("doctor", "train", "memory", "encode", "oom")
DISTS = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "sentence-transformers",
         "tokenizers", "safetensors", "numpy")

# A LoRA merge is exact up to fp32 rounding (tests/test_merge.py asserts the same bound);
# QLoRA merges into the dequantized base and is held to merge's own min-cosine floor.
LORA_MERGE_MAX_ABS_DIFF = 1e-5
QLORA_MEMORY_GOAL = 0.6  # qlora-4bit peak / lora peak, on the GPU
# The message `embedrag train` prints for a CUDA OOM (errors.out_of_memory_message).
OOM_MESSAGE = "error: out of memory on the GPU"


# ---------------------------------------------------------------------------- plans
@dataclass(frozen=True)
class BertShape:
    hidden: int
    layers: int
    heads: int
    intermediate: int


@dataclass(frozen=True)
class DecoderShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int | None  # None: the byte-level tokenizer's own 257


@dataclass(frozen=True)
class Finetune:
    """One training of the train stage; ``precision`` is its mixed precision on CUDA (on a
    CPU every run is fp32: fp16 autocast is a GPU feature)."""

    name: str
    finetune_type: str
    bits: int | None
    precision: str


# Both autocast dtypes are covered: bf16 for full and 4-bit, fp16 (with accelerate's grad
# scaler) for lora and for 8-bit, whose int8 matmul is an fp16 kernel.
FINETUNES = (Finetune("full", "full", None, "bf16"), Finetune("lora", "lora", None, "fp16"),
             Finetune("qlora-4bit", "qlora", 4, "bf16"), Finetune("qlora-8bit", "qlora", 8, "fp16"))
MEMORY_RUNS = (("qlora-4bit", "qlora", 4), ("lora", "lora", None), ("full", "full", None))


@dataclass(frozen=True)
class Plan:
    """Sizes and time limits of a mode: the GPU run's, or ``--quick``'s tiny one."""

    name: str
    train_lines: int | None  # first N lines of the slice's train.jsonl (None: all 200)
    train_steps: int
    train_batch: int
    neg_nums: int
    query_len: int
    passage_len: int
    beir_eval: bool  # the BEIR slice (1,500 docs) rather than test.jsonl's 111 positives
    bert: BertShape  # the random BERT used when no model pack is given
    decoder: DecoderShape
    memory_batch: int  # 2 on the GPU, bench_train_memory.py's default
    memory_passage_len: int
    memory_steps: int
    encode_batch: int
    encode_repeats: int
    oom_batch: int  # queries, each with 3 negatives, 512 tokens apiece
    budget: float  # seconds for all stages together
    min_item_seconds: float  # an item is not started with less than this left
    limits: dict[str, float] = field(default_factory=dict)


GPU = Plan(
    name="gpu", train_lines=None, train_steps=50, train_batch=16, neg_nums=3, query_len=64,
    passage_len=256, beir_eval=True, bert=BertShape(384, 6, 12, 1536),
    decoder=DecoderShape(896, 24, 14, 2, 4864, 151936),  # Qwen2-0.5B's config
    memory_batch=2, memory_passage_len=256, memory_steps=5, encode_batch=128, encode_repeats=3,
    oom_batch=192, budget=330, min_item_seconds=8,
    limits={"doctor": 45, "train": 150, "memory": 120, "encode": 60, "oom": 60})
QUICK = Plan(
    name="quick", train_lines=24, train_steps=3, train_batch=4, neg_nums=1, query_len=32,
    passage_len=64, beir_eval=False, bert=BertShape(32, 2, 2, 64),
    decoder=DecoderShape(64, 2, 4, 2, 128, None), memory_batch=2, memory_passage_len=64,
    memory_steps=2, encode_batch=32, encode_repeats=1, oom_batch=192, budget=600,
    min_item_seconds=1, limits={"doctor": 90, "train": 180, "memory": 120, "encode": 90, "oom": 90})


@dataclass
class CheckConfig:
    """One run's options; written to the work folder for the stage processes."""

    device: str
    quick: bool
    out: str
    work: str
    model_pack: str | None
    only: list[str]
    limits: dict[str, float] = field(default_factory=dict)

    @property
    def plan(self) -> Plan:
        base = QUICK if self.quick else GPU
        return replace(base, limits={**base.limits, **self.limits})

    def save(self, path: Path) -> None:
        write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> CheckConfig:
        return cls(**json.loads(path.read_text()))


class CheckFailed(Exception):
    """A stage item ran but its result is wrong (not finite, not merged faithfully...)."""


# ---------------------------------------------------------------------------- stage items
class Recorder:
    """A stage's results in its own process, rewritten to JSON after every item, so that a
    stage killed by its time guard still leaves the items it finished."""

    def __init__(self, path: Path, deadline: float, min_item_seconds: float):
        self.path, self.deadline, self.min_item_seconds = path, deadline, min_item_seconds
        self.data: dict = {"items": {}, "running": None}

    def save(self) -> None:
        write_json(self.path, self.data)

    def run(self, name: str, fn: Callable[[dict], None]) -> None:
        """``fn(figures)`` fills ``figures``; an exception fails this item only, keeping the
        figures it had. Not started when the stage's time is (nearly) spent."""
        if self.deadline - time.time() < self.min_item_seconds:
            self.data["items"][name] = {"status": "skipped", "error": "stage time guard: no time left"}
            self.save()
            return
        self.data["running"] = name
        self.save()
        figures: dict = {}
        started = time.perf_counter()
        status, error = "ok", None
        try:
            fn(figures)
        except Exception as exc:  # noqa: BLE001 - one item's failure is a row, not the end
            status, error = "failed", one_line(exc)
            figures["traceback"] = traceback.format_exc()[-3000:]
        self.data["items"][name] = {**figures, "status": status, "error": error,
                                    "seconds": round(time.perf_counter() - started, 2)}
        self.data["running"] = None
        self.save()


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"


def free_accelerator_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------- models and data
def char_tokenizer(max_length: int):
    """A WordPiece tokenizer over single characters: a tokenizer that needs no download."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(33, 127)]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *("##" + c for c in chars)]
    vocab = {token: i for i, token in enumerate(tokens)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   model_max_length=max_length)


def build_bert(target: Path, shape: BertShape) -> None:
    """A random BERT with sentence-transformers files (mean pooling, normalised), so that
    embedrag and sentence-transformers load it alike."""
    import torch
    from transformers import BertConfig, BertModel

    from embedrag import Encoder

    def write(staging: Path) -> None:
        tokenizer = char_tokenizer(512)
        torch.manual_seed(0)
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=shape.hidden,
                            num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                            intermediate_size=shape.intermediate, max_position_embeddings=512)
        BertModel(config, add_pooling_layer=False).save_pretrained(staging / "hf")
        tokenizer.save_pretrained(staging / "hf")
        encoder = Encoder.load(staging / "hf", pooling="mean", normalize=True, device="cpu")
        encoder.write_files(staging)
        shutil.rmtree(staging / "hf")

    write_folder_atomically(target, write)


def build_decoder(target: Path, shape: DecoderShape, device: str) -> None:
    """A random Qwen2 decoder from a config, with a byte-level tokenizer (no merges).
    Initialised on ``device``: 494M random weights take seconds on a GPU, a minute on a
    small CPU."""
    import torch
    from bench_train_memory import save_byte_tokenizer  # beside this script
    from transformers import Qwen2Config, Qwen2ForCausalLM

    def write(staging: Path) -> None:
        eos = save_byte_tokenizer(staging)
        torch.manual_seed(0)
        config = Qwen2Config(vocab_size=shape.vocab or eos + 1, hidden_size=shape.hidden,
                             intermediate_size=shape.intermediate, num_hidden_layers=shape.layers,
                             num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
                             max_position_embeddings=512, eos_token_id=eos,
                             tie_word_embeddings=True)
        with torch.device(device):
            model = Qwen2ForCausalLM(config)
        model.to("cpu").save_pretrained(staging)

    write_folder_atomically(target, write)


def embedding_model(config: CheckConfig) -> tuple[Path, str]:
    """The model the train and encode stages use, made once per run in the work folder:
    the pack's MiniLM restored to fp32, else a random BERT."""
    target = Path(config.work) / "embedder"
    if config.model_pack:
        if not target.is_dir():
            unpack_model(Path(config.model_pack), target)
        return target, f"{Path(config.model_pack).name} (fp16 pack, restored to fp32)"
    if not target.is_dir():
        build_bert(target, config.plan.bert)
    shape = config.plan.bert
    return target, f"random BERT {shape.layers}x{shape.hidden} (no model pack)"


def decoder_model(config: CheckConfig) -> Path:
    target = Path(config.work) / "decoder"
    if not target.is_dir():
        build_decoder(target, config.plan.decoder, config.device)
    return target


def training_file(config: CheckConfig) -> Path:
    lines = config.plan.train_lines
    if lines is None:
        return SLICE / "train.jsonl"
    target = Path(config.work) / f"train-{lines}.jsonl"
    rows = (SLICE / "train.jsonl").read_text(encoding="utf-8").splitlines()[:lines]
    target.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return target


def eval_set(config: CheckConfig):
    from embedrag import load_beir_testset, load_jsonl_testset

    if config.plan.beir_eval:
        return load_beir_testset(SLICE, "test")
    return load_jsonl_testset(SLICE / "test.jsonl")


def ndcg_of(folder: Path, test_set, config: CheckConfig) -> float:
    from embedrag import evaluate

    report = evaluate(test_set, [f"model={folder}"], ks=(10,), use_cache=False,
                      device=config.device, batch_size=config.plan.encode_batch)
    return float(report.models[0].metrics["ndcg@10"])


# ---------------------------------------------------------------------------- 1. doctor
def stage_doctor(config: CheckConfig, rec: Recorder) -> None:
    rec.run("embedrag doctor", run_doctor)
    rec.run("gpu", lambda figures: probe_device(config, figures))


def run_doctor(figures: dict) -> None:
    done = subprocess.run([sys.executable, "-m", "embedrag", "doctor"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    rows: dict[str, str] = {}
    area = ""
    for line in done.stdout.splitlines():  # rich's table: │ area │ status │ detail │
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) != 3:
            continue
        if cells[0]:
            area = cells[0]
            rows[area] = f"{cells[1]}: {cells[2]}"
        elif area:  # a detail wrapped onto the next line
            rows[area] += f" {cells[2]}"
    figures.update(returncode=done.returncode, rows=rows, output=done.stdout[-4000:])
    figures["figure"] = (f"exit {done.returncode}; device {rows.get('device', '?')}; "
                         f"bitsandbytes {rows.get('bitsandbytes', '?')}")
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines() or [""]
        raise CheckFailed(f"embedrag doctor exited {done.returncode}: {last[-1][:200]}")


def nvidia_driver() -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


def probe_device(config: CheckConfig, figures: dict) -> None:
    import torch

    figures["versions"] = versions(DISTS)
    figures["cpu"] = f"{cpu_name()} ({os.cpu_count()} cpus)"
    backend = "not importable"
    with contextlib.suppress(Exception):  # what doctor reports; its failure is doctor's row
        import bitsandbytes
        from bitsandbytes import cextension

        backend = f"{bitsandbytes.__version__} backend {getattr(cextension, 'BNB_BACKEND', '?')}"
    figures["bitsandbytes"] = backend
    if config.device != "cuda":
        figures["figure"] = f"CPU run: {figures['cpu']}, torch {torch.__version__}, bitsandbytes {backend}"
        return
    if not torch.cuda.is_available():
        raise CheckFailed(f"--device cuda, but torch {torch.__version__} sees no CUDA device")
    props = torch.cuda.get_device_properties(0)
    driver_api = getattr(torch._C, "_cuda_getDriverVersion", lambda: None)()
    figures.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"sm_{props.major}{props.minor}", driver=nvidia_driver(),
                   cuda_runtime=torch.version.cuda, cuda_driver_api=driver_api,
                   bf16=torch.cuda.is_bf16_supported(), gpus=torch.cuda.device_count())
    figures["figure"] = (f"{props.name} ({figures['gpu_memory_gib']} GiB, {figures['capability']}), "
                         f"driver {figures['driver']}, CUDA {torch.version.cuda} (torch "
                         f"{torch.__version__}), bitsandbytes {backend}")


# ---------------------------------------------------------------------------- 2. train
def stage_train(config: CheckConfig, rec: Recorder) -> None:
    model, described = embedding_model(config)
    data, test_set = training_file(config), eval_set(config)
    rec.data.update(model=described, train_dataset=str(data), test_set=test_set.describe())

    def base(figures: dict) -> None:
        figures["ndcg@10"] = ndcg_of(model, test_set, config)
        figures["figure"] = (f"untrained {described}: nDCG@10 {figures['ndcg@10']:.4f} on "
                             f"{len(test_set.qrels)} queries x {len(test_set.corpus):,} docs")

    rec.run("base", base)
    for finetune in FINETUNES:
        rec.run(finetune.name, lambda figures, f=finetune: train_merge_evaluate(
            f, model, data, test_set, config, figures))


def train_merge_evaluate(finetune: Finetune, model: Path, data: Path, test_set,
                         config: CheckConfig, figures: dict) -> None:
    """Train, merge (adapters), evaluate; ``figures["figure"]`` grows as each step ends, so
    a failure's row still shows what came before it."""
    out = Path(config.work) / "train" / finetune.name
    shutil.rmtree(out, ignore_errors=True)
    folder = train_briefly(finetune, model, data, out, config, figures)
    if finetune.finetune_type == "full":
        figures["figure"] += "; merge n/a (full writes a standalone model)"
    else:
        folder = merge_checked(finetune, folder, out / "merged", config, figures)
    figures["ndcg@10"] = ndcg_of(folder, test_set, config)
    figures["figure"] += f"; nDCG@10 {figures['ndcg@10']:.4f}"
    shutil.rmtree(out, ignore_errors=True)
    free_accelerator_memory()


def train_briefly(finetune: Finetune, model: Path, data: Path, out: Path, config: CheckConfig,
                  figures: dict) -> Path:
    from embedrag import TrainConfig, train

    plan = config.plan
    precision = finetune.precision if config.device == "cuda" else "fp32"
    result = train(TrainConfig(
        train_datasets=[str(data)], output_dir=str(out), model=str(model),
        finetune_type=finetune.finetune_type, quantization_bits=finetune.bits,
        batch_size=plan.train_batch, neg_nums=plan.neg_nums, max_steps=plan.train_steps,
        query_max_len=plan.query_len, passage_max_len=plan.passage_len, mixed_precision=precision,
        auto_validation=False, save_on_epoch_end=False, tensorboard=False, seed=0))
    losses = [row["loss"] for row in json.loads((out / "detailed_training_logs.json").read_text())
              if "loss" in row]
    summary = result.summary
    figures.update(precision=precision, steps=result.global_step, losses=losses,
                   train_seconds=round(result.seconds, 2),
                   peak_memory_mib=round(summary["peak_memory_bytes"] / 2**20, 1),
                   peak_memory_kind=summary["peak_memory_kind"],
                   trainable_parameters=summary["start"]["trainable_parameters"])
    figures["figure"] = f"{precision}, {result.global_step} steps"
    if result.global_step != plan.train_steps or not losses or not all(map(math.isfinite, losses)):
        raise CheckFailed(f"{result.global_step} of {plan.train_steps} steps, losses {losses[-3:]}")
    figures["figure"] += (f", loss {losses[0]:.3f} -> {losses[-1]:.3f}, peak "
                          f"{figures['peak_memory_mib']:,.0f} MiB")
    return result.final_dir


def merge_checked(finetune: Finetune, adapter: Path, target: Path, config: CheckConfig,
                  figures: dict) -> Path:
    """``embedrag.merge`` embeds probes with the adapter model (quantised as trained) and
    with the merged folder and fails below its min-cosine floor; LoRA is held to more."""
    from embedrag import merge

    merged = merge(adapter, target, device=config.device)
    figures.update(merge_max_abs_diff=merged.max_abs_diff, merge_min_cosine=merged.min_cosine,
                   merge_verified=merged.verified, merge_probes=merged.probes)
    figures["figure"] += (f"; merged vs trained max abs diff {merged.max_abs_diff:.1e}, "
                          f"min cos {merged.min_cosine:.6f}")
    if finetune.finetune_type == "lora" and merged.max_abs_diff >= LORA_MERGE_MAX_ABS_DIFF:
        raise CheckFailed(f"merged LoRA differs from the trained model by {merged.max_abs_diff:.2e}")
    return target


# ---------------------------------------------------------------------------- 3. memory
def stage_memory(config: CheckConfig, rec: Recorder) -> None:
    from embedrag.engine.training.finetune import checkpoint_parameters

    decoder = decoder_model(config)
    plan = config.plan
    rec.data.update(decoder_parameters=checkpoint_parameters(decoder), decoder=asdict(plan.decoder),
                    batch=(f"{plan.memory_batch} queries x 32 + {plan.memory_batch * 4} passages x "
                           f"{plan.memory_passage_len} tokens (3 negatives each), gradient "
                           f"checkpointing, {'bf16' if config.device == 'cuda' else 'fp32'}, "
                           f"{plan.memory_steps} steps"))
    for name, finetune_type, bits in MEMORY_RUNS:
        rec.run(name, lambda figures, t=finetune_type, b=bits, n=name: measure_memory(
            n, t, b, decoder, config, figures))
    rec.run("qlora-4bit / lora", lambda figures: memory_ratio(rec.data, config, figures))


def measure_memory(name: str, finetune_type: str, bits: int | None, decoder: Path,
                   config: CheckConfig, figures: dict) -> None:
    """One training's peak, as the trainer measures it: CUDA max_memory_allocated from
    after the model is loaded to the end (weights included), else peak RSS."""
    import torch

    from embedrag import TrainConfig, train

    plan = config.plan
    out = Path(config.work) / "memory" / name
    shutil.rmtree(out, ignore_errors=True)
    free_accelerator_memory()
    # What an earlier run left allocated would count in this run's peak: shown, so it is seen.
    before = torch.cuda.memory_allocated() if config.device == "cuda" else 0
    result = train(TrainConfig(
        train_datasets=[str(SLICE / "train.jsonl")], output_dir=str(out), model=str(decoder),
        finetune_type=finetune_type, quantization_bits=bits, batch_size=plan.memory_batch,
        neg_nums=3, max_steps=plan.memory_steps, query_max_len=32,
        passage_max_len=plan.memory_passage_len, gradient_checkpointing=True,
        mixed_precision="bf16" if config.device == "cuda" else "fp32", auto_validation=False,
        save_on_epoch_end=False, tensorboard=False, seed=0))
    summary = result.summary
    figures.update(peak_memory_mib=round(summary["peak_memory_bytes"] / 2**20, 1),
                   load_peak_memory_mib=round(summary["load_peak_memory_bytes"] / 2**20, 1),
                   peak_memory_kind=summary["peak_memory_kind"],
                   allocated_before_mib=round(before / 2**20, 1), final_loss=summary["final_loss"],
                   trainable_parameters=summary["start"]["trainable_parameters"])
    figures["figure"] = (f"peak {figures['peak_memory_mib']:,.0f} MiB ({summary['peak_memory_kind']}), "
                         f"{figures['trainable_parameters']:,} trainable, "
                         f"{figures['allocated_before_mib']:.0f} MiB allocated before")
    del result
    shutil.rmtree(out, ignore_errors=True)
    free_accelerator_memory()


def memory_ratio(data: dict, config: CheckConfig, figures: dict) -> None:
    peaks = {name: data["items"].get(name, {}).get("peak_memory_mib") for name, _, _ in MEMORY_RUNS}
    if None in (peaks["qlora-4bit"], peaks["lora"]):
        raise CheckFailed("qlora-4bit or lora has no peak to compare")
    ratio = peaks["qlora-4bit"] / peaks["lora"]
    figures.update(ratio=round(ratio, 3), full_vs_lora=round(peaks["full"] / peaks["lora"], 3)
                   if peaks["full"] else None, goal=QLORA_MEMORY_GOAL)
    on_gpu = config.device == "cuda"
    verdict = ("met" if ratio <= QLORA_MEMORY_GOAL else "missed") if on_gpu else "n/a: CPU peak RSS"
    figures["figure"] = (f"{ratio:.2f} (goal <= {QLORA_MEMORY_GOAL}: {verdict}); full / lora "
                         f"{figures['full_vs_lora']}; decoder of {data['decoder_parameters']:,} parameters, "
                         f"batch {data['batch']}")
    if on_gpu and ratio > QLORA_MEMORY_GOAL:
        raise CheckFailed(f"qlora-4bit uses {ratio:.2f}x lora's peak, goal <= {QLORA_MEMORY_GOAL}")


# ---------------------------------------------------------------------------- 4. encode
def stage_encode(config: CheckConfig, rec: Recorder) -> None:
    model, described = embedding_model(config)
    test_set = eval_set(config)
    rec.data.update(model=described, passages=len(test_set.corpus), queries=len(test_set.qrels),
                    batch_size=config.plan.encode_batch, max_length=256,
                    repeats=config.plan.encode_repeats)
    vectors: dict = {}
    for name, make in encoders(model, config).items():
        rec.run(name, lambda figures, n=name, m=make: time_encoder(n, m, test_set, config,
                                                                 vectors, figures))
    rec.run("comparison", lambda figures: compare_encoders(rec.data["items"], vectors, figures))


def encoders(model: Path, config: CheckConfig) -> dict[str, Callable]:
    """Name -> a factory of ``encode(texts, kind) -> array``, loaded when its item starts."""
    batch = config.plan.encode_batch

    def embedrag_encoder(precision: str):
        from embedrag import Encoder

        encoder = Encoder.load(model, device=config.device, passage_max_length=256,
                               query_max_length=256)
        return lambda texts, kind: encoder.encode(texts, kind, batch_size=batch, precision=precision)

    def st_encoder(half: bool):
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(model), device=config.device)
        st.max_seq_length = 256
        if half:
            st.half()
        return lambda texts, kind: st.encode(texts, batch_size=batch, convert_to_numpy=True,
                                             show_progress_bar=False).astype("float32")

    return {"embedrag fp32": lambda: embedrag_encoder("fp32"),
            "embedrag fp16": lambda: embedrag_encoder("fp16"),
            "embedrag bf16": lambda: embedrag_encoder("bf16"),
            "sentence-transformers fp32": lambda: st_encoder(False),
            "sentence-transformers fp16": lambda: st_encoder(True)}


def time_encoder(name: str, make: Callable, test_set, config: CheckConfig, vectors: dict,
                 figures: dict) -> None:
    free_accelerator_memory()  # the previous item's model
    encode = make()
    texts = list(test_set.corpus.values())
    encode(texts[:config.plan.encode_batch], "passage")  # warm-up: kernels, allocator
    times = []
    for _ in range(config.plan.encode_repeats):
        seconds, _, corpus_vectors = timed(lambda: encode(texts, "passage"))
        times.append(seconds)
    query_vectors = encode([test_set.queries[q] for q in test_set.qrels], "query")
    vectors[name] = corpus_vectors
    figures.update(passages_per_s=round(len(texts) / statistics.median(times), 1),
                   pass_seconds=[round(t, 3) for t in times],
                   ndcg_at_10=ndcg_at_10(test_set, query_vectors, corpus_vectors))
    figures["figure"] = (f"{figures['passages_per_s']:,.0f} passages/s, "
                         f"nDCG@10 {figures['ndcg_at_10']:.4f}")


def compare_encoders(items: dict, vectors: dict, figures: dict) -> None:
    import numpy as np

    rate = {name: item.get("passages_per_s") for name, item in items.items()}
    st16 = rate.get("sentence-transformers fp16")
    for name in ("embedrag fp16", "embedrag bf16"):
        if rate.get(name) and st16:
            figures[f"{name} / sentence-transformers fp16"] = round(rate[name] / st16, 3)
        if name in vectors and "embedrag fp32" in vectors:
            figures[f"{name} min cosine vs fp32"] = float(
                row_cosines(vectors[name], vectors["embedrag fp32"]).min())
    if "embedrag fp32" in vectors and "sentence-transformers fp32" in vectors:
        figures["embedrag vs sentence-transformers fp32 max abs diff"] = float(
            np.abs(vectors["embedrag fp32"] - vectors["sentence-transformers fp32"]).max())
    ratios = ", ".join(f"{k.split(' /')[0]} {v:.2f}x" for k, v in figures.items() if "/" in k)
    parity = figures.get("embedrag vs sentence-transformers fp32 max abs diff", float("nan"))
    figures["figure"] = (f"vs sentence-transformers fp16: {ratios or 'n/a'}; embedrag vs "
                         f"sentence-transformers fp32 max abs diff {parity:.1e}")
    if not ratios:
        raise CheckFailed("no embedrag half-precision run to compare with sentence-transformers fp16")


# ---------------------------------------------------------------------------- 5. oom
# On a CPU a real out-of-memory would take the machine down with it: every nn.Linear raises
# the error CUDA raises instead, and the real CLI turns it into its one-line message.
SIMULATED_OOM = """
import sys, torch
error = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
def out_of_memory(*args, **kwargs):
    raise error("CUDA out of memory. Tried to allocate 1.00 TiB (simulated by gpu_check on a CPU)")
torch.nn.Linear.forward = out_of_memory
from embedrag.cli import main
sys.argv[0] = "embedrag"
main()
"""


def stage_oom(config: CheckConfig, rec: Recorder) -> None:
    decoder = decoder_model(config)
    rec.run("absurd batch", lambda figures: provoke_oom(decoder, config, rec.deadline, figures))


def provoke_oom(decoder: Path, config: CheckConfig, deadline: float, figures: dict) -> None:
    """``embedrag train`` on the decoder, full fine-tuning, fp32, a batch of 960 sequences of
    512 tokens: about a terabyte of activations on the 0.5B decoder, so CUDA runs out in
    the first forward, whatever the GPU."""
    batch = config.plan.oom_batch
    argv = ["train", "--model", str(decoder), "--train-dataset", str(SLICE / "train.jsonl"),
            "--output-dir", str(Path(config.work) / "oom"), "--finetune-type", "full",
            "--batch-size", str(batch), "--neg-nums", "3", "--query-max-len", "512",
            "--passage-max-len", "512", "--max-steps", "1", "--no-auto-validation",
            "--no-save-on-epoch-end", "--overwrite-output-dir"]
    simulated = config.device != "cuda"
    command = [sys.executable, "-c", SIMULATED_OOM, *argv] if simulated \
        else [sys.executable, "-m", "embedrag", *argv]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "COLUMNS": "400"},
                          timeout=max(1.0, deadline - time.time() - 2))
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    message = errors[-1] if errors else (done.stderr.strip().splitlines() or [""])[-1]
    figures.update(simulated=simulated, returncode=done.returncode, message=message,
                   traceback_shown="Traceback" in done.stderr, stderr_tail=done.stderr[-2000:],
                   batch=f"{batch} queries + {batch * 4} passages x 512 tokens, full fine-tuning")
    figures["figure"] = f"{'simulated on CPU: ' if simulated else ''}exit {done.returncode}: {message}"
    if done.returncode != 1 or not message.startswith(OOM_MESSAGE) or figures["traceback_shown"]:
        raise CheckFailed(f"expected exit 1 and '{OOM_MESSAGE} ...' alone, got exit "
                          f"{done.returncode}: {message[:200]}")


STAGE_FUNCTIONS: dict[str, Callable[[CheckConfig, Recorder], None]] = {
    "doctor": stage_doctor, "train": stage_train, "memory": stage_memory,
    "encode": stage_encode, "oom": stage_oom}


# ---------------------------------------------------------------------------- the runner
def stage_env(config: CheckConfig) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONUNBUFFERED": "1"}
    if config.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the trainer (accelerate) takes a GPU it sees
    return env


def run_stage(name: str, config: CheckConfig, budget_end: float) -> dict:
    """One stage in its own process, killed (with its children) at its time limit.

    A process per stage, rather than a thread or a deadline alone: a hung CUDA call or a
    crash in a native library (bitsandbytes) cannot be interrupted from Python, and only a
    fresh process starts with clean CUDA memory and peak counters. Inside the stage a
    deadline stops new items from starting, and the items finished are on disk."""
    plan, work = config.plan, Path(config.work)
    limit = min(plan.limits[name], budget_end - time.time())
    if limit < plan.min_item_seconds:
        return {"status": "skipped", "seconds": 0.0, "items": {},
                "error": f"not started: {max(limit, 0):.0f} s left of its limit and the total budget"}
    results, log = work / f"{name}.json", Path(config.out) / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    results.unlink(missing_ok=True)
    started = time.time()
    command = [sys.executable, str(Path(__file__).resolve()), "--stage", name,
               "--config", str(work / "config.json"), "--deadline", f"{started + limit:.3f}"]
    timed_out = False
    with log.open("w") as handle:
        # In the work folder: `python -m embedrag` puts its working directory on sys.path,
        # where the checkout's datasets/ would pass for Hugging Face's datasets package.
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=work,
                                   env=stage_env(config), start_new_session=True)
        try:
            process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # Timed out, interrupted, or done: nothing the stage started may outlive it and
            # hold GPU memory into the next stage.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    data = read_json(results) or {"items": {}}
    status, error = stage_status(data, process.returncode, timed_out, limit, log)
    extra = {k: v for k, v in data.items() if k not in ("items", "running", "error")}
    return {"status": status, "error": error, "seconds": round(time.time() - started, 1),
            "limit_seconds": round(limit, 1), "returncode": process.returncode, **extra,
            "items": data["items"]}


def stage_status(data: dict, returncode: int, timed_out: bool, limit: float,
                 log: Path) -> tuple[str, str | None]:
    if timed_out:
        during = f" during {data['running']}" if data.get("running") else ""
        return "timed out", f"killed by its time guard after {limit:.0f} s{during}"
    if returncode != 0:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        return "failed", data.get("error") or (lines[-1][:300] if lines else f"exit {returncode}")
    failed = [f"{name}: {item['error']}" for name, item in data["items"].items()
              if item["status"] == "failed"]
    if failed:
        return "failed", "; ".join(failed)[:500]
    skipped = [name for name, item in data["items"].items() if item["status"] == "skipped"]
    return ("incomplete", f"not started: {', '.join(skipped)}") if skipped else ("ok", None)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_check(config: CheckConfig) -> dict:
    out, work = Path(config.out), Path(config.work)
    work.mkdir(parents=True, exist_ok=True)
    config.save(work / "config.json")
    plan = config.plan
    started = time.time()
    report = {"check": "gpu_check", "date": datetime.now(timezone.utc).isoformat(),
              "device": config.device, "plan": plan.name, "model_pack": config.model_pack,
              "machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "cpu": cpu_name(), "cpus": os.cpu_count()},
              "versions": versions(DISTS), "budget_seconds": plan.budget, "stages": {}}
    for name in STAGES:
        if name not in config.only:
            report["stages"][name] = {"status": "skipped", "error": "not in --only", "seconds": 0.0,
                                      "items": {}}
            continue
        print(f"gpu-check: {name} (limit {plan.limits[name]:.0f} s) ...", flush=True)
        report["stages"][name] = stage = run_stage(name, config, started + plan.budget)
        print(f"gpu-check: {name} {stage['status']} in {stage['seconds']:.1f} s"
              + (f": {stage['error']}" if stage["error"] else ""), flush=True)
        report["seconds"] = round(time.time() - started, 1)
        write_json(out / "gpu_check.json", report)
    report["seconds"] = round(time.time() - started, 1)
    write_json(out / "gpu_check.json", report)
    return report


def table(report: dict) -> str:
    """Markdown: one row per stage item (or per stage, when it has none)."""
    lines = ["| stage | item | status | seconds | figure |", "|---|---|---|---:|---|"]
    for name, stage in report["stages"].items():
        rows = stage["items"].items() or [("", stage)]
        for item, row in rows:
            text = row.get("figure") or ""
            if row.get("error"):
                text = f"{text} -- {row['error']}" if text else row["error"]
            lines.append(f"| {name} | {item} | {row['status']} | {row.get('seconds', 0):.1f} | "
                         f"{text.replace('|', '/')} |")
        if stage["items"] and stage["status"] in ("timed out", "failed") and stage["error"] and \
                not any(row.get("error") for row in stage["items"].values()):
            lines.append(f"| {name} | | {stage['status']} | {stage['seconds']:.1f} | {stage['error']} |")
    lines.append(f"\n{report['device']} run ({report['plan']} plan), {report['seconds']:.0f} s in all.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the pack
def pack_model(source: str, target: Path) -> Path:
    """Write ``source`` (a model folder; ``auto``: the bundled all-MiniLM-L6-v2) as a
    .tar.gz with its floating-point weights in fp16: half the bytes, so it fits the 64 MiB
    a device run carries."""
    import torch
    from safetensors.torch import load_file, save_file

    from embedrag.engine.encoding.models import bundled_model_path

    folder = bundled_model_path("sentence-transformers/all-MiniLM-L6-v2") if source == "auto" \
        else Path(source)
    if folder is None or not (folder / "model.safetensors").is_file():
        raise SystemExit(f"no model.safetensors in {source} (auto: install the dev extra)")
    skipped = {"model.safetensors", "README.md", ".gitattributes", "data_config.json"}
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp) / "model"
        shutil.copytree(folder, staging, ignore=lambda d, names: [n for n in names if n in skipped])
        weights = load_file(folder / "model.safetensors")
        save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()},
                  staging / "model.safetensors", metadata={"format": "pt"})
        (staging / "gpu_check_pack.json").write_text(json.dumps(
            {"source": str(folder), "dtype": "float16", "torch": torch.__version__}) + "\n")
        target.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(target, "w:gz") as tar:
            tar.add(staging, arcname="model")
    return target


def unpack_model(pack: Path, target: Path) -> None:
    """The pack's model with its weights back in fp32 (exactly the fp16 values), so that
    training keeps fp32 master weights as it would with the original."""
    from safetensors.torch import load_file, save_file

    def write(staging: Path) -> None:
        with tarfile.open(pack) as tar:
            tar.extractall(staging, filter="data")
        weights_file = staging / "model" / "model.safetensors"
        weights = load_file(weights_file)
        save_file({k: v.float() if v.is_floating_point() else v for k, v in weights.items()},
                  weights_file, metadata={"format": "pt"})
        for path in (staging / "model").iterdir():
            path.rename(staging / path.name)
        (staging / "model").rmdir()

    write_folder_atomically(target, write)


def trim_wheel(wheel: Path, keep: set[str]) -> int:
    """Drop from a bitsandbytes wheel every native library but the CPU one and the CUDA
    versions in ``keep`` (e.g. {"130", "132"}), RECORD included; returns bytes saved."""
    pattern = re.compile(r"bitsandbytes/libbitsandbytes_(cuda(\d+)|rocm\d+|xpu\d+)\.(so|dll|dylib)$")

    def dropped(name: str) -> bool:
        found = pattern.search(name)
        return bool(found) and found.group(2) not in keep

    before = wheel.stat().st_size
    trimmed = wheel.with_name(wheel.name + ".tmp")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(trimmed, "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            if dropped(info.filename):
                continue
            data = source.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                rows = data.decode().splitlines()
                data = ("\n".join(r for r in rows if not dropped(r.split(",")[0])) + "\n").encode()
            out.writestr(info, data)
    os.replace(trimmed, wheel)
    return before - wheel.stat().st_size


# ---------------------------------------------------------------------------- command line
def default_out() -> Path:
    if os.environ.get(OUT_VARIABLE):
        return Path(os.environ[OUT_VARIABLE])
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "gpu-check"
    return HERE / "results" / "gpu-check"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny models, a few steps: seconds")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"results folder (default: ${OUT_VARIABLE}, $OUT/gpu-check, "
                             "benchmarks/results/gpu-check)")
    parser.add_argument("--work", type=Path, default=None,
                        help="models and runs (default: a temporary folder, removed at the end)")
    parser.add_argument("--model-pack", default=None,
                        help=f"fp16 model pack (default: {DEFAULT_MODEL_PACK.relative_to(ROOT)} "
                             "when present, except with --quick); 'none': a random BERT")
    parser.add_argument("--only", default=",".join(STAGES), help="stages to run, comma-separated")
    parser.add_argument("--limit", action="append", default=[], metavar="STAGE=SECONDS",
                        help="override a stage's time limit (repeatable)")
    parser.add_argument("--pack-model", nargs=2, metavar=("SOURCE", "TARGET"),
                        help="write a model folder (auto: the bundled MiniLM) as an fp16 pack, then exit")
    parser.add_argument("--unpack-model", nargs=2, metavar=("PACK", "TARGET"),
                        help="write a pack's model, fp32 again, as the folder TARGET, then exit")
    parser.add_argument("--trim-wheel", nargs=2, metavar=("WHEEL", "CUDA_VERSIONS"),
                        help="keep only these CUDA libraries (e.g. 130,132) in a bitsandbytes wheel")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # a stage's own process
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(STAGES)
    if unknown:
        parser.error(f"--only: unknown stage(s) {', '.join(sorted(unknown))}")
    for spec in args.limit:
        stage, _, seconds = spec.partition("=")
        if stage not in STAGES or not re.fullmatch(r"\d+(\.\d+)?", seconds):
            parser.error(f"--limit {spec!r}: expected STAGE=SECONDS")
    return args


def make_config(args: argparse.Namespace, work: Path) -> CheckConfig:
    pack = args.model_pack
    if pack is None:
        pack = str(DEFAULT_MODEL_PACK) if DEFAULT_MODEL_PACK.is_file() and not args.quick else None
    elif pack == "none":
        pack = None
    limits = {spec.partition("=")[0]: float(spec.partition("=")[2]) for spec in args.limit}
    # Absolute paths: the stage processes run in the work folder.
    return CheckConfig(device=args.device, quick=args.quick,
                       out=str((args.out or default_out()).resolve()), work=str(work.resolve()),
                       model_pack=str(Path(pack).resolve()) if pack else None,
                       only=args.only.split(","), limits=limits)


def stage_main(args: argparse.Namespace) -> int:
    config = CheckConfig.load(args.config)
    if args.stage != "doctor":  # doctor reports a missing GPU itself
        require_device(config)
    rec = Recorder(Path(config.work) / f"{args.stage}.json", args.deadline,
                   config.plan.min_item_seconds)
    rec.save()
    try:
        STAGE_FUNCTIONS[args.stage](config, rec)
    except Exception as exc:
        rec.data["error"] = one_line(exc)
        rec.save()
        raise
    return 0


def require_device(config: CheckConfig) -> None:
    """Fail at once rather than run the GPU plan on a CPU until the time guards stop it."""
    if config.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(f"--device cuda, but torch {torch.__version__} sees no CUDA device")


def interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.stage:
        return stage_main(args)
    if args.pack_model:
        print(pack_model(args.pack_model[0], Path(args.pack_model[1])))
        return 0
    if args.unpack_model:
        unpack_model(Path(args.unpack_model[0]), Path(args.unpack_model[1]))
        return 0
    if args.trim_wheel:
        saved = trim_wheel(Path(args.trim_wheel[0]), set(args.trim_wheel[1].split(",")))
        print(f"{args.trim_wheel[0]}: {saved / 2**20:.1f} MiB of other native libraries removed")
        return 0
    # SIGTERM (an outer `timeout`) ends the run like Ctrl-C: the running stage is killed,
    # and what the finished stages measured is already on disk.
    signal.signal(signal.SIGTERM, interrupt)
    temporary = args.work is None
    work = Path(tempfile.mkdtemp(prefix="embedrag-gpu-check-")) if temporary else args.work
    config = make_config(args, work)
    try:
        report = run_check(config)
    except KeyboardInterrupt:
        print("gpu-check: interrupted; finished stages are in "
              f"{Path(config.out) / 'gpu_check.json'}", flush=True)
        return 0
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
    text = table(report)
    (Path(config.out) / "gpu_check.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
