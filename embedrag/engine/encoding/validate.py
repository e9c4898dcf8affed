"""Token-length statistics of a data set under a model's tokenizer and limits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from embedrag.engine.data.examples import Example


@dataclass
class LengthRow:
    kind: str
    count: int
    p50: int
    p95: int
    maximum: int
    limit: int
    truncated: int


@dataclass
class LengthReport:
    model: str
    rows: list[LengthRow]


def _percentile(sorted_values: list[int], q: float) -> int:
    if not sorted_values:
        return 0
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def token_length_report(examples: Sequence[Example], model: str, *,
                        query_max_length: int | None = None,
                        passage_max_length: int | None = None) -> LengthReport:
    """Token lengths of queries and distinct passages, with the model's instructions, and
    how many exceed the limits (the given ones, else the model's)."""
    from transformers import AutoConfig, AutoTokenizer

    from embedrag.engine.encoding.encoder import declared_embedding_config
    from embedrag.engine.encoding.models import resolve_model

    resolved = resolve_model(model)
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    declared = declared_embedding_config(resolved.path, AutoConfig.from_pretrained(resolved.path), tokenizer)
    q_limit = query_max_length or declared.query_max_length
    p_limit = passage_max_length or declared.passage_max_length
    q_prefix, p_prefix = declared.query_instruction, declared.passage_instruction

    queries = list(dict.fromkeys(e.query for e in examples))
    passages = list(dict.fromkeys(p for e in examples for p in (*e.pos, *e.neg)))
    rows = []
    for kind, texts, prefix, cap in (("queries", queries, q_prefix, q_limit),
                                     ("passages", passages, p_prefix, p_limit)):
        ids = tokenizer([prefix + t for t in texts], add_special_tokens=True, truncation=False,
                        return_attention_mask=False, verbose=False)["input_ids"] if texts else []
        lengths = sorted(len(x) for x in ids)
        rows.append(LengthRow(kind, len(lengths), _percentile(lengths, 0.5), _percentile(lengths, 0.95),
                              lengths[-1] if lengths else 0, cap, sum(1 for n in lengths if n > cap)))
    return LengthReport(model=resolved.name, rows=rows)
