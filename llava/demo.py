"""`make demo`: FastV on a tiny random LLaVA, built in-process (nothing is downloaded).

Prints, for each FastV strategy at the 192 / 128 / 64 equivalent-token budgets, the kept tokens as a
24 x 24 map of image patches, the equivalent tokens, the theoretical FLOPs ratio and the measured
prefill time against the unpruned model.

    python -m llava.demo [--image PATH] [--question TEXT] [--budgets 192 128 64]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from llava.model.builder import load_pretrained_model
from llava.pruning.selection import TOKEN_SELECTION_STRATEGIES

GRID = 24  # 336 px / patch 14
SYSTEM = "A chat between a curious human and an artificial intelligence assistant. USER: "


def synthetic_image(size: int = 336) -> Image.Image:
    """A deterministic test card: gradient background with a bright square (the 'object')."""
    y, x = np.mgrid[0:size, 0:size]
    pixels = np.stack([x * 255 // size, y * 255 // size, np.full_like(x, 96)], axis=-1).astype(np.uint8)
    pixels[100:180, 180:260] = 255
    return Image.fromarray(pixels)


def build_prompt(tokenizer, question: str, image_token_id: int, image_tokens: int = GRID * GRID) -> torch.Tensor:
    """``SYSTEM <image x 576> \\n question ASSISTANT:`` as ids."""
    before = tokenizer(SYSTEM, add_special_tokens=False).input_ids
    after = tokenizer(f"\n{question} ASSISTANT:", add_special_tokens=False).input_ids
    return torch.tensor([before + [image_token_id] * image_tokens + after])


def kept_patch_map(kept: torch.Tensor, span_start: int) -> str:
    """ASCII map of the 24 x 24 patches: '#' kept, '.' pruned."""
    grid = np.full(GRID * GRID, ".")
    grid[(kept - span_start).tolist()] = "#"
    return "\n".join("    " + "".join(row) for row in grid.reshape(GRID, GRID))


def median_prefill_ms(model, ids: torch.Tensor, pixels: torch.Tensor, repeats: int) -> float:
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            started = time.perf_counter()
            model(input_ids=ids, pixel_values=pixels)
            times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, help="an image file (default: a synthetic test card)")
    parser.add_argument("--question", default="What is unusual about this image?")
    parser.add_argument("--budgets", type=int, nargs="+", default=[192, 128, 64])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.image is not None and not args.image.is_file():
        parser.error(f"--image {args.image} is not a file")

    tokenizer, model, processor, _ = load_pretrained_model("tiny-random-llava")
    image = Image.open(args.image).convert("RGB") if args.image else synthetic_image()
    pixels = processor(image, return_tensors="pt")["pixel_values"]
    ids = build_prompt(tokenizer, args.question, model.config.image_token_id)
    span_start = int((ids[0] == model.config.image_token_id).nonzero()[0])
    vanilla_ms = median_prefill_ms(model, ids, pixels, args.repeats)
    print(f"tiny random LLaVA: {model.config.text_config.num_hidden_layers} layers, prompt of {ids.shape[1]} tokens")
    print(f"vanilla prefill: {vanilla_ms:.1f} ms (median of {args.repeats})\n")

    for budget in args.budgets:
        for strategy in TOKEN_SELECTION_STRATEGIES:
            _, pruned, _, _ = load_pretrained_model(
                "tiny-random-llava",
                pruning_method="fastv",
                visual_token_num=budget,
                fast_v_token_selection_method=strategy,
            )
            pruned_ms = median_prefill_ms(pruned, ids, pixels, args.repeats)
            record = pruned.pruning_record
            kept = pruned.language_model.last_gen_kept_indices[0]
            print(
                f"FastV {strategy:<20} budget {budget:>3}: keeps R={kept.numel()} of 576 at layer "
                f"{pruned.method.agg_layer}, equivalent tokens {record['equivalent_tokens']:.1f}, "
                f"FLOPs {record['flops_ratio']:.2f}x, prefill {pruned_ms:.1f} ms ({pruned_ms / vanilla_ms:.2f}x)"
            )
            if strategy == TOKEN_SELECTION_STRATEGIES[0]:
                print(kept_patch_map(kept, span_start))
        print()


if __name__ == "__main__":
    main()
