#!/usr/bin/env bash
# LoRA on a full-precision base, the original README's second recipe, with embedrag.
set -euo pipefail
embedrag train \
  --model_name_or_path "${MODEL:-sentence-transformers/all-MiniLM-L6-v2}" \
  --train_dataset "${TRAIN:-datasets/scifact-slice/train.jsonl}" \
  --eval-dataset "${EVAL:-datasets/scifact-slice/test.jsonl}" \
  --output_dir "${OUT:-runs/lora}" \
  --finetune_type lora \
  --batch_size 16 --neg_nums 3 --query_max_len 64 --passage_max_len 256 \
  --epochs 2 --lr 1e-4 --lora_r 8 --lora_alpha 32 --warmup_proportion 0.05
embedrag merge --adapter "${OUT:-runs/lora}/final" --output-path "${OUT:-runs/lora}-merged"
