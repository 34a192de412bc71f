"""Which language models of a ``LlavaConfig`` the pruning decoder (a ``LlamaModel``) runs exactly.

Llama runs as is. Mistral is Llama's architecture plus sliding-window attention: without a window (or with
one at least as long as the context, e.g. Mistral-7B-Instruct-v0.2, LLaVA-NeXT-Mistral's text model) it is
exactly a Llama, so its config is read as one. Everything else is refused before any weight is read:
loaded as a Llama it would be silently wrong (Qwen2's q/k/v biases would be dropped, Gemma's norms and
scaling differ).
"""

from __future__ import annotations

from transformers import LlamaConfig, PretrainedConfig

RUNS_AS_LLAMA = ("llama", "llama_pruning", "mistral")


def llama_text_config(text_config: PretrainedConfig) -> LlamaConfig:
    """``text_config`` as the ``LlamaConfig`` the pruning decoder runs, or a one-line ``ValueError``."""
    if isinstance(text_config, LlamaConfig):
        return text_config
    model_type = getattr(text_config, "model_type", type(text_config).__name__)
    if model_type == "mistral":
        window = getattr(text_config, "sliding_window", None)
        if window is not None and window < text_config.max_position_embeddings:
            raise ValueError(
                f"the text model is Mistral with sliding_window={window} < its context {text_config.max_position_embeddings}:"
                " the Llama pruning decoder attends to the whole context, so it would not be this model"
            )
        values = {k: v for k, v in text_config.to_dict().items() if k not in ("model_type", "architectures", "sliding_window")}
        values.update(attention_bias=False, mlp_bias=False)
        llama = LlamaConfig(**values)
        llama._attn_implementation = text_config._attn_implementation
        return llama
    raise ValueError(
        f"the text model is {model_type} ({type(text_config).__name__}): the pruning decoder runs Llama-architecture"
        f" language models ({', '.join(m for m in RUNS_AS_LLAMA if m != 'llama_pruning')} without a sliding window);"
        f" read as Llama, {model_type} would be silently wrong (e.g. Qwen2's q/k/v biases dropped)"
    )
