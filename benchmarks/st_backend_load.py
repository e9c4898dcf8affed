"""Load an ``embedrag export`` folder with sentence-transformers' own ONNX and OpenVINO backends.

Those backends need optimum, which does not install beside this project's transformers 5
(optimum-onnx pins transformers < 4.58), so this runs with the peer environment of
``bench_backends.py`` (sentence-transformers 5.7, transformers 4.57, optimum, torch 2.13):

    /tmp/st-peer/bin/python benchmarks/st_backend_load.py EXPORT_DIR

For each exported file: ``SentenceTransformer(DIR, backend=..., model_kwargs={"file_name": FILE})``
loads it, and its vectors are compared with ``SentenceTransformer(DIR)`` (the PyTorch weights).
"""

from __future__ import annotations

import sys

import numpy as np
from sentence_transformers import SentenceTransformer

FILES = [("onnx", "onnx/model.onnx"), ("onnx", "onnx/model_qint8.onnx"),
         ("openvino", "openvino/openvino_model.xml"), ("openvino", "openvino/openvino_model_qint8.xml")]
TEXTS = ["a short query", "A considerably longer passage about proteins and cells. " * 6, "tea", "台北牛肉麵"]


def main(folder: str) -> int:
    reference = SentenceTransformer(folder, device="cpu").encode(TEXTS, normalize_embeddings=True)
    failed = 0
    for backend, file in FILES:
        try:
            model = SentenceTransformer(folder, device="cpu", backend=backend, model_kwargs={"file_name": file})
        except Exception as exc:  # report every file, whatever breaks
            print(f"{backend:9} {file:36} FAILED {type(exc).__name__}: {str(exc)[:200]}")
            failed += 1
            continue
        vectors = model.encode(TEXTS, normalize_embeddings=True)
        print(f"{backend:9} {file:36} loads; max abs diff {np.abs(vectors - reference).max():.1e}, "
              f"min cosine {(vectors * reference).sum(1).min():.6f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
