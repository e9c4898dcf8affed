"""Scores of generated answers against reference answers and against their sources.

- Multiple choice: :func:`parse_choice` reads the chosen option from free text (rules
  below); accuracy is the share of questions whose parsed option is the gold one.
- Free text: BLEU (sacrebleu; corpus BLEU as the headline, sentence BLEU per question for
  the significance test), ROUGE-1/2/L F1 (rouge-score, with stemming; CJK text is split
  into characters, which rouge-score's own tokenizer would drop), BERTScore F1 (bert-score
  with a local model; comparable only between runs with the same model and layer).
- Grounding: faithfulness, the share of answer sentences supported by the passages they
  cite (:func:`faithfulness`).

Scores are 0-1 (BLEU divided by 100).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from embedrag.engine.core.errors import ConfigError

if TYPE_CHECKING:
    from embedrag.engine.encoding.encoder import Encoder

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
FAITHFUL_THRESHOLD = 0.75


def _extra(package: str, import_name: str):
    import importlib

    try:
        return importlib.import_module(import_name)
    except ImportError:
        raise ConfigError(f"answer evaluation needs {package}: pip install 'embedrag[answers]'") from None


def is_cjk(texts: Sequence[str]) -> bool:
    """Whether the texts are mostly Chinese, Japanese or Korean (by character share)."""
    joined = "".join(texts)
    letters = sum(ch.isalnum() for ch in joined)
    return bool(letters) and len(_CJK.findall(joined)) / letters > 0.3


# ------------------------------------------------------------------ multiple choice
_KEYWORD = r"(?i:answer|option|choice)\s*(?i:is|would be|should be)?\s*[:：=]?\s*"
_EXPLICIT = [
    re.compile(_KEYWORD + r"[(（]?\s*([A-Z])\s*[)）]?(?![A-Za-z])"),
    # A lower-case letter only in brackets or before punctuation: "the answer is a cat" is no choice.
    re.compile(_KEYWORD + r"(?:[(（]\s*([a-z])\s*[)）]|([a-z])(?=\s*(?:[.,;:!]|$)))"),
    re.compile(r"(?:答案|选项|選項|答)\s*(?:是|为|為|应该是|應該是|选|選)?\s*[:：]?\s*[(（]?\s*([A-Za-z])"),
    re.compile(r"(?:选|選)\s*([A-Za-z])"),
]
_NUMBERED = re.compile(r"(?i:option|choice)\s*(?:number\s*|no\.?\s*|#)?(\d+)")
_ALONE = re.compile(r"^\W*([A-Z])\W*$", re.IGNORECASE)
_LEADING = re.compile(r"^\s*[(（\[]?([A-Z])[)）\].:：]\s*")
_TOKEN = re.compile(r"(?<![A-Za-z])[(（]?([A-Z])[)）]?(?![A-Za-z'])")


def _fold(text: str) -> str:
    """Full-width forms to ASCII (Ｂ -> B, （ -> (), case kept."""
    return unicodedata.normalize("NFKC", text)


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", _fold(text).casefold())).strip()


def parse_choice(answer: str, choices: Sequence[str]) -> int | None:
    """The option an answer chose (an index into ``choices``), or None. In order:
    1. an explicit statement: "the answer is B", "option (c)", "答案是B", "选C", "option 2"
       (numbers count from 1);
    2. the answer is a letter alone: "B", "(b)", "b.";
    3. a leading label: "B) Paris", "(B) Paris", "B. Paris";
    4. exactly one option's text appears in the answer (the longest if one contains another);
    5. exactly one standalone capital letter of the options' range ("I think C"), where
       "A" and "I" count only in brackets, being English words.
    A letter outside the options' range never counts."""
    text = _fold(answer).strip()
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:len(choices)]

    def index(letter: str) -> int | None:
        letter = letter.upper()
        return letters.index(letter) if letter in letters else None

    for pattern in _EXPLICIT:
        for match in pattern.finditer(text):
            letter = next(group for group in match.groups() if group)
            if (found := index(letter)) is not None:
                return found
    for match in _NUMBERED.finditer(text):
        if 1 <= int(match.group(1)) <= len(choices):
            return int(match.group(1)) - 1
    for pattern in (_ALONE, _LEADING):
        match = pattern.match(text)
        if match and (found := index(match.group(1))) is not None:
            return found
    normal = f" {_normal(text)} "
    present = [i for i, choice in enumerate(choices) if _normal(choice) and f" {_normal(choice)} " in normal]
    present = [i for i in present if not any(i != j and _normal(choices[i]) in _normal(choices[j]) for j in present)]
    if len(present) == 1:
        return present[0]
    tokens = {m.group(1) for m in _TOKEN.finditer(text)
              if m.group(1) in letters and (m.group(1) not in "AI" or m.group(0).startswith(("(", "（")))}
    if len(tokens) == 1:
        return index(tokens.pop())
    return None


