"""Constants shared by prompt building and tokenisation (LLaVA's names, kept for its users)."""

IGNORE_INDEX = -100
"""Label value ignored by the loss (training code)."""

IMAGE_TOKEN_INDEX = -200
"""LLaVA's sentinel id for the image placeholder when a model has no image token of its own."""

DEFAULT_IMAGE_TOKEN = "<image>"
"""Placeholder text that marks where the image goes in a prompt."""
