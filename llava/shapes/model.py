"""Architecture of the shipped shapes VLM: LLaVA-1.5's layout at a size that trains on a CPU.

``LlavaForConditionalGeneration`` with a CLIP vision tower at 336 px / patch 14 (576 patch tokens,
feature layer -2, [CLS] dropped, as LLaVA-1.5), the two-layer GELU projector, and a Llama LM of 32 layers (LLaVA-1.5-7B's depth, so every published layer setting and budget applies unchanged) at width 64
with grouped-query attention (2 query heads of 32 dims sharing 1 KV head: on a CPU, 16-dim heads
took 1.7 x as long per training step for the same width). The processor is llava-hf's ``LlavaProcessor``.
"""

from __future__ import annotations

from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaProcessor
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from llava.shapes.scene import IMAGE_SIZE, PATCH
from llava.shapes.vocabulary import build_tokenizer
from llava.tokenization import IMAGE_TOKEN

VISION = dict(hidden_size=96, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4)
# RoPE base: a question token finds "its" patches by content (the cell's row / column code in the patch
# features), which only RoPE's slowly rotating dimensions preserve across the 576-token image span. With
# 32-dim heads at base 10^4 no dimension pair turns by under 0.1 rad over the span (the slowest: 0.10) and the LM
# plateaued at 1/6 of the attention mass on the asked cell (two runs, 375 and 150 steps); at 10^6, 5 do. The
# lookup-circuit init (llava.train.lookup_init) writes its cell code into 22 dimensions of one head, which needs
# 11 slow pairs: base 10^12 gives them.
ROPE_THETA = 1e12
TEXT = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=32, num_attention_heads=2, num_key_value_heads=1)


def shapes_llava_config(vocab_size: int, image_token_id: int, bos: int = 1, eos: int = 2, pad: int = 3) -> LlavaConfig:
    vision = CLIPVisionConfig(image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=VISION["hidden_size"], **VISION)
    text = LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=2048,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        rope_theta=ROPE_THETA,
        **TEXT,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=image_token_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        image_seq_length=(IMAGE_SIZE // PATCH) ** 2,
    )


def image_processor() -> CLIPImageProcessorPil:
    """CLIP preprocessing at 336 px (the images are drawn at that size: resize and crop are identities)."""
    return CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def build_processor() -> LlavaProcessor:
    tokenizer = build_tokenizer()
    return LlavaProcessor(
        image_processor=image_processor(),
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
    )