# ------------------------------------------------------------------ free text
def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, list[float]]:
    """(corpus BLEU, sentence BLEU per pair), 0-1; ``zh`` tokenization for CJK text."""
    sacrebleu = _extra("sacrebleu", "sacrebleu")
    tokenize = "zh" if is_cjk(references) else "13a"
    corpus = sacrebleu.corpus_bleu(list(hypotheses), [list(references)], tokenize=tokenize).score / 100
    sentences = [sacrebleu.sentence_bleu(h, [r], tokenize=tokenize).score / 100
                 for h, r in zip(hypotheses, references)]
    return corpus, sentences


class _CharacterTokenizer:
    """rouge-score's tokenizer keeps only [a-z0-9]; CJK answers are scored by character."""

    def tokenize(self, text: str) -> list[str]:
        return [ch for ch in _fold(text).casefold() if ch.isalnum()]


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, list[float]]:
    """ROUGE-1/2/L F1 per pair (rouge-score, stemmed; by character for CJK)."""
    _extra("rouge-score", "rouge_score")
    from rouge_score import rouge_scorer

    options = {"tokenizer": _CharacterTokenizer()} if is_cjk(references) else {"use_stemmer": True}
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), **options)
    scores = [scorer.score(r, h) for h, r in zip(hypotheses, references)]  # score(target, prediction)
    return {kind: [s[kind].fmeasure for s in scores] for kind in ROUGE_TYPES}


@dataclass
class BertScoreModel:
    """A local model for BERTScore and the layer whose token vectors are compared."""

    path: str
    num_layers: int

    @classmethod
    def resolve(cls, path: str, num_layers: int | None = None) -> BertScoreModel:
        from transformers import AutoConfig

        from embedrag.engine.encoding.models import resolve_model

        folder = str(resolve_model(path).path)
        layers = int(AutoConfig.from_pretrained(folder).num_hidden_layers)
        if num_layers is not None and not 1 <= num_layers <= layers:
            raise ConfigError(f"--bertscore-layer must be 1-{layers} for {path}, got {num_layers}")
        return cls(folder, num_layers or layers)


def bertscore(hypotheses: Sequence[str], references: Sequence[str], model: BertScoreModel, *,
              device: str = "cpu", batch_size: int = 32) -> list[float]:
    """BERTScore F1 per pair (bert-score's ``score``, no baseline rescaling, no idf)."""
    bert_score = _extra("bert-score", "bert_score")
    from embedrag.engine.encoding.encoder import quiet_transformers

    with quiet_transformers():
        _, _, f1 = bert_score.score(list(hypotheses), list(references), model_type=model.path,
                                    num_layers=model.num_layers, device=device, batch_size=batch_size)
    return [float(v) for v in f1]


# ------------------------------------------------------------------ grounding
def cited(sentence: str) -> list[int]:
    return [int(n) for group in _CITATION.findall(sentence) for n in group.split(",")]


def claims(answer: str) -> list[tuple[str, list[int]]]:
    """The answer's sentences without their citation marks, each with the numbers it cites.
    A mark after the full stop ("... soup. [1] Next ...") belongs to the sentence before."""
    from embedrag.engine.data.documents import split_sentences

    leading = re.compile(r"^\s*((?:\[\d+(?:\s*,\s*\d+)*\]\s*)+)")
    pieces: list[list] = []
    for sentence in split_sentences(answer):
        match = leading.match(sentence)
        if match and pieces:
            pieces[-1][1].extend(cited(match.group(1)))
            sentence = sentence[match.end():]
        text = re.sub(r"\s+([.,;:!?])", r"\1", _CITATION.sub("", sentence)).strip()
        if text:
            pieces.append([text, cited(sentence)])
        elif pieces:
            pieces[-1][1].extend(cited(sentence))
    return [(text, numbers) for text, numbers in pieces]


def faithfulness(answers: Sequence[str], passages: Sequence[Sequence[str]], judge: Encoder, *,
                 threshold: float = FAITHFUL_THRESHOLD) -> list[float]:
    """Per answer, the share of its sentences supported by the passages they cite.

    A sentence cites the passages numbered in it (``[2]``, also just after its full stop);
    one without a number cites what the whole answer cites. It is supported when its
    embedding (by ``judge``) has cosine similarity >= ``threshold`` with some sentence of a
    cited passage. An answer with no sentence, or citing nothing, scores 0."""
    import numpy as np

    from embedrag.engine.data.documents import split_sentences

    scores = []
    for answer, hits in zip(answers, passages):
        sentences = claims(answer)
        everything = [n for n in cited(answer) if 1 <= n <= len(hits)]
        if not sentences or not everything:
            scores.append(0.0)
            continue
        sources = {n: split_sentences(hits[n - 1]) or [hits[n - 1]] for n in set(everything)}
        order = sorted(sources)
        flat = [s for n in order for s in sources[n]]
        owner = [n for n in order for _ in sources[n]]
        vectors = judge.encode([text for text, _ in sentences] + flat, "passage")
        similarity = vectors[:len(sentences)] @ vectors[len(sentences):].T
        supported = 0
        for row, (_, numbers) in enumerate(sentences):
            own = [n for n in numbers if n in sources] or everything
            columns = [i for i, n in enumerate(owner) if n in own]
            if columns and float(np.max(similarity[row, columns])) >= threshold:
                supported += 1
        scores.append(supported / len(sentences))
    return scores
