"""Training: optimizers and schedules, the fit loop, checkpoints."""
