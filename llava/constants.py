"""Constants shared by prompt building and tokenisation (LLaVA's names, kept for its users)."""

IGNORE_INDEX = -100
"""Label value ignored by the loss (training code)."""

IMAGE_TOKEN_INDEX = -200
"""LLaVA's sentinel id for the image placeholder when a model has no image token of its own."""

DEFAULT_IMAGE_TOKEN = "<image>"
"""Placeholder text that marks where the image goes in a prompt."""

DEFAULT_IMAGE_PATCH_TOKEN = "<im_patch>"
"""LLaVA-1's per-patch token (``mm_use_im_patch_token``); LLaVA-1.5 and llava-hf checkpoints do not use it."""

DEFAULT_IM_START_TOKEN = "<im_start>"
"""Opens the image when a config has ``mm_use_im_start_end=True`` (``<im_start><image><im_end>``)."""

DEFAULT_IM_END_TOKEN = "<im_end>"
"""Closes the image when a config has ``mm_use_im_start_end=True``."""

IMAGE_PLACEHOLDER = "<image-placeholder>"
"""Marks in a ``run_llava`` query where the image goes (replaced by the image token text)."""
