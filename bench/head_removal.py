"""Prefill time of structural dead-head removal against the full model, measured side by side.

Applies ``DeadHeadPruner(classification)`` in ``structural`` mode (q rows / output columns sliced, and
k/v rows of KV heads nobody reads any more) and in ``zero`` mode (same function, no FLOPs saved: the
control), and times one prefill of a WikiText-2 window per row, round-robin, so machine noise hits
every row alike. Per row: median prefill ms, ratio to full, analytic FLOPs ratio and measured /
theoretical (the order rotates every round). The last line is ``structural_measured_over_theoretical=<x>``.

    python -m bench.head_removal results/attention_analysis_smollm2-135m/head_classification_calibration.json
    python -m bench.head_removal CLASSIFICATION --model EleutherAI/pythia-70m --tokens 1024 --repeats 30
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from kvcompress.classification import HeadClassification
from kvcompress.evaluation.text import DEFAULT_TEXT, load_token_stream
from kvcompress.evaluation.timing import prefill_flops, rotated
from kvcompress.methods.dead_heads import DeadHeadPruner
from kvcompress.methods.registry import NoCompression
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


@torch.no_grad()
def time_prefill_ms(model: torch.nn.Module, input_ids: torch.Tensor) -> float:
    synchronize(input_ids.device)
    started = time.perf_counter()
    model(input_ids=input_ids, use_cache=False, logits_to_keep=1)
    synchronize(input_ids.device)
    return (time.perf_counter() - started) * 1000.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     parents=[model_flag(), text_flag(DEFAULT_TEXT), threads_flag(1), execution_flags()])
    parser.add_argument("classification", help="head_classification.json whose dead heads are removed")
    parser.add_argument("--tokens", type=int, default=600, help="prompt length")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    check_execution_flags(parser, args)
    classification = HeadClassification.load(args.classification)
    if not classification.heads_labelled("dead"):
        parser.error(f"{args.classification} labels no head dead: nothing to remove")
    execution = apply_execution_flags(args)
    model, tokenizer = load_model_and_tokenizer(args.model, execution.dtype, execution.device)
    classification.check_model(model)
    input_ids = load_token_stream(args.text, tokenizer, max_tokens=args.tokens)[None].to(execution.device)
    rows = {"full": NoCompression(), "dead (zero, control)": DeadHeadPruner(classification, mode="zero"),
            "dead (structural)": DeadHeadPruner(classification, mode="structural")}
    times: dict[str, list[float]] = {name: [] for name in rows}
    flops: dict[str, int] = {}
    names = list(rows)
    for round_index in range(args.repeats + 1):  # round 0 warms up; the order rotates every round
        for name in rotated(names, round_index):
            with rows[name].apply(model):
                elapsed = time_prefill_ms(model, input_ids)
                flops[name] = prefill_flops(model, input_ids.shape[1])
            if round_index:
                times[name].append(elapsed)
    removed = len(classification.heads_labelled("dead"))
    shape = classification.shape
    print(f"model={args.model} device={execution.device} dtype={execution.dtype_name} tokens={input_ids.shape[1]} "
          f"repeats={args.repeats} threads={args.threads} "
          f"removed heads={removed}/{shape.num_layers * shape.num_query_heads}")
    print(f"{'row':<22}{'ms':>10}{'vs full':>9}{'FLOPs':>8}{'meas/theory':>13}")
    full_ms = statistics.median(times["full"])
    for name in rows:
        ms = statistics.median(times[name])
        theory = flops[name] / flops["full"]
        print(f"{name:<22}{ms:>10.1f}{ms / full_ms:>9.3f}{theory:>8.3f}{ms / full_ms / theory:>13.3f}")
    structural = statistics.median(times["dead (structural)"]) / full_ms
    print(f"structural_measured_over_theoretical={structural / (flops['dead (structural)'] / flops['full']):.4f}")


if __name__ == "__main__":
    main()
