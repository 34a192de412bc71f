"""The engine's soft mode (training): unpruned == the model; saturated soft masks == the engine's hard removal."""

import pytest
import torch

from llava.model.tiny import build_tiny_llava, build_tiny_tokenizer
from llava.pruning.learned.checkpoint import read_checkpoint
from llava.pruning.methods.learned import LearnedPruning, load_pruner
from llava.pruning.registry import build_method
from llava.train.pruner.data import training_batch
from llava.train.pruner.training import multimodal_embeddings, stage_forward
from tests.train.conftest import LAYERS, NUM_LAYERS, write_checkpoint


@pytest.fixture(scope="module")
def llava():
    return build_tiny_llava(seed=0, text_overrides={"num_hidden_layers": NUM_LAYERS})


def batch_for(llava, size: int, seed: int):
    return training_batch("synthetic", 0, size, seed, build_tiny_tokenizer(), llava.config.image_token_id, 576)


@torch.no_grad()
def test_without_pruner_it_equals_the_model_on_a_left_padded_batch(llava):
    batch = batch_for(llava, 3, seed=4)
    assert batch.attention_mask.sum(dim=1).unique().numel() > 1  # real padding
    out = stage_forward(llava, multimodal_embeddings(llava, batch.input_ids, batch.pixel_values), batch, LAYERS, None)
    assert len(out.stage_states) == len(LAYERS) and out.stage_logits == []
    for row in range(3):
        length = int(batch.attention_mask[row].sum())
        single = llava(
            input_ids=batch.input_ids[row : row + 1, -length:], pixel_values=batch.pixel_values[row : row + 1]
        )
        torch.testing.assert_close(out.logits[row, -length:], single.logits[0], atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_saturated_soft_masks_equal_hard_removal_through_the_engine(llava, tmp_path):
    # |logits| far above the largest logistic noise (~14 here): the Gumbel samples cannot flip a decision
    checkpoint = write_checkpoint(tmp_path / "pruner.pt", use_attn_residual=True, scale=1e5)
    batch = batch_for(llava, 1, seed=5)
    embeds = multimodal_embeddings(llava, batch.input_ids, batch.pixel_values)
    soft_method = LearnedPruning.from_pruner(load_pruner(checkpoint), 1e-3, torch.Generator().manual_seed(0))
    soft = stage_forward(llava, embeds, batch, LAYERS, soft_method)
    with llava.pruning(build_method("learned", {"pruner_checkpoint": checkpoint})):
        hard = llava(input_ids=batch.input_ids, pixel_values=batch.pixel_values, prune_query_index=batch.query_index)
        stages = llava.language_model.last_pruning_record.stages
    start = int(batch.span[0, 0])
    for stage, keep in zip(stages, soft.cumulative_keep, strict=True):
        assert torch.equal(stage.kept_index[0] - start, (keep[0] > 0.5).nonzero()[:, 0])
    assert 0 < stages[-1].kept_index.shape[1] < stages[0].kept_index.shape[1] < 576
    torch.testing.assert_close(soft.logits[:, -1], hard.logits[:, -1], atol=1e-3, rtol=1e-3)
    assert read_checkpoint(checkpoint)["pruner_config"]["use_attn_residual"]
