"""Encoding a large list of texts in several processes: one per GPU, or CPU processes
that share the cores.

The parent sorts the texts by token length once and hands out contiguous chunks of that
order, so every batch pads to nearly its own length and a slow chunk does not hold the
others up. Each worker loads the model itself (from its folder, with the parent's
embedding settings), so the vectors are those of a single-process run. It loads it with
the loader the pool is given (by default the encoder's own ``type(encoder).load``, which
pickles by reference), so this module never imports the encoder that starts it.
"""

from __future__ import annotations

import copy
import functools
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from embedrag.engine.encoding.encoder import EmbeddingConfig, Encoder

_WORKER: dict[str, Any] = {}
CHUNKS_PER_PROCESS = 8


def worker_devices(num_processes: int) -> list[str]:
    """One GPU per process where there are GPUs, else CPU for all."""
    import torch

    gpus = torch.cuda.device_count()
    return [f"cuda:{i % gpus}" for i in range(num_processes)] if gpus else ["cpu"] * num_processes


def _init_worker(load: Callable[..., Encoder], source: str, config: EmbeddingConfig, devices,
                 threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    device = devices.get()
    encoder = load(source, device=device)
    encoder.config = config
    _WORKER["encoder"] = encoder


def _encode_chunk(texts: list[str], kind: str, batch_size: int, precision: str,
                  max_batch_tokens: int | None) -> np.ndarray:
    return _WORKER["encoder"].encode(texts, kind, batch_size=batch_size, precision=precision,
                                     max_batch_tokens=max_batch_tokens)


class EncoderPool:
    """Worker processes, each holding a copy of ``encoder``; reuse one for many calls.

        with EncoderPool(encoder, 2) as pool:
            vectors = pool.encode(texts, "passage")

    Each worker builds its copy with ``load(encoder.path or encoder.name, device=...)``
    (``load``: a picklable callable, by default ``type(encoder).load``) and then takes
    ``encoder``'s embedding settings.
    """

    def __init__(self, encoder: Encoder, num_processes: int, *, load: Callable[..., Encoder] | None = None):
        self.encoder = encoder
        self.num_processes = num_processes
        self.load = load if load is not None else functools.partial(type(encoder).load, backend=encoder.backend)
        self.devices = worker_devices(num_processes)
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> EncoderPool:
        context = multiprocessing.get_context("spawn")  # fork would copy a live torch runtime
        queue = context.Queue()
        for device in self.devices:
            queue.put(device)
        threads = max(1, (os.cpu_count() or 1) // self.num_processes) if self.devices[0] == "cpu" else 1
        source = str(self.encoder.path or self.encoder.name)
        self._pool = ProcessPoolExecutor(self.num_processes, mp_context=context, initializer=_init_worker,
                                         initargs=(self.load, source, copy.deepcopy(self.encoder.config), queue,
                                                   threads))
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def encode(self, texts: Sequence[str], kind: str, *, batch_size: int = 32, precision: str = "fp32",
               progress: Callable[[int, int], None] | None = None,
               max_batch_tokens: int | None = None) -> np.ndarray:
        """``encoder.encode(texts, kind)``, spread over the workers."""
        import numpy as np

        assert self._pool is not None, "use EncoderPool as a context manager"
        texts = list(texts)
        total = len(texts)
        lengths = [len(ids) for ids in self.encoder.tokenize(texts, kind)["input_ids"]]
        order = sorted(range(total), key=lambda i: -lengths[i])
        size = max(batch_size, -(-total // (self.num_processes * CHUNKS_PER_PROCESS)))
        chunks = [order[start:start + size] for start in range(0, total, size)]
        out = np.zeros((total, self.encoder.dimension), np.float32)
        futures = {self._pool.submit(_encode_chunk, [texts[i] for i in rows], kind, batch_size, precision,
                                     max_batch_tokens): rows
                   for rows in chunks}
        done = 0
        for future in as_completed(futures):
            rows = futures[future]
            out[rows] = future.result()
            done += len(rows)
            if progress is not None:
                progress(done, total)
        return out


def encode_in_processes(encoder: Encoder, texts: Sequence[str], kind: str, *, num_processes: int,
                        batch_size: int = 32, precision: str = "fp32",
                        progress: Callable[[int, int], None] | None = None,
                        max_batch_tokens: int | None = None) -> np.ndarray:
    """``encoder.encode(texts, kind)`` spread over ``num_processes`` fresh worker processes."""
    with EncoderPool(encoder, num_processes) as pool:
        return pool.encode(texts, kind, batch_size=batch_size, precision=precision, progress=progress,
                           max_batch_tokens=max_batch_tokens)
