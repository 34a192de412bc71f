"""Attention-guided visual-token pruning for LLaVA-1.5 on transformers v5 native classes."""

__version__ = "0.1.0"
