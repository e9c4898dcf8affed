"""``embedrag export``: a model as ONNX or OpenVINO files for fast CPU encoding, optionally int8.

The output folder is a complete model folder (PyTorch weights, tokenizer,
sentence-transformers files, ``embedrag.json``) plus the transformer exported in
sentence-transformers' backend layout, so ``SentenceTransformer(DIR, backend="onnx",
model_kwargs={"file_name": "onnx/model_qint8.onnx"})`` and embedrag's ``--backend`` load it:

- ``onnx/model.onnx``: torch's own exporter (``torch.onnx.export(dynamo=True)``) of the
  transformer (token ids and attention mask in, ``last_hidden_state`` out);
  ``onnx/model_qint8.onnx``: ONNX Runtime's dynamic int8 quantisation of its MatMul
  weights, per channel (no calibration needed).
- ``openvino/openvino_model.xml``: OpenVINO's conversion of that ONNX graph (fp32 weights);
  ``openvino/openvino_model_qint8.xml``: NNCF's static int8 quantisation, its activation
  ranges calibrated on ``calibration`` passages (the user's own: training passages, the
  corpus to index) or, without them, on built-in probe texts.

Each export ends with a check: probe texts embedded through the new file and through the
PyTorch model, min cosine reported and recorded; below the floor (:data:`COSINE_FLOORS`)
nothing is written. ``embedrag_export.json`` records the source model's fingerprint so that
tables indexed with one can be searched with the other when the vectors agree (see
``backends.vector_fingerprint``). Adapters are merged first (``merge``, verified).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedrag.engine.core.errors import ConfigError
from embedrag.engine.encoding.backends import (
    DEFAULT_FILES,
    EXPORT_RECORD,
    ExportedFile,
    ExportRecord,
    read_export_record,
    require,
)

if TYPE_CHECKING:
    from embedrag.engine.encoding.encoder import Encoder

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "openvino")
QUANTIZE = ("none", "int8")
QUANTIZED_FILES = {"onnx": "onnx/model_qint8.onnx", "openvino": "openvino/openvino_model_qint8.xml"}
# Min cosine to the PyTorch model over the probes. An unquantized export computes the same
# function (measured: 0.9999998 for ONNX, fp32); int8 changes every weight (measured on
# all-MiniLM-L6-v2: 0.98-0.99 min, 0.992-0.995 mean, nDCG@10 within 0.3 % on SciFact).
COSINE_FLOORS = {"none": 0.9999, "int8": 0.95}
CALIBRATION_TEXTS = 300
ONNX_OPSET = 18
Step = Callable[[str], None]


class ExportCheckError(ConfigError):
    """The exported model's vectors are further from the PyTorch model's than the floor."""


@dataclass
class ExportConfig:
    """What to export: the format, int8 or not, calibration passages (any ``index`` input)."""

    format: str = "onnx"
    quantize: str = "none"
    calibration: Path | None = None
    calibration_texts: int = CALIBRATION_TEXTS
    min_cosine: float | None = None  # None: COSINE_FLOORS[quantize]

    def validate(self) -> ExportConfig:
        if self.format not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.quantize not in QUANTIZE:
            raise ConfigError(f"--quantize must be one of {', '.join(QUANTIZE)}, got {self.quantize!r}")
        if self.calibration is not None and not Path(self.calibration).exists():
            raise ConfigError(f"--calibration {self.calibration}: no such file or folder")
        if self.calibration_texts <= 0:
            raise ConfigError("--calibration-texts must be positive")
        return self

    @property
    def floor(self) -> float:
        return self.min_cosine if self.min_cosine is not None else COSINE_FLOORS[self.quantize]

    @property
    def file(self) -> str:
        return QUANTIZED_FILES[self.format] if self.quantize == "int8" else DEFAULT_FILES[self.format]

    @property
    def method(self) -> str:
        if self.quantize == "none":
            return "none"
        return "int8-dynamic" if self.format == "onnx" else "int8-static"


@dataclass
class ExportResult:
    output: Path
    file: str
    format: str
    quantize: str
    min_cosine: float
    mean_cosine: float
    probes: int
    bytes: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "file": self.file, "format": self.format, "quantize": self.quantize,
                "min_cosine": self.min_cosine, "mean_cosine": self.mean_cosine, "probes": self.probes,
                "bytes": self.bytes, "seconds": round(self.seconds, 3), "notes": self.notes}


def export(model: str | os.PathLike, output: str | os.PathLike, config: ExportConfig | None = None, *,
           overwrite: bool = False, step: Step | None = None) -> ExportResult:
    """Export ``model`` (a model folder, hub id or ``final/`` adapter) into ``output``.

    An ``output`` that already holds an export of the same model gains the new file (the
    others stay); any other non-empty ``output`` needs ``overwrite``. Written through a
    staging folder: a failure leaves ``output`` as it was."""
    from embedrag.engine.core.atomic import write_folder_atomically

    config = (config or ExportConfig()).validate()
    step = step or (lambda _message: None)
    started = time.perf_counter()
    target = Path(output)
    existing = _existing_record(target, overwrite)
    with tempfile.TemporaryDirectory(prefix="embedrag-export-") as work:
        step("loading the model")
        encoder, fingerprint = _source_encoder(model, Path(work))
        if existing is not None and existing.source_fingerprint != fingerprint:
            raise ConfigError(f"{target} holds an export of another model ({existing.source}); "
                              "pass --overwrite to replace it")
        outcome: dict[str, Any] = {}

        def write(staging: Path) -> None:
            if existing is not None:
                shutil.copytree(target, staging, dirs_exist_ok=True)
            else:
                encoder.write_files(staging)
            outcome.update(_write_export(encoder, staging, config, Path(work), step))
            record = existing or ExportRecord(source_fingerprint=fingerprint, source=str(model),
                                              settings=_settings(encoder))
            record.files[config.file] = outcome["exported"]
            record.default[config.format] = config.file
            from embedrag.engine.core.atomic import write_json

            write_json(staging / EXPORT_RECORD, record.to_dict())

        write_folder_atomically(target, write)
    exported: ExportedFile = outcome["exported"]
    return ExportResult(output=target, file=config.file, format=config.format, quantize=exported.quantize,
                        min_cosine=float(exported.min_cosine or 0.0), mean_cosine=outcome["mean_cosine"],
                        probes=exported.probes, bytes=_size(target / config.file),
                        seconds=time.perf_counter() - started, notes=outcome.get("notes", []))


def _existing_record(target: Path, overwrite: bool) -> ExportRecord | None:
    if not target.exists():
        return None
    if target.is_file():
        raise ConfigError(f"--output {target} is a file; give a folder")
    record = read_export_record(target)
    if overwrite or not any(target.iterdir()):
        return None
    if record is None:
        raise ConfigError(f"--output {target} exists and is not an export; pass --overwrite to replace it")
    return record


def _settings(encoder: Encoder) -> dict[str, Any]:
    from embedrag.engine.encoding.fingerprint import embedding_settings

    return embedding_settings(encoder)


def _source_encoder(model: str | os.PathLike, work: Path) -> tuple[Encoder, str]:
    """The PyTorch model to export (an adapter merged into its base, verified) in fp32, and
    the fingerprint of the vectors it gives."""
    from embedrag.engine.encoding.adapter_loading import is_adapter_folder
    from embedrag.engine.encoding.encoder import Encoder
    from embedrag.engine.encoding.fingerprint import model_fingerprint
    from embedrag.engine.encoding.models import resolve_model

    folder = resolve_model(model).path
    source = Encoder.load(folder, device="cpu")
    fingerprint = model_fingerprint(source)
    if is_adapter_folder(folder):
        from embedrag.engine.training.merge import merge

        merge(folder, work / "merged", device="cpu")
        source = Encoder.load(work / "merged", device="cpu")
    source.model.float()
    return source, fingerprint


def _write_export(encoder: Encoder, staging: Path, config: ExportConfig, work: Path, step: Step) -> dict[str, Any]:
    # An fp32 graph already exported from the same model (same fingerprint) is reused.
    onnx_path = staging / DEFAULT_FILES["onnx"]
    if not onnx_path.is_file():
        onnx_path = work / "model.onnx"
        step("exporting the ONNX graph")
        export_onnx(encoder, onnx_path)
    target = staging / config.file
    target.parent.mkdir(parents=True, exist_ok=True)
    if config.format == "onnx":
        if config.quantize == "int8":
            step("quantizing to int8 (dynamic)")
            quantize_onnx_dynamic(onnx_path, target)
        elif onnx_path != target:
            shutil.copyfile(onnx_path, target)
    else:
        step("converting to OpenVINO" + (" and quantizing to int8 (static, calibrated)"
                                         if config.quantize == "int8" else ""))
        calibration = _calibration_texts(config) if config.quantize == "int8" else None
        write_openvino(encoder, onnx_path, target, calibration)
    step("checking the export against the PyTorch model")
    return _check(encoder, staging, config)


def export_onnx(encoder: Encoder, path: Path) -> Path:
    """The transformer of ``encoder`` as an ONNX graph with dynamic batch and sequence axes."""
    require("onnx")
    import torch

    from embedrag.engine.encoding.encoder import _keeps_a_kv_cache

    model = encoder.model.eval()
    options = {"use_cache": False} if _keeps_a_kv_cache(model) else {}

    class Transformer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **options).last_hidden_state

    ids = torch.tensor(encoder.tokenize(["an example passage to trace", "a second, longer example passage "
                                         "to trace the export"])["input_ids"][1]).repeat(2, 1)
    mask = torch.ones_like(ids)
    mask[1, ids.shape[1] // 2:] = 0
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_root_logger(), \
            torch.inference_mode(False):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            Transformer(), (ids, mask), dynamo=True, opset_version=ONNX_OPSET, optimize=True, verbose=False,
            input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
            dynamic_shapes={"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}})
        # One file up to protobuf's 2 GB limit; larger models keep their weights beside it.
        program.save(str(path), external_data=_parameter_bytes(model) > 1.8e9)
    return path


def quantize_onnx_dynamic(source: Path, target: Path) -> Path:
    """ONNX Runtime's dynamic int8: MatMul weights per output channel, activations at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with contextlib.redirect_stdout(io.StringIO()), _quiet_root_logger():
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"], extra_options={"MatMulConstBOnly": True})
    return target


