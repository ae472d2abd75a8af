"""Training: the recipe (TRL's configs plus ours), `train()`, checkpoints and resume, distributed checks."""
