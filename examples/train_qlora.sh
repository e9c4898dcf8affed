#!/usr/bin/env bash
# QLoRA (4-bit NF4 base + LoRA), the original README's first recipe, with embedrag.
set -euo pipefail
embedrag train \
  --model_name_or_path "${MODEL:-sentence-transformers/all-MiniLM-L6-v2}" \
  --train_dataset "${TRAIN:-datasets/scifact-slice/train.jsonl}" \
  --eval-dataset "${EVAL:-datasets/scifact-slice/test.jsonl}" \
  --output_dir "${OUT:-runs/qlora}" \
  --finetune_type qlora --quantization_bits 4 \
  --batch_size 16 --neg_nums 3 --query_max_len 64 --passage_max_len 256 \
  --epochs 2 --lr 1e-4 --lora_r 8 --lora_alpha 32 --warmup_proportion 0.05
embedrag merge --adapter "${OUT:-runs/qlora}/final" --output-path "${OUT:-runs/qlora}-merged"