def write_openvino(encoder: Encoder, onnx_path: Path, target: Path, calibration: Sequence[str] | None) -> Path:
    """OpenVINO IR (``.xml`` + ``.bin``) of the ONNX graph; with ``calibration`` texts,
    statically quantized to int8 by NNCF (transformer preset: SmoothQuant, attention kept)."""
    ov = require("openvino")
    model = ov.convert_model(str(onnx_path))
    if calibration is not None:
        try:
            import nncf
        except ImportError as exc:
            raise ConfigError("--quantize int8 with --format openvino needs nncf: pip install "
                              "'embedrag[openvino]'") from exc
        batches = _padded_batches(encoder, calibration)
        with _quiet_root_logger():
            model = nncf.quantize(model, nncf.Dataset(batches), model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=len(batches))
    ov.save_model(model, str(target), compress_to_fp16=False)
    return target


def _padded_batches(encoder: Encoder, texts: Sequence[str], size: int = 8) -> list[dict[str, Any]]:
    import numpy as np

    ids = encoder.tokenize(list(texts), "passage")["input_ids"]
    batches = []
    for start in range(0, len(ids), size):
        rows = ids[start:start + size]
        width = max(len(r) for r in rows)
        input_ids = np.zeros((len(rows), width), np.int64)
        mask = np.zeros_like(input_ids)
        for i, row in enumerate(rows):
            input_ids[i, :len(row)], mask[i, :len(row)] = row, 1
        batches.append({"input_ids": input_ids, "attention_mask": mask})
    return batches


