"""One pruning method per module; importing this package registers them all."""

from llava.pruning.methods import (  # noqa: F401
    ablation_a,
    cdpruner,
    fastv,
    fastv_fine_head,
    learned,
    learned_merger,
    pdrop,
    random_keep,
    sparsevlm,
    vispruner,
)
