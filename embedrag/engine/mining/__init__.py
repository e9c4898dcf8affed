"""Hard negatives and hard examples for training."""
