"""KV-cache size vs quality: ranked windowed heads against StreamingLLM and SnapKV.

For each count ``k`` in ``--groups``, window the ``k`` KV groups ranked lowest by the classification
(``window_cost`` of a calibration ``head_classification*.json``, or ``window_gate`` of a gate-optimised
one) and remove the classification's dead heads (``k = 0``: the dead heads alone); then run StreamingLLM and SnapKV at the same KV fraction (matched at each task's context
length: the passkey prompts and the perplexity windows). Each point
gets passkey accuracy and strided perplexity (``kvcompress.evaluation.benchmark.measure_quality``).
The full model is measured once as the reference (dashed line). Rows are appended to
``tradeoff.jsonl`` as they finish, with the ``device`` and ``dtype`` they ran in (a re-run on the same
device kind and dtype skips the points it holds) and
``tradeoff.png`` plots accuracy and perplexity against the KV reduction (default folder
``results/kv_tradeoff_<model>_w<window>/``).

    python scripts/kv_tradeoff.py results/attention_analysis_smollm2-135m/head_classification_calibration.json \
        --groups 15 30 45 54 63 72
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from kvcompress.analysis.calibration import with_cheapest_windows  # noqa: E402
from kvcompress.classification import CLASSIFICATION_HINT, HeadClassification  # noqa: E402
from kvcompress.evaluation.benchmark import BenchmarkSettings, measure_quality  # noqa: E402
from kvcompress.evaluation.passkey import make_passkey_prompts  # noqa: E402
from kvcompress.evaluation.perplexity import stride_problem  # noqa: E402
from kvcompress.evaluation.text import DEFAULT_TEXT, load_token_stream  # noqa: E402
from kvcompress.methods.registry import BASELINES, MethodSettings, build_method, kv_fraction  # noqa: E402
from kvcompress.models.loading import load_model_and_tokenizer, model_problem, model_slug  # noqa: E402
from toolkit_common.cli import (  # noqa: E402
    AT_LEAST_0,
    AT_LEAST_1,
    Range,
    check_ranges,
    missing_file_problem,
    setting_error,
)
from toolkit_common.jsonl import JsonlAppender, read_jsonl  # noqa: E402
from toolkit_common.script_args import (  # noqa: E402
    apply_execution_flags,
    execution_flags,
    execution_problem,
    model_flag,
    out_flag,
    text_flag,
    threads_flag,
)


def plot(rows: list[dict], path: Path) -> None:
    """Passkey accuracy (when the run has passkey prompts) and perplexity against the KV reduction."""
    panels = [(key, label) for key, label in (("passkey_accuracy", "passkey accuracy (%)"),
                                              ("perplexity", "WikiText-2 perplexity"))
              if all(key in row for row in rows)]
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for axis, (key, label) in zip(axes[0], panels, strict=True):
        scale = 100 if key == "passkey_accuracy" else 1
        for row in (row for row in rows if row["method"] == "full"):
            axis.axhline(scale * row[key], color="grey", linestyle="--", label="full")
        for method in sorted({row["method"] for row in rows} - {"full"}):
            points = sorted((1 - row["kv_fraction"], row) for row in rows if row["method"] == method)
            axis.plot([100 * reduction for reduction, _ in points], [scale * row[key] for _, row in points], "o-",
                      label=method)
        axis.set_xlabel("KV cache reduction vs full (%)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0][0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


NUMERIC_FLAGS: dict[str, Range] = {
    "groups": AT_LEAST_0, "sinks": AT_LEAST_0, "window": AT_LEAST_1, "ppl_windows": AT_LEAST_1,
    "ppl_max_length": Range(2), "ppl_stride": AT_LEAST_1, "passkey_len": AT_LEAST_1, "passkey_prompts": AT_LEAST_0,
    "threads": AT_LEAST_1,
}
"""The valid range of every numeric flag (checked before any model loads)."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[model_flag(), text_flag(DEFAULT_TEXT), threads_flag(),
                 out_flag(type=Path, help="default results/kv_tradeoff_<model>_w<window>"), execution_flags()])
    parser.add_argument("classification", type=Path)
    parser.add_argument("--groups", type=int, nargs="+", default=[15, 30, 45, 54, 63, 72])
    parser.add_argument("--sinks", type=int, default=4)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--ppl-windows", type=int, default=16)
    parser.add_argument("--ppl-max-length", type=int, default=512, help="strided window length")
    parser.add_argument("--ppl-stride", type=int, default=256)
    parser.add_argument("--passkey-len", type=int, default=600)
    parser.add_argument("--passkey-prompts", type=int, default=50)
    parser.add_argument("--methods", nargs="+", default=["positional+dead", *BASELINES],
                        choices=["positional+dead", *BASELINES],
                        help="methods measured at each count (the baselines do not depend on the classification)")
    args = parser.parse_args(argv)
    check_ranges(parser, args, NUMERIC_FLAGS)
    if problem := stride_problem(args.ppl_stride, args.ppl_max_length):
        setting_error(parser, problem)
    if problem := missing_file_problem("classification", args.classification, CLASSIFICATION_HINT):
        setting_error(parser, problem)
    try:
        base = HeadClassification.load(args.classification)
    except ValueError as error:
        setting_error(parser, f"classification {error}")
    try:
        for k in args.groups:
            with_cheapest_windows(base, k)
    except ValueError as error:
        setting_error(parser, str(error))
    if not Path(args.text).is_file():
        setting_error(parser, f"--text {args.text} is absent: the perplexity of every point needs it")
    if problem := execution_problem(args):
        setting_error(parser, problem)
    if problem := model_problem(args.model):  # last: the flags' own errors come first, whatever is installed
        setting_error(parser, problem)
    execution = apply_execution_flags(args)
    out = args.out or Path(f"results/kv_tradeoff_{model_slug(args.model)}_w{args.window}")
    model, tokenizer = load_model_and_tokenizer(args.model, execution.dtype, execution.device)
    run = {"device": str(execution.device), "dtype": execution.dtype_name}
    base.check_model(model)
    text = load_token_stream(args.text, tokenizer, max_tokens=args.ppl_stride * args.ppl_windows + args.ppl_max_length + 1)
    prompts = make_passkey_prompts(tokenizer, args.passkey_len, args.passkey_prompts)
    ppl_context = args.ppl_max_length - args.ppl_stride
    # the KV fraction of a row is the one at the passkey prompts' length (at the perplexity context without them)
    context = prompts[0].input_ids.shape[1] if prompts else ppl_context
    settings = BenchmarkSettings(text[None, :context], ppl_max_length=args.ppl_max_length, ppl_stride=args.ppl_stride,
                                 ppl_max_windows=args.ppl_windows)
    log = out / "tradeoff.jsonl"
    # rows of other runs' device / dtype are kept but not reused (rows without them: float32 on the CPU)
    rows = [row for row in (read_jsonl(log)[0] if log.is_file() else [])
            if (row.get("device", "cpu").split(":")[0], row.get("dtype", "float32"))
            == (execution.device.type, execution.dtype_name)]
    done = {(row["method"], row["groups"]) for row in rows}
    plan = [("full", 0)] + [(method, k) for k in args.groups for method in args.methods]
    plan = [point for point in plan if point not in done]
    for method, k in tqdm(plan, desc="trade-off points"):
        classification = with_cheapest_windows(base, k)
        fraction = kv_fraction(classification, context, args.sinks, args.window)

        def make_method(length: int, method: str = method, classification: HeadClassification = classification):
            matched = kv_fraction(classification, length, args.sinks, args.window)  # baselines match per context
            return build_method(method, MethodSettings(classification, args.sinks, args.window, length, matched))

        quality = measure_quality(model, tokenizer, make_method, settings, text, prompts)
        row = {"method": method, "groups": k, "kv_fraction": fraction, "context": context,
               "ppl_kv_fraction": kv_fraction(classification, ppl_context, args.sinks, args.window),
               "ppl_context": ppl_context, **run, **quality}
        with JsonlAppender(log) as appender:
            appender.write(row)
        rows.append(row)
        plot(rows, out / "tradeoff.png")
    for row in sorted(rows, key=lambda r: (r["groups"], r["method"])):
        passkey = f"passkey {100 * row['passkey_accuracy']:.0f}% " if "passkey_accuracy" in row else ""
        print(f"{row['method']:<16} groups={row['groups']:>3} KV -{100 * (1 - row['kv_fraction']):.1f}% "
              f"{passkey}PPL {row['perplexity']:.3f}")


if __name__ == "__main__":
    main()
