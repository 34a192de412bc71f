"""Benchmark scorers and submission converters, one module per benchmark, each with a ``main``.

Run one as ``python -m llava.eval.scorers.<name> --help``.
"""
