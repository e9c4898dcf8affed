#!/usr/bin/env python3
"""Build the small SciFact slice shipped in ``datasets/scifact-slice/``.

Deterministic, standard library only. Reads the full BEIR SciFact copy (plus the derived
``train.jsonl`` / ``train.ids.jsonl`` / ``test.jsonl``) and writes:

* ``train.jsonl``  -- 200 train queries (seeded sample, original order): ``pos`` + first 3 ``neg``
* ``test.jsonl``   -- 100 test queries (seeded sample, original order): ``query`` + ``pos``
* ``corpus.jsonl``, ``queries.jsonl``, ``qrels/train.tsv``, ``qrels/test.tsv`` -- a BEIR folder
  restricted to the selected queries and a 1,500-doc corpus subset (source lines copied as is).

Corpus subset = all positives of the selected queries + the 3 kept negatives of each selected
train query + the top 8 non-positive docs of each selected test query by TF-IDF cosine over the
full corpus (hard distractors) + a seeded random fill up to exactly 1,500 docs.

Usage: python scripts/make_scifact_slice.py [--source DIR] [--output DIR]
"""

import argparse
import json
import math
import os
import random
import re
import sys
from collections import Counter

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

N_TRAIN = 200
N_TEST = 100
N_NEG = 3
N_TFIDF = 8
N_DOCS = 1500
SEED = 0

TOKEN_RE = re.compile(r"[a-z0-9]+")
STOP_WORDS = frozenset(
    """a an and are as at be by for from has have in is it its of on or that the this to was
    were which with""".split()
)


def tokens(text):
    return [t for t in TOKEN_RE.findall(text.lower()) if t not in STOP_WORDS]


def read_lines(path):
    """Return the lines of a UTF-8 file without their line endings."""
    with open(path, encoding="utf-8", newline="") as f:
        return [line.rstrip("\r\n") for line in f if line.strip()]


def read_qrels(path):
    rows = read_lines(path)
    header, body = rows[0], rows[1:]
    assert header.split("\t") == ["query-id", "corpus-id", "score"], (path, header)
    return header, [r.split("\t") for r in body]


def passage(doc):
    return doc["title"] + " " + doc["text"]


def tfidf_top(queries, docs, k, exclude):
    """Top-k doc ids per query by TF-IDF cosine (log tf, idf = log(N/df)), sparse, pure python.

    queries: list of (qid, text); docs: list of (doc_id, text); exclude: qid -> set of doc ids.
    Ties are broken by doc order in the corpus.
    """
    n = len(docs)
    doc_tf = [Counter(tokens(text)) for _, text in docs]
    df = Counter()
    for tf in doc_tf:
        df.update(tf.keys())
    idf = {t: math.log(n / c) for t, c in df.items()}
    # inverted index of normalised doc weights
    postings = {}
    for i, tf in enumerate(doc_tf):
        w = {t: (1.0 + math.log(c)) * idf[t] for t, c in tf.items()}
        norm = math.sqrt(sum(v * v for v in w.values())) or 1.0
        for t, v in w.items():
            if v:
                postings.setdefault(t, []).append((i, v / norm))
    result = {}
    for qid, text in queries:
        qtf = Counter(t for t in tokens(text) if t in idf)
        scores = {}
        for t, c in qtf.items():
            qw = (1.0 + math.log(c)) * idf[t]
            for i, v in postings.get(t, ()):
                scores[i] = scores.get(i, 0.0) + qw * v
        ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
        top = []
        for i, _ in ranked:
            if docs[i][0] in exclude[qid]:
                continue
            top.append(docs[i][0])
            if len(top) == k:
                break
        result[qid] = top
    return result


