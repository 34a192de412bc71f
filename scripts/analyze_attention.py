"""Analyse attention heads of a decoder LM: statistics, classifications and plots.

    python scripts/analyze_attention.py --model smollm2
    python scripts/analyze_attention.py --model EleutherAI/pythia-70m --lengths 256 512 1024 2048

Writes ``results/attention_analysis_<model>/``: ``run.json`` (model, device, dtype, threads; each classification's
``parameters`` repeat model, device and dtype), ``statistics.json`` (main length),
``statistics_by_length.json``, ``head_classification.json`` (statistics classifier),
``head_classification_calibration.json`` (with ``--calibrate``), ``head_classification_gates_w<W>.json``
(with ``--optimize-gates``: DuoAttention-style gates trained on longer calibration sequences, see
``kvcompress.analysis.gates``; checkpoint ``gates_w<W>.pt``, resumed on re-run) and the plots. Every file is written
as soon as its step finishes; the calibration appends each measured cost to ``calibration_costs.jsonl``
and a re-run resumes from it. Calibration text comes from ``--calibration-text`` (WikiText-2 *valid*
by default, so the test split used for perplexity stays unseen) and its passkey prompts use another
seed than the benchmark's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kvcompress.adapters import adapter_for
from kvcompress.analysis.calibration import CalibrationConfig, CalibrationSet, classify_by_calibration
from kvcompress.analysis.classify import StatisticsThresholds, classify_by_statistics
from kvcompress.analysis.collector import HeadStatistics, collect_head_statistics
from kvcompress.analysis.gates import GateTrainingConfig, classify_by_gates, train_gates
from kvcompress.analysis.plots import (
    plot_classification,
    plot_entropy_heatmap,
    plot_gates,
    plot_position_preference,
    plot_statistics_vs_length,
)
from kvcompress.analysis.statistics import StatisticsConfig
from kvcompress.evaluation.passkey import make_passkey_prompts
from kvcompress.evaluation.text import DEFAULT_TEXT, load_token_stream, split_windows
from kvcompress.models.loading import load_model_and_tokenizer, model_problem, model_slug
from toolkit_common.cli import (
    AT_LEAST_0,
    AT_LEAST_1,
    FRACTION,
    POSITIVE,
    SHARE,
    Range,
    check_ranges,
    missing_file_problem,
    setting_error,
)
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
    **dict.fromkeys(("seq_len", "samples", "lengths", "chunk_rows", "local_window", "calibration_text_len",
                     "calibration_prompt_len", "calibration_window", "gate_text_len", "gate_prompt_len", "threads"),
                    AT_LEAST_1),
    **dict.fromkeys(("sinks", "calibration_texts", "calibration_prompts", "window_candidates", "removal_candidates",
                     "gate_texts", "gate_prompts", "gate_steps", "dead_max_output_ratio", "max_cost", "max_joint_cost",
                     "max_dead_joint_cost", "gate_window_penalty", "gate_head_penalty"), AT_LEAST_0),
    **dict.fromkeys(("positional_min_window_mass", "positional_max_entropy", "dead_min_entropy", "window_budget",
                     "dead_budget"), SHARE),
    "gate_lr": POSITIVE,
    "gate_threshold": FRACTION,
}
"""The valid range of every numeric flag (checked before any model loads)."""


def text_problems(args: argparse.Namespace) -> list[str]:
    """Text files the run reads that are missing: ``--text`` always, ``--calibration-text`` for the
    calibration or the gates when they read text windows."""
    needed = [("--text", args.text)]
    if (args.calibrate and args.calibration_texts) or (args.optimize_gates and args.gate_texts):
        needed.append(("--calibration-text", args.calibration_text))
    return [problem for flag, path in needed if (problem := missing_file_problem(flag, path))]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[model_flag(), text_flag(DEFAULT_TEXT, help="text file for the statistics"),
                 out_flag(help="output folder (default results/attention_analysis_<model>)"),
                 threads_flag(), execution_flags()])
    parser.add_argument("--seq-len", type=int, default=1024, help="main sequence length")
    parser.add_argument("--samples", type=int, default=4, help="windows at the main length")
    parser.add_argument("--lengths", type=int, nargs="*", default=[128, 256, 512, 1024, 2048],
                        help="lengths for statistics vs sequence length (one window each)")
    parser.add_argument("--chunk-rows", type=int, default=256)
    parser.add_argument("--sinks", type=int, default=4)
    parser.add_argument("--local-window", type=int, default=64)
    parser.add_argument("--positional-min-window-mass", type=float, default=0.8)
    parser.add_argument("--positional-max-entropy", type=float, default=0.6)
    parser.add_argument("--dead-min-entropy", type=float, default=0.9)
    parser.add_argument("--dead-max-output-ratio", type=float, default=0.1)
    parser.add_argument("--calibrate", action="store_true", help="also run the calibration classifier")
    parser.add_argument("--calibration-text", default=str(DEFAULT_TEXT.with_name("valid.txt")))
    parser.add_argument("--calibration-texts", type=int, default=2, help="text windows (0: prompts only)")
    parser.add_argument("--calibration-text-len", type=int, default=512)
    parser.add_argument("--calibration-prompts", type=int, default=3)
    parser.add_argument("--calibration-prompt-len", type=int, default=600)
    parser.add_argument("--calibration-window", type=int, default=None,
                        help="recent window of windowed KV groups (default --local-window); another value "
                             "writes head_classification_calibration_w<W>.json")
    parser.add_argument("--window-budget", type=float, default=0.5, help="max fraction of KV groups windowed")
    parser.add_argument("--dead-budget", type=float, default=0.1, help="max fraction of heads removed")
    parser.add_argument("--max-cost", type=float, default=0.05)
    parser.add_argument("--max-joint-cost", type=float, default=0.05,
                        help="joint cost limit of removed heads + windowed groups")
    parser.add_argument("--max-dead-joint-cost", type=float, default=0.01, help="joint cost limit of removed heads")
    parser.add_argument("--window-candidates", type=int, default=0,
                        help="calibrate windowing only for the N KV groups with the largest window mass (0: all)")
    parser.add_argument("--removal-candidates", type=int, default=0,
                        help="calibrate removal only for the N heads with the lowest output ratio (0: all)")
    parser.add_argument("--optimize-gates", action="store_true", help="also run the gate-optimised classifier")
    parser.add_argument("--gate-texts", type=int, default=4, help="calibration text windows for the gates")
    parser.add_argument("--gate-text-len", type=int, default=1024)
    parser.add_argument("--gate-prompts", type=int, default=4)
    parser.add_argument("--gate-prompt-len", type=int, default=1000)
    parser.add_argument("--gate-steps", type=int, default=48)
    parser.add_argument("--gate-lr", type=float, default=0.05)
    parser.add_argument("--gate-window-penalty", type=float, default=0.05)
    parser.add_argument("--gate-head-penalty", type=float, default=0.0, help="> 0 also trains head gates (removal)")
    parser.add_argument("--gate-threshold", type=float, default=0.5)
    parser.add_argument("--reuse", action="store_true", help="reuse statistics JSON files already in --out")
    args = parser.parse_args(argv)
    check_ranges(parser, args, NUMERIC_FLAGS)
    if problems := text_problems(args):
        setting_error(parser, "; ".join(problems))
    if problem := execution_problem(args):
        setting_error(parser, problem)
    if problem := model_problem(args.model):
        setting_error(parser, problem)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    execution = apply_execution_flags(args)
    out = Path(args.out or f"results/attention_analysis_{model_slug(args.model)}")
    out.mkdir(parents=True, exist_ok=True)
    thresholds = StatisticsThresholds(args.positional_min_window_mass, args.positional_max_entropy,
                                      args.dead_min_entropy, args.dead_max_output_ratio)
    config = StatisticsConfig(sinks=args.sinks, local_window=args.local_window)
    model, tokenizer = load_model_and_tokenizer(args.model, execution.dtype, execution.device)
    run = {"model": args.model, "device": str(execution.device), "dtype": execution.dtype_name}
    (out / "run.json").write_text(json.dumps({**run, "threads": execution.threads}, indent=1))
    longest = max([args.seq_len, *args.lengths])
    tokens = load_token_stream(args.text, tokenizer, max_tokens=args.samples * args.seq_len + 2 * longest)

    if args.reuse and (out / "statistics.json").is_file():
        statistics = HeadStatistics.load(out / "statistics.json")
    else:
        statistics = collect_head_statistics(model, split_windows(tokens, args.seq_len, args.samples), config,
                                             args.chunk_rows)
        statistics.save(out / "statistics.json")
    classification = classify_by_statistics(statistics, thresholds)
    classification.parameters.update(run)
    classification.save(out / "head_classification.json")
    plot_entropy_heatmap(statistics, out / "entropy_heatmap.png")
    plot_position_preference(statistics, out / "position_preference.png")
    plot_classification(statistics, classification, out / "classification.png")
    print(f"statistics classifier: {classification.counts()}, windowable KV groups: "
          f"{len(classification.windowable_kv_groups())}")

    by_length_path = out / "statistics_by_length.json"
    by_length = {int(length): HeadStatistics.from_dict(data)
                 for length, data in json.loads(by_length_path.read_text()).items()} \
        if args.reuse and by_length_path.is_file() else {}
    for length in (length for length in args.lengths if length not in by_length):
        offset = tokens[args.samples * args.seq_len :]
        by_length[length] = collect_head_statistics(model, split_windows(offset, length, 1), config,
                                                    args.chunk_rows)
        by_length_path.write_text(
            json.dumps({str(k): v.to_dict() for k, v in by_length.items()}))
    if by_length:
        plot_statistics_vs_length(by_length, out / "statistics_vs_length.png")

    if args.calibrate:
        calibration_tokens = load_token_stream(args.calibration_text, tokenizer,
                                               max_tokens=args.calibration_texts * args.calibration_text_len)
        texts = split_windows(calibration_tokens, args.calibration_text_len, args.calibration_texts) \
            if args.calibration_texts else []
        prompts = make_passkey_prompts(tokenizer, args.calibration_prompt_len, args.calibration_prompts, seed=1234)
        window = args.calibration_window or args.local_window
        suffix = "" if window == args.local_window else f"_w{window}"
        calibration_config = CalibrationConfig(args.window_budget, args.dead_budget, args.max_cost,
                                               args.max_joint_cost, args.max_dead_joint_cost,
                                               sinks=args.sinks, window=window)
        ratios = classification.scores["output_ratio"]
        heads = sorted(((layer, head) for layer, row in enumerate(ratios) for head in range(len(row))),
                       key=lambda item: ratios[item[0]][item[1]])
        mass = classification.scores["window_mass"]
        shape = statistics.shape
        groups = sorted(((layer, kv) for layer in range(shape.num_layers) for kv in range(shape.num_kv_heads)),
                        key=lambda group: -min(mass[group[0]][h] for h in shape.query_heads_of(group[1])))
        calibrated = classify_by_calibration(
            model, CalibrationSet(texts, prompts), calibration_config,
            window_candidates=groups[: args.window_candidates] if args.window_candidates else None,
            removal_candidates=heads[: args.removal_candidates] if args.removal_candidates else None,
            cost_log=out / "calibration_costs.jsonl")
        calibrated.parameters.update(run)
        calibrated.save(out / f"head_classification_calibration{suffix}.json")
        plot_classification(statistics, calibrated, out / f"classification_calibration{suffix}.png")
        print(f"calibration classifier: {calibrated.counts()}, windowed KV groups: "
              f"{len(calibrated.windowable_kv_groups())}, joint cost of the dead heads "
              f"{calibrated.parameters['dead_joint_cost']:.4f}, with the windows {calibrated.parameters['joint_cost']:.4f}")

    if args.optimize_gates:
        optimize_gates(args, model, tokenizer, out, statistics, run)


def optimize_gates(args: argparse.Namespace, model, tokenizer, out: Path, statistics: HeadStatistics,
                   run: dict) -> None:
    """Train window (and head) gates on longer calibration sequences; save the classification and plot."""
    window = args.calibration_window or args.local_window
    config = GateTrainingConfig(args.sinks, window, args.gate_steps, args.gate_lr, args.gate_window_penalty,
                                args.gate_head_penalty, threshold=args.gate_threshold,
                                window_budget=args.window_budget, dead_budget=args.dead_budget)
    tokens = load_token_stream(args.calibration_text, tokenizer, max_tokens=args.gate_texts * args.gate_text_len)
    texts = split_windows(tokens, args.gate_text_len, args.gate_texts) if args.gate_texts else []
    prompts = make_passkey_prompts(tokenizer, args.gate_prompt_len, args.gate_prompts, seed=1234)
    gates, history = train_gates(model, CalibrationSet(texts, prompts), config, checkpoint=out / f"gates_w{window}.pt")
    shape = adapter_for(model).model_shape(model)
    classification = classify_by_gates(shape, gates, config, history)
    classification.parameters.update(**run, texts=len(texts), text_len=args.gate_text_len,
                                     prompts=len(prompts), prompt_len=args.gate_prompt_len)
    classification.save(out / f"head_classification_gates_w{window}.json")
    plot_gates(classification, history, out / f"gates_w{window}.png")
    plot_classification(statistics, classification, out / f"classification_gates_w{window}.png")
    print(f"gate classifier: {classification.counts()}, windowed KV groups: "
          f"{len(classification.windowable_kv_groups())}, distillation loss of the last pass "
          f"{classification.parameters['last_pass_distillation']:.4f}"
          if history else "gate classifier: no training steps")


if __name__ == "__main__":
    main()
