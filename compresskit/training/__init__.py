"""One training loop for both stages: DDP, AMP, checkpoints, resume, progress."""
