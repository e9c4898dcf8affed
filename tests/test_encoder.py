"""Encoder behaviour: batching, lengths, precision, save/load round trips and parity
with sentence-transformers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import MIXED_TEXTS

from embedrag import Encoder
from embedrag.engine.core.errors import ConfigError

pytest.importorskip("sentence_transformers")


def _st_model(path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu")


def test_rows_do_not_depend_on_batching_or_order(tiny_bert):
    encoder = Encoder.load(tiny_bert, device="cpu")
    one_batch = encoder.encode(MIXED_TEXTS, batch_size=64)
    tiny_batches = encoder.encode(MIXED_TEXTS, batch_size=1)
    reversed_rows = encoder.encode(MIXED_TEXTS[::-1], batch_size=3)[::-1]
    np.testing.assert_allclose(one_batch, tiny_batches, atol=1e-5)
    np.testing.assert_allclose(one_batch, reversed_rows, atol=1e-5)
    assert one_batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(one_batch, axis=1), 1.0, atol=1e-5)


def test_empty_input_and_progress(tiny_bert):
    encoder = Encoder.load(tiny_bert, device="cpu")
    assert encoder.encode([]).shape == (0, 32)
    seen = []
    encoder.encode(MIXED_TEXTS, batch_size=3, batch_workers=1,
                   progress=lambda done, total: seen.append((done, total)))
    assert seen == [(3, 8), (6, 8), (8, 8)]


def test_length_sorted_batches_respect_rows_and_token_budget():
    from embedrag.engine.encoding.encoder import length_sorted_batches

    lengths = [300, 120, 100, 100, 60, 30, 30, 30, 10, 5]
    spans = length_sorted_batches(lengths, 4, 250)
    assert spans == [(0, 1), (1, 3), (3, 5), (5, 9), (9, 10)]
    covered = [i for start, stop in spans for i in range(start, stop)]
    assert covered == list(range(len(lengths)))
    for start, stop in spans:
        assert stop - start <= 4
        assert stop - start == 1 or lengths[start] * (stop - start) <= 250
    assert length_sorted_batches(lengths, 3, None) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert length_sorted_batches([], 3, 100) == []


def test_token_budget_splits_batches_without_changing_rows(tiny_bert):
    encoder = Encoder.load(tiny_bert, device="cpu")
    calls = []
    hook = encoder.model.register_forward_hook(lambda m, args, kwargs, out: calls.append(
        tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        wide = encoder.encode(MIXED_TEXTS, batch_size=64, max_batch_tokens=10**6)
        assert len(calls) == 1
        calls.clear()
        budgeted = encoder.encode(MIXED_TEXTS, batch_size=64, max_batch_tokens=24)
    finally:
        hook.remove()
    assert len(calls) > 1
    assert sum(rows for rows, _ in calls) == len(MIXED_TEXTS)
    assert all(rows == 1 or rows * length <= 24 for rows, length in calls)
    np.testing.assert_allclose(budgeted, wide, atol=1e-5)
    with pytest.raises(ConfigError, match="max batch tokens"):
        encoder.encode(MIXED_TEXTS, max_batch_tokens=0)


def test_default_token_budget_is_cache_sized_on_cpu_only():
    from types import SimpleNamespace

    from embedrag.engine.encoding.encoder import (
        CPU_BATCH_ACTIVATION_BYTES,
        MIN_BATCH_TOKENS,
        default_batch_tokens,
    )

    minilm = SimpleNamespace(hidden_size=384, intermediate_size=1536)
    assert default_batch_tokens(minilm, "cpu") == CPU_BATCH_ACTIVATION_BYTES // (4 * 1536) == 2048
    assert default_batch_tokens(SimpleNamespace(hidden_size=1024), "cpu") == 768  # 4x hidden
    assert default_batch_tokens(SimpleNamespace(hidden_size=8192, intermediate_size=10**6),
                                "cpu") == MIN_BATCH_TOKENS
    assert default_batch_tokens(minilm, "cuda") is None
    assert default_batch_tokens(minilm, "meta") is None


def test_max_length_is_capped_at_the_model_limit(tiny_bert):
    encoder = Encoder.load(tiny_bert, passage_max_length=10_000, query_max_length=8, device="cpu")
    assert encoder.config.passage_max_length == 128  # the tiny BERT's position table
    assert encoder.config.query_max_length == 8
    assert len(encoder.tokenize(["word " * 500], "passage")["input_ids"][0]) == 128
    assert len(encoder.tokenize(["word " * 500], "query")["input_ids"][0]) == 8
    with pytest.raises(ConfigError):
        Encoder.load(tiny_bert, query_max_length=0)


def test_bf16_autocast_is_close_to_fp32(tiny_bert):
    encoder = Encoder.load(tiny_bert, device="cpu")
    fp32 = encoder.encode(MIXED_TEXTS)
    bf16 = encoder.encode(MIXED_TEXTS, precision="bf16")
    assert bf16.dtype == np.float32
    cosines = (fp32 * bf16).sum(axis=1)
    assert cosines.min() > 0.99


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_where_native(tiny_bert, monkeypatch, native):
    from embedrag.engine.encoding import encoder as encoder_module

    monkeypatch.setattr(encoder_module, "native_bf16", lambda device="cpu": native)
    assert encoder_module.resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert encoder_module.resolve_precision("fp32", "cpu") == "fp32"
    encoder = Encoder.load(tiny_bert, device="cpu")
    expected = encoder.encode(MIXED_TEXTS, precision="bf16" if native else "fp32")
    np.testing.assert_array_equal(encoder.encode(MIXED_TEXTS, precision="auto"), expected)
    with pytest.raises(ConfigError, match="precision must be one of auto, fp32, bf16, fp16"):
        encoder.encode(MIXED_TEXTS, precision="int8")


def test_instructions_prefix_queries_and_passages(tiny_bert):
    plain = Encoder.load(tiny_bert, device="cpu")
    instructed = Encoder.load(tiny_bert, query_instruction="query: ",
                              passage_instruction="passage: ", device="cpu")
    np.testing.assert_allclose(instructed.encode(["abc"], "query"),
                               plain.encode(["query: abc"], "query"), atol=1e-6)
    np.testing.assert_allclose(instructed.encode(["abc"], "passage"),
                               plain.encode(["passage: abc"], "passage"), atol=1e-6)


@pytest.mark.parametrize("model_fixture", ["tiny_bert", "tiny_qwen2"])
def test_save_round_trips_through_encoder_and_sentence_transformers(model_fixture, request, tmp_path):
    source = request.getfixturevalue(model_fixture)
    encoder = Encoder.load(source, query_instruction="Instruct: find the passage\nQuery: ",
                           passage_instruction="passage: ", passage_max_length=64,
                           query_max_length=64, device="cpu")  # ST has one max length
    queries = encoder.encode(MIXED_TEXTS, "query")
    passages = encoder.encode(MIXED_TEXTS, "passage")
    saved = encoder.save(tmp_path / "saved")

    settings = json.loads((saved / "embedrag.json").read_text())
    assert settings["pooling"] == encoder.config.pooling
    assert settings["query_instruction"].startswith("Instruct:")
    assert settings["passage_max_length"] == 64

    reloaded = Encoder.load(saved, device="cpu")
    np.testing.assert_allclose(reloaded.encode(MIXED_TEXTS, "query"), queries, atol=1e-5)
    np.testing.assert_allclose(reloaded.encode(MIXED_TEXTS, "passage"), passages, atol=1e-5)

    st = _st_model(saved)
    texts = [t for t in MIXED_TEXTS if t]  # sentence-transformers cannot pool an empty decoder input
    keep = [i for i, t in enumerate(MIXED_TEXTS) if t]
    np.testing.assert_allclose(st.encode(texts, prompt_name="query"), queries[keep], atol=1e-5)
    np.testing.assert_allclose(st.encode(texts, prompt_name="document"), passages[keep], atol=1e-5)


def test_save_refuses_a_non_empty_folder_and_leaves_no_temp(tiny_bert, tmp_path):
    encoder = Encoder.load(tiny_bert, device="cpu")
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already exists"):
        encoder.save(target)
    assert (target / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.slow
def test_bundled_minilm_matches_sentence_transformers(minilm_path):
    """Must-show: 50 mixed-length English and Chinese texts, max abs difference < 1e-5."""
    import random

    rng = random.Random(0)
    words = ["retrieval", "embedding", "noodles", "Taipei", "protein", "cells", "the", "of",
             "牛肉麵", "台北", "蛋白質", "細胞", "研究", "检索", "模型", "数据"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 300))) for _ in range(46)]
    texts += MIXED_TEXTS[:4]
    assert len(texts) == 50
    ours = Encoder.load(minilm_path, device="cpu").encode(texts, batch_size=16)
    reference = _st_model(minilm_path).encode(texts, batch_size=16)
    assert np.abs(ours - reference).max() < 1e-5


LONG_TEXTS = [
    "a cat is a small animal. " * 2000,           # ordinary words
    "學生們在圖書館讀書，準備明天的考試。" * 1000,  # no spaces, one token per character or byte
    "x" * 50_000,                                  # one giant word: the cut would change it
    "word " * 5 + " " * 40_000 + "tail " * 100,   # whitespace runs
    ("Ünïcødé façade naïve " * 900) + "end",
]


@pytest.mark.parametrize("model_fixture", ["tiny_bert", "tiny_qwen2"])
def test_long_texts_tokenize_as_if_whole(model_fixture, request):
    """The character cut that keeps a 10 MB passage from costing a minute loses no token."""
    encoder = Encoder.load(request.getfixturevalue(model_fixture), device="cpu")
    for kind in ("query", "passage"):
        ids = encoder.tokenize(LONG_TEXTS, kind)["input_ids"]
        reference = encoder.tokenizer([encoder.instruction(kind) + t for t in LONG_TEXTS], truncation=True,
                                      max_length=encoder.max_length(kind))["input_ids"]
        assert ids == reference


def test_decoders_encode_without_a_kv_cache_and_the_same_vectors(tiny_qwen2, monkeypatch):
    import embedrag.engine.encoding.encoder as encoder_module

    encoder = Encoder.load(tiny_qwen2, device="cpu")
    caches = []
    hook = encoder.model.register_forward_hook(lambda module, args, output: caches.append(output.past_key_values))
    try:
        vectors = encoder.encode(MIXED_TEXTS)
        assert caches and all(cache is None for cache in caches)
        caches.clear()
        monkeypatch.setattr(encoder_module, "_keeps_a_kv_cache", lambda model: False)
        with_cache = encoder.encode(MIXED_TEXTS)
    finally:
        hook.remove()
    assert caches and all(cache is not None for cache in caches)  # what the default forward builds
    np.testing.assert_allclose(vectors, with_cache, atol=1e-6)


def _slow_forward_threads(encoder, seen, fail_on_rows=None):
    """A forward hook that records which thread ran each batch and makes each batch last
    long enough for every worker thread to take one."""
    import threading
    import time

    def hook(module, args, kwargs, output):
        time.sleep(0.02)
        seen.append(threading.get_ident())
        if fail_on_rows is not None and kwargs["input_ids"].shape[0] == fail_on_rows:
            raise RuntimeError("batch failed")

    return encoder.model.register_forward_hook(hook, with_kwargs=True)


def test_batches_in_threads_give_the_same_vectors_in_each_precision(tiny_bert):
    import threading

    import torch

    encoder = Encoder.load(tiny_bert, device="cpu")
    threads_before = torch.get_num_threads()
    texts = MIXED_TEXTS * 3
    seen, progress = [], []
    hook = _slow_forward_threads(encoder, seen)
    try:
        threaded = encoder.encode(texts, batch_size=2, batch_workers=2,
                                  progress=lambda done, total: progress.append((done, total)))
        assert len(set(seen)) == 2 and threading.get_ident() not in seen
        seen.clear()
        one_at_a_time = encoder.encode(texts, batch_size=2, batch_workers=1)
        assert set(seen) == {threading.get_ident()}
        bf16_threaded = encoder.encode(texts, batch_size=2, batch_workers=2, precision="bf16")
        bf16_one = encoder.encode(texts, batch_size=2, batch_workers=1, precision="bf16")
    finally:
        hook.remove()
    np.testing.assert_allclose(threaded, one_at_a_time, atol=1e-6)
    # autocast is per-thread state: the worker threads must really have run in bf16
    assert np.abs(bf16_threaded - threaded).max() > 5e-6
    np.testing.assert_allclose(bf16_threaded, bf16_one, atol=1e-6)
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)
    assert progress[-1] == (len(texts), len(texts)) and len(progress) == len(texts) // 2
    assert torch.get_num_threads() == threads_before
    with pytest.raises(ConfigError, match="batch workers"):
        encoder.encode(texts, batch_workers=0)


def test_a_failing_batch_in_a_thread_is_raised_and_threads_restored(tiny_bert):
    import torch

    encoder = Encoder.load(tiny_bert, device="cpu")
    threads_before = torch.get_num_threads()
    seen = []
    hook = _slow_forward_threads(encoder, seen, fail_on_rows=1)  # the last, odd-sized batch
    try:
        with pytest.raises(RuntimeError, match="batch failed"):
            encoder.encode(MIXED_TEXTS * 3 + ["one more"], batch_size=2, batch_workers=2)
    finally:
        hook.remove()
    assert torch.get_num_threads() == threads_before
    assert not encoder.model.training


def test_default_batch_workers_share_every_thread_in_equal_groups():
    from embedrag.engine.encoding.encoder import MAX_DEFAULT_BATCH_WORKERS, default_batch_workers

    for threads in range(1, 130):
        workers = default_batch_workers(threads)
        assert 1 <= workers <= min(threads, MAX_DEFAULT_BATCH_WORKERS)
        per_worker = threads // workers
        assert threads - workers * per_worker < per_worker or workers == threads  # few threads left idle
    assert [default_batch_workers(t) for t in (1, 2, 8, 12, 64)] == [1, 2, 8, 6, 8]
