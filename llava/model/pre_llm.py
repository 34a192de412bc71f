"""The pre-LLM path of the LLaVA wrapper: visual tokens chosen before the language model runs.

Prefill: one pass of the vision tower gives what the method looks at (``VisualTokens``); the kept image
tokens' embeddings (and attention-mask columns) are gathered and the LLM runs unpruned on the shorter
prompt. Decode steps drop the same prompt columns from the attention mask ``generate`` grows (the cache
holds only the kept tokens). A forward without cache over the same prompt plus new tokens keeps the
same image tokens with the same features (``PruningState.pre_llm_keep`` / ``pre_llm_features``), so
``generate(use_cache=False)`` == ``generate()``. A selection with a ``replacement`` (merged tokens, e.g.
``learned_merger``) enters the LLM with the replacement's features at those kept tokens.
"""

from __future__ import annotations

import time

import torch

from llava.model.language_model.pruning_state import PruningState
from llava.model.vision import cls_attention
from llava.pruning.methods.pre_llm import PreLLMMethod, VisualTokens
from llava.pruning.record import PruningRecord, StageRecord
from llava.pruning.span import compaction_index, last_valid_index, span_from_token_id


def visual_tokens(llava, input_ids: torch.Tensor, pixel_values: torch.Tensor, span: torch.Tensor, query: torch.Tensor) -> tuple[VisualTokens, torch.Tensor]:
    """What pre-LLM methods look at, from one pass of the vision tower; also the projected features ``[B, S, d]``."""
    layer = llava.config.vision_feature_layer
    if not isinstance(layer, int):
        raise ValueError(f"pre-LLM pruning needs a single vision_feature_layer, got {layer}")
    tower = llava.model.vision_tower
    hidden = tower(pixel_values.to(tower.dtype), output_hidden_states=True).hidden_states
    selected = hidden[layer]
    if llava.config.vision_feature_select_strategy == "default":
        selected = selected[:, 1:]
    features = llava.model.multi_modal_projector(selected)
    producing_layer = layer % len(hidden) - 1  # hidden[i] is the output of encoder layer i - 1
    embeddings = llava.get_input_embeddings()(input_ids)
    instruction = [embeddings[b, int(span[b, 1]) : int(query[b]) + 1] for b in range(input_ids.shape[0])]
    tokens = VisualTokens(
        features=features,
        vision_features=selected,
        cls_attention=lambda: cls_attention(tower.encoder.layers[producing_layer], hidden[producing_layer]),
        instruction_embeddings=instruction,
    )
    return tokens, features


def projected_features(llava, pixel_values: torch.Tensor) -> torch.Tensor:
    """``[B, S, d]`` the image features the LLM would receive (vision tower + projector)."""
    features = llava.model.get_image_features(
        pixel_values=pixel_values,
        vision_feature_layer=llava.config.vision_feature_layer,
        vision_feature_select_strategy=llava.config.vision_feature_select_strategy,
        return_dict=True,
    ).pooler_output
    return torch.stack(list(features))


def choose_prompt_tokens(
    llava, method: PreLLMMethod, input_ids: torch.Tensor, pixel_values: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, PruningState]:
    """``keep`` ``[B, N]`` (the prompt tokens the LLM sees), the projected features, and the new state."""
    batch, seq_len = input_ids.shape
    span = span_from_token_id(input_ids, llava.config.image_token_id)
    query = last_valid_index(attention_mask, batch, seq_len, input_ids.device)
    tokens, features = visual_tokens(llava, input_ids, pixel_values, span, query)
    started = time.perf_counter()
    selection = method.select_visual(tokens)
    selection_ms = (time.perf_counter() - started) * 1000.0
    if selection.replacement is not None:
        features = replaced_features(features, selection.indices.to(features.device), *selection.replacement)
    kept = selection.indices.to(input_ids.device) + span[:, :1]  # prompt positions of the kept image tokens
    positions = torch.arange(seq_len, device=input_ids.device)
    keep = ~((positions >= span[:, :1]) & (positions < span[:, 1:]))
    keep = keep.scatter(1, kept, True)
    record = PruningRecord(
        method.name, span.cpu(), llava.config.text_config.num_hidden_layers, params=method.params()
    )
    record.stages.append(StageRecord(0, kept.cpu(), selection.scores.detach().cpu(), selection.metadata, selection_ms))
    state = PruningState(record=record, prompt_ids=input_ids.clone(), prompt_mask=attention_mask.bool().clone())
    state.pre_llm_keep, state.pre_llm_features = keep, features
    return keep, features, state


def replaced_features(features: torch.Tensor, indices: torch.Tensor, columns: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """``features`` ``[B, S, d]`` with ``hidden[b, c]`` at image token ``indices[b, columns[b, c]]`` (differentiable)."""
    rows = indices.gather(1, columns.to(indices.device))  # [B, C] image token of each replaced column
    return features.scatter(1, rows[..., None].expand(-1, -1, features.shape[-1]), hidden.to(features.dtype))


def compacted_inputs(
    llava, input_ids: torch.Tensor, features: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (image features in place) and attention mask of the kept prompt tokens only."""
    embeddings = llava.get_input_embeddings()(input_ids)
    image_rows = (input_ids == llava.config.image_token_id)[..., None].expand_as(embeddings)
    embeddings = embeddings.masked_scatter(image_rows, features.to(embeddings.dtype))
    index = compaction_index(keep)
    return embeddings.gather(1, index[..., None].expand(-1, -1, embeddings.shape[-1])), attention_mask.gather(1, index)


def decode_mask(state: PruningState, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mask ``generate`` grows over the unpruned prompt, without the prompt columns the LLM never saw."""
    keep = state.pre_llm_keep
    prompt = keep.shape[1]
    kept_columns = attention_mask[:, :prompt][keep].view(keep.shape[0], -1)
    return torch.cat([kept_columns, attention_mask[:, prompt:]], dim=1)
