"""Shared helpers of the learned-pruner tests: an 8-layer tiny LLaVA and random pruner checkpoints."""

import torch

from llava.pruning.learned.checkpoint import pruner_config_dict
from llava.pruning.learned.heads import LayerSpecificPruner, PrunerConfig
from toolkit_common.training import save_checkpoint

LAYERS, NUM_LAYERS = [2, 4, 6], 8


def write_checkpoint(path, use_attn_residual: bool, layers=LAYERS, seed: int = 0, scale: float = 20.0) -> str:
    """A random pruner checkpoint for a width-64 model; the last layer scaled by ``scale``, bias 0."""
    torch.manual_seed(seed)
    config = PrunerConfig(
        d_model=64, pruning_layers=layers, hidden_dim=32, use_attn_residual=use_attn_residual, attn_residual_weight=50.0
    )
    pruner = LayerSpecificPruner(config)
    with torch.no_grad():  # logits spread widely around 0, so every stage keeps some tokens and drops others
        for head in pruner.heads.values():
            head.mlp[-1].reset_parameters()  # random, not the zero start of a fresh pruner
            head.mlp[-1].weight.mul_(scale)
            head.mlp[-1].bias.zero_()
    save_checkpoint(path, {"pruner_config": pruner_config_dict(pruner), "pruner": pruner.state_dict()})
    return str(path)


def write_merger_checkpoint(path, num_outputs: int, d_model: int = 64, seed: int = 0) -> str:
    """A random ``TokenMerger`` checkpoint (``M = num_outputs``) for a width-``d_model`` model."""
    from llava.pruning.learned.merger import TokenMerger

    torch.manual_seed(seed)
    config = {"d_model": d_model, "num_outputs": num_outputs, "num_heads": 4}
    save_checkpoint(path, {"merger_config": config, "merger": TokenMerger(**config).state_dict()})
    return str(path)
