"""One pruning method per module; importing this package registers them all."""

from llava.pruning.methods import fastv, random_keep  # noqa: F401
