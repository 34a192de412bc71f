"""What ``llava`` and ``kvcompress`` share, so that each package stands alone: the transformers cache
argument's name, and JSON-lines record files (crash-safe appends, per-line errors)."""
