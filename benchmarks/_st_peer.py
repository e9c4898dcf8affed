"""The peer side of ``bench_backends.py``: sentence-transformers' own backends (torch, ONNX,
OpenVINO and their int8 exports) and fastembed, run in a separate virtual environment
(``benchmarks/peer_env.sh``: optimum needs older transformers / newer torch than the project's).

Standalone on purpose (no embedrag import): it runs under the peer venv's Python. It reads one
JSON request per line on stdin and answers one JSON line on the stdout it started with
(everything else that prints to stdout goes to stderr). Requests:

- ``setup``: the texts (a JSON file), the model folder, the work folder, the calibration
  folder, max length, batch size, threads; exports the ONNX/OpenVINO files with
  sentence-transformers' own functions (cached in the work folder).
- ``load`` ``row``: load one configuration (``ROWS``) and warm it up.
- ``encode`` ``row`` ``start`` ``stop``: embed passages ``[start, stop)``, answer wall and
  process CPU seconds; the vectors stay here until ``save``.
- ``queries`` ``row``: embed the queries; ``save`` ``row``: write ``<row>.passages.npy`` and
  ``<row>.queries.npy`` to the vectors folder; ``quit``.

``bench_backends.py`` also imports this module and calls :func:`handle` in its own process
when there is no peer venv (torch rows only).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

# Row name -> (library, backend, options). The names are the ones bench_backends.py prints.
ROWS = {
    "ST torch fp32": ("st", "torch", {}),
    "ST torch bf16": ("st", "torch", {"dtype": "bf16"}),
    "ST onnx": ("st", "onnx", {"file": "onnx/model.onnx"}),
    "ST onnx qint8": ("st", "onnx", {"file": "{onnx_int8}"}),
    "ST openvino": ("st", "openvino", {"file": "openvino/openvino_model.xml"}),
    "ST openvino f32": ("st", "openvino", {"file": "openvino/openvino_model.xml",
                                           "ov_config": {"INFERENCE_PRECISION_HINT": "f32"}}),
    "ST openvino qint8": ("st", "openvino", {"file": "openvino/openvino_model_qint8_quantized.xml"}),
    "fastembed": ("fastembed", "onnx", {"file": "onnx/model.onnx"}),
}
CALIBRATION_SAMPLES = 300
# What export_dynamic_quantized_onnx_model names its file for each CPU config (its suffix is
# the weights' dtype and the config: the avx2 config quantizes weights to uint8).
ONNX_INT8_FILES = {"avx512_vnni": "onnx/model_qint8_avx512_vnni.onnx",
                   "avx512": "onnx/model_qint8_avx512.onnx", "avx2": "onnx/model_quint8_avx2.onnx",
                   "arm64": "onnx/model_qint8_arm64.onnx"}

STATE: dict = {"rows": {}, "vectors": {}}


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for dist in ("torch", "transformers", "sentence-transformers", "optimum", "optimum-onnx",
                 "optimum-intel", "onnxruntime", "openvino", "nncf", "fastembed", "tokenizers",
                 "numpy", "datasets", "huggingface-hub"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def _export_dir() -> Path:
    return Path(STATE["work"]) / "st-export"


def setup(request: dict) -> dict:
    import torch

    STATE.update({k: request[k] for k in ("model", "work", "calibration", "max_length",
                                          "batch_size", "threads", "isa")})
    STATE["forced_avx2"] = bool(request.get("forced_avx2"))
    STATE["vectors_dir"] = request["vectors"]
    STATE["texts"] = json.loads(Path(request["texts"]).read_text())
    torch.set_num_threads(int(request["threads"]))
    Path(STATE["vectors_dir"]).mkdir(parents=True, exist_ok=True)
    info = {"versions": _versions(), "torch_threads": torch.get_num_threads(),
            "exports": {}, "errors": {}}
    if request.get("export", True):
        info["exports"], info["errors"] = export_all(bool(request.get("re_export")))
    return info


def _st(path: str, **kwargs):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device="cpu", **kwargs)


def export_all(again: bool) -> tuple[dict, dict]:
    """sentence-transformers' own exports of the model, in its backend layout: optimum's ONNX
    and OpenVINO conversions (saved with ``save_pretrained``), ``export_dynamic_quantized_onnx_model``
    (the CPU's config) and ``export_static_quantized_openvino_model`` calibrated on the local
    sample (a folder with one JSONL, loaded by ``datasets`` as a local dataset)."""
    from sentence_transformers.backend import (
        export_dynamic_quantized_onnx_model,
    )

    out = _export_dir()
    if again and out.exists():
        shutil.rmtree(out)
    done, errors = {}, {}
    steps = [
        ("onnx", "onnx/model.onnx",
         lambda: _st(STATE["model"], backend="onnx").save_pretrained(str(out))),
        ("onnx qint8", ONNX_INT8_FILES[STATE["isa"]],
         lambda: export_dynamic_quantized_onnx_model(
             _st(str(out), backend="onnx", model_kwargs={"file_name": "onnx/model.onnx"}),
             STATE["isa"], str(out))),
        ("openvino", "openvino/openvino_model.xml",
         lambda: _st(STATE["model"], backend="openvino").save_pretrained(str(out))),
        ("openvino qint8", "openvino/openvino_model_qint8_quantized.xml", _static_openvino),
    ]
    for name, file, make in steps:
        if (out / file).is_file():
            done[name] = {"file": file, "seconds": None, "cached": True}
            continue
        started = time.perf_counter()
        try:
            make()
        except Exception as exc:  # reported as the row's reason
            errors[name] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
            traceback.print_exc()
            continue
        if not (out / file).is_file():
            errors[name] = f"the export ran but wrote no {file}"
            continue
        done[name] = {"file": file, "seconds": round(time.perf_counter() - started, 1)}
    _fastembed_folder()
    return done, errors


def _static_openvino() -> None:
    from optimum.intel import OVQuantizationConfig
    from sentence_transformers.backend import export_static_quantized_openvino_model

    out = _export_dir()
    model = _st(str(out), backend="openvino",
                model_kwargs={"file_name": "openvino/openvino_model.xml"})
    export_static_quantized_openvino_model(
        model, OVQuantizationConfig(num_samples=CALIBRATION_SAMPLES), str(out),
        dataset_name=str(STATE["calibration"]), dataset_config_name="default",
        dataset_split="train", column_name="text")


def _fastembed_folder() -> Path:
    """fastembed's view of the same model: the tokenizer files and optimum's ONNX graph,
    with ``model_max_length`` and ``max_length`` set to the benchmark's max length (fastembed
    truncates at the smaller of the two in tokenizer_config.json: 128 in the folder
    sentence-transformers saves for this model, whose ``max_seq_length`` is 256)."""
    src, folder = _export_dir(), Path(STATE["work"]) / "fastembed-model"
    (folder / "onnx").mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "special_tokens_map.json", "vocab.txt"):
        if (src / name).is_file():
            shutil.copyfile(src / name, folder / name)
    config = json.loads((src / "tokenizer_config.json").read_text())
    STATE["fastembed_tokenizer_config"] = {k: config.get(k) for k in ("model_max_length", "max_length")}
    config["model_max_length"] = config["max_length"] = int(STATE["max_length"])
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    target = folder / "onnx" / "model.onnx"
    if (src / "onnx" / "model.onnx").is_file() and not target.exists():
        os.link(src / "onnx" / "model.onnx", target)
    return folder


# ---------------------------------------------------------------------------- rows
class StRow:
    def __init__(self, backend: str, options: dict):
        import torch

        kwargs: dict = {}
        model_kwargs: dict = {}
        path = STATE["model"]
        self.info: dict = {"backend": backend}
        if backend != "torch":
            path = str(_export_dir())
            model_kwargs["file_name"] = options["file"].format(onnx_int8=ONNX_INT8_FILES[STATE["isa"]])
            if backend == "onnx":
                model_kwargs["provider"] = "CPUExecutionProvider"
            if "ov_config" in options:
                model_kwargs["ov_config"] = dict(options["ov_config"])
            if backend == "openvino" and STATE.get("forced_avx2"):
                # OpenVINO keeps bf16 as its default hint under ONEDNN_MAX_CPU_ISA=AVX2 but
                # then finds no kernel for it (compile fails); an AVX2-only CPU defaults to f32.
                model_kwargs.setdefault("ov_config", {})["INFERENCE_PRECISION_HINT"] = "f32"
            self.info["file"] = model_kwargs["file_name"]
            kwargs = {"backend": backend, "model_kwargs": model_kwargs}
        self.model = _st(path, **kwargs)
        if options.get("dtype") == "bf16":
            self.model.bfloat16()  # what sentence-transformers' docs do for half precision
        self.model.max_seq_length = int(STATE["max_length"])
        self.info["max_seq_length"] = self.model.max_seq_length
        self.info["torch_threads"] = torch.get_num_threads()

    def encode(self, texts: list[str]):
        import numpy as np

        out = self.model.encode(texts, batch_size=int(STATE["batch_size"]), convert_to_numpy=True,
                                show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)

    queries = encode

    def describe(self) -> dict:
        """What the backend really runs with (after a first encode, so it is compiled)."""
        backbone = getattr(self.model[0], "auto_model", None)
        if self.info["backend"] == "onnx":
            session = getattr(backbone, "model", None) or getattr(backbone, "session", None)
            try:
                options = session.get_session_options()
                self.info["ort_intra_op_threads"] = options.intra_op_num_threads
                self.info["ort_providers"] = session.get_providers()
            except AttributeError:
                pass
        elif self.info["backend"] == "openvino":
            self.info["ov_config"] = dict(getattr(backbone, "ov_config", {}) or {})
            compiled = getattr(backbone, "compiled_model", None) or getattr(backbone, "request", None)
            for prop in ("INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT", "NUM_STREAMS",
                         "INFERENCE_NUM_THREADS"):
                try:
                    self.info[prop.lower()] = str(compiled.get_property(prop))
                except Exception:  # not a compiled model, or no such property
                    pass
        return self.info


class FastembedRow:
    NAME = "embedrag-bench/all-MiniLM-L6-v2"

    def __init__(self, options: dict):
        from fastembed import TextEmbedding
        from fastembed.common.model_description import ModelSource, PoolingType

        folder = _fastembed_folder()
        if not any(m["model"] == self.NAME for m in TextEmbedding.list_supported_models()):
            TextEmbedding.add_custom_model(
                model=self.NAME, pooling=PoolingType.MEAN, normalization=True,
                sources=ModelSource(hf="sentence-transformers/all-MiniLM-L6-v2"), dim=384,
                model_file=options["file"])
        self.model = TextEmbedding(self.NAME, specific_model_path=str(folder),
                                   threads=int(STATE["threads"]),
                                   providers=["CPUExecutionProvider"], local_files_only=True)
        self.info = {"backend": "onnx", "file": f"{folder.name}/{options['file']}",
                     "max_length": int(STATE["max_length"]), "threads": int(STATE["threads"]),
                     "tokenizer_config_as_saved": STATE.get("fastembed_tokenizer_config")}

    def encode(self, texts: list[str]):
        import numpy as np

        return np.stack(list(self.model.embed(texts, batch_size=int(STATE["batch_size"])))).astype(
            np.float32)

    queries = encode

    def describe(self) -> dict:
        return self.info


def load(request: dict) -> dict:
    name = request["row"]
    library, backend, options = ROWS[name]
    started = time.perf_counter()
    row = FastembedRow(options) if library == "fastembed" else StRow(backend, options)
    loaded = time.perf_counter() - started
    warm = STATE["texts"][: 2 * int(STATE["batch_size"])]
    started = time.perf_counter()
    row.encode(warm)
    STATE["rows"][name] = row
    STATE["vectors"][name] = {}
    return {"load_seconds": loaded, "warmup_seconds": time.perf_counter() - started,
            "info": row.describe()}


def encode(request: dict) -> dict:
    row = STATE["rows"][request["row"]]
    texts = STATE["texts"][request["start"]:request["stop"]]
    wall, cpu = time.perf_counter(), time.process_time()
    vectors = row.encode(texts)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    STATE["vectors"][request["row"]][request["start"]] = vectors
    return {"wall": wall, "cpu": cpu}


def queries(request: dict) -> dict:
    import numpy as np

    row = STATE["rows"][request["row"]]
    texts = json.loads(Path(request["queries"]).read_text())
    started = time.perf_counter()
    vectors = row.queries(texts)
    np.save(Path(STATE["vectors_dir"]) / f"{request['row']}.queries.npy", vectors)
    return {"seconds": time.perf_counter() - started}


def save(request: dict) -> dict:
    import numpy as np

    parts = STATE["vectors"][request["row"]]
    vectors = np.concatenate([parts[k] for k in sorted(parts)])
    path = Path(STATE["vectors_dir"]) / f"{request['row']}.passages.npy"
    np.save(path, vectors)
    return {"path": str(path), "rows": int(len(vectors))}


def unload(request: dict) -> dict:
    STATE["rows"].pop(request["row"], None)
    STATE["vectors"].pop(request["row"], None)
    return {}


HANDLERS = {"setup": setup, "load": load, "encode": encode, "queries": queries, "save": save,
            "unload": unload}


def handle(request: dict) -> dict:
    try:
        return {"ok": True, **HANDLERS[request["op"]](request)}
    except Exception as exc:  # answered, so the benchmark can report the row's reason
        traceback.print_exc()
        lines = str(exc).strip().splitlines() or [""]
        return {"ok": False, "error": f"{type(exc).__name__}: {lines[0][:400]}"}


def main() -> None:
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # progress bars and prints of the libraries go to stderr, not the protocol
    sys.stdout = sys.stderr
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "quit":
            break
        reply.write(json.dumps(handle(request)) + "\n")


if __name__ == "__main__":
    main()
