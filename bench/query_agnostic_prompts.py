"""The one prompt file both sides of the query-agnostic benchmark read (JSONL, token ids only).

One record per item, ``task`` naming its set:

* ``passkey_<L>`` (``kind = "passkey"``): ``context_ids``, ``question_ids`` (one tokenization of the
  whole prompt, cut at the first token of the question), ``answer`` (the key), ``depth``, ``length``
  (prompt tokens), ``max_new_tokens`` (answer tokens + 1, as :func:`~kvcompress.evaluation.passkey.passkey_correct`);
* ``perplexity`` (``kind = "perplexity"``): a strided window's ``context_ids`` (``max_length - stride``
  tokens) and ``target_ids`` (``stride`` tokens), as :func:`~kvcompress.evaluation.perplexity.strided_perplexity`
  cuts them.

The kvpress side (``bench/kvpress_rows.py``) reads these ids and never tokenises, so both sides see
identical inputs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from kvcompress.evaluation.passkey import PasskeyPrompt
from toolkit_common.jsonl import read_jsonl_strict, write_jsonl

PERPLEXITY_TASK = "perplexity"


def passkey_task(length: int) -> str:
    """Task name of the passkey prompts made for a target ``length`` (e.g. ``passkey_1000``)."""
    return f"passkey_{length}"


def passkey_record(task: str, prompt: PasskeyPrompt) -> dict:
    return {"kind": "passkey", "task": task, "context_ids": prompt.context_ids[0].tolist(),
            "question_ids": prompt.question_ids[0].tolist(), "answer": prompt.passkey, "depth": prompt.depth,
            "length": prompt.input_ids.shape[1], "max_new_tokens": prompt.answer_ids.shape[1] + 1}


def perplexity_windows(tokens: torch.Tensor, max_length: int, stride: int, max_windows: int | None) -> list[dict]:
    """The windows of :func:`~kvcompress.evaluation.perplexity.strided_perplexity` (starts every ``stride``
    tokens, the first ``max_windows``) as records: context ``max_length - stride`` tokens, then ``stride`` targets."""
    context = max_length - stride
    starts = list(range(0, tokens.numel() - max_length + 1, stride))[:max_windows]
    return [{"kind": "perplexity", "task": PERPLEXITY_TASK, "context_ids": tokens[s : s + context].tolist(),
             "target_ids": tokens[s + context : s + max_length].tolist()} for s in starts]


def write_prompt_file(path: Path, passkey: dict[str, list[PasskeyPrompt]], windows: list[dict]) -> str:
    """Write the prompt file; returns its content hash (rows measured on other prompts are not reused)."""
    records = [passkey_record(task, prompt) for task, prompts in passkey.items() for prompt in prompts] + windows
    write_jsonl(path, records)
    return file_digest(path)


def file_digest(path: Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:16]


def read_prompt_file(path: Path) -> dict[str, list[dict]]:
    """Records by task."""
    tasks: dict[str, list[dict]] = {}
    for record in read_jsonl_strict(path, ("kind", "task", "context_ids")):
        tasks.setdefault(record["task"], []).append(record)
    return tasks
