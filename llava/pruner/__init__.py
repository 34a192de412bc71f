"""Learned layer-wise visual-token pruner (DESIGN.md section 5): heads, discriminator, soft masks, losses, training."""
