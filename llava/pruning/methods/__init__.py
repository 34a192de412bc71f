"""One pruning method per module; importing this package registers them all."""

import llava.pruning.methods.learned  # noqa: F401
from llava.pruning.methods import (  # noqa: F401
    ablation_a,
    cdpruner,
    fastv,
    fastv_fine_head,
    pdrop,
    random_keep,
    sparsevlm,
    vispruner,
)
