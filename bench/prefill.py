"""Prefill speed of FastV against the unpruned model, measured side by side in one run.

Builds a random Llama with LLaVA-1.5-7B's depth (32 layers) and a LLaVA-shaped prompt
(35 system tokens + 576 image tokens + ~60 question tokens), then times, interleaved round-robin so
machine noise hits every row alike:

* vanilla SDPA and vanilla eager attention;
* FastV (ours: SDPA, attention rows from q.k) at K=2 with R = 288 / 144 / 72;
* FastV as the reference implementations run it: eager attention everywhere and the full N x N
  attention map of layer K-1 (what ``output_attentions`` materialises).

For each row: median prefill ms, ratio to vanilla SDPA, theoretical FLOPs ratio (SwiGLU convention,
decoder only) and measured / theoretical. The last line is ``fastv_r144_measured_over_theoretical=<x>``.

    python -m bench.prefill --quick                          # CPU, width 512
    python -m bench.prefill --device cuda --dtype bfloat16   # full 7B width (4096 / 11008)
    python -m bench.prefill --quick --all-methods            # every method at 192/128/64 (bench.methods)
    python -m bench.prefill --quick --family llava_next      # LLaVA-NeXT's 2,880 image tokens, R = 1/2, 1/4, 1/8

``--family`` sets the image token count of the prompt (``llava``: 576; ``llava_next``: 2,880, a 7B model's
anyres image at 336 px with a 2 x 2 grid); R is the same share of it (1/2, 1/4, 1/8) in every family.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass

import torch

from bench.timing import AGG_LAYER, IMAGE_TOKENS, QUESTION_TOKENS, SYSTEM_TOKENS, time_prefill
from llava.model.language_model.pruning_config import PruningLlamaConfig
from llava.model.language_model.pruning_llama import PruningLlamaModel
from llava.pruning.budget import prefill_flops, span_tokens_per_layer

FAMILY_IMAGE_TOKENS = {"llava": IMAGE_TOKENS, "llava_next": 2880}
KEEP_SHARES = (2, 4, 8)  # R = image tokens / share


@dataclass
class Row:
    name: str
    model: PruningLlamaModel
    keep: int | None


def build_rows(hidden: int, mlp: int, heads: int, dtype: torch.dtype, device: str, image_tokens: int) -> list[Row]:
    base = dict(
        vocab_size=1000,
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=32,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=8192,
        fast_v_agg_layer=AGG_LAYER,
    )
    torch.manual_seed(0)
    sdpa = PruningLlamaModel(PruningLlamaConfig(**base)).to(device=device, dtype=dtype).eval()
    state = sdpa.state_dict()

    def variant(attn: str, **fields) -> PruningLlamaModel:
        config = PruningLlamaConfig(**base, **fields)
        config._attn_implementation = attn
        model = PruningLlamaModel(config).to(device=device, dtype=dtype).eval()
        model.load_state_dict(state)
        return model

    rows = [Row("vanilla sdpa", sdpa, None), Row("vanilla eager", variant("eager"), None)]
    keeps = [image_tokens // share for share in KEEP_SHARES]
    for keep in keeps:
        rows.append(Row(f"fastv ours R={keep}", variant("sdpa", use_fast_v=True, fast_v_attention_rank=keep), keep))
    for keep in keeps:
        fields = dict(use_fast_v=True, fast_v_attention_rank=keep, pruning_scoring="full_matrix")
        rows.append(Row(f"fastv reference R={keep}", variant("eager", **fields), keep))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CPU-friendly width 512 (default: 7B width 4096)")
    parser.add_argument("--all-methods", action="store_true",
                        help="time every registered method at 192/128/64 instead (same as python -m bench.methods)")
    parser.add_argument("--family", default="llava", choices=sorted(FAMILY_IMAGE_TOKENS),
                        help="the prompt's image token count: llava 576, llava_next 2,880")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per row (default 5 quick, 10 full)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (default 1 with --quick: stable ratios on a shared machine)",
    )
    args = parser.parse_args()
    if args.all_methods:
        from bench import methods

        methods.main(sys.argv[1:])
        return
    threads = args.threads or (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda given but CUDA is not available")

    hidden, mlp, heads = (512, 1376, 8) if args.quick else (4096, 11008, 32)
    repeats = args.repeats or (5 if args.quick else 10)
    dtype = getattr(torch, args.dtype)
    image_tokens = FAMILY_IMAGE_TOKENS[args.family]
    rows = build_rows(hidden, mlp, heads, dtype, args.device, image_tokens)
    n = SYSTEM_TOKENS + image_tokens + QUESTION_TOKENS
    span = (SYSTEM_TOKENS, SYSTEM_TOKENS + image_tokens)
    embeds = torch.randn(1, n, hidden, generator=torch.Generator().manual_seed(0)).to(args.device, dtype) * 0.02

    for row in rows:  # warm-up
        time_prefill(row.model, embeds, span)
    times: dict[str, list[float]] = {row.name: [] for row in rows}
    for _ in range(repeats):
        for row in rows:
            times[row.name].append(time_prefill(row.model, embeds, span))

    other = n - image_tokens
    full_flops = prefill_flops([image_tokens] * 32, other, hidden, mlp, "swiglu")
    vanilla_ms = statistics.median(times["vanilla sdpa"])
    print(
        f"family={args.family} device={args.device} dtype={args.dtype} width={hidden} mlp={mlp} layers=32 prompt={n} "
        f"repeats={repeats} threads={torch.get_num_threads()}"
    )
    print(f"{'row':<26}{'median ms':>11}{'vs sdpa':>9}{'FLOPs':>8}{'meas/theory':>13}")
    result = None
    for row in rows:
        ms = statistics.median(times[row.name])
        per_layer = span_tokens_per_layer(32, image_tokens, [(AGG_LAYER, row.keep)] if row.keep else [])
        theory = prefill_flops(per_layer, other, hidden, mlp, "swiglu") / full_flops
        ratio = ms / vanilla_ms
        print(f"{row.name:<26}{ms:>11.1f}{ratio:>9.3f}{theory:>8.3f}{ratio / theory:>13.3f}")
        if row.name == f"fastv ours R={image_tokens // 4}":
            result = ratio / theory
    print(f"fastv_quarter_measured_over_theoretical={result:.3f}")


if __name__ == "__main__":
    main()
