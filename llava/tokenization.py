"""The tokenizer wrapper shared by the project's own models (tiny test model, shapes VLM)."""

from __future__ import annotations

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN)


def llava_fast_tokenizer(backend: Tokenizer, **kwargs) -> PreTrainedTokenizerFast:
    """``backend`` as a fast tokenizer with ``<unk> <s> </s> <pad>`` and the ``<image>`` special, left padding."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        padding_side="left",
        **kwargs,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return tokenizer
