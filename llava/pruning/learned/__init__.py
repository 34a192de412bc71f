"""The learned pruner's inference parts: keep-logit heads, masks, checkpoints, text->vision attention, token merger."""
