"""LLaVA's serving entry points: ``python -m llava.serve.cli`` (an interactive chat about one image)."""
