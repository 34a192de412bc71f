"""Plain-torch pieces the reference transcriptions share: one layer's attention row from its q and k, and the
language model's input embeddings of a LLaVA forward."""

import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv


def last_token_image_scores(layer, hidden: torch.Tensor, positions: torch.Tensor, rotary, start: int, length: int):
    """Mean over heads of the last token's softmax row at ``layer`` over the image tokens ``[start, start+length)``."""
    attn = layer.self_attn
    x = layer.input_layernorm(hidden)
    batch, n, _ = x.shape
    head_dim = attn.head_dim
    q = attn.q_proj(x).view(batch, n, -1, head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(batch, n, -1, head_dim).transpose(1, 2)
    cos, sin = rotary(x, position_ids=positions)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    k = repeat_kv(k, q.shape[1] // k.shape[1])
    logits = q[:, :, -1:] @ k.transpose(-1, -2) / head_dim**0.5  # the last row sees every key
    probs = logits.float().softmax(dim=-1).to(q.dtype)
    return probs.mean(dim=1)[0, 0, start : start + length]


def captured_embeddings(llava, ids, pixels) -> torch.Tensor:
    """The language model's input embeddings of one LLaVA forward (image features merged)."""
    captured = {}

    def hook(module, args, kwargs):
        captured["embeds"] = kwargs["inputs_embeds"]

    handle = llava.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        llava(input_ids=ids, pixel_values=pixels)
    finally:
        handle.remove()
    return captured["embeds"]
