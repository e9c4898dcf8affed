"""A transformers-free BERT for inference, so that a one-shot ``ask`` starts fast.

Importing transformers' modelling code costs about 2 CPU-seconds per process (it pulls in
torch._dynamo, torch.distributed.tensor, scipy and sympy), a hundred times the query itself.
Plain BERT encoders (all-MiniLM-L6-v2 and its fine-tunes) need none of it: this module
runs the ops of ``transformers.BertModel`` (embeddings, sdpa attention with its boolean
padding mask, exact GELU, post-LayerNorm) on the same weights (``model.safetensors``) and
the same tokenizer (``tokenizer.json`` through ``tokenizers``), and gives bit-identical
vectors (tests/test_light_bert.py). :func:`load_light_bert` returns None for anything
else (other architectures, adapters, sharded or non-fp32 weights, unusual config keys, a
tokenizer that transformers would rebuild differently), and the caller then loads through
transformers as before. Imported only by ``Encoder.load(light=True)``, after torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
_SUPPORTED = {
    "model_type": {"bert"},
    "hidden_act": {"gelu"},
    "position_embedding_type": {"absolute", None},
    "is_decoder": {False, None},
    "add_cross_attention": {False, None},
    "chunk_size_feed_forward": {0, None},
    "quantization_config": {None},
    "auto_map": {None},
}
_TOKENIZER_CLASSES = {"BertTokenizer", "BertTokenizerFast"}
_UNUSED_WEIGHTS = ("embeddings.position_ids", "embeddings.token_type_ids")  # buffers transformers rebuilds


def light_bert_config(folder: Path) -> SimpleNamespace | None:
    """The folder's config.json as attributes when this module can run it, else None."""
    folder = Path(folder)
    if not (folder / WEIGHTS).is_file() or not (folder / TOKENIZER).is_file():
        return None
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        tok_config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        normalizer = json.loads((folder / TOKENIZER).read_text(encoding="utf-8")).get("normalizer") or {}
    except (OSError, ValueError):
        return None
    if any(config.get(key) not in allowed for key, allowed in _SUPPORTED.items()):
        return None
    if config.get("architectures") not in (None, ["BertModel"]):
        return None
    if tok_config.get("tokenizer_class") not in _TOKENIZER_CLASSES or not tok_config.get("pad_token"):
        return None
    # transformers builds a BertTokenizer's normalizer from tokenizer_config.json: the
    # tokenizer.json run here must say the same.
    if normalizer != {"type": "BertNormalizer", "clean_text": True,
                      "handle_chinese_chars": tok_config.get("tokenize_chinese_chars", True),
                      "strip_accents": tok_config.get("strip_accents"),
                      "lowercase": tok_config.get("do_lower_case", True)}:
        return None
    config["_tokenizer_config"] = tok_config
    return SimpleNamespace(**config)


