"""Benchmark KV / head compression methods on a causal LM.

    python scripts/benchmark.py --model smollm2 \
        --classification statistics=results/attention_analysis_smollm2-135m/head_classification.json \
        --classification calibration=results/attention_analysis_smollm2-135m/head_classification_calibration.json \
        --methods full dead@calibration positional@statistics positional+dead@calibration streaming_llm snapkv

A method is ``name`` or ``name@classification``; StreamingLLM and SnapKV get the KV fraction of
``--budget-from`` (a ``positional+dead@...`` method) at the same context length, or ``--kv-fraction``.
Speed first, every method side by side (warm-up, then ``--repeats`` rounds that each time every method
once, medians; CUDA / MPS synchronised): TTFT, TPOT, throughput, peak memory (peak RSS on the CPU,
``torch.cuda.max_memory_allocated`` on CUDA, the driver's allocation on MPS), KV bytes, prefill FLOPs.
``--device`` / ``--dtype`` say where and in which precision the model runs (``results.json``'s metadata
records both). Then per method: strided
perplexity on ``--text`` (default WikiText-2 test) and passkey accuracy; each method's quality row is
appended to ``quality.jsonl`` as soon as it is measured and reused by a re-run with the same settings.
``results.json`` and ``results.md`` are rewritten after every method.

Several ``--prompt-lens`` are timed in this one process, one length after the other (methods interleaved
within each length; the baselines matched to ``--budget-from`` at that length); ``results.md`` has a section
per length with the ratios of TTFT, TPOT, peak RSS and KV bytes to ``full`` and to ``full_kvcompress`` (the
unmodified model on the kvcompress attention and cache; added to ``--methods``, saying so, whenever a method
other than ``full`` is compared without it). ``--speed-only`` (or ``--passkey-prompts 0
--no-perplexity``) skips the quality rows. The long-context table of issue 17:

    python scripts/benchmark.py --model smollm2 --threads 2 --window 128 \
        --classification gates=docs/kvcompress_results/head_classification_gates_w128.json \
        --methods full full_kvcompress dead@gates positional@gates positional+dead@gates streaming_llm snapkv \
        --budget-from positional+dead@gates --prompt-lens 2048 4096 8192 --new-tokens 64 \
        --warmup 1 --repeats 3 --speed-only --out results/long_context_smollm2-135m_gates_w128
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from kvcompress.classification import CLASSIFICATION_HINT, HeadClassification
from kvcompress.evaluation.benchmark import BenchmarkSettings, measure_quality, measure_speed
from kvcompress.evaluation.passkey import make_passkey_prompts
from kvcompress.evaluation.perplexity import stride_problem
from kvcompress.evaluation.speed_table import report, save_report
from kvcompress.evaluation.text import DEFAULT_TEXT, load_token_stream
from kvcompress.methods.registry import BASELINES, METHODS, MethodSettings, build_method, kv_fraction
from kvcompress.models.loading import load_model_and_tokenizer, model_problem, model_slug
from toolkit_common.cli import (
    AT_LEAST_0,
    AT_LEAST_1,
    FRACTION,
    Range,
    check_ranges,
    missing_file_problem,
    setting_error,
)
from toolkit_common.jsonl import JsonlAppender, read_jsonl
from toolkit_common.script_args import (
    apply_execution_flags,
    execution_flags,
    execution_problem,
    model_flag,
    out_flag,
    text_flag,
    threads_flag,
)

NUMERIC_FLAGS: dict[str, Range] = {
    "kv_fraction": FRACTION, "sinks": AT_LEAST_0, "window": AT_LEAST_1, "ppl_max_length": Range(2),
    "ppl_stride": AT_LEAST_1, "ppl_windows": AT_LEAST_0, "passkey_len": AT_LEAST_1, "passkey_prompts": AT_LEAST_0,
    "prompt_lens": AT_LEAST_1, "new_tokens": AT_LEAST_1, "warmup": AT_LEAST_0, "repeats": AT_LEAST_1,
    "threads": AT_LEAST_1,
}
"""The valid range of every numeric flag (checked before any model loads)."""
KVCOMPRESS_CONTROL = "full_kvcompress"
UNCOMPRESSED = ("full",)  # methods on the stock attention and cache: no control needed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[model_flag(), text_flag(DEFAULT_TEXT), out_flag(help="default results/benchmark_<model>"),
                 threads_flag(), execution_flags()])
    parser.add_argument("--methods", nargs="+", default=["full"], help=f"from {sorted(METHODS)}, optionally @name")
    parser.add_argument("--classification", action="append", default=[], metavar="NAME=PATH",
                        help="head_classification.json files; the first is the default")
    parser.add_argument("--budget-from", default=None, help="method whose KV fraction the baselines match")
    parser.add_argument("--kv-fraction", type=float, default=None, help="explicit KV fraction for the baselines")
    parser.add_argument("--sinks", type=int, default=4)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--ppl-max-length", type=int, default=512)
    parser.add_argument("--ppl-stride", type=int, default=256)
    parser.add_argument("--ppl-windows", type=int, default=16, help="number of strided windows (0: all)")
    parser.add_argument("--no-perplexity", action="store_true", help="skip perplexity (e.g. a passkey-only run)")
    parser.add_argument("--passkey-len", type=int, default=600)
    parser.add_argument("--passkey-prompts", type=int, default=20)
    parser.add_argument("--prompt-len", "--prompt-lens", dest="prompt_lens", type=int, nargs="+", default=[600],
                        help="prompt tokens of the speed runs; several lengths run one after the other")
    parser.add_argument("--speed-only", action="store_true", help="time the methods only: no passkey, no perplexity")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    check_ranges(parser, args, NUMERIC_FLAGS)
    if problem := stride_problem(args.ppl_stride, args.ppl_max_length):
        setting_error(parser, problem)
    for item in args.classification:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            setting_error(parser, f"--classification {item!r}: expected NAME=PATH")
        if problem := missing_file_problem("--classification", path, CLASSIFICATION_HINT):
            setting_error(parser, problem)
    given = {item.partition("=")[0] for item in args.classification}
    if problems := [problem for spec in [*args.methods, *filter(None, [args.budget_from])]
                    if (problem := method_spec_problem(spec, given))]:
        setting_error(parser, "; ".join(problems))
    if problem := execution_problem(args):
        setting_error(parser, problem)
    if problem := model_problem(args.model):  # last: the flags' own errors come first, whatever is installed
        setting_error(parser, problem)
    args.methods = with_kvcompress_control(args.methods)
    return args


def with_kvcompress_control(specs: list[str]) -> list[str]:
    """``specs`` with ``full_kvcompress`` added (after ``full``, said on stderr) when a method on the kvcompress
    attention and cache is compared without it: it splits that method's change over ``full`` into the cache
    layout's share and the method's own (without it, ``dead`` reads as +6-11 % KV over ``full``)."""
    names = [spec.partition("@")[0] for spec in specs]
    if KVCOMPRESS_CONTROL in names or all(name in UNCOMPRESSED for name in names):
        return specs
    position = names.index("full") + 1 if "full" in names else 0
    print(f"note: added {KVCOMPRESS_CONTROL} to --methods (the control every kvcompress method is compared "
          "with: the unmodified model on the kvcompress attention and cache)", file=sys.stderr)
    return [*specs[:position], KVCOMPRESS_CONTROL, *specs[position:]]


def method_spec_problem(spec: str, classification_names: set[str]) -> str | None:
    """Why ``NAME[@CLASSIFICATION]`` names no method or no given classification, or None."""
    name, _, source = spec.partition("@")
    if name not in METHODS:
        return f"unknown method {name!r} in {spec!r}; valid methods: {', '.join(sorted(METHODS))}"
    if source and source not in classification_names:
        return f"{spec!r}: no --classification named {source!r}; given: {', '.join(sorted(classification_names)) or 'none'}"
    return None


def parse_method(spec: str, classifications: dict[str, HeadClassification]) -> tuple[str, HeadClassification | None]:
    name, _, source = spec.partition("@")
    if name not in METHODS:
        raise SystemExit(f"unknown method {name!r}; valid methods: {sorted(METHODS)}")
    if source and source not in classifications:
        raise SystemExit(f"unknown classification {source!r}; given: {sorted(classifications)}")
    default = next(iter(classifications.values()), None)
    return name, classifications[source] if source else default


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    execution = apply_execution_flags(args)
    classifications = {}
    for item in args.classification:
        name, _, path = item.partition("=")
        try:
            classifications[name] = HeadClassification.load(path)
        except ValueError as error:
            raise SystemExit(f"benchmark.py: error: --classification {error}") from None
    specs = [(spec, *parse_method(spec, classifications)) for spec in args.methods]
    out = Path(args.out or f"results/benchmark_{model_slug(args.model)}")
    model, tokenizer = load_model_and_tokenizer(args.model, execution.dtype, execution.device)
    for _, _, classification in specs:
        if classification is not None:
            classification.check_model(model)
    speed_only = args.speed_only or (args.passkey_prompts == 0 and args.no_perplexity)
    no_perplexity = args.no_perplexity or speed_only
    perplexity_tokens = 0 if no_perplexity else args.ppl_stride * (args.ppl_windows or 10**6) + args.ppl_max_length
    text = load_token_stream(args.text, tokenizer, max_tokens=max(*args.prompt_lens, perplexity_tokens) + 1) \
        if Path(args.text).is_file() else None
    if text is None and not no_perplexity:
        print(f"text file {args.text} is absent: perplexity skipped")
    prompts = [] if speed_only else make_passkey_prompts(tokenizer, args.passkey_len, args.passkey_prompts)
    if not speed_only and not prompts and (text is None or no_perplexity):
        raise SystemExit("nothing to measure quality on: give --passkey-prompts > 0 or a perplexity text "
                         "(or --speed-only)")
    speed_prompts = {length: speed_prompt(text, prompts, length, args.text) for length in args.prompt_lens}

    def baseline_fraction(context: int) -> float:
        if args.kv_fraction is not None:
            return args.kv_fraction
        source = args.budget_from or next((s for s, n, _ in specs if n == "positional+dead"), None)
        if source is None:
            return 0.5
        _, reference = parse_method(source, classifications)
        return kv_fraction(reference, context, args.sinks, args.window)

    def benchmark_settings(prompt: torch.Tensor) -> BenchmarkSettings:
        return BenchmarkSettings(prompt, args.new_tokens, args.warmup, args.repeats, args.ppl_max_length,
                                 args.ppl_stride, args.ppl_windows or None)

    metadata = {key: value for key, value in vars(args).items()}
    metadata.update({**execution.metadata(), "device": str(next(model.parameters()).device),
                     "requested_device": args.device})

    def make_method(spec: str, context: int):
        _, name, classification = next(item for item in specs if item[0] == spec)
        method_settings = MethodSettings(classification, args.sinks, args.window, context, baseline_fraction(context))
        return build_method(name, method_settings)

    speed_rows: list[dict] = []
    for prompt in speed_prompts.values():
        print(f"timing {len(specs)} methods side by side at {prompt.shape[1]} prompt tokens "
              f"({args.warmup} warm-up + {args.repeats} rounds)")
        speed = measure_speed(model, {spec: make_method(spec, prompt.shape[1]) for spec, _, _ in specs},
                              benchmark_settings(prompt))
        for spec, name, _ in specs:
            row = {"method": spec, **speed[spec]}
            if name in BASELINES:
                row["kv_fraction_speed"] = baseline_fraction(prompt.shape[1])
            speed_rows.append(row)
        save_report(speed_rows, metadata, out)
    if speed_only:
        print(report(speed_rows))
        return
    quality_log = out / "quality.jsonl"
    known = {row["key"]: row["quality"] for row in (read_jsonl(quality_log)[0] if quality_log.is_file() else [])}
    quality: dict[str, dict] = {}
    for spec, name, classification in tqdm(specs, desc="methods"):
        budget = baseline_fraction(prompts[0].input_ids.shape[1] if prompts else args.prompt_lens[0]) \
            if name in BASELINES else None
        key = quality_key(spec, classification, args, budget)
        if key not in known:
            known[key] = measure_quality(model, tokenizer, lambda context, spec=spec: make_method(spec, context),
                                         benchmark_settings(next(iter(speed_prompts.values()))),
                                         None if no_perplexity else text, prompts)
            with JsonlAppender(quality_log) as appender:
                appender.write({"key": key, "method": spec, "quality": known[key]})
        quality[spec] = {**known[key], **({"kv_fraction_budget": budget} if budget is not None else {})}
        save_report([{**row, **quality.get(row["method"], {})} for row in speed_rows], metadata, out)
    print(report([{**row, **quality[row["method"]]} for row in speed_rows]))


def speed_prompt(text: torch.Tensor | None, prompts: list, length: int, text_path: str) -> torch.Tensor:
    """The speed runs read ``length`` tokens of the text (a passkey prompt only when there is no text)."""
    if text is not None and text.shape[-1] >= length:
        return text[None, :length]
    if prompts:
        prompt = prompts[len(prompts) // 2].input_ids
        print(f"text {text_path} is absent or shorter than --prompt-len {length}: the speed runs use a "
              f"{prompt.shape[-1]}-token passkey prompt")
        return prompt
    raise SystemExit(f"--prompt-len {length}: the text {text_path} holds "
                     f"{0 if text is None else text.shape[-1]} tokens and there is no passkey prompt")


def quality_key(spec: str, classification: HeadClassification | None, args: argparse.Namespace,
                budget: float | None) -> str:
    """What a quality row depends on: the method, its classification's labels, the evaluation settings and,
    for a baseline, the KV fraction it is given (so rows of other methods survive a change of budget)."""
    settings = {name: getattr(args, name) for name in (
        "model", "sinks", "window", "text", "ppl_max_length", "ppl_stride", "ppl_windows", "no_perplexity",
        "passkey_len", "passkey_prompts")}
    if getattr(args, "dtype", "float32") != "float32":  # float32 rows keep the keys they had before --dtype
        settings["dtype"] = args.dtype
    labels = None if classification is None else classification.labels
    return hashlib.sha1(json.dumps([spec, labels, settings, budget], sort_keys=True).encode()).hexdigest()[:16]


if __name__ == "__main__":
    main()
