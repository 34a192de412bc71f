"""One pruning method per module; importing this package registers them all."""

import llava.pruning.methods.learned  # noqa: F401
from llava.pruning.methods import fastv, random_keep  # noqa: F401
