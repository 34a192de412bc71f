"""Benchmark methods: speed (TTFT, TPOT, throughput) side by side, memory (peak, KV bytes), perplexity, passkey."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from kvcompress.evaluation.passkey import PasskeyPrompt, passkey_correct
from kvcompress.evaluation.perplexity import strided_perplexity
from kvcompress.evaluation.query_agnostic import query_agnostic_generate
from kvcompress.evaluation.timing import PeakMemory, greedy_generate, prefill_flops, rotated
from kvcompress.methods.base import CompressionMethod


@dataclass(frozen=True)
class BenchmarkSettings:
    prompt: torch.Tensor  # [1, N] prompt for the speed runs
    new_tokens: int = 32
    warmup: int = 1
    repeats: int = 3
    ppl_max_length: int = 512
    ppl_stride: int = 256
    ppl_max_windows: int | None = 16


def measure_speed(model: nn.Module, methods: dict[str, CompressionMethod],
                  settings: BenchmarkSettings) -> dict[str, dict[str, float]]:
    """Speed and memory of every method, measured side by side.

    ``warmup`` untimed rounds, then ``repeats`` rounds; each round applies every method in turn, runs one
    greedy generation of ``settings.prompt`` and undoes it, so load on the machine hits every method
    alike; the order rotates by one method per round, so no method always runs first. Per method:
    median TTFT / TPOT, throughput from the median total time, the largest peak memory (and what it reads:
    ``peak_memory_source``, see :class:`~kvcompress.evaluation.timing.PeakMemory`), KV bytes after the run and
    the analytic prefill FLOPs.
    """
    device = next(model.parameters()).device
    runs: dict[str, list] = {name: [] for name in methods}
    peaks: dict[str, list] = {name: [] for name in methods}
    sources: dict[str, str | None] = dict.fromkeys(methods)
    flops: dict[str, float] = {}
    names = list(methods)
    for round_index in tqdm(range(settings.warmup + settings.repeats), desc="speed rounds", leave=False):
        for name in rotated(names, round_index):
            with methods[name].apply(model) as handle, PeakMemory(device) as memory:
                run = greedy_generate(model, settings.prompt, settings.new_tokens, handle.new_cache())
                flops[name] = prefill_flops(model, settings.prompt.shape[1]) / 1e9
            if round_index >= settings.warmup:
                runs[name].append(run)
                peaks[name].append(memory.peak_bytes)
                sources[name] = memory.source or sources[name]
    results = {}
    for name, timed in runs.items():
        known_peaks = [peak for peak in peaks[name] if peak is not None]
        results[name] = {
            "ttft_s": statistics.median(run.ttft_s for run in timed),
            "tpot_s": statistics.median(run.tpot_s for run in timed),
            "throughput_tok_s": settings.new_tokens / statistics.median(run.total_s for run in timed),
            "kv_bytes": timed[-1].kv_bytes,
            "peak_memory_bytes": max(known_peaks) if known_peaks else None,
            "peak_memory_source": sources[name],
            "prompt_tokens": settings.prompt.shape[1],
            "new_tokens": settings.new_tokens,
            "speed_repeats": len(timed),
            "prefill_gflops": flops[name],
        }
    return results


QUESTION_AWARE = "question_aware"  # the whole prompt in one prefill: a query-aware method sees the question
QUERY_AGNOSTIC = "query_agnostic"  # context prefilled (and compressed) first, then the question on that cache
PROTOCOLS = (QUESTION_AWARE, QUERY_AGNOSTIC)


def compressed_length(prompt: PasskeyPrompt, protocol: str = QUESTION_AWARE) -> int:
    """Tokens in the prefill the method compresses: the whole prompt, or the context alone."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; valid: {PROTOCOLS}")
    return prompt.input_ids.shape[1] if protocol == QUESTION_AWARE else prompt.context_ids.shape[1]