def write_lines(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", default=os.path.join(REPO_ROOT, "..", "shared", "datasets", "scifact"),
                    help="full SciFact folder (default: ../shared/datasets/scifact from the repo root)")
    ap.add_argument("--output", default=os.path.join(REPO_ROOT, "datasets", "scifact-slice"),
                    help="output folder (default: datasets/scifact-slice)")
    args = ap.parse_args(argv)
    src = os.path.normpath(args.source)
    out = os.path.normpath(args.output)
    rng = random.Random(SEED)

    # ---- load source -------------------------------------------------------------------
    corpus_lines = read_lines(os.path.join(src, "corpus.jsonl"))
    corpus = [json.loads(line) for line in corpus_lines]
    doc_by_id = {d["_id"]: d for d in corpus}
    assert len(doc_by_id) == len(corpus), "duplicate doc ids in corpus"

    query_lines = read_lines(os.path.join(src, "queries.jsonl"))
    query_line_by_id = {}
    query_text = {}
    for line in query_lines:
        q = json.loads(line)
        query_line_by_id[q["_id"]] = line
        query_text[q["_id"]] = q["text"]

    header_tr, qrels_tr = read_qrels(os.path.join(src, "qrels", "train.tsv"))
    header_te, qrels_te = read_qrels(os.path.join(src, "qrels", "test.tsv"))

    train_rows = [json.loads(x) for x in read_lines(os.path.join(src, "train.jsonl"))]
    train_ids = [json.loads(x) for x in read_lines(os.path.join(src, "train.ids.jsonl"))]
    test_rows = [json.loads(x) for x in read_lines(os.path.join(src, "test.jsonl"))]
    assert len(train_rows) == len(train_ids)

    # test.jsonl has no ids: its lines are the test query ids in ascending numeric order
    test_qids = sorted({r[0] for r in qrels_te}, key=int)
    assert len(test_qids) == len(test_rows), (len(test_qids), len(test_rows))
    test_pos_ids = {}
    for q, d, _ in qrels_te:
        test_pos_ids.setdefault(q, []).append(d)
    for qid, row in zip(test_qids, test_rows):
        assert row["query"] == query_text[qid], qid
        assert sorted(row["pos"]) == sorted(passage(doc_by_id[d]) for d in test_pos_ids[qid]), qid

    # ---- select queries (seeded sample, original order) --------------------------------
    train_sel = sorted(rng.sample(range(len(train_rows)), N_TRAIN))
    test_sel = sorted(rng.sample(range(len(test_rows)), N_TEST))

    docs = set()
    out_train = []
    for i in train_sel:
        row, ids = train_rows[i], train_ids[i]
        assert row["query"] == query_text[ids["query_id"]], ids["query_id"]
        assert row["pos"] == [passage(doc_by_id[d]) for d in ids["pos_ids"]], ids["query_id"]
        assert row["neg"] == [passage(doc_by_id[d]) for d in ids["neg_ids"]], ids["query_id"]
        docs.update(ids["pos_ids"])
        docs.update(ids["neg_ids"][:N_NEG])
        out_train.append({"query": row["query"], "pos": row["pos"], "neg": row["neg"][:N_NEG]})
    sel_train_qids = [train_ids[i]["query_id"] for i in train_sel]

    sel_test_qids = [test_qids[i] for i in test_sel]
    out_test = []
    for i in test_sel:
        qid = test_qids[i]
        docs.update(test_pos_ids[qid])
        out_test.append({"query": test_rows[i]["query"], "pos": test_rows[i]["pos"]})

    # ---- TF-IDF hard distractors for the test queries, over the full corpus --------------
    top = tfidf_top(
        [(q, query_text[q]) for q in sel_test_qids],
        [(d["_id"], passage(d)) for d in corpus],
        N_TFIDF,
        {q: set(test_pos_ids[q]) for q in sel_test_qids},
    )
    for q in sel_test_qids:
        assert len(top[q]) == N_TFIDF, q
        docs.update(top[q])
    n_core = len(docs)
    assert n_core <= N_DOCS, n_core

    # ---- random fill up to N_DOCS ---------------------------------------------------------
    rest = [d["_id"] for d in corpus if d["_id"] not in docs]
    docs.update(rng.sample(rest, N_DOCS - n_core))
    assert len(docs) == N_DOCS

    # ---- checks -----------------------------------------------------------------------------
    slice_passages = {passage(doc_by_id[d]) for d in docs}
    for row in out_train + out_test:
        assert row["query"] and row["pos"], row
        for p in row["pos"] + row.get("neg", []):
            assert p in slice_passages, p[:80]
    sel_tr, sel_te = set(sel_train_qids), set(sel_test_qids)
    rows_tr = [r for r in qrels_tr if r[0] in sel_tr]
    rows_te = [r for r in qrels_te if r[0] in sel_te]
    for r in rows_tr + rows_te:
        assert r[1] in docs, r
    assert {r[0] for r in rows_tr} == sel_tr and {r[0] for r in rows_te} == sel_te

    # ---- write ------------------------------------------------------------------------------
    dump = lambda o: json.dumps(o, ensure_ascii=False)  # noqa: E731
    write_lines(os.path.join(out, "train.jsonl"), [dump(r) for r in out_train])
    write_lines(os.path.join(out, "test.jsonl"), [dump(r) for r in out_test])
    write_lines(os.path.join(out, "corpus.jsonl"),
                [line for line, d in zip(corpus_lines, corpus) if d["_id"] in docs])
    write_lines(os.path.join(out, "queries.jsonl"),
                [line for line in query_lines if json.loads(line)["_id"] in sel_tr | sel_te])
    write_lines(os.path.join(out, "qrels", "train.tsv"), [header_tr] + ["\t".join(r) for r in rows_tr])
    write_lines(os.path.join(out, "qrels", "test.tsv"), [header_te] + ["\t".join(r) for r in rows_te])

    n_tfidf = len({d for q in sel_test_qids for d in top[q]})
    print(f"train queries {len(out_train)}, test queries {len(out_test)}, corpus docs {len(docs)} "
          f"(core {n_core}, of which {n_tfidf} TF-IDF distractor ids; random fill {N_DOCS - n_core}), "
          f"qrels train {len(rows_tr)}, test {len(rows_te)} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
