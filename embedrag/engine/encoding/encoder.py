"""The Encoder: tokenizer + transformer + pooling + instructions + normalisation.

One object turns texts into vectors the same way everywhere embedrag embeds (training,
indexing, evaluation, asking). Its settings live in :class:`EmbeddingConfig`, saved as
``embedrag.json`` and mirrored in sentence-transformers files, so a saved folder
describes itself and ``SentenceTransformer(path)`` gives the same vectors.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedrag.engine.core.errors import ConfigError
from embedrag.engine.encoding.adapter_loading import (
    adapter_base,
    adapter_quantization_bits,
    attach_adapter,
    is_adapter_folder,
    quantized_model_kwargs,
    quiet_bitsandbytes,
    read_adapter_config,
    settle_quantized_model,
)
from embedrag.engine.encoding.models import resolve_model
from embedrag.engine.encoding.pooling import POOLING_MODES
from embedrag.engine.encoding.precision import PRECISION_CHOICES, PRECISIONS, canonical_precision  # noqa: F401
from embedrag.engine.encoding.st_format import read_st_settings, write_st_files

if TYPE_CHECKING:
    import numpy as np
    import torch

logger = logging.getLogger(__name__)

EMBEDRAG_CONFIG = "embedrag.json"
FORMAT_VERSION = 1
# PRECISIONS, PRECISION_CHOICES: "auto" is bf16 where the hardware computes it natively,
# else fp32 (see resolve_precision).

# Causal-LM families whose AutoModel is a decoder: last-token pooling by default.
_DECODER_TYPES = {
    "gpt2", "gpt_neo", "gpt_neox", "gptj", "llama", "mistral", "mixtral", "qwen2", "qwen2_moe",
    "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3", "gemma3_text", "phi", "phi3", "falcon",
    "stablelm", "starcoder2", "olmo", "olmo2", "internlm2", "baichuan", "chatglm", "opt", "bloom",
}
# Encoders whose base class takes add_pooling_layer: an unused pooler breaks DDP gradients.
_POOLER_TYPES = {"bert", "roberta", "xlm-roberta", "camembert", "mpnet", "ernie", "nomic_bert"}


@dataclass
class EmbeddingConfig:
    """How texts become vectors. Saved as ``embedrag.json`` next to the weights."""

    pooling: str = "mean"
    normalize: bool = True
    query_instruction: str = ""
    passage_instruction: str = ""
    query_max_length: int = 256
    passage_max_length: int = 256
    dimension: int | None = None
    architecture: str = "encoder"
    base_model: str | None = None
    # Free-form provenance written by other stages (training, merge): kept on round trips.
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from embedrag._version import __version__

        data = {"format_version": FORMAT_VERSION, "embedrag_version": __version__}
        data.update(asdict(self))
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbeddingConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def read_embedding_config(folder: str | os.PathLike) -> EmbeddingConfig | None:
    path = Path(folder) / EMBEDRAG_CONFIG
    if not path.is_file():
        return None
    try:
        return EmbeddingConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a valid embedrag.json ({exc})") from exc


def declared_embedding_config(folder: Path, hf_config: Any, tokenizer: Any, *,
                              base_model: str | None = None) -> EmbeddingConfig:
    """The settings a model folder declares: its ``embedrag.json``, else its
    sentence-transformers files, else architecture defaults (lengths at the model limit)."""
    decoder = is_decoder_config(hf_config)
    config = read_embedding_config(folder)
    if config is None:
        st = read_st_settings(folder)
        limit = model_length_limit(hf_config, tokenizer)
        config = EmbeddingConfig(
            pooling=st.pooling or ("last" if decoder else "mean"),
            normalize=True if st.normalize is None else st.normalize,
            query_instruction=st.query_prompt or "",
            passage_instruction=st.passage_prompt or "",
            query_max_length=min(st.max_seq_length or limit, limit),
            passage_max_length=min(st.max_seq_length or limit, limit),
            base_model=base_model,
        )
    config.architecture = "decoder" if decoder else "encoder"
    return config


def _overridden(config: EmbeddingConfig, folder: Path, limit: int, *, pooling: str, normalize: bool | None,
                query_instruction: str | None, passage_instruction: str | None,
                query_max_length: int | None, passage_max_length: int | None) -> EmbeddingConfig:
    """``config`` with the caller's settings over the folder's, lengths capped at the model's ``limit``."""
    if pooling != "auto":
        config.pooling = pooling
    if config.pooling not in POOLING_MODES:
        raise ConfigError(
            f"{folder}: pooling {config.pooling!r} is not supported; "
            f"pass --pooling {'|'.join(POOLING_MODES)}"
        )
    if normalize is not None:
        config.normalize = normalize
    if query_instruction is not None:
        config.query_instruction = query_instruction
    if passage_instruction is not None:
        config.passage_instruction = passage_instruction
    for attr, value in (("query_max_length", query_max_length),
                        ("passage_max_length", passage_max_length)):
        if value is not None:
            if value <= 0:
                raise ConfigError(f"{attr.replace('_', '-')} must be positive, got {value}")
            setattr(config, attr, value)
        setattr(config, attr, min(getattr(config, attr), limit))
    return config


