"""train -> merge -> evaluate -> index -> ask, through the Python API.

Runs offline on the bundled all-MiniLM-L6-v2 and the sample data of this repository:

    python examples/python_api.py [--model PATH] [--workdir DIR] [--steps N]

tests/test_examples.py runs it on a tiny model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import embedrag

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--data", type=Path, default=REPO / "datasets" / "sample_data.jsonl")
    parser.add_argument("--workdir", type=Path, default=Path("python-api-example"))
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    work = args.workdir

    # 1. Fine-tune a LoRA adapter (InfoNCE with hard and in-batch negatives).
    result = embedrag.train(embedrag.TrainConfig(
        train_datasets=[str(args.data)], output_dir=str(work / "run"), model=args.model, finetune_type="lora",
        batch_size=8, neg_nums=1, max_steps=args.steps, overwrite_output_dir=True, tensorboard=False))
    print(f"trained {result.global_step} steps in {result.seconds:.0f} s -> {result.final_dir}")

    # 2. Merge it into a standalone model (loads in transformers and sentence-transformers).
    merged = embedrag.merge(result.final_dir, work / "merged", overwrite=True)
    print(f"merged -> {merged.output_path}")

    # 3. Compare base and tuned on the same data (the pooled passages of its lines).
    test_set = embedrag.load_jsonl_testset(args.data)
    report = embedrag.evaluate(test_set, [f"base={args.model}", f"tuned={merged.output_path}"], use_cache=False)
    for model in report.models:
        print(f"{model.name}: nDCG@10 {model.metrics['ndcg@10']:.4f} "
              f"(gain {report.gain(model, 'ndcg@10'):+.4f})")

    # 4. Index documents (here: every passage of the data) with the tuned model and ask.
    documents = work / "documents.jsonl"
    documents.write_text("".join(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n"
                                 for doc_id, text in test_set.corpus.items()), encoding="utf-8")
    embedrag.index([documents], str(merged.output_path), db=work / "lancedb", table="docs", mode="overwrite")
    answer = embedrag.RAG.from_table(str(work / "lancedb"), "docs", llm="none", top_k=3).ask(
        "how long should I rest a steak?")
    for number, hit in enumerate(answer.passages, start=1):
        print(f"[{number}] {hit.score:.3f} {hit.text[:80]}")


if __name__ == "__main__":
    main()