class LightTokenizer:
    """The slice of a transformers fast tokenizer that :class:`Encoder` uses."""

    padding_side = "right"

    def __init__(self, folder: Path, tok_config: dict[str, Any]):
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(Path(folder) / TOKENIZER))
        # tokenizer.json may carry padding and truncation (MiniLM's pads to 128): transformers
        # sets both per call, as __call__ does here.
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.model_max_length = int(tok_config.get("model_max_length") or 512)
        for name in ("pad", "unk", "cls", "sep", "mask", "eos"):
            token = tok_config.get(f"{name}_token")
            token = token.get("content") if isinstance(token, dict) else token
            setattr(self, f"{name}_token", token)
            setattr(self, f"{name}_token_id", self._tokenizer.token_to_id(token) if token else None)

    def __call__(self, texts, *, truncation: bool = False, max_length: int | None = None,
                 add_special_tokens: bool = True, padding: bool = False, **_ignored) -> dict[str, list]:
        if padding:
            raise ValueError("LightTokenizer pads in pad(), not when tokenizing")
        single = isinstance(texts, str)
        if truncation and max_length:
            self._tokenizer.enable_truncation(max_length)
        try:
            encodings = self._tokenizer.encode_batch([texts] if single else list(texts),
                                                     add_special_tokens=add_special_tokens)
        finally:
            self._tokenizer.no_truncation()
        ids = [e.ids for e in encodings]
        return {"input_ids": ids[0] if single else ids}

    def pad(self, features: dict[str, list], return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        rows = features["input_ids"]
        width = max((len(r) for r in rows), default=0)
        ids = torch.full((len(rows), width), self.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, :len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}


# The weights come from the checkpoint: no random initialisation (on the meta device it
# would also import torch._dynamo, 1 CPU-second).
class _Linear(nn.Linear):
    def reset_parameters(self) -> None:
        pass


class _Embedding(nn.Embedding):
    def reset_parameters(self) -> None:
        pass


class _LayerNorm(nn.LayerNorm):
    def reset_parameters(self) -> None:
        pass


class _Embeddings(nn.Module):
    def __init__(self, c: SimpleNamespace):
        super().__init__()
        self.word_embeddings = _Embedding(c.vocab_size, c.hidden_size)
        self.position_embeddings = _Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = _Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = _LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(torch.zeros_like(positions))
        return self.LayerNorm(x + self.position_embeddings(positions))


class _Residual(nn.Module):
    """transformers' BertSelfOutput / BertOutput: dense, add the residual, LayerNorm."""

    def __init__(self, c: SimpleNamespace, width_in: int):
        super().__init__()
        self.dense = _Linear(width_in, c.hidden_size)
        self.LayerNorm = _LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _SelfAttention(nn.Module):
    def __init__(self, c: SimpleNamespace):
        super().__init__()
        self.heads = c.num_attention_heads
        self.query = _Linear(c.hidden_size, c.hidden_size)
        self.key = _Linear(c.hidden_size, c.hidden_size)
        self.value = _Linear(c.hidden_size, c.hidden_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        shape = (*x.shape[:-1], self.heads, -1)
        q, k, v = (layer(x).view(shape).transpose(1, 2) for layer in (self.query, self.key, self.value))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=q.shape[-1] ** -0.5)
        return out.transpose(1, 2).reshape(*x.shape[:-1], -1)


class _Attention(nn.Module):
    def __init__(self, c: SimpleNamespace):
        super().__init__()
        self.self = _SelfAttention(c)
        self.output = _Residual(c, c.hidden_size)


class _Intermediate(nn.Module):
    def __init__(self, c: SimpleNamespace):
        super().__init__()
        self.dense = _Linear(c.hidden_size, c.intermediate_size)


class _Layer(nn.Module):
    def __init__(self, c: SimpleNamespace):
        super().__init__()
        self.attention = _Attention(c)
        self.intermediate = _Intermediate(c)
        self.output = _Residual(c, c.intermediate_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attention.output(self.attention.self(x, mask), x)
        return self.output(F.gelu(self.intermediate.dense(x)), x)


class _Encoder(nn.Module):
    def __init__(self, c: SimpleNamespace):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))


class LightBertModel(nn.Module):
    """``BertModel`` without the pooler, for inference; parameter names as transformers'."""

    def __init__(self, config: SimpleNamespace):
        super().__init__()
        self.config = config
        self.embeddings = _Embeddings(config)
        self.encoder = _Encoder(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        x = self.embeddings(input_ids)
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            # transformers' bidirectional sdpa mask: (batch, 1, query, key), True = attend
            mask = attention_mask.bool()[:, None, None, :].expand(-1, 1, input_ids.shape[1], -1)
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return (x,)


def load_light_bert(folder: Path) -> tuple[LightBertModel, LightTokenizer, SimpleNamespace] | None:
    """``(model, tokenizer, config)`` for a plain BERT folder, or None (see module doc)."""
    from safetensors import safe_open

    folder = Path(folder)
    config = light_bert_config(folder)
    if config is None:
        return None
    with torch.device("meta"):
        model = LightBertModel(config)
    with safe_open(str(folder / WEIGHTS), framework="pt") as handle:
        names = {n.removeprefix("bert."): n for n in handle.keys()}
        names = {k: n for k, n in names.items() if not k.startswith("pooler.") and k not in _UNUSED_WEIGHTS}
        if set(names) != set(model.state_dict()) or any(
                handle.get_slice(n).get_dtype() != "F32" for n in names.values()):
            return None
        state = {k: handle.get_tensor(n) for k, n in names.items()}
    model.load_state_dict(state, assign=True)
    model.eval()
    return model, LightTokenizer(folder, config._tokenizer_config), config
