#!/usr/bin/env bash
# Full fine-tuning, the original README's third recipe, with embedrag (no merge needed).
set -euo pipefail
embedrag train \
  --model_name_or_path "${MODEL:-sentence-transformers/all-MiniLM-L6-v2}" \
  --train_dataset "${TRAIN:-datasets/scifact-slice/train.jsonl}" \
  --eval-dataset "${EVAL:-datasets/scifact-slice/test.jsonl}" \
  --output_dir "${OUT:-runs/full}" \
  --finetune_type full \
  --batch_size 16 --neg_nums 3 --query_max_len 64 --passage_max_len 256 \
  --epochs 2 --lr 1e-5 --warmup_proportion 0.05
