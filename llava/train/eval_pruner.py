"""Evaluate the learned pruner: ``python -m llava.train.eval_pruner --config ... --mode {origin,soft,hard}``.

* ``origin``: the frozen VLM without pruning;
* ``soft``: the training forward: binary Gumbel-softmax keep masks at the final temperature applied as
  key biases (nothing removed; seeded noise);
* ``hard``: method ``learned`` through the pruning engine, tokens removed at each pruning layer (shorter
  sequence and KV cache): with ``method_settings.visual_token_num`` the planned rule (each layer keeps
  exactly its planned count), else the ``> 0.5`` threshold.

On held-out samples of the config's data source (``--seed`` differs from training's; batch size 1) it
reports the answer CE and the first answer token's accuracy (teacher forcing, the prompt's last token as
the selection query) and, for origin / hard, the greedy answer, the prefill time, the KV-cache length of
the last layer, the kept tokens per layer and the equivalent tokens. ``soft`` vs ``hard`` accuracy is the
soft / hard mask gap. Prints and optionally writes a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from llava.constants import IGNORE_INDEX
from llava.model.vision import image_features_per_image
from llava.pruning.learned.checkpoint import CHECKPOINT_NAME
from llava.pruning.methods.learned import LearnedPruning, load_pruner
from llava.train.pruner.config import TrainConfig, load_train_config
from llava.train.pruner.data import SAMPLE_SOURCES, PrunerBatch, collate
from llava.train.pruner.losses import task_loss
from llava.train.pruner.training import load_frozen_model, multimodal_embeddings, stage_forward
from toolkit_common.transformers_compat import output_cache

MODES = ("origin", "soft", "hard")
HELD_OUT_SEED = 12345  # the samples evaluation draws (training draws the config's seed)


def hard_method(config: TrainConfig, llava, checkpoint: str | Path) -> LearnedPruning:
    """Method ``learned`` as the evaluation runs it: planned counts for the config's budget, else the threshold."""
    params = {"pruner_checkpoint": str(checkpoint)}
    budget = config.method_settings.visual_token_num
    if budget is None:
        return LearnedPruning.from_params(params)
    return LearnedPruning.for_budget(budget, llava.config.text_config.num_hidden_layers, image_features_per_image(llava.config), params)


def answer_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Answer CE and whether the first answer token is the greedy one; ``labels`` aligned with ``logits``."""
    first = int((labels[0] != IGNORE_INDEX).nonzero()[0])
    return {
        "answer_ce": float(task_loss(logits, labels)),
        "answer_correct": bool(logits[0, first - 1].argmax() == labels[0, first]),
        "answer_tokens": int((labels != IGNORE_INDEX).sum()),
    }


@torch.no_grad()
def evaluate_hard_or_origin(llava, tokenizer, batch: PrunerBatch, prompt: torch.Tensor, max_new_tokens: int) -> dict[str, Any]:
    """Metrics of one sample with the model's current method (none: origin)."""
    logits = llava(input_ids=batch.input_ids, pixel_values=batch.pixel_values, prune_query_index=int(batch.query_index[0])).logits
    started = time.perf_counter()
    prefill = llava(input_ids=prompt, pixel_values=batch.pixel_values, use_cache=True)
    prefill_ms = (time.perf_counter() - started) * 1000.0
    generated = llava.generate(
        input_ids=prompt, pixel_values=batch.pixel_values, max_new_tokens=max_new_tokens, do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )[0, prompt.shape[1] :]
    record = llava.pruning_record
    return {
        # the pruned forward returns logits of the kept tokens only; the answer sits in the unpruned suffix,
        # so aligning the labels' tail with the logits keeps every answer position in place
        **answer_metrics(logits, batch.labels[:, -logits.shape[1] :]),
        "generated": tokenizer.decode(generated, skip_special_tokens=True),
        "prefill_ms": round(prefill_ms, 3),
        "kv_cache_last_layer": int(output_cache(prefill).layers[-1].keys.shape[2]),
        "kept_per_layer": None if record is None else record["kept_per_layer"],
        "equivalent_tokens": image_features_per_image(llava.config) if record is None else record["equivalent_tokens"],
    }


@torch.no_grad()
def evaluate_soft(llava, batch: PrunerBatch, method: LearnedPruning) -> dict[str, Any]:
    """Metrics of one sample under the soft masks (the training forward)."""
    embeds = multimodal_embeddings(llava, batch.input_ids, batch.pixel_values)
    outputs = stage_forward(llava, embeds, batch, method.pruner.pruning_layers, method)
    return answer_metrics(outputs.logits, batch.labels)


def held_out_samples(config: TrainConfig, tokenizer, llava, num_samples: int, seed: int) -> Iterator[tuple[PrunerBatch, torch.Tensor]]:
    """``(batch of one sample, its prompt ids [1, P])`` for samples ``0..num_samples-1`` of the config's data
    source under ``seed``."""
    span = image_features_per_image(llava.config)
    for index in range(num_samples):
        sample = SAMPLE_SOURCES[config.data](index, seed, tokenizer, llava.config.image_token_id, span)
        yield collate([sample], tokenizer.pad_token_id, llava.config.image_token_id), torch.tensor([sample.prompt_ids])


def summarise(mode: str, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over samples, plus the per-sample rows."""
    mean = lambda key: sum(s[key] for s in samples) / len(samples)
    summary = {
        "mode": mode,
        "num_samples": len(samples),
        "answer_ce": round(mean("answer_ce"), 5),
        "answer_accuracy": round(mean("answer_correct"), 4),
    }
    if mode != "soft":
        summary |= {
            "prefill_ms": round(mean("prefill_ms"), 3),
            "kv_cache_last_layer": mean("kv_cache_last_layer"),
            "equivalent_tokens": round(mean("equivalent_tokens"), 2),
        }
    return summary | {"samples": samples}


def run_evaluation(
    config_path: str, mode: str, checkpoint: str | None, num_samples: int, seed: int, max_new_tokens: int,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    config = load_train_config(config_path, overrides)
    checkpoint = checkpoint or Path(config.output_dir) / CHECKPOINT_NAME
    tokenizer, llava = load_frozen_model(config)
    soft = None
    if mode == "hard":
        llava.set_pruning_method(hard_method(config, llava, checkpoint))
    elif mode == "soft":
        soft = LearnedPruning.from_pruner(load_pruner(checkpoint), config.temperature.end, torch.Generator().manual_seed(seed))
    rows = [
        evaluate_soft(llava, batch, soft) if soft is not None
        else evaluate_hard_or_origin(llava, tokenizer, batch, prompt, max_new_tokens)
        for batch, prompt in held_out_samples(config, tokenizer, llava, num_samples, seed)
    ]
    return summarise(mode, rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/vision_token_pruning.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value, as train_pruner --set")
    parser.add_argument("--mode", choices=MODES, default="hard")
    parser.add_argument("--checkpoint", help="pruner checkpoint (default: <output_dir>/checkpoint.pt)")
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="held-out samples (training uses the config's seed)")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--output", help="write the JSON summary here")
    args = parser.parse_args(argv)
    summary = run_evaluation(args.config, args.mode, args.checkpoint, args.num_samples, args.seed, args.max_new_tokens, args.overrides)
    text = json.dumps(summary, indent=2)
    if args.output:
        Path(args.output).write_text(text)
    print(json.dumps({k: v for k, v in summary.items() if k != "samples"}))


if __name__ == "__main__":
    main()
