"""eval --answers: metrics equal to their reference implementations, option parsing,
faithfulness, the answers file contract and the whole loop (CLI, JSON, LLM)."""

from __future__ import annotations

import json

import pytest
from _serving import FakeChat
from typer.testing import CliRunner

from embedrag import Encoder
from embedrag.cli import app
from embedrag.engine.core.errors import DataError
from embedrag.engine.data.answer_sets import load_answer_set
from embedrag.engine.evaluation import answer_metrics as am
from embedrag.engine.llm.answer_eval import AnswerScorers, evaluate_answers

runner = CliRunner()
HYPOTHESES = ["The cat sat on the mat.", "Rest the steak for five minutes after cooking.",
              "Oolong tea is brewed at ninety degrees.", "Nothing here matches at all."]
REFERENCES = ["A cat was sitting on the mat.", "Let a steak rest for about five minutes.",
              "Brew oolong at 90 degrees for three minutes.", "Rice needs rinsing before cooking."]


def test_bleu_is_sacrebleus_corpus_and_sentence_bleu():
    import sacrebleu

    corpus, sentences = am.bleu(HYPOTHESES, REFERENCES)
    assert corpus == pytest.approx(sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES]).score / 100, abs=1e-12)
    assert sentences == pytest.approx([sacrebleu.sentence_bleu(h, [r]).score / 100
                                       for h, r in zip(HYPOTHESES, REFERENCES)], abs=1e-12)
    assert 0 < corpus < 1
    chinese, _ = am.bleu(["今天天气很好"], ["今天天气不错"])
    assert chinese == pytest.approx(sacrebleu.corpus_bleu(["今天天气很好"], [["今天天气不错"]], tokenize="zh").score / 100)


def test_rouge_is_rouge_scores():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    ours = am.rouge(HYPOTHESES, REFERENCES)
    for i, (h, r) in enumerate(zip(HYPOTHESES, REFERENCES)):
        theirs = scorer.score(r, h)
        for kind in ("rouge1", "rouge2", "rougeL"):
            assert ours[kind][i] == pytest.approx(theirs[kind].fmeasure, abs=1e-12)
    assert ours["rouge1"][3] == 0.0 and ours["rouge1"][0] > 0.5
    cjk = am.rouge(["今天天气很好"], ["今天天气不错"])  # rouge-score alone would score 0: it drops CJK
    assert cjk["rouge1"][0] == pytest.approx(2 * 4 / 6 / 2 * 2 / 2)


def test_bertscore_is_bert_scores_own_call(tiny_bert):
    import bert_score

    model = am.BertScoreModel.resolve(str(tiny_bert))
    assert model.num_layers == 2
    ours = am.bertscore(HYPOTHESES, REFERENCES, model)
    _, _, f1 = bert_score.score(HYPOTHESES, REFERENCES, model_type=str(tiny_bert), num_layers=2, device="cpu")
    assert ours == pytest.approx([float(v) for v in f1], abs=1e-6)
    with pytest.raises(Exception, match="--bertscore-layer must be 1-2"):
        am.BertScoreModel.resolve(str(tiny_bert), 5)


CHOICES = ["Paris", "London", "Berlin", "Madrid"]


@pytest.mark.parametrize("answer, expected", [
    ("B", 1), ("(b)", 1), ("b.", 1), ("Ｂ", 1), ("The answer is B.", 1), ("Answer: C", 2),
    ("I think the answer is (D).", 3), ("The correct choice is d", 3), ("答案是B", 1), ("答案：C", 2),
    ("答案是（c）", 2), ("选D", 3), ("B) London", 1), ("(C) Berlin", 2), ("C. Berlin is the capital", 2),
    ("It is London.", 1), ("Berlin, clearly.", 2), ("I would say C", 2), ("option 2", 1), ("(A) Paris", 0),
    ("A", 0), ("A cat would say London", 1), ("The answer is a good question", None), ("None of them", None),
    ("E", None), ("Paris or London, hard to say", None),
])
def test_the_chosen_option_is_parsed_from_many_phrasings(answer, expected):
    assert am.parse_choice(answer, CHOICES) == expected


@pytest.fixture(scope="module")
def judge(minilm_path):
    return Encoder.load(minilm_path, device="cpu")


