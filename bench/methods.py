"""Prefill cost of every pruning method at 192 / 128 / 64 equivalent tokens, against the unpruned model.

Same setting as ``bench.prefill`` (random 32-layer Llama, 35 system + 576 image + 60 question tokens,
interleaved round-robin timing). Each method maps the budget to its own parameters through the one
budget API (``llava.pruning.reporting.plan_budget``). Per row: median prefill ms, ratio to vanilla, theoretical FLOPs ratio
(SwiGLU convention, decoder only), the achieved equivalent tokens, the method's selection time as a
share of its prefill, and (CUDA only) the peak memory. The synthetic vision features that VisPruner
compares are ``width / 4`` wide, LLaVA-1.5-7B's ratio (CLIP ViT-L 1024 : Vicuna 4096), so the quick
bench keeps the real proportion between its selection work and the LLM prefill. Pre-LLM methods (VisPruner, CDPruner) are timed
as their selection on synthetic visual features plus the LLM prefill of the shortened prompt; the vision
tower, common to every row, is not included. The last line is ``max_selection_share_at_64=<x>``.

    python -m bench.methods --quick
    python -m bench.methods --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench.timing import AGG_LAYER, IMAGE_TOKENS, LAYERS, QUESTION_TOKENS, SYSTEM_TOKENS, time_prefill
from llava.model.language_model.pruning_config import PruningLlamaConfig
from llava.model.language_model.pruning_llama import PruningLlamaModel
from llava.pruning.budget import equivalent_tokens, prefill_flops
from llava.pruning.methods.base import PruningMethod
from llava.pruning.methods.pre_llm import PreLLMMethod, VisualTokens
from llava.pruning.registry import available_methods
from llava.pruning.reporting import plan_budget
from toolkit_common.script_args import threads_flag
from toolkit_common.stopwatch import Stopwatch

BUDGETS = (192, 128, 64)
NEEDS_TRAINING = ("learned", "learned_merger")  # needs a trained checkpoint for this model: not benchmarked here


@dataclass
class Row:
    name: str
    budget: int | None
    run: Callable[[], tuple[float, float]]  # -> (prefill ms including selection, selection ms)
    span_per_layer: list[int]
    peak_bytes: list[int]


def method_params(name: str, heads: int) -> dict:
    """Method parameters of the bench rows besides the budget (K = 2 for the single-prune methods)."""
    single = {"agg_layer": AGG_LAYER} if name in ("fastv", "fastv_fine_head", "ablation_a", "random") else {}
    extra = {"fastv_fine_head": {"heads": max(1, heads // 2), "head_strategy": "sparsity"}}.get(name, {})
    return {**single, **extra}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     parents=[threads_flag(help="CPU threads (default 1 with --quick)")])
    parser.add_argument("--all-methods", action="store_true", help=argparse.SUPPRESS)  # bench.prefill's switch
    parser.add_argument("--quick", action="store_true", help="CPU-friendly width 512 (default: 7B width 4096)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per row (default 3 quick, 10 full)")
    args = parser.parse_args(argv)
    threads = args.threads or (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)
    hidden, mlp, heads = (512, 1376, 8) if args.quick else (4096, 11008, 32)
    vision_width = hidden // 4  # CLIP ViT-L (1024) : Vicuna-7B (4096), kept when the bench is scaled down
    repeats = args.repeats or (3 if args.quick else 10)
    dtype, device = getattr(torch, args.dtype), args.device
    cuda = device.startswith("cuda")

    base = dict(
        vocab_size=1000,
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=LAYERS,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=4096,
        fast_v_image_token_length=IMAGE_TOKENS,
    )
    torch.manual_seed(0)
    vanilla = PruningLlamaModel(PruningLlamaConfig(**base)).to(device=device, dtype=dtype).eval()
    n = SYSTEM_TOKENS + IMAGE_TOKENS + QUESTION_TOKENS
    span = (SYSTEM_TOKENS, SYSTEM_TOKENS + IMAGE_TOKENS)
    generator = torch.Generator().manual_seed(0)
    embeds = (torch.randn(1, n, hidden, generator=generator) * 0.02).to(device, dtype)

    def in_llm(method: PruningMethod) -> Callable[[], tuple[float, float]]:
        model = PruningLlamaModel(PruningLlamaConfig(**base)).to(device=device, dtype=dtype).eval()
        model.load_state_dict(vanilla.state_dict())
        model.set_pruning_method(method)

        def run() -> tuple[float, float]:
            ms = time_prefill(model, embeds, span)
            return ms, model.last_pruning_record.selection_ms

        return run

    def pre_llm(method: PreLLMMethod) -> Callable[[], tuple[float, float]]:
        image = embeds[:, span[0] : span[1]]
        tokens = VisualTokens(
            features=image,
            vision_features=torch.randn(1, IMAGE_TOKENS, vision_width, generator=generator).to(device, dtype),
            cls_attention=lambda: torch.rand(1, IMAGE_TOKENS, generator=generator).softmax(-1).to(device),
            instruction_embeddings=[embeds[0, span[1] :]],
        )

        def run() -> tuple[float, float]:
            with Stopwatch(device) as watch:  # CUDA: the selection's GPU time, read after the prefill synchronised
                kept = method.select_visual(tokens).indices[0].to(device)
            shortened = torch.cat([embeds[:, : span[0]], image[:, kept], embeds[:, span[1] :]], dim=1)
            with vanilla.pruning_disabled():
                ms = time_prefill(vanilla, shortened, (0, 1))
            return ms + watch.elapsed_ms, watch.elapsed_ms

        return run

    rows = [Row("vanilla", None, lambda: (time_prefill(vanilla, embeds, span), 0.0), [IMAGE_TOKENS] * LAYERS, [])]
    for name in (m for m in available_methods() if m not in NEEDS_TRAINING):
        for budget in BUDGETS:
            plan = plan_budget(name, budget, LAYERS, IMAGE_TOKENS, method_params(name, heads))
            run = pre_llm(plan.method) if isinstance(plan.method, PreLLMMethod) else in_llm(plan.method)
            rows.append(Row(name, budget, run, plan.span_per_layer, []))

    for row in rows:  # warm-up
        row.run()
    times: dict[int, list[tuple[float, float]]] = {i: [] for i in range(len(rows))}
    for _ in range(repeats):
        for i, row in enumerate(rows):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            times[i].append(row.run())
            if cuda:
                row.peak_bytes.append(torch.cuda.max_memory_allocated())

    other = n - IMAGE_TOKENS
    full_flops = prefill_flops([IMAGE_TOKENS] * LAYERS, other, hidden, mlp, "swiglu")
    vanilla_ms = statistics.median(t[0] for t in times[0])
    print(
        f"device={device} dtype={args.dtype} width={hidden} mlp={mlp} layers={LAYERS} prompt={n} "
        f"repeats={repeats} threads={torch.get_num_threads()}"
    )
    print(
        f"{'method':<17}{'budget':>7}{'equiv':>8}{'ms':>9}{'vs vanilla':>11}{'FLOPs':>8}{'select %':>10}{'peak MiB':>10}"
    )
    worst_at_64 = 0.0
    for i, row in enumerate(rows):
        ms = statistics.median(t[0] for t in times[i])
        selection_share = statistics.median(t[1] / t[0] for t in times[i])
        flops = prefill_flops(row.span_per_layer, other, hidden, mlp, "swiglu") / full_flops
        equivalent = equivalent_tokens(row.span_per_layer)
        peak = f"{max(row.peak_bytes) / 2**20:.0f}" if row.peak_bytes else "n/a"
        budget = "-" if row.budget is None else str(row.budget)
        print(
            f"{row.name:<17}{budget:>7}{equivalent:>8.1f}{ms:>9.1f}{ms / vanilla_ms:>11.3f}{flops:>8.3f}"
            f"{100 * selection_share:>10.2f}{peak:>10}"
        )
        if row.budget == 64:
            worst_at_64 = max(worst_at_64, selection_share)
    print(f"max_selection_share_at_64={worst_at_64:.4f}")


if __name__ == "__main__":
    main()