def is_decoder_config(config: Any) -> bool:
    architectures = getattr(config, "architectures", None) or []
    return getattr(config, "model_type", "") in _DECODER_TYPES or any(
        a.endswith("ForCausalLM") for a in architectures
    )


def model_length_limit(config: Any, tokenizer: Any) -> int:
    """The longest input the model takes: its position table, or the tokenizer's limit."""
    limits = []
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        # RoBERTa-style tables reserve padding_idx + 1 positions.
        if getattr(config, "model_type", "") in {"roberta", "xlm-roberta", "camembert"}:
            positions -= 2
        limits.append(positions)
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < 1_000_000:
        limits.append(tok_limit)
    return min(limits) if limits else 512


def default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


class Encoder:
    """Embed queries and passages with a transformer model.

    Build one with :meth:`Encoder.load`; ``encode`` returns float32 numpy rows, L2
    normalised unless the config says otherwise. ``embed`` is the differentiable path
    used in training: token ids in, pooled (and normalised) vectors out.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, config: EmbeddingConfig,
                 *, name: str, path: Path | None = None, device: str = "cpu", backend: str = "torch"):
        if config.pooling not in POOLING_MODES:
            raise ConfigError(
                f"pooling {config.pooling!r} is not supported; use one of {', '.join(POOLING_MODES)}"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.name = name
        self.path = path
        self.device = device
        self.backend = backend  # torch, or "onnx"/"openvino" with the file: see embedrag.engine.encoding.backends

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        name_or_path: str | os.PathLike,
        *,
        pooling: str = "auto",
        normalize: bool | None = None,
        query_instruction: str | None = None,
        passage_instruction: str | None = None,
        query_max_length: int | None = None,
        passage_max_length: int | None = None,
        device: str | None = None,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        allow_download: bool = True,
        model_kwargs: dict[str, Any] | None = None,
        light: bool = False,
        backend: str = "torch",
    ) -> Encoder:
        """Load a model folder or hub id (resolved offline first, see :func:`resolve_model`).

        Settings come, in order of precedence, from the arguments, the folder's
        ``embedrag.json``, its sentence-transformers files, then architecture defaults.
        A LoRA/QLoRA adapter folder (``adapter_config.json``) is loaded on its base model
        without merging. ``model_kwargs`` go to ``from_pretrained`` (e.g. a
        ``quantization_config``). ``light`` (inference only) runs a plain BERT folder
        without importing transformers' modelling code (:mod:`embedrag.engine.encoding.light_bert`:
        same ops, same weights, ~2 CPU-seconds less start-up); other models load as usual.
        ``backend`` ``onnx`` or ``openvino`` (optionally ``onnx:FILE``) runs the transformer
        from the folder's export (``embedrag export``; :mod:`embedrag.engine.encoding.backends`) on
        the CPU; tokenizing, batching and pooling stay the same."""
        from embedrag.engine.encoding.backends import parse_backend

        backend_name, backend_file = parse_backend(backend)
        resolved = resolve_model(name_or_path, allow_download=allow_download)
        folder = resolved.path
        if backend_name != "torch" and is_adapter_folder(folder):
            raise ConfigError(f"{folder} is an adapter: export it first (embedrag export {folder} -o DIR "
                              f"--format {backend_name}), then load DIR with --backend {backend_name}")
        if is_adapter_folder(folder):
            return load_adapter_encoder(
                folder, device=device, trust_remote_code=trust_remote_code,
                allow_download=allow_download, pooling=pooling, normalize=normalize,
                query_instruction=query_instruction, passage_instruction=passage_instruction,
                query_max_length=query_max_length, passage_max_length=passage_max_length)
        import torch

        light = light and dtype is None and not model_kwargs and not trust_remote_code and backend_name == "torch"
        model, tokenizer, hf_config = _load_parts(folder, light, trust_remote_code)
        if backend_name != "torch":
            from embedrag.engine.encoding.backends import load_backbone

            model, device = load_backbone(folder, backend_name, backend_file, hf_config), "cpu"
        if tokenizer.pad_token is None:
            # Decoders often ship without a pad token; any id works since it is masked.
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token

        config = _overridden(declared_embedding_config(folder, hf_config, tokenizer, base_model=resolved.name),
                             folder, model_length_limit(hf_config, tokenizer), pooling=pooling,
                             normalize=normalize, query_instruction=query_instruction,
                             passage_instruction=passage_instruction, query_max_length=query_max_length,
                             passage_max_length=passage_max_length)
        torch_dtype = {None: None, "fp32": torch.float32, "bf16": torch.bfloat16,
                       "fp16": torch.float16}[dtype]
        if model is None:
            from transformers import AutoModel

            model = _load_backbone(AutoModel, folder, hf_config, torch_dtype, trust_remote_code,
                                   model_kwargs or {})
        config.dimension = int(getattr(hf_config, "hidden_size", 0) or 0) or None
        device = device or default_device()
        if not getattr(model, "is_quantized", False):  # bitsandbytes models are placed at load
            model.to(device)
        model.eval()
        return cls(model, tokenizer, config, name=resolved.name, path=folder, device=device, backend=backend)

    # ------------------------------------------------------------------ encoding
    @property
    def dimension(self) -> int:
        if self.config.dimension:
            return self.config.dimension
        return int(self.model.config.hidden_size)

    def instruction(self, kind: str) -> str:
        return self._pick(kind, self.config.query_instruction, self.config.passage_instruction)

    def max_length(self, kind: str) -> int:
        return self._pick(kind, self.config.query_max_length, self.config.passage_max_length)

    @staticmethod
    def _pick(kind: str, query_value, passage_value):
        if kind == "query":
            return query_value
        if kind in ("passage", "document"):
            return passage_value
        raise ValueError(f"kind must be 'query' or 'passage', got {kind!r}")

    def tokenize(self, texts: Sequence[str], kind: str = "passage") -> dict[str, list[list[int]]]:
        """Token ids of ``texts`` with the kind's instruction, truncated, unpadded."""
        prefix = self.instruction(kind)
        limit = self.max_length(kind)
        encoded = self.tokenizer(
            [prefix + _cut_for_tokens(self.tokenizer, prefix, t, limit) for t in texts],
            truncation=True,
            max_length=limit,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        # Tokenizers without special tokens turn "" into nothing; pooling needs a token.
        filler = self.tokenizer.eos_token_id
        if filler is None:
            filler = self.tokenizer.unk_token_id if self.tokenizer.unk_token_id is not None else 0
        encoded["input_ids"] = [ids or [filler] for ids in encoded["input_ids"]]
        return encoded

    def pad(self, input_ids: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer.pad({"input_ids": list(input_ids)}, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}

    @property
    def exported(self) -> bool:
        """Whether the transformer runs from an export (ONNX Runtime or OpenVINO), not torch."""
        return self.backend != "torch"

    def vector_precision(self, precision: str) -> str:
        """The precision of the vectors :meth:`encode` makes when asked for ``precision``
        (auto resolved; an exported backend's own: int8 for a quantized file)."""
        resolved = resolve_precision(precision, self.device)
        return self.model.prepare(resolved) if self.exported else resolved

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pooled (and normalised) embeddings of a padded batch; keeps gradients."""
        return embed_batch(self.model, batch, self.config.pooling, self.config.normalize)

    def encode(
        self,
        texts: Sequence[str],
        kind: str = "passage",
        *,
        batch_size: int = 32,
        precision: str = "fp32",
        progress: Callable[[int, int], None] | None = None,
        num_processes: int = 1,
        max_batch_tokens: int | None = None,
        batch_workers: int | None = None,
    ) -> np.ndarray:
        """Embed ``texts`` as queries or passages: float32 array (len(texts), dimension).

        Texts are sorted by token length and batched with dynamic padding so short texts
        never pay for long ones; rows come back in input order. A batch holds at most
        ``batch_size`` texts and, when ``max_batch_tokens`` is set, at most that many padded
        tokens; ``None`` picks the device's default (:func:`default_batch_tokens`: on a CPU
        a budget that keeps a batch's activations in cache, on GPUs no cap).
        ``progress(done, total)`` is called after every batch. ``num_processes`` > 1
        spreads the work over worker processes (one per GPU, or CPU processes sharing the
        cores). On a CPU, ``batch_workers`` batches run at once, each on its share of the
        torch threads (``None``: :func:`default_batch_workers`, one per thread; ``1``: one
        batch at a time on all of them; see :func:`run_batches_in_threads`)."""
        import numpy as np

        if batch_size <= 0:
            raise ConfigError(f"batch size must be positive, got {batch_size}")
        if max_batch_tokens is not None and max_batch_tokens <= 0:
            raise ConfigError(f"max batch tokens must be positive, got {max_batch_tokens}")
        if batch_workers is not None and batch_workers <= 0:
            raise ConfigError(f"batch workers must be positive, got {batch_workers}")
        precision = resolve_precision(precision, self.device)
        if self.exported:
            self.model.prepare(precision)
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        total = len(texts)
        if total == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if num_processes > 1 and total > batch_size:
            from embedrag.engine.encoding.parallel import encode_in_processes

            return encode_in_processes(self, texts, kind, num_processes=num_processes, batch_size=batch_size,
                                       precision=precision, progress=progress,
                                       max_batch_tokens=max_batch_tokens)
        ids = self.tokenize(texts, kind)["input_ids"]
        return _embed_token_ids(self, ids, precision=precision, batch_size=batch_size,
                                max_batch_tokens=max_batch_tokens, batch_workers=batch_workers, progress=progress)

    def encode_queries(self, texts: Sequence[str], **kwargs) -> np.ndarray:
        return self.encode(texts, "query", **kwargs)

    def encode_passages(self, texts: Sequence[str], **kwargs) -> np.ndarray:
        return self.encode(texts, "passage", **kwargs)

    # ------------------------------------------------------------------ saving
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write a self-describing model folder: HF weights and tokenizer,
        sentence-transformers files and ``embedrag.json``. Written under a temporary
        name and renamed, so a crash never leaves a folder that looks complete."""
        target = Path(path)
        if target.exists() and not overwrite and (target.is_file() or any(target.iterdir())):
            raise ConfigError(f"{target} already exists and is not empty")
        from embedrag.engine.core.atomic import write_folder_atomically

        return write_folder_atomically(target, self.write_files)

    def write_files(self, folder: Path, *, weights: bool = True) -> None:
        """Write everything into an existing folder (no atomicity: see :meth:`save`)."""
        _write_model_files(self, folder, weights=weights)

    def __repr__(self) -> str:
        c = self.config
        return (f"Encoder({self.name!r}, pooling={c.pooling}, normalize={c.normalize}, "
                f"dim={self.dimension}, max_len={c.query_max_length}/{c.passage_max_length}, "
                f"device={self.device}" + (f", backend={self.backend})" if self.exported else ")"))


def load_quantized_encoder(model: str | os.PathLike, bits: int, *, device: str, **encoder_kwargs) -> Encoder:
    """``model`` with its weights quantised to ``bits`` (4: NF4, 8: int8) by bitsandbytes,
    as QLoRA trains and loads it."""
    quiet_bitsandbytes()
    encoder = Encoder.load(model, device=device, model_kwargs=quantized_model_kwargs(bits, device),
                           **encoder_kwargs)
    settle_quantized_model(encoder.model)
    return encoder


def load_adapter_encoder(folder: Path, *, device: str | None = None, trust_remote_code: bool = False,
                         allow_download: bool = True, base_model: str | None = None,
                         **settings) -> Encoder:
    """An adapter folder on its base model, unmerged: quantised the way it was trained."""
    folder = Path(folder)
    saved = read_embedding_config(folder)
    base = adapter_base(folder, saved, read_adapter_config(folder), base_model=base_model)
    bits = adapter_quantization_bits(saved)
    device = device or default_device()
    overrides = {k: v for k, v in settings.items() if v is not None and v != "auto"}
    if bits:
        encoder = load_quantized_encoder(base, bits, device=device, trust_remote_code=trust_remote_code,
                                         allow_download=allow_download)
    else:
        encoder = Encoder.load(base, device=device, trust_remote_code=trust_remote_code,
                               allow_download=allow_download)
    if saved:
        # The adapter's own embedding settings win over the base's.
        for key in ("pooling", "normalize", "query_instruction", "passage_instruction",
                    "query_max_length", "passage_max_length"):
            setattr(encoder.config, key, getattr(saved, key))
        encoder.config.extra = saved.extra
    for key, value in overrides.items():
        setattr(encoder.config, key, value)
    encoder.model = attach_adapter(encoder.model, folder, base)
    encoder.name = str(folder)
    encoder.path = folder
    return encoder


# Measured on all-MiniLM-L6-v2 over SciFact passages (benchmarks/RESULTS.md): a batch of
# 32 x 256 tokens spills its 50 MB feed-forward activation out of a 32 MB L3 and every
# elementwise op then runs at memory speed; batches of 1-2k tokens encode ~1.15x faster.
# The budget is in bytes of that activation, so wider models get fewer tokens.
CPU_BATCH_ACTIVATION_BYTES = 12 * 2**20
MIN_BATCH_TOKENS = 256
# Concurrent batches by default: one per torch thread up to this many. Beyond it threads are
# grouped per batch, so that Python's op dispatch (under the GIL) never has dozens of
# threads queueing for it; measured only on 2 cores so far.
MAX_DEFAULT_BATCH_WORKERS = 8


def default_batch_workers(threads: int) -> int:
    """How many batches to run at once on ``threads`` CPU torch threads: one per thread, or,
    past :data:`MAX_DEFAULT_BATCH_WORKERS`, as many equal groups of threads as fit."""
    per_worker = -(-max(1, threads) // MAX_DEFAULT_BATCH_WORKERS)
    return max(1, threads // per_worker)


def default_batch_tokens(model_config: Any, device: Any = "cpu") -> int | None:
    """The padded-token cap per encoding batch: on a CPU, as many tokens as keep the
    feed-forward activation (tokens x intermediate size, fp32) within
    :data:`CPU_BATCH_ACTIVATION_BYTES`; on accelerators none (they want wide batches)."""
    import torch

    if torch.device(device).type != "cpu":
        return None
    hidden = int(getattr(model_config, "hidden_size", 0) or 0)
    width = int(getattr(model_config, "intermediate_size", 0) or 4 * hidden or 4096)
    return max(MIN_BATCH_TOKENS, CPU_BATCH_ACTIVATION_BYTES // (4 * width))


def length_sorted_batches(lengths: Sequence[int], batch_size: int,
                          max_tokens: int | None) -> list[tuple[int, int]]:
    """``(start, stop)`` spans over ``lengths`` (sorted longest first): each span holds at
    most ``batch_size`` rows and, padded to its first (longest) row, at most ``max_tokens``
    tokens; a row longer than the budget still gets a span of its own."""
    spans, start, total = [], 0, len(lengths)
    while start < total:
        rows = batch_size
        if max_tokens is not None:
            rows = max(1, min(rows, max_tokens // max(1, lengths[start])))
        stop = min(total, start + rows)
        spans.append((start, stop))
        start = stop
    return spans




def _write_model_files(encoder: Encoder, folder: Path, *, weights: bool) -> None:
    """The weights (unless not ``weights``), tokenizer, sentence-transformers files and ``embedrag.json``."""
    if encoder.exported and weights:
        raise ConfigError(f"a model loaded with --backend {encoder.backend} cannot be saved; "
                          "save or export the PyTorch model")
    with quiet_transformers():
        if weights:
            encoder.model.save_pretrained(folder, safe_serialization=True)
        encoder.tokenizer.save_pretrained(folder)
    encoder.config.dimension = encoder.dimension
    write_st_files(
        folder,
        dimension=encoder.dimension,
        pooling=encoder.config.pooling,
        normalize=encoder.config.normalize,
        max_seq_length=encoder.config.passage_max_length,
        query_prompt=encoder.config.query_instruction,
        passage_prompt=encoder.config.passage_instruction,
        versions=_versions(),
    )
    from embedrag.engine.core.atomic import write_json

    write_json(folder / EMBEDRAG_CONFIG, encoder.config.to_dict())


def _embed_token_ids(encoder: Encoder, ids: list[list[int]], *, precision: str, batch_size: int,
                     max_batch_tokens: int | None, batch_workers: int | None,
                     progress: Callable[[int, int], None] | None) -> np.ndarray:
    """The embeddings of tokenized texts, in input order: longest first, in batches of at
    most ``batch_size`` texts and ``max_batch_tokens`` padded tokens, on CPU threads."""
    import numpy as np
    import torch

    total = len(ids)
    out = np.zeros((total, encoder.dimension), dtype=np.float32)
    order = sorted(range(total), key=lambda i: -len(ids[i]))
    if max_batch_tokens is None:
        max_batch_tokens = default_batch_tokens(encoder.model.config, encoder.device)
    device_type = torch.device(encoder.device).type
    autocast_dtype = None if encoder.exported else {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if autocast_dtype is not None and device_type == "cpu":
        _warn_without_native_half_precision(precision)
    spans = length_sorted_batches([len(ids[i]) for i in order], batch_size, max_batch_tokens)

    def inference():
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(torch.autocast(device_type=device_type, dtype=autocast_dtype or torch.float32,
                                           enabled=autocast_dtype is not None))
        return stack

    def run(start: int, stop: int) -> None:
        rows = order[start:stop]
        out[rows] = encoder.embed(encoder.pad([ids[i] for i in rows])).float().cpu().numpy()

    done = 0

    def finished(start: int, stop: int) -> None:
        nonlocal done
        done += stop - start
        if progress is not None:
            progress(done, total)

    # bitsandbytes' CPU kernels may rewrite a quantized model's weights during a forward.
    threaded = device_type == "cpu" and not getattr(encoder.model, "is_quantized", False)
    workers = min(len(spans), batch_workers or default_batch_workers(torch.get_num_threads())) if threaded else 1
    was_training = encoder.model.training
    encoder.model.eval()
    try:
        if workers > 1:
            run_batches_in_threads(spans, run, finished, workers=workers, context=inference)
        else:
            with inference():
                for start, stop in spans:
                    run(start, stop)
                    finished(start, stop)
    finally:
        encoder.model.train(was_training)
    return out


def run_batches_in_threads(spans: Sequence[tuple[int, int]], run: Callable[[int, int], None],
                           finished: Callable[[int, int], None], *, workers: int,
                           context: Callable[[], contextlib.AbstractContextManager]) -> None:
    """Call ``run(start, stop)`` for every span on ``workers`` threads at once, the process's
    torch threads shared out among them, then ``finished(start, stop)`` one call at a time.

    On a CPU one batch per core beats one batch spread over every core: each op of a small
    model is too short to split well (SciFact with all-MiniLM-L6-v2 on 2 cores: bf16
    1.1-1.2x, fp32 1.03-1.08x the passages/s). Torch releases the GIL inside ops, so Python threads run in
    parallel. ``context()`` is entered in each thread (inference mode and autocast are
    per-thread state). The torch thread count is process-wide: it is restored on return.
    A failure in any thread stops the others after their current batch and is re-raised."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import torch

    threads = torch.get_num_threads()
    lock = threading.Lock()
    pending = iter(spans)
    stop_early = threading.Event()

    def work() -> None:
        with context():
            while not stop_early.is_set():
                with lock:
                    span = next(pending, None)
                if span is None:
                    return
                run(*span)
                with lock:
                    finished(*span)

    torch.set_num_threads(max(1, threads // workers))
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="embedrag-encode") as pool:
            futures = [pool.submit(work) for _ in range(workers)]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                stop_early.set()
                raise
    finally:
        torch.set_num_threads(threads)


def embed_batch(model: torch.nn.Module, batch: dict[str, torch.Tensor], pooling: str,
                normalize: bool) -> torch.Tensor:
    """Run ``model`` on a padded batch and pool its last hidden states."""
    import torch.nn.functional as F

    from embedrag.engine.encoding.pooling import pool

    options = {"use_cache": False} if _keeps_a_kv_cache(model) else {}
    output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **options)
    hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
    vectors = pool(hidden, batch["attention_mask"], pooling)
    if normalize:
        vectors = F.normalize(vectors.float(), p=2, dim=-1)
    return vectors


def _keeps_a_kv_cache(model: torch.nn.Module) -> bool:
    """Whether ``model`` (bare, PEFT- or DDP-wrapped) would build a key/value cache in its
    forward: decoders do by default. An embedder never reuses it, so it only costs memory,
    and with gradient checkpointing transformers warns each run that it turns it off."""
    inner = getattr(model, "module", model)
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    if not getattr(getattr(inner, "config", None), "use_cache", False):
        return False
    return _forward_takes_use_cache(type(inner))


@functools.cache
def _forward_takes_use_cache(model_class: type) -> bool:
    import inspect

    return "use_cache" in inspect.signature(model_class.forward).parameters


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' progress bars and expected warnings (unused pooler weights
    and the like) for the duration: progress is ours to show."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        if bar_was_on:
            hf_logging.enable_progress_bar()


def resolve_precision(precision: str, device: Any = "cpu") -> str:
    """The precision to encode in: ``auto`` is bf16 where ``device`` computes it natively
    (a CUDA GPU with bf16; a CPU with AVX512-BF16 or AMX), else fp32.

    Measured on SciFact (benchmarks/RESULTS.md): bf16 autocast encodes all-MiniLM-L6-v2
    1.6-1.75x faster than fp32 (two runs) on an AVX512-BF16 CPU, min cosine to fp32 0.99997, nDCG@10
    within 0.002; on a CPU without native bf16 it is 6x slower, hence fp32 there."""
    precision = canonical_precision(precision)
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


@functools.cache
def native_bf16(device: Any = "cpu") -> bool:
    """Whether ``device`` runs bf16 matmuls natively (not through a slow generic path)."""
    import torch

    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind == "cpu":
        return bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
    return False


@functools.cache
def _warn_without_native_half_precision(precision: str) -> None:
    """Once per process: bf16/fp16 on a CPU without AVX512-BF16/AMX runs through a generic
    path (measured here, AVX2 only: 6x slower than fp32), the opposite of what is asked."""
    import torch

    native = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)()
    if precision == "fp16":
        native = getattr(torch.ops.mkldnn, "_is_mkldnn_fp16_supported", lambda: native)()
    if not native:
        logger.warning("%s on this CPU has no native support (no AVX512-BF16/AMX): it will be slower "
                       "than fp32, not faster", precision)


# No token of a real vocabulary spans more characters than this on average, so a text cut
# to max_length x this many characters keeps every token that truncation would keep.
_MAX_CHARS_PER_TOKEN = 32
_CUT_MARGIN_TOKENS = 8


def _cut_for_tokens(tokenizer, prefix: str, text: str, max_tokens: int) -> str:
    """``text``, or a prefix of it that tokenizes (then truncates) to the same ids.

    Fast tokenizers tokenize the whole string before truncating: a 10 MB passage costs a
    minute for 256 tokens. A cut that still yields more than ``max_tokens`` (plus a margin,
    since the word at the cut may tokenize differently) loses nothing; otherwise the
    whole text is used."""
    limit = max_tokens * _MAX_CHARS_PER_TOKEN
    if len(text) <= limit:
        return text
    cut = text[:limit]
    ids = tokenizer(prefix + cut, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    return cut if len(ids) >= max_tokens + _CUT_MARGIN_TOKENS else text


def _load_parts(folder: Path, light: bool, trust_remote_code: bool) -> tuple[Any, Any, Any]:
    """``(model, tokenizer, config)``: a plain BERT's from :mod:`light_bert` when ``light``,
    else ``(None, tokenizer, config)`` from transformers (the model is loaded later)."""
    if light:
        from embedrag.engine.encoding.light_bert import load_light_bert

        loaded = load_light_bert(folder)
        if loaded is not None:
            return loaded
    from transformers import AutoConfig, AutoTokenizer

    hf_config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    return None, AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code), hf_config


def _load_backbone(auto_model, folder: Path, hf_config, torch_dtype, trust_remote_code: bool,
                   extra: dict[str, Any]):
    kwargs: dict[str, Any] = {"config": hf_config, "trust_remote_code": trust_remote_code, **extra}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    if getattr(hf_config, "model_type", "") in _POOLER_TYPES:
        kwargs["add_pooling_layer"] = False
    with quiet_transformers():
        try:
            return auto_model.from_pretrained(folder, **kwargs)
        except TypeError:
            kwargs.pop("add_pooling_layer", None)
            return auto_model.from_pretrained(folder, **kwargs)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("embedrag", "transformers", "torch", "sentence-transformers"):
        try:
            out[dist.replace("-", "_")] = version(dist)
        except PackageNotFoundError:
            continue
    return out
