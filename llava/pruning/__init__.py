"""Pruning algorithms as pure functions over tensors, and the registry of methods built on them."""
