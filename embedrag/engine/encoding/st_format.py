"""The sentence-transformers folder format: read the embedding settings a folder
declares, and write them so that ``SentenceTransformer(path)`` reproduces our vectors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from embedrag.engine.core.atomic import write_json

# sentence-transformers pooling names <-> ours; max and weighted modes have no equivalent.
_FROM_ST = {"cls": "cls", "mean": "mean", "lasttoken": "last"}
_LEGACY_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_lasttoken": "last",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
}


@dataclass
class STSettings:
    """What a sentence-transformers folder says about embedding; None where it is silent."""

    pooling: str | None = None
    normalize: bool | None = None
    max_seq_length: int | None = None
    query_prompt: str | None = None
    passage_prompt: str | None = None


def _read_json(path: Path) -> dict | list | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_st_settings(folder: Path) -> STSettings:
    settings = STSettings()
    modules = _read_json(folder / "modules.json")
    if not isinstance(modules, list):
        return settings
    settings.normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
    for module in modules:
        if str(module.get("type", "")).endswith("Pooling"):
            config = _read_json(folder / module.get("path", "") / "config.json") or {}
            settings.pooling = _pooling_from_config(config)
    sbert = _read_json(folder / "sentence_bert_config.json") or {}
    if isinstance(sbert.get("max_seq_length"), int):
        settings.max_seq_length = sbert["max_seq_length"]
    st_config = _read_json(folder / "config_sentence_transformers.json") or {}
    prompts = st_config.get("prompts") or {}
    if isinstance(prompts, dict):
        settings.query_prompt = prompts.get("query")
        settings.passage_prompt = prompts.get("document", prompts.get("passage"))
    return settings


def _pooling_from_config(config: dict) -> str | None:
    mode = config.get("pooling_mode")
    if isinstance(mode, str):
        return _FROM_ST.get(mode, mode)
    if isinstance(mode, list) and len(mode) == 1:
        return _FROM_ST.get(mode[0], mode[0])
    active = [ours for key, ours in _LEGACY_KEYS.items() if config.get(key)]
    if len(active) == 1:
        return active[0]
    return "+".join(active) if active else None


def write_st_files(
    folder: Path,
    *,
    dimension: int,
    pooling: str,
    normalize: bool,
    max_seq_length: int,
    query_prompt: str,
    passage_prompt: str,
    versions: dict[str, str],
) -> None:
    """Write modules.json, 1_Pooling/, 2_Normalize/ and the two sentence-transformers configs.

    The pooling config uses the long-standing ``pooling_mode_*`` keys, which every
    sentence-transformers release reads (newer ones convert them)."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
        (folder / "2_Normalize").mkdir(parents=True, exist_ok=True)
    write_json(folder / "modules.json", modules)
    (folder / "1_Pooling").mkdir(parents=True, exist_ok=True)
    write_json(
        folder / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": dimension,
            "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": pooling == "last",
            "include_prompt": True,
        },
    )
    write_json(
        folder / "sentence_bert_config.json",
        {"max_seq_length": max_seq_length, "do_lower_case": False},
    )
    prompts = {}
    if query_prompt:
        prompts["query"] = query_prompt
    if passage_prompt:
        # "document" is what encode_document() looks up; "passage" for older habits.
        prompts["document"] = passage_prompt
        prompts["passage"] = passage_prompt
    write_json(
        folder / "config_sentence_transformers.json",
        {
            "__version__": versions,
            "prompts": prompts,
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    )
