"""Training: run configs, the trainer, checkpoints, and distributed helpers."""
