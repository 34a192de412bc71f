"""Evaluate the learned pruner: ``python -m llava.train.eval_pruner --config ... --mode {origin,hard}``.

* ``origin``: the frozen VLM without pruning;
* ``hard``: method ``learned`` through the pruning engine (tokens with keep probability <= 0.5 are
  removed at each pruning layer: shorter sequence and KV cache).

On held-out synthetic samples (batch size 1) it reports the answer CE (teacher forcing, the prompt's
last token as the selection query), the greedy answer, the prefill time, the KV-cache length of the
last layer and, in ``hard`` mode, the kept tokens per layer and equivalent tokens. Prints and
optionally writes a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from llava.constants import IGNORE_INDEX
from llava.model.vision import image_features_per_image
from llava.pruning.learned.checkpoint import CHECKPOINT_NAME
from llava.pruning.registry import build_method
from llava.train.pruner.config import load_train_config
from llava.train.pruner.data import collate, synthetic_sample
from llava.train.pruner.losses import task_loss
from llava.train.pruner.training import load_frozen_model
from toolkit_common.transformers_compat import output_cache

MODES = ("origin", "hard")


def enable_learned_pruning(llava, checkpoint: str | Path) -> None:
    """Switch ``llava``'s decoder to method ``learned`` with ``checkpoint`` (validated now)."""
    llava.set_pruning_method(build_method("learned", {"pruner_checkpoint": str(checkpoint)}))


@torch.no_grad()
def evaluate_sample(llava, tokenizer, sample, max_new_tokens: int) -> dict[str, Any]:
    """Metrics of one sample (see module docstring)."""
    batch = collate([sample], tokenizer.pad_token_id, llava.config.image_token_id)
    query_index = int(batch.query_index[0])
    logits = llava(input_ids=batch.input_ids, pixel_values=batch.pixel_values, prune_query_index=query_index).logits
    prompt = torch.tensor([sample.prompt_ids])
    started = time.perf_counter()
    prefill = llava(input_ids=prompt, pixel_values=batch.pixel_values, use_cache=True)
    prefill_ms = (time.perf_counter() - started) * 1000.0
    generated = llava.generate(
        input_ids=prompt,
        pixel_values=batch.pixel_values,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )[0, prompt.shape[1] :]
    record = llava.pruning_record
    return {
        # the pruned forward returns logits of the kept tokens only; the answer sits in the unpruned suffix,
        # so aligning the labels' tail with the logits keeps every answer position in place
        "answer_ce": float(task_loss(logits, batch.labels[:, -logits.shape[1] :])),
        "answer_tokens": int((batch.labels != IGNORE_INDEX).sum()),
        "generated": tokenizer.decode(generated, skip_special_tokens=True),
        "prefill_ms": round(prefill_ms, 3),
        "kv_cache_last_layer": int(output_cache(prefill).layers[-1].keys.shape[2]),
        "kept_per_layer": None if record is None else record["kept_per_layer"],
        "equivalent_tokens": image_features_per_image(llava.config) if record is None else record["equivalent_tokens"],
    }


def summarise(mode: str, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over samples, plus the per-sample rows."""
    mean = lambda key: sum(s[key] for s in samples) / len(samples)
    return {
        "mode": mode,
        "num_samples": len(samples),
        "answer_ce": round(mean("answer_ce"), 5),
        "prefill_ms": round(mean("prefill_ms"), 3),
        "kv_cache_last_layer": mean("kv_cache_last_layer"),
        "equivalent_tokens": round(mean("equivalent_tokens"), 2),
        "samples": samples,
    }


def run_evaluation(
    config_path: str, mode: str, checkpoint: str | None, num_samples: int, seed: int, max_new_tokens: int
) -> dict[str, Any]:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    config = load_train_config(config_path)
    tokenizer, llava = load_frozen_model(config)
    if mode == "hard":
        enable_learned_pruning(llava, checkpoint or Path(config.output_dir) / CHECKPOINT_NAME)
    span = image_features_per_image(llava.config)
    samples = [
        evaluate_sample(
            llava, tokenizer, synthetic_sample(i, seed, tokenizer, llava.config.image_token_id, span), max_new_tokens
        )
        for i in range(num_samples)
    ]
    return summarise(mode, samples)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/vision_token_pruning.yaml")
    parser.add_argument("--mode", choices=MODES, default="hard")
    parser.add_argument("--checkpoint", help="pruner checkpoint (default: <output_dir>/checkpoint.pt)")
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=12345, help="synthetic eval set (differs from training's)")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--output", help="write the JSON summary here")
    args = parser.parse_args(argv)
    summary = run_evaluation(args.config, args.mode, args.checkpoint, args.num_samples, args.seed, args.max_new_tokens)
    text = json.dumps(summary, indent=2)
    if args.output:
        Path(args.output).write_text(text)
    print(json.dumps({k: v for k, v in summary.items() if k != "samples"}))


if __name__ == "__main__":
    main()
