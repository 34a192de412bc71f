"""Benchmark KV / head compression methods on a causal LM.

    python scripts/benchmark.py --model smollm2 \
        --classification statistics=results/attention_analysis_smollm2-135m/head_classification.json \
        --classification calibration=results/attention_analysis_smollm2-135m/head_classification_calibration.json \
        --methods full dead@calibration positional@statistics positional+dead@calibration streaming_llm snapkv

A method is ``name`` or ``name@classification``; StreamingLLM and SnapKV get the KV fraction of
``--budget-from`` (a ``positional+dead@...`` method) at the same context length, or ``--kv-fraction``.
Speed first, every method side by side (warm-up, then ``--repeats`` rounds that each time every method
once, medians): TTFT, TPOT, throughput, peak memory, KV bytes, prefill FLOPs. Then per method: strided
perplexity on ``--text`` (default WikiText-2 test) and passkey accuracy; each method's quality row is
appended to ``quality.jsonl`` as soon as it is measured and reused by a re-run with the same settings.
``results.json`` and ``results.md`` are rewritten after every method.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from kvcompress.classification import CLASSIFICATION_HINT, HeadClassification
from kvcompress.evaluation.benchmark import (
    BenchmarkSettings,
    markdown_table,
    measure_quality,
    measure_speed,
    save_results,
)
from kvcompress.evaluation.passkey import make_passkey_prompts
from kvcompress.evaluation.text import DEFAULT_TEXT, load_token_stream
from kvcompress.methods.registry import BASELINES, METHODS, MethodSettings, build_method, kv_fraction
from kvcompress.models.loading import load_model_and_tokenizer, model_problem, model_slug
from toolkit_common.cli import missing_file_problem, setting_error
from toolkit_common.jsonl import JsonlAppender, read_jsonl


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--methods", nargs="+", default=["full"], help=f"from {sorted(METHODS)}, optionally @name")
    parser.add_argument("--classification", action="append", default=[], metavar="NAME=PATH",
                        help="head_classification.json files; the first is the default")
    parser.add_argument("--budget-from", default=None, help="method whose KV fraction the baselines match")
    parser.add_argument("--kv-fraction", type=float, default=None, help="explicit KV fraction for the baselines")
    parser.add_argument("--sinks", type=int, default=4)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--text", default=str(DEFAULT_TEXT))
    parser.add_argument("--ppl-max-length", type=int, default=512)
    parser.add_argument("--ppl-stride", type=int, default=256)
    parser.add_argument("--ppl-windows", type=int, default=16, help="number of strided windows (0: all)")
    parser.add_argument("--no-perplexity", action="store_true", help="skip perplexity (e.g. a passkey-only run)")
    parser.add_argument("--passkey-len", type=int, default=600)
    parser.add_argument("--passkey-prompts", type=int, default=20)
    parser.add_argument("--prompt-len", type=int, default=600, help="prompt tokens of the speed runs")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args()
    if problem := model_problem(args.model):
        setting_error(parser, problem)
    for item in args.classification:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            setting_error(parser, f"--classification {item!r}: expected NAME=PATH")
        if problem := missing_file_problem("--classification", path, CLASSIFICATION_HINT):
            setting_error(parser, problem)
    return args


def parse_method(spec: str, classifications: dict[str, HeadClassification]) -> tuple[str, HeadClassification | None]:
    name, _, source = spec.partition("@")
    if name not in METHODS:
        raise SystemExit(f"unknown method {name!r}; valid methods: {sorted(METHODS)}")
    if source and source not in classifications:
        raise SystemExit(f"unknown classification {source!r}; given: {sorted(classifications)}")
    default = next(iter(classifications.values()), None)
    return name, classifications[source] if source else default


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    classifications = {}
    for item in args.classification:
        name, _, path = item.partition("=")
        classifications[name] = HeadClassification.load(path)
    specs = [(spec, *parse_method(spec, classifications)) for spec in args.methods]
    out = Path(args.out or f"results/benchmark_{model_slug(args.model)}")
    model, tokenizer = load_model_and_tokenizer(args.model)
    for _, _, classification in specs:
        if classification is not None:
            classification.check_model(model)
    perplexity_tokens = 0 if args.no_perplexity else args.ppl_stride * (args.ppl_windows or 10**6) + args.ppl_max_length
    text = load_token_stream(args.text, tokenizer, max_tokens=max(args.prompt_len, perplexity_tokens) + 1) \
        if Path(args.text).is_file() else None
    if text is None and not args.no_perplexity:
        print(f"text file {args.text} is absent: perplexity skipped")
    prompts = make_passkey_prompts(tokenizer, args.passkey_len, args.passkey_prompts)
    if not prompts and (text is None or args.no_perplexity):
        raise SystemExit("nothing to measure quality on: give --passkey-prompts > 0 or a perplexity text")
    # the speed runs read --prompt-len tokens of the text (a passkey prompt only when there is no text)
    if text is not None and text.shape[-1] >= args.prompt_len:
        speed_prompt = text[None, : args.prompt_len]
    elif prompts:
        print(f"text {args.text} is absent or shorter than --prompt-len {args.prompt_len}: the speed runs use a "
              f"{prompts[len(prompts) // 2].input_ids.shape[-1]}-token passkey prompt")
        speed_prompt = prompts[len(prompts) // 2].input_ids
    else:
        raise SystemExit(f"--prompt-len {args.prompt_len}: the text {args.text} holds only {text.shape[-1]} tokens")

    def baseline_fraction(context: int) -> float:
        if args.kv_fraction is not None:
            return args.kv_fraction
        source = args.budget_from or next((s for s, n, _ in specs if n == "positional+dead"), None)
        if source is None:
            return 0.5
        _, reference = parse_method(source, classifications)
        return kv_fraction(reference, context, args.sinks, args.window)

    settings = BenchmarkSettings(speed_prompt, args.new_tokens, args.warmup, args.repeats, args.ppl_max_length,
                                 args.ppl_stride, args.ppl_windows or None)
    metadata = {key: value for key, value in vars(args).items()}
    metadata.update({"device": str(next(model.parameters()).device), "threads": torch.get_num_threads()})

    def make_method(spec: str, context: int):
        _, name, classification = next(item for item in specs if item[0] == spec)
        method_settings = MethodSettings(classification, args.sinks, args.window, context, baseline_fraction(context))
        return build_method(name, method_settings)

    print(f"timing {len(specs)} methods side by side ({args.warmup} warm-up + {args.repeats} rounds)")
    speed = measure_speed(model, {spec: make_method(spec, speed_prompt.shape[1]) for spec, _, _ in specs}, settings)
    quality_log = out / "quality.jsonl"
    known = {row["key"]: row["quality"] for row in (read_jsonl(quality_log)[0] if quality_log.is_file() else [])}
    results = []
    for spec, name, classification in tqdm(specs, desc="methods"):
        budget = baseline_fraction(prompts[0].input_ids.shape[1] if prompts else speed_prompt.shape[1]) \
            if name in BASELINES else None
        key = quality_key(spec, classification, args, budget)
        if key not in known:
            known[key] = measure_quality(model, tokenizer, lambda context, spec=spec: make_method(spec, context),
                                         settings, None if args.no_perplexity else text, prompts)
            with JsonlAppender(quality_log) as appender:
                appender.write({"key": key, "method": spec, "quality": known[key]})
        result = {"method": spec, **speed[spec], **known[key]}
        if budget is not None:
            result["kv_fraction_budget"] = budget
        results.append(result)
        save_results(results, metadata, out)
    print(markdown_table(results))


def quality_key(spec: str, classification: HeadClassification | None, args: argparse.Namespace,
                budget: float | None) -> str:
    """What a quality row depends on: the method, its classification's labels, the evaluation settings and,
    for a baseline, the KV fraction it is given (so rows of other methods survive a change of budget)."""
    settings = {name: getattr(args, name) for name in (
        "model", "sinks", "window", "text", "ppl_max_length", "ppl_stride", "ppl_windows", "no_perplexity",
        "passkey_len", "passkey_prompts")}
    labels = None if classification is None else classification.labels
    return hashlib.sha1(json.dumps([spec, labels, settings, budget], sort_keys=True).encode()).hexdigest()[:16]


if __name__ == "__main__":
    main()
