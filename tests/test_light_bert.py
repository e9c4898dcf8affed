"""The transformers-free BERT (``Encoder.load(light=True)``) gives transformers' vectors."""

import numpy as np

from embedrag.engine.encoding.encoder import Encoder
from embedrag.engine.encoding.fingerprint import model_fingerprint
from embedrag.engine.encoding.light_bert import light_bert_config

TEXTS = ["what causes cancer", "", " ", "ÀÉÎõü naïve café 中文字符 😀", "x" * 20000, "word " * 3000,
         "Tobacco may promote the growth and invasion of mutant cells. " * 3]


def test_light_bert_matches_transformers(minilm_path):
    full = Encoder.load(minilm_path, query_max_length=64, passage_max_length=128)
    light = Encoder.load(minilm_path, query_max_length=64, passage_max_length=128, light=True)
    assert type(light.model).__name__ == "LightBertModel"
    assert light.config == full.config and model_fingerprint(light) == model_fingerprint(full)
    for kind in ("query", "passage"):
        assert light.tokenize(TEXTS, kind) == full.tokenize(TEXTS, kind)
        for batch_size in (1, 4):  # unpadded, and padded batches
            np.testing.assert_array_equal(light.encode(TEXTS, kind, batch_size=batch_size),
                                          full.encode(TEXTS, kind, batch_size=batch_size))


def test_other_models_load_through_transformers(tiny_bert, tiny_qwen2):
    for folder in (tiny_bert, tiny_qwen2):
        assert light_bert_config(folder) is None
        assert type(Encoder.load(folder, light=True).model).__name__ != "LightBertModel"
