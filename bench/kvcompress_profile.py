"""Per-op CPU profile of kvcompress methods: one prefill and a few decode steps per method, same input.

On ``--device cuda`` the profiler records the CUDA activity too and the wall times are synchronised; the op
tables stay self CPU time (the launch side).

For each method (registry names, ``name@classification``), ``torch.profiler`` records one greedy
prefill of ``--tokens`` WikiText-2 tokens into the method's cache and ``--decode`` single-token steps
after it (a warm-up generation runs first, unprofiled). Printed per method and phase: wall ms, then the
``--top`` ops by self CPU time with their call counts; with several methods, a table of the per-op
self-time difference of each method to the first. Timings of a loaded machine are only indicative; op
counts and the ops that appear are not.

    python -m bench.kvcompress_profile --methods full full_kvcompress positional+dead@gates \\
        --classification gates=docs/kvcompress_results/head_classification_gates_w128.json --window 128 \\
        --tokens 2048 --decode 16
    python -m bench.kvcompress_profile --methods full dead_zero dead --no-cache --tokens 1000 \\
        --classification gates=docs/kvcompress_results/head_classification_gates_w128.json
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from kvcompress.classification import HeadClassification
from kvcompress.evaluation.text import DEFAULT_TEXT, load_token_stream
from kvcompress.methods.registry import MethodSettings, build_method, kv_fraction
from kvcompress.models.loading import load_model_and_tokenizer
from toolkit_common.devices import synchronize
from toolkit_common.script_args import (
    apply_execution_flags,
    check_execution_flags,
    execution_flags,
    model_flag,
    text_flag,
    threads_flag,
)
from toolkit_common.transformers_compat import cache_kwargs


def op_table(prof: profile) -> dict[str, tuple[float, int]]:
    """``{op: (self CPU ms, calls)}`` of a finished profile."""
    return {event.key: (event.self_cpu_time_total / 1000.0, event.count) for event in prof.key_averages()}


@torch.no_grad()
def profile_method(model, handle, ids: torch.Tensor, decode: int, use_cache: bool) -> dict[str, dict]:
    """Profiles of the prefill (and of ``decode`` single-token steps) of one applied method."""
    phases = {}
    cache = handle.new_cache() if use_cache else None
    kwargs = cache_kwargs(cache) if use_cache else {}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ids.device.type == "cuda" else [])
    synchronize(ids.device)
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        logits = model(input_ids=ids, use_cache=use_cache, logits_to_keep=1, **kwargs).logits
        synchronize(ids.device)
        wall = time.perf_counter() - started
    phases["prefill"] = {"wall_ms": wall * 1000, "ops": op_table(prof)}
    if use_cache and decode:
        token = logits[:, -1].argmax(-1, keepdim=True)
        with profile(activities=activities) as prof:
            started = time.perf_counter()
            for _ in range(decode):
                token = model(input_ids=token, use_cache=True, **kwargs).logits[:, -1].argmax(-1, keepdim=True)
            synchronize(ids.device)
            wall = time.perf_counter() - started
        phases["decode"] = {"wall_ms": wall * 1000 / decode,
                            "ops": {op: (ms / decode, calls / decode) for op, (ms, calls) in op_table(prof).items()}}
    return phases


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     parents=[model_flag(), text_flag(DEFAULT_TEXT), threads_flag(), execution_flags()])
    parser.add_argument("--methods", nargs="+", default=["full", "full_kvcompress"])
    parser.add_argument("--classification", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--sinks", type=int, default=4)
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--decode", type=int, default=8, help="profiled single-token steps after the prefill")
    parser.add_argument("--no-cache", action="store_true", help="prefill with use_cache=False (bench.head_removal)")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)
    check_execution_flags(parser, args)
    execution = apply_execution_flags(args)
    classifications = {name: HeadClassification.load(path)
                       for name, _, path in (item.partition("=") for item in args.classification)}
    default = next(iter(classifications.values()), None)
    model, tokenizer = load_model_and_tokenizer(args.model, execution.dtype, execution.device)
    ids = load_token_stream(args.text, tokenizer, max_tokens=args.tokens)[None].to(execution.device)
    print(f"model={args.model} device={execution.device} dtype={execution.dtype_name} threads={execution.threads}")
    reference = next((c for c in classifications.values()), None)
    fraction = kv_fraction(reference, ids.shape[1], args.sinks, args.window) if reference else 0.5
    results = {}
    for spec in args.methods:
        name, _, source = spec.partition("@")
        settings = MethodSettings(classifications.get(source, default), args.sinks, args.window, ids.shape[1],
                                  fraction)
        with build_method(name, settings).apply(model) as handle:
            profile_method(model, handle, ids[:, : min(256, ids.shape[1])], 2, not args.no_cache)  # warm-up
            results[spec] = profile_method(model, handle, ids, args.decode, not args.no_cache)
    for spec, phases in results.items():
        for phase, data in phases.items():
            print(f"\n## {spec} {phase}: {data['wall_ms']:.1f} ms wall (per step for decode)")
            for op, (ms, calls) in sorted(data["ops"].items(), key=lambda item: -item[1][0])[: args.top]:
                print(f"  {op:<44}{ms:>10.2f} ms {calls:>8.1f} calls")
    base = args.methods[0]
    for spec in args.methods[1:]:
        for phase in results[spec]:
            diff: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
            for sign, source in ((1, results[spec][phase]["ops"]), (-1, results[base][phase]["ops"])):
                for op, (ms, calls) in source.items():
                    diff[op][0] += sign * ms
                    diff[op][1 if sign > 0 else 2] += calls
            print(f"\n## {spec} - {base}, {phase}: self ms per op (calls {spec} / {base})")
            for op, (ms, calls, base_calls) in sorted(diff.items(), key=lambda item: -abs(item[1][0]))[: args.top]:
                print(f"  {op:<44}{ms:>+10.2f} ms {calls:>8.1f} / {base_calls:<8.1f}")


if __name__ == "__main__":
    main()
