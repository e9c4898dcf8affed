"""Model resolution: local folders, the bundled MiniLM, and clear failures offline."""

from __future__ import annotations

import pytest

from embedrag.engine.core.errors import ModelNotFoundError
from embedrag.engine.encoding import models
from embedrag.engine.encoding.models import resolve_model


def test_local_folder(tiny_bert):
    resolved = resolve_model(str(tiny_bert))
    assert resolved.source == "local"
    assert resolved.path == tiny_bert.resolve()


@pytest.mark.parametrize("name", ["sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"])
def test_bundled_minilm_resolves_offline(name):
    resolved = resolve_model(name)
    assert resolved.source in {"bundled", "hf-cache"}
    assert resolved.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert (resolved.path / "config.json").is_file()
    assert (resolved.path / "1_Pooling" / "config.json").is_file()


def test_unknown_hub_id_names_every_place_tried():
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("embedrag-tests/no-such-model")
    message = str(info.value)
    assert "\n" not in message
    assert "local folder embedrag-tests/no-such-model" in message
    assert "HF cache" in message
    assert "HF_HUB_OFFLINE=1" in message


def test_missing_bundle_package_is_named(monkeypatch):
    monkeypatch.setitem(models.BUNDLED_MODELS, "acme/tiny", ("acme_tiny_not_installed", "model"))
    with pytest.raises(ModelNotFoundError, match=r"package acme-tiny-not-installed not installed"):
        resolve_model("acme/tiny")


@pytest.mark.parametrize("name", ["./nowhere/model", "/abs/missing/model", "a/b/c"])
def test_missing_paths_are_not_looked_up_on_the_hub(name):
    with pytest.raises(ModelNotFoundError, match="does not exist") as info:
        resolve_model(name)
    assert "HF cache" not in str(info.value)


def test_file_and_folder_without_config(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="is a file"):
        resolve_model(tmp_path / "weights.bin")
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model(tmp_path)


def test_no_download_when_offline(monkeypatch):
    def _boom(repo_id):
        raise AssertionError("must not download while offline")

    monkeypatch.setattr(models, "_download", _boom)
    with pytest.raises(ModelNotFoundError):
        resolve_model("embedrag-tests/another-missing-model")