def _calibration_texts(config: ExportConfig) -> list[str]:
    """Passages that set int8's activation ranges: the user's (``--calibration``, every
    ``index`` input type) or the probes, at most ``calibration_texts`` of them."""
    from embedrag.engine.training.merge import PROBE_TEXTS

    if config.calibration is None:
        return list(PROBE_TEXTS)
    from embedrag.engine.data.documents import read_documents

    texts = []
    for document in read_documents([config.calibration]):
        texts.append(document.text)
        if len(texts) >= config.calibration_texts:
            break
    if not texts:
        raise ConfigError(f"--calibration {config.calibration} holds no text")
    return texts


def _check(encoder: Encoder, staging: Path, config: ExportConfig) -> dict[str, Any]:
    """Embed the probes (queries and passages, and calibration passages) through the export
    and through the PyTorch model; fail below the floor."""
    import numpy as np

    from embedrag.engine.encoding.encoder import Encoder
    from embedrag.engine.training.merge import PROBE_TEXTS

    texts = list(PROBE_TEXTS) + (_calibration_texts(config)[:64] if config.calibration else [])
    exported = Encoder.load(staging, backend=f"{config.format}:{config.file}")
    exported.config = encoder.config
    a = np.concatenate([encoder.encode(texts, "query"), encoder.encode(texts, "passage")])
    b = np.concatenate([exported.encode(texts, "query"), exported.encode(texts, "passage")])
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    result = ExportedFile(format=config.format, quantize=config.method, min_cosine=round(float(cosine.min()), 7),
                          probes=len(a), settings={"calibration": str(config.calibration or "probes")}
                          if config.quantize == "int8" else {})
    if result.min_cosine < config.floor:
        raise ExportCheckError(f"the {config.format} export disagrees with the PyTorch model: min cosine "
                             f"{result.min_cosine:.5f} < {config.floor} over {len(a)} probes; nothing written")
    return {"exported": result, "mean_cosine": float(cosine.mean())}


def _parameter_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.stem + "*") if p.is_file())


@contextlib.contextmanager
def _quiet_root_logger():
    """torch's exporter, ONNX Runtime's quantizer and NNCF log advice at WARNING (missing
    torchvision ops, pre-processing hints) on the root logger or their own."""
    loggers = [logging.getLogger(name) for name in ("", "nncf", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
