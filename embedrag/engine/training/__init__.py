"""Fine-tuning: config, batches, the contrastive step, losses, the loop, checkpoints, merge."""
