"""Training of the learned pruner: configuration, data, discriminator, losses, schedules, the training step."""
