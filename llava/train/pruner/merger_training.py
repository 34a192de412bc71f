"""Train the ``TokenMerger`` as a pre-LLM stage (method ``learned_merger``) against the frozen VLM.

Step ``t``: batch ``t`` of the config's data source (``llava.train.pruner.data``); the LLaVA wrapper's
pre-LLM path replaces the 576 image tokens by the merger's ``M`` outputs (``llava.model.pre_llm``); the
loss is the answer CE of the frozen VLM on that shorter prompt; only the merger learns (AdamW,
``training.lr_pruner``). The merger sees the projected image features and the instruction embeddings,
the inputs the pre-LLM methods see. ``<output-dir>/merger.pt`` (every ``training.checkpoint_every``
steps; merger, optimizer, step) makes a run resumable; ``merger_log.jsonl`` holds the loss per step.

    python -m llava.train.pruner.merger_training --config configs/shapes_pruner.yaml --tokens 64 \\
        --output-dir checkpoints/shapes_pruner/merger --steps 300
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from llava.model.vision import image_features_per_image
from llava.pruning.learned.checkpoint import read_checkpoint
from llava.pruning.learned.merger import TokenMerger
from llava.pruning.methods.learned_merger import LearnedMerger
from llava.train.eval_pruner import evaluate_hard_or_origin, held_out_samples
from llava.train.pruner.config import TrainConfig, load_train_config
from llava.train.pruner.data import training_batch
from llava.train.pruner.losses import task_loss
from llava.train.pruner.training import load_frozen_model
from toolkit_common.cli import setting_error
from toolkit_common.jsonl import drop_records_from_step
from toolkit_common.training import save_checkpoint

CHECKPOINT = "merger.pt"
LOG = "merger_log.jsonl"


def train_merger(config: TrainConfig, tokens: int, output_dir: Path, show_progress: bool = True) -> list[dict[str, Any]]:
    """Train (resuming ``output_dir/merger.pt`` when there) to ``config.training.steps``; the steps' metrics."""
    tokenizer, llava = load_frozen_model(config)
    torch.manual_seed(config.seed)
    merger_config = {"d_model": llava.config.text_config.hidden_size, "num_outputs": tokens, "num_heads": 4}
    merger = TokenMerger(**merger_config).to(config.device).train()
    optimizer = torch.optim.AdamW(merger.parameters(), lr=config.training.lr_pruner)
    step = 0
    if (output_dir / CHECKPOINT).is_file():
        state = read_checkpoint(output_dir / CHECKPOINT)
        if state["merger_config"] != merger_config:
            raise ValueError(f"{output_dir / CHECKPOINT} merges into {state['merger_config']}, not {merger_config}")
        merger.load_state_dict(state["merger"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
    output_dir.mkdir(parents=True, exist_ok=True)
    log_path = output_dir / LOG
    drop_records_from_step(log_path, step)
    llava.set_pruning_method(LearnedMerger.from_merger(merger))
    span = image_features_per_image(llava.config)
    history = []
    with open(log_path, "a") as log, tqdm(total=config.training.steps, initial=step, disable=not show_progress, desc="merger") as bar:
        while step < config.training.steps:
            batch = training_batch(config.data, step, config.training.batch_size, config.seed, tokenizer,
                                   llava.config.image_token_id, span, config.training.dataset_size).to(config.device)
            logits = llava(input_ids=batch.input_ids, attention_mask=batch.attention_mask, pixel_values=batch.pixel_values).logits
            loss = task_loss(logits, batch.labels[:, -logits.shape[1] :])  # the image rows left, the answer stays at the end
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            metrics = {"step": step - 1, "loss_task": float(loss.detach())}
            history.append(metrics)
            log.write(json.dumps(metrics) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{metrics['loss_task']:.3f}")
            bar.update(1)
            if step % config.training.checkpoint_every == 0 or step == config.training.steps:
                save_checkpoint(output_dir / CHECKPOINT, {"step": step, "train_config": {"tokens": tokens, "data": config.data},
                                                          "merger_config": merger_config, "merger": merger.state_dict(),
                                                          "optimizer": optimizer.state_dict()})
    return history


@torch.no_grad()
def held_out_accuracy(config: TrainConfig, checkpoint: Path, num_samples: int, seed: int) -> dict[str, Any]:
    """First-answer-token accuracy and equivalent tokens with the trained merger on held-out samples."""
    tokenizer, llava = load_frozen_model(config)
    llava.set_pruning_method(LearnedMerger(merger_checkpoint=str(checkpoint)))
    rows = [evaluate_hard_or_origin(llava, tokenizer, batch, prompt, 4)
            for batch, prompt in held_out_samples(config, tokenizer, llava, num_samples, seed)]
    return {"answer_accuracy": round(sum(r["answer_correct"] for r in rows) / len(rows), 4),
            "equivalent_tokens": rows[0]["equivalent_tokens"]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/shapes_pruner.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--tokens", type=int, default=64, help="M, the merged tokens that replace the image's")
    parser.add_argument("--output-dir", type=Path, default=Path("checkpoints/shapes_pruner/merger"))
    parser.add_argument("--steps", type=int, help="override training.steps")
    args = parser.parse_args(argv)
    if args.tokens < 1 or (args.steps is not None and args.steps < 1):
        setting_error(parser, "--tokens and --steps must be >= 1")
    try:
        config = load_train_config(args.config, args.overrides)
    except (OSError, ValueError) as exc:
        setting_error(parser, f"--config {args.config}: {exc}")
    if args.steps is not None:
        config.training.steps = args.steps
    history = train_merger(config, args.tokens, args.output_dir)
    if history:
        print(f"steps {history[0]['step']}..{history[-1]['step']}: task loss {history[0]['loss_task']:.4f} -> {history[-1]['loss_task']:.4f}")
    print(f"checkpoint: {args.output_dir / CHECKPOINT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
