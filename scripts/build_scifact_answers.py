"""Build an answers file (`embedrag eval --answers`) from SciFact's labelled test claims.

For every BEIR SciFact test claim whose queries.jsonl metadata names evidence (SciFact's
rationale sentences, by index into the cited abstract's sentences):
  question = the claim;
  answer   = the first rationale sentence of the first cited abstract that has one;
  pos      = the cited abstracts (title + " " + text, as BEIR builds passages).
The abstracts' sentence boundaries are recovered with embedrag's sentence splitter; a claim
whose rationale index falls outside the split is skipped (and counted).

    python scripts/build_scifact_answers.py ../shared/datasets/scifact -o /tmp/scifact_answers.jsonl
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from embedrag.engine.data.documents import split_sentences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="BEIR SciFact folder")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--split", default="test")
    args = parser.parse_args()

    corpus = {}
    with (args.folder / "corpus.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            doc = json.loads(line)
            corpus[doc["_id"]] = doc
    queries = {}
    with (args.folder / "queries.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            query = json.loads(line)
            queries[query["_id"]] = query
    cited: dict[str, list[str]] = {}
    with (args.folder / "qrels" / f"{args.split}.tsv").open(encoding="utf-8") as rows:
        for row in csv.DictReader(rows, delimiter="\t"):
            cited.setdefault(row["query-id"], []).append(row["corpus-id"])

    written = skipped = no_evidence = 0
    with args.output.open("w", encoding="utf-8") as out:
        for query_id, doc_ids in cited.items():
            evidence = queries[query_id].get("metadata") or {}
            answer = None
            for doc_id in doc_ids:
                for rationale in evidence.get(doc_id, []):
                    sentences = split_sentences(corpus[doc_id]["text"])
                    index = rationale["sentences"][0]
                    if index < len(sentences):
                        answer = sentences[index]
                        break
                if answer:
                    break
            if not evidence:
                no_evidence += 1
                continue
            if answer is None:
                skipped += 1
                continue
            pos = [f"{corpus[d]['title']} {corpus[d]['text']}" for d in doc_ids]
            out.write(json.dumps({"id": query_id, "question": queries[query_id]["text"], "answer": answer,
                                  "pos": pos}, ensure_ascii=False) + "\n")
            written += 1
    print(f"{written} questions written to {args.output}; {no_evidence} claims without evidence, "
          f"{skipped} with a rationale index past the recovered sentences")


if __name__ == "__main__":
    main()