def measure_passkey(model: nn.Module, tokenizer: PreTrainedTokenizerBase, new_cache: Callable,
                    prompts: list[PasskeyPrompt], protocol: str = QUESTION_AWARE) -> dict[str, float]:
    """Fraction of prompts whose greedy answer contains the key, and the KV bytes at the end of one.

    ``protocol`` (:data:`PROTOCOLS`): :data:`QUESTION_AWARE` prefills each whole prompt;
    :data:`QUERY_AGNOSTIC` prefills its context first (see :mod:`kvcompress.evaluation.query_agnostic`) and
    also reports the KV bytes held right after that prefill (``passkey_context_kv_bytes``).
    """
    kv_bytes, context_bytes = [], []

    def generate(prompt: PasskeyPrompt, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        if protocol == QUESTION_AWARE:
            run = greedy_generate(model, input_ids, max_new_tokens, new_cache())
        else:
            split = query_agnostic_generate(model, prompt.context_ids, prompt.question_ids, max_new_tokens,
                                            new_cache())
            run = split.generation
            context_bytes.append(split.context_kv_bytes)
        kv_bytes.append(run.kv_bytes)
        return run.new_tokens

    lengths = [compressed_length(prompt, protocol) for prompt in prompts]
    correct = [passkey_correct(partial(generate, prompt), tokenizer, prompt)
               for prompt in tqdm(prompts, desc=f"passkey ({protocol})", leave=False)]
    result = {"passkey_accuracy": sum(correct) / len(correct), "passkey_prompts": len(correct),
              "passkey_tokens": sum(p.input_ids.shape[1] for p in prompts) / len(prompts),
              "passkey_kv_bytes": sum(kv_bytes) / len(kv_bytes), "passkey_protocol": protocol,
              "passkey_compressed_tokens": sum(lengths) / len(lengths)}
    if context_bytes:
        result["passkey_context_kv_bytes"] = sum(context_bytes) / len(context_bytes)
    return result


def measure_quality(model: nn.Module, tokenizer: PreTrainedTokenizerBase,
                    make_method: Callable[[int], CompressionMethod], settings: BenchmarkSettings,
                    text_tokens: torch.Tensor | None, passkey_prompts: list[PasskeyPrompt],
                    protocol: str = QUESTION_AWARE) -> dict:
    """Passkey accuracy and strided perplexity of one method; ``make_method(context_length)`` builds it for
    each task's context (passkey prompts, perplexity context), so budgets are matched per context: the
    tokens of the prefill the method compresses (the whole prompt or, query-agnostic, its context).
    Perplexity is query-agnostic by construction (its context is compressed before the targets come)."""
    result: dict = {}
    if passkey_prompts:
        lengths = [compressed_length(prompt, protocol) for prompt in passkey_prompts]
        with make_method(round(sum(lengths) / len(lengths))).apply(model) as handle:
            result.update(measure_passkey(model, tokenizer, handle.new_cache, passkey_prompts, protocol))
    if text_tokens is not None:
        with make_method(settings.ppl_max_length - settings.ppl_stride).apply(model) as handle:
            ppl = strided_perplexity(model, text_tokens, handle.new_cache, settings.ppl_max_length,
                                     settings.ppl_stride, settings.ppl_max_windows)
        result.update({"perplexity": ppl["perplexity"], "ppl_tokens": ppl["tokens"]})
    return result


COLUMNS = [
    ("method", "method", "{}"),
    ("ttft_s", "TTFT ms", "{:.1f}", 1000),
    ("tpot_s", "TPOT ms", "{:.2f}", 1000),
    ("throughput_tok_s", "tok/s", "{:.1f}"),
    ("peak_memory_bytes", "peak MiB", "{:.0f}", 1 / 2**20),
    ("kv_bytes", "KV KiB (speed run)", "{:.0f}", 1 / 1024),
    ("passkey_kv_bytes", "KV KiB (passkey)", "{:.0f}", 1 / 1024),
    ("prefill_gflops", "prefill GFLOPs", "{:.2f}"),
    ("perplexity", "PPL", "{:.3f}"),
    ("passkey_accuracy", "passkey acc", "{:.0%}"),
]


def markdown_table(results: list[dict]) -> str:
    """Results as a Markdown table, with TTFT, KV and perplexity relative to the first (full) row."""
    header = [column[1] for column in COLUMNS] + ["TTFT vs full", "KV vs full", "PPL vs full"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    base = results[0] if results else {}
    for result in results:
        cells = []
        for key, _, fmt, *scale in COLUMNS:
            value = result.get(key)
            cells.append("-" if value is None else fmt.format(value * scale[0] if scale else value))
        for key in ("ttft_s", "passkey_kv_bytes", "perplexity"):
            value, reference = result.get(key), base.get(key)
            cells.append("-" if value is None or not reference else f"{value / reference - 1:+.1%}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def save_results(results: list[dict], metadata: dict, out: Path) -> None:
    """Write ``results.json`` and ``results.md`` (called after every method)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"metadata": metadata, "results": results}, indent=1))
    (out / "results.md").write_text(markdown_table(results))
