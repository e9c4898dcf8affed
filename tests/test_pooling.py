"""Pooling against a hand computation: each text run alone (no padding), its token
states pooled by explicit indexing, versus the Encoder's padded batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedrag import Encoder

TEXTS = ["short", "a somewhat longer text here", "牛肉麵", "mid length words", "z" * 40]


def _hand_pooled(encoder: Encoder, text: str, mode: str, normalize: bool) -> np.ndarray:
    ids = encoder.tokenize([text], "passage")["input_ids"][0]
    with torch.no_grad():
        hidden = encoder.model(input_ids=torch.tensor([ids]),
                               attention_mask=torch.ones(1, len(ids), dtype=torch.long)
                               ).last_hidden_state[0]
    if mode == "cls":
        vector = hidden[0]
    elif mode == "last":
        vector = hidden[len(ids) - 1]
    else:
        vector = sum(hidden[i] for i in range(len(ids))) / len(ids)
    vector = vector.numpy().astype(np.float64)
    if normalize:
        vector = vector / np.sqrt(sum(v * v for v in vector))
    return vector


@pytest.mark.parametrize("mode", ["mean", "cls"])
@pytest.mark.parametrize("normalize", [True, False])
def test_encoder_pooling_matches_hand_computation(tiny_bert, mode, normalize):
    encoder = Encoder.load(tiny_bert, pooling=mode, normalize=normalize, device="cpu")
    got = encoder.encode(TEXTS, batch_size=3)
    for text, row in zip(TEXTS, got):
        np.testing.assert_allclose(row, _hand_pooled(encoder, text, mode, normalize), atol=2e-6)


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("mode", ["last", "mean"])
def test_decoder_pooling_with_left_and_right_padding(tiny_qwen2, padding_side, mode):
    encoder = Encoder.load(tiny_qwen2, pooling=mode, device="cpu")
    encoder.tokenizer.padding_side = padding_side
    got = encoder.encode(TEXTS, batch_size=5)  # one batch: every row but one is padded
    batch = encoder.pad(encoder.tokenize(TEXTS)["input_ids"])
    pad_column = 0 if padding_side == "left" else -1
    assert (batch["attention_mask"][:, pad_column] == 0).any(), "batch should contain padding"
    for text, row in zip(TEXTS, got):
        np.testing.assert_allclose(row, _hand_pooled(encoder, text, mode, True), atol=2e-5)


def test_decoder_defaults_to_last_token_and_gets_a_pad_token(tiny_qwen2):
    encoder = Encoder.load(tiny_qwen2, device="cpu")
    assert encoder.config.pooling == "last"
    assert encoder.config.architecture == "decoder"
    assert encoder.tokenizer.pad_token is not None


def test_encoder_defaults_to_mean(tiny_bert):
    encoder = Encoder.load(tiny_bert, device="cpu")
    assert encoder.config.pooling == "mean"
    assert encoder.config.architecture == "encoder"
