"""LLaVA-style evaluation: answer benchmarks with a (pruned) LLaVA, score them, summarise the results.

Entry points: ``model_vqa_loader``, ``model_vqa``, ``model_vqa_science``, ``model_vqa_mmbench``
(answering), ``scorers.<benchmark>`` (scoring), ``chunking`` (merging chunk answers), ``summarize``
(tables and plots). See ``docs/eval.md``.
"""
