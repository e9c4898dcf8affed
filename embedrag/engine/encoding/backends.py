"""Exported backbones: a model's transformer run by ONNX Runtime or OpenVINO instead of torch.

``embedrag export`` writes them beside the PyTorch weights in sentence-transformers' backend
layout (``onnx/model*.onnx``, ``openvino/openvino_model*.xml``) and records each file in
``embedrag_export.json``. :class:`Encoder` keeps its own tokenizing, length-sorted batching,
padding and pooling and hands only the transformer's forward to a backbone here: token ids
and attention mask in, last hidden states out.

A backbone is thread-safe and runs one batch per calling thread: ONNX Runtime sessions with
one intra-op thread each (the encoder's threaded runner gives every core its own batch, as
it does for torch), OpenVINO with one infer request per stream of a ``THROUGHPUT`` compile.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from embedrag.engine.core.errors import ConfigError, DataError

BACKENDS = ("torch", "onnx", "openvino")
EXPORT_RECORD = "embedrag_export.json"
DEFAULT_FILES = {"onnx": "onnx/model.onnx", "openvino": "openvino/openvino_model.xml"}
EXTRAS = {"onnx": ("onnxruntime", "embedrag[onnx]"), "openvino": ("openvino", "embedrag[openvino]")}
# What OpenVINO's INFERENCE_PRECISION_HINT calls embedrag's precisions.
_OPENVINO_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


@dataclass
class ExportedFile:
    """One exported model file: what it is and how close it came to the PyTorch model."""

    format: str
    quantize: str = "none"  # none | int8-dynamic | int8-static
    min_cosine: float | None = None
    probes: int = 0
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def quantized(self) -> bool:
        return self.quantize != "none"


@dataclass
class ExportRecord:
    """``embedrag_export.json``: the fingerprint of the PyTorch model the files were exported
    from, and each file (by its path in the folder)."""

    source_fingerprint: str
    source: str
    settings: dict[str, Any] = field(default_factory=dict)  # the embedding settings exported with
    files: dict[str, ExportedFile] = field(default_factory=dict)
    default: dict[str, str] = field(default_factory=dict)  # backend -> the file loaded unless one is named

    def to_dict(self) -> dict[str, Any]:
        return {"source_fingerprint": self.source_fingerprint, "source": self.source, "settings": self.settings,
                "files": {name: asdict(f) for name, f in self.files.items()}, "default": self.default}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportRecord:
        return cls(source_fingerprint=data["source_fingerprint"], source=data.get("source", ""),
                   settings=dict(data.get("settings", {})),
                   files={name: ExportedFile(**f) for name, f in data.get("files", {}).items()},
                   default=dict(data.get("default", {})))


def read_export_record(folder: str | os.PathLike) -> ExportRecord | None:
    path = Path(folder) / EXPORT_RECORD
    if not path.is_file():
        return None
    try:
        return ExportRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError([f"{path} is not a valid export record ({exc})"]) from exc


def parse_backend(spec: str) -> tuple[str, str | None]:
    """``torch``, ``onnx``, ``openvino``, or one of the last two with a file of the folder
    (``onnx:onnx/model_qint8.onnx``): ``(backend, file or None)``."""
    backend, _, file = spec.partition(":")
    backend = backend.strip().lower()
    if backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)} (optionally onnx:FILE), got {spec!r}")
    if backend == "torch" and file:
        raise ConfigError("--backend torch takes no file")
    return backend, file.strip() or None


def require(backend: str):
    """Import the runtime of ``backend``, or fail with one line naming the extra to install."""
    module, extra = EXTRAS[backend]
    try:
        return __import__(module)
    except ImportError as exc:
        raise ConfigError(f"--backend {backend} needs {module}: pip install '{extra}'") from exc


def export_file(folder: Path, backend: str, file: str | None) -> tuple[Path, ExportedFile | None]:
    """The model file ``backend`` loads in ``folder`` and its record (None when the folder
    was exported by another tool)."""
    record = read_export_record(folder)
    name = file or (record.default.get(backend) if record else None) or DEFAULT_FILES[backend]
    path = folder / name
    if not path.is_file():
        hint = f"embedrag export {folder} -o DIR --format {backend}"
        raise ConfigError(f"{folder} has no {backend} export ({name} is missing); make one with: {hint}")
    return path, (record.files.get(name) if record else None)


def vector_fingerprint(folder: Path, backend: str, file: str | None, settings: dict[str, Any]) -> str | None:
    """The fingerprint of the vectors an exported folder gives with embedding ``settings``
    (see ``fingerprint``): the source model's for its PyTorch weights and its unquantized
    exports (they agree with it to the export check's floor), mixed with the file for a
    quantized one (a different model in effect) and with the settings when they are not
    the exported ones. None for folders without an export record."""
    record = read_export_record(folder)
    if record is None:
        return None
    digest = hashlib.sha256(record.source_fingerprint.encode())
    changed = False
    if backend != "torch":
        path, exported = export_file(folder, backend, file)
        if exported is not None and exported.quantized:
            digest.update(json.dumps(asdict(exported), sort_keys=True).encode())
            digest.update(_head_and_size(path).encode())
            changed = True
    if settings != record.settings:
        digest.update(json.dumps(settings, sort_keys=True).encode())
        changed = True
    return digest.hexdigest() if changed else record.source_fingerprint


def _head_and_size(path: Path) -> str:
    size = path.stat().st_size
    with path.open("rb") as handle:
        return f"{path.name}:{size}:{hashlib.sha256(handle.read(1 << 20)).hexdigest()}"


class ExportedBackbone:
    """What :class:`Encoder` needs of a model, for an exported file: ``forward`` (ids and
    mask, torch tensors, in; ``last_hidden_state`` out), ``config`` and the train/eval
    switches torch modules have. Subclasses implement :meth:`run` on numpy arrays."""

    is_quantized = False  # bitsandbytes' flag: these run in threads like any CPU model
    training = False

    def __init__(self, path: Path, config: Any, exported: ExportedFile | None):
        self.path = path
        self.config = config
        self.exported = exported
        self.names = self.input_names()

    @property
    def quantized(self) -> bool:
        return bool(self.exported and self.exported.quantized)

    def prepare(self, precision: str) -> str:
        """Get ready to encode in ``precision`` (resolved: fp32, bf16, fp16); returns the
        precision the vectors are made in (ONNX Runtime on a CPU: fp32, or int8)."""
        return "int8" if self.quantized else "fp32"

    def forward(self, input_ids, attention_mask, **_ignored):
        import numpy as np
        import torch

        feed = {"input_ids": input_ids.cpu().numpy().astype(np.int64),
                "attention_mask": attention_mask.cpu().numpy().astype(np.int64)}
        if "token_type_ids" in self.names:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        hidden = self.run({k: v for k, v in feed.items() if k in self.names})
        return SimpleNamespace(last_hidden_state=torch.from_numpy(np.ascontiguousarray(hidden, dtype=np.float32)))

    __call__ = forward

    def input_names(self) -> set[str]:
        raise NotImplementedError

    def run(self, feed: dict[str, Any]):
        raise NotImplementedError

    def eval(self) -> ExportedBackbone:
        return self

    def train(self, mode: bool = True) -> ExportedBackbone:
        return self

    def to(self, *_args, **_kwargs) -> ExportedBackbone:
        return self


class OnnxBackbone(ExportedBackbone):
    """An ONNX Runtime session (CPU) with one intra-op thread: the encoder's runner gives
    each core its own batch (measured on SciFact, all-MiniLM-L6-v2, 2 cores: 1.05x for fp32
    and 1.17x for int8 over one batch at a time on both threads)."""

    def __init__(self, path: Path, config: Any, exported: ExportedFile | None):
        ort = require("onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for unreadable graphs
            raise DataError([f"{path} is not a loadable ONNX model: {_first_line(exc)}"]) from exc
        super().__init__(path, config, exported)

    def input_names(self) -> set[str]:
        return {i.name for i in self.session.get_inputs()}

    def run(self, feed: dict[str, Any]):
        return self.session.run(None, feed)[0]


class OpenVinoBackbone(ExportedBackbone):
    """An OpenVINO model compiled for the CPU with the ``THROUGHPUT`` hint (one stream per
    core), one compile per precision asked (``INFERENCE_PRECISION_HINT``: f32, or bf16
    where the CPU has it natively), one infer request per stream handed to the calling
    thread."""

    def __init__(self, path: Path, config: Any, exported: ExportedFile | None):
        self.ov = require("openvino")
        self.core = self.ov.Core()
        try:
            self.model = self.core.read_model(str(path))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise DataError([f"{path} is not a loadable OpenVINO model: {_first_line(exc)}"]) from exc
        self.precision = "fp32"
        self._compiled: dict[str, tuple[Any, queue.Queue]] = {}
        self._lock = threading.Lock()
        super().__init__(path, config, exported)

    def input_names(self) -> set[str]:
        return {name for port in self.model.inputs for name in port.get_names()}

    def prepare(self, precision: str) -> str:
        self.precision = precision if precision in _OPENVINO_PRECISION else "fp32"
        return "int8" if self.quantized else self.precision

    def _requests(self) -> queue.Queue:
        with self._lock:
            if self.precision not in self._compiled:
                compiled = self.core.compile_model(self.model, "CPU", {
                    "PERFORMANCE_HINT": "THROUGHPUT",
                    "INFERENCE_PRECISION_HINT": _OPENVINO_PRECISION[self.precision]})
                requests: queue.Queue = queue.Queue()
                for _ in range(max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))):
                    requests.put(compiled.create_infer_request())
                self._compiled[self.precision] = (compiled, requests)
            return self._compiled[self.precision][1]

    def run(self, feed: dict[str, Any]):
        requests = self._requests()
        request = requests.get()
        try:
            return next(iter(request.infer(feed).values())).copy()
        finally:
            requests.put(request)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


def load_backbone(folder: Path, backend: str, file: str | None, config: Any) -> ExportedBackbone:
    require(backend)
    path, exported = export_file(folder, backend, file)
    return (OnnxBackbone if backend == "onnx" else OpenVinoBackbone)(path, config, exported)
