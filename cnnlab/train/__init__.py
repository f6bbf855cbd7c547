"""Training: the loop, callbacks, losses, metrics, optimizers and checkpoints."""
