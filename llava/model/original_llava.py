"""Checkpoints in the original LLaVA format (``liuhaotian/llava-v1.5-7b``), converted to llava-hf on load.

The original format (Liu et al., 2023, "Improved Baselines with Visual Instruction Tuning", code at
haotian-liu/LLaVA) is a ``LlavaLlamaForCausalLM``: a Llama config plus ``mm_*`` fields, the LM and the
projector's weights (``model.*``, ``lm_head.*``, ``model.mm_projector.{0,2}.*``), a sentencepiece
tokenizer without an image token (prompts carry ``IMAGE_TOKEN_INDEX`` = -200), and the CLIP tower
named by ``mm_vision_tower`` (its own checkpoint, e.g. ``openai/clip-vit-large-patch14-336``).

``converted_config`` builds the llava-hf ``LlavaConfig`` from those fields; ``load_converted_weights``
maps the keys onto ``LlavaForConditionalGeneration``'s, loads the tower from its own path, and appends one ``<image>``
token (embedding and LM-head rows at the mean of the others, what transformers' ``resize_token_embeddings``
does) so that llava-hf style prompts work too; ``IMAGE_TOKEN_INDEX`` prompts are expanded by the model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlavaConfig
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

ORIGINAL_ARCHITECTURES = ("LlavaLlamaForCausalLM",)
SUPPORTED_PROJECTOR = "mlp2x_gelu"  # LLaVA-1.5's two-layer GELU MLP, llava-hf's multi_modal_projector
IMAGE_TOKEN = "<image>"
KEY_MAP = (  # original key pattern -> llava-hf key (first match wins)
    (r"^model\.mm_projector\.0\.(.*)$", r"model.multi_modal_projector.linear_1.\1"),
    (r"^model\.mm_projector\.2\.(.*)$", r"model.multi_modal_projector.linear_2.\1"),
    (r"^model\.vision_tower\.vision_tower\.(.*)$", r"model.vision_tower.\1"),
    (r"^model\.(.*)$", r"model.language_model.\1"),
    (r"^lm_head\.(.*)$", r"lm_head.\1"),
)


def original_config(model_path: str) -> dict[str, Any] | None:
    """The checkpoint's ``config.json`` when it is in the original LLaVA format, else None (a local folder,
    or a hub id through transformers' cache, downloaded when online)."""
    path = Path(model_path) / "config.json"
    if not path.is_file():
        if Path(model_path).exists() or model_path.count("/") != 1:
            return None
        try:
            from transformers.utils import cached_file

            path = Path(cached_file(model_path, "config.json"))
        except OSError:
            return None
    config = json.loads(path.read_text(encoding="utf-8"))
    is_original = any(arch in ORIGINAL_ARCHITECTURES for arch in config.get("architectures") or []) or "mm_vision_tower" in config
    return config if is_original else None


def local_folder(model_path: str) -> Path:
    """The checkpoint's folder (a hub id is downloaded into the cache first)."""
    if Path(model_path).is_dir():
        return Path(model_path)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model_path))


def llava_hf_key(original: str) -> str:
    for pattern, replacement in KEY_MAP:
        if re.match(pattern, original):
            return re.sub(pattern, replacement, original)
    raise ValueError(f"unexpected weight {original!r} in an original LLaVA checkpoint")


def llava_hf_config(original: dict[str, Any], vision: CLIPVisionConfig, image_token_id: int) -> LlavaConfig:
    """The llava-hf config of an original checkpoint's ``config.json`` (``mm_*`` fields translated)."""
    projector = original.get("mm_projector_type", "linear")
    if projector != SUPPORTED_PROJECTOR:
        raise ValueError(f"mm_projector_type {projector!r} is not supported: llava-hf (and this toolkit) use "
                         f"LLaVA-1.5's {SUPPORTED_PROJECTOR!r}")
    if original.get("mm_use_im_start_end") or original.get("mm_use_im_patch_token"):
        raise ValueError("mm_use_im_start_end / mm_use_im_patch_token checkpoints (LLaVA-1) are not supported")
    feature = original.get("mm_vision_select_feature", "patch")
    if feature not in ("patch", "cls_patch"):
        raise ValueError(f"mm_vision_select_feature {feature!r} is unknown; valid: patch, cls_patch")
    llama_fields = {k: v for k, v in original.items() if not k.startswith("mm_") and k not in ("architectures", "model_type")}
    text = LlamaConfig(**llama_fields)
    text.vocab_size = image_token_id + 1
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=image_token_id,
        vision_feature_layer=original.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy="default" if feature == "patch" else "full",
        projector_hidden_act="gelu",
        image_seq_length=(vision.image_size // vision.patch_size) ** 2,
    )


def original_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """Every weight of the checkpoint (``*.safetensors`` or ``pytorch_model*.bin`` shards)."""
    shards = sorted(folder.glob("*.safetensors"))
    if shards:
        return {k: v for shard in shards for k, v in load_file(shard).items()}
    shards = sorted(folder.glob("pytorch_model*.bin"))
    if not shards:
        raise FileNotFoundError(f"{folder}: no *.safetensors or pytorch_model*.bin weights")
    return {k: v for shard in shards for k, v in torch.load(shard, map_location="cpu", weights_only=True).items()}


def vision_tower_path(original: dict[str, Any], vision_tower: str | None) -> str:
    path = vision_tower or original.get("mm_vision_tower")
    if not path:
        raise ValueError("the checkpoint names no mm_vision_tower: pass vision_tower=PATH")
    return path


def converted_config(model_path: str, original: dict[str, Any], vision_tower: str | None = None):
    """``(LlavaConfig, tokenizer, image_processor)`` of an original checkpoint, before any weight is read:
    the tokenizer with ``<image>`` appended (pad = unk, LLaVA-1.5's choice) and the tower's CLIP processor.
    ``vision_tower``: the CLIP tower's folder or hub name (default: the checkpoint's ``mm_vision_tower``)."""
    tower = vision_tower_path(original, vision_tower)
    tokenizer = AutoTokenizer.from_pretrained(str(local_folder(model_path)))
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_token_id != original["vocab_size"]:
        raise ValueError(f"the tokenizer's {IMAGE_TOKEN} is id {image_token_id}, expected {original['vocab_size']} "
                         "(right after the checkpoint's tokens): is the tokenizer the checkpoint's own?")
    config = llava_hf_config(original, CLIPVisionConfig.from_pretrained(tower), image_token_id)
    return config, tokenizer, CLIPImageProcessorPil.from_pretrained(tower)


def load_converted_weights(model: torch.nn.Module, model_path: str, original: dict[str, Any], vision_tower: str | None = None) -> None:
    """Load the original checkpoint's weights (key map ``KEY_MAP``; the tower from its own checkpoint when
    the LLaVA one does not hold it) into a llava-hf ``model`` built from ``converted_config``."""
    vocab = original["vocab_size"]
    state = {llava_hf_key(k): v for k, v in original_state_dict(local_folder(model_path)).items()}
    if not any(k.startswith("model.vision_tower.") for k in state):
        tower_state = CLIPVisionModel.from_pretrained(vision_tower_path(original, vision_tower)).state_dict()
        state.update({f"model.vision_tower.{k}": v for k, v in tower_state.items()})
    for name in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        rows = state[name]
        if rows.shape[0] != vocab:
            raise ValueError(f"{name} has {rows.shape[0]} rows, the config says vocab_size {vocab}")
        state[name] = torch.cat([rows, rows.float().mean(0, keepdim=True).to(rows.dtype)])  # the <image> row
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"original LLaVA checkpoint {model_path}: missing weights {missing[:5]}, unexpected {unexpected[:5]}")