@pytest.mark.slow
def test_faithfulness_counts_sentences_supported_by_what_they_cite(judge):
    passages = ["The night market sells beef noodle soup. It opens at six.", "Oolong tea is brewed at ninety degrees."]
    answers = [
        "The night market sells beef noodle soup [1]. Oolong tea is brewed at ninety degrees [2].",  # both
        "The night market sells beef noodle soup [2].",  # cites the wrong passage
        "The night market sells beef noodle soup.",  # cites nothing
        "The night market sells beef noodle soup. Oolong tea is brewed at ninety degrees [1, 2].",  # inherits
        "Quantum chromodynamics explains the strong force [1].",  # cited, not supported
    ]
    scores = am.faithfulness(answers, [passages] * len(answers), judge)
    assert scores == [1.0, 0.0, 0.0, 1.0, 0.0]


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("row, message", [
    ({"question": "q?"}, ':2: missing "answer"'),
    ({"question": "q?", "answer": "x", "choices": ["a", "b"], "gold": 2}, ':2: "gold" 2 is out of range for 2 choices'),
    ({"question": "q?", "answer": "x", "choices": ["a", "b"], "gold": "C"}, ':2: "gold" 2 is out of range'),
    ({"question": "q?", "answer": "x", "gold": 0}, ':2: "gold" needs "choices"'),
    ({"question": "", "answer": "x"}, ':2: "question" must be a non-empty string'),
    ({"question": "q?", "answer": "x", "pos": [3]}, ':2: "pos" must be a list of non-empty strings'),
])
def test_a_bad_answers_line_is_one_file_line_message(tmp_path, row, message, tiny_bert):
    path = _write(tmp_path / "answers.jsonl", [{"question": "fine?", "answer": "yes"}, row])
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_answer_set(path)
    result = runner.invoke(app, ["eval", "--answers", str(path), "--model", str(tiny_bert)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1 and message in lines[0], result.output


FOODS = [
    {"id": "noodles", "question": "Where is beef noodle soup sold?", "answer": "The night market sells beef noodle soup.",
     "pos": ["The night market sells beef noodle soup. It opens at six."]},
    {"id": "tea", "question": "At what temperature is oolong brewed?", "answer": "Oolong is brewed at ninety degrees.",
     "pos": ["Oolong tea is brewed at ninety degrees for three minutes."]},
    {"id": "steak", "question": "How long should a steak rest?", "answer": "About five minutes.",
     "pos": ["Rest a steak for five minutes after cooking."]},
    {"id": "city", "question": "Which city is the capital of France?", "answer": "Paris",
     "choices": ["Berlin", "Paris", "Rome"], "gold": "B", "pos": ["Paris is the capital of France."]},
]


def test_the_loop_scores_each_model_and_compares_them(tiny_bert, tmp_path):
    answer_set = load_answer_set(_write(tmp_path / "a.jsonl", FOODS))
    judge = Encoder.load(tiny_bert, device="cpu")
    scorers = AnswerScorers(judge=judge, threshold=0.999, bertscore=am.BertScoreModel.resolve(str(tiny_bert)))
    report = evaluate_answers(answer_set, [f"a={tiny_bert}", f"b={tiny_bert}"], k=2, scorers=scorers,
                              use_cache=False, device="cpu")
    first, second = report.models
    assert first.metrics == second.metrics  # the same model twice
    assert set(first.metrics) >= {"bleu", "sentence_bleu", "rouge1", "rouge2", "rougeL", "bertscore_f1",
                                  "faithfulness", "hit@2", "accuracy"}
    assert set(first.per_query["city"]) == {"accuracy", "faithfulness", "hit@2"}  # multiple choice: no BLEU
    assert "bleu" not in first.per_query["tea"] and "sentence_bleu" in first.per_query["tea"]
    # Extractive answers copy passage sentences with their citation: faithful by construction.
    assert first.metrics["faithfulness"] == 1.0
    records = {r["id"]: r for r in first.answers}
    hypotheses = [records[i]["answer"] for i in ("noodles", "tea", "steak")]
    assert first.metrics["bleu"] == pytest.approx(am.bleu(hypotheses, [r["answer"] for r in FOODS[:3]])[0])
    comparison = report.comparison(second, "rougeL")
    assert comparison.gain == 0 and comparison.ties == 3
    saved = json.loads(report.save(tmp_path / "r.json").read_text())
    assert saved["kind"] == "answers" and saved["models"][1]["significance_vs_baseline"]["bleu"]["queries"] == 3


def test_eval_answers_cli_with_an_openai_compatible_llm(tiny_bert, tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDRAG_LLM_API_KEY", "sk-answers-secret")
    path = _write(tmp_path / "a.jsonl", FOODS)
    with FakeChat(pieces=["The answer is B, ", "Paris [1]."]) as chat:
        result = runner.invoke(app, ["eval", "--answers", str(path), "--model", f"tiny={tiny_bert}", "--top-k", "2",
                                     "--llm", "openai", "--llm-base-url", chat.url, "--llm-model", "m",
                                     "--judge", str(tiny_bert), "--bertscore-model", "none", "--no-cache",
                                     "-o", str(tmp_path / "report.json"), "--per-query"],
                               env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    model = report["models"][0]
    assert model["metrics"]["accuracy"] == 1.0  # "The answer is B" parsed as Paris, the gold option
    assert "bertscore_f1" not in model["metrics"] and report["scorers"]["bertscore"] is None
    assert len(chat.requests) == len(FOODS)
    assert "A. Berlin" in chat.requests[-1]["body"]["messages"][-1]["content"]  # options shown to the LLM
    assert "sk-answers-secret" not in result.output
    assert "accuracy" in result.output and "faithfulness" in result.output


def test_a_citation_after_the_full_stop_belongs_to_the_sentence_before():
    assert am.claims("Soup is sold at night. [1] Tea is brewed hot. [2, 3]") == [
        ("Soup is sold at night.", [1]), ("Tea is brewed hot.", [2, 3])]
    assert am.claims("Soup is sold at night [1]. Tea too.") == [("Soup is sold at night.", [1]), ("Tea too.", [])]
