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

import torch

from llava.model.language_model.pruning_state import PruningState
from llava.model.vision import cls_attention
from llava.pruning.methods.pre_llm import PreLLMMethod, VisualTokens
from llava.pruning.record import PruningRecord, StageRecord
from llava.pruning.selection import detached_values
from llava.pruning.span import compaction_index, last_valid_index, span_from_token_id
from toolkit_common.stopwatch import Stopwatch


def visual_tokens(
    llava, input_ids: torch.Tensor, pixel_values: torch.Tensor, bounds: list[tuple[int, int]]
) -> tuple[VisualTokens, torch.Tensor]:
    """What pre-LLM methods look at, from one pass of the vision tower; also the projected features ``[B, S, d]``.

    ``bounds``: per sample ``(start, end)`` of the instruction in the prompt (``instruction_bounds``).
    """
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
    instruction = [embeddings[b, start:end] for b, (start, end) in enumerate(bounds)]
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


def instruction_bounds(span: torch.Tensor, query: torch.Tensor) -> list[tuple[int, int]]:
    """Per sample ``(start, end)`` of the instruction, the text after the image up to the last prompt token
    (``span`` ``[B, 2]``, ``query`` ``[B]``).

    Its length differs between samples (left padding), so the slices need host integers: one copy of ``[B, 2]``
    read from the prompt's ids and mask, taken before the vision tower runs (the device queue holds only the
    span's input checks then), never after the image work was queued."""
    return [(start, end) for start, end in torch.stack([span[:, 1], query + 1], dim=1).tolist()]


def choose_prompt_tokens(
    llava, method: PreLLMMethod, input_ids: torch.Tensor, pixel_values: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, PruningState]:
    """``keep`` ``[B, N]`` (the prompt tokens the LLM sees), the projected features, and the new state.

    The record keeps the selection's tensors on the device and its stopwatch (``llava.pruning.record``)."""
    batch, seq_len = input_ids.shape
    span = span_from_token_id(input_ids, llava.config.image_token_id)
    query = last_valid_index(attention_mask, batch, seq_len, input_ids.device)
    tokens, features = visual_tokens(llava, input_ids, pixel_values, instruction_bounds(span, query))
    with Stopwatch(features.device) as watch:  # no synchronisation: read when the record is
        selection = method.select_visual(tokens)
    if selection.replacement is not None:
        features = replaced_features(features, selection.indices.to(features.device), *selection.replacement)
    kept = selection.indices.to(input_ids.device) + span[:, :1]  # prompt positions of the kept image tokens
    positions = torch.arange(seq_len, device=input_ids.device)
    keep = ~((positions >= span[:, :1]) & (positions < span[:, 1:]))
    keep = keep.scatter(1, kept, True)
    record = PruningRecord(method.name, span, llava.config.text_config.num_hidden_layers, params=method.params())
    record.stages.append(
        StageRecord(0, kept, selection.scores.detach(), detached_values(selection.device_metadata), watch)
    )
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
