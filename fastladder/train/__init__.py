"""Training: losses, optimisation schedules, the training loop, checkpoints."""
