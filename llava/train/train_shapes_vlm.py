"""Train the shipped shapes VLM from scratch on a CPU, in two stages, resumable.

Stage ``tower``: the CLIP vision tower alone learns a per-patch objective: the colour + shape class of
the object under each patch, and the row / column of the patch's cell, read from the feature layer
(-2, what LLaVA feeds the projector); and the set of objects in the image from the [CLS] token of the
last layer. Every patch is supervised, so the tower learns in minutes what end-to-end training would
have to discover through the LM.

Stage ``vlm``: the tower is frozen; projector and Llama LM learn multi-turn dialogues about each image
(several answers per pass over the 576 image tokens), with AdamW, warm-up and cosine decay.

Each stage checkpoints to ``<output-dir>/<stage>.pt`` every ``--checkpoint-every`` steps (weights,
optimizer, step; loaded with ``weights_only=True``) and logs to ``<output-dir>/<stage>_log.jsonl``;
batch ``t`` depends only on ``(seed, t)``, so a resumed run continues as an uninterrupted one.
``--export`` writes the llava-hf checkpoint (safetensors, config, tokenizer, processor) and the loss
curve PNG.

    python -m llava.train.train_shapes_vlm --output-dir checkpoints/shapes_vlm --export playground/models/shapes-llava
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm
from transformers import CLIPVisionModel, LlavaForConditionalGeneration

from llava.shapes.model import build_processor, shapes_llava_config
from llava.shapes.scene import COLOURS, GRID, SHAPES
from llava.shapes.training_data import NUM_CLASSES, DialogueSettings, dialogue_batch, tower_batch

STAGES = ("tower", "vlm")


class TowerHeads(nn.Module):
    """Linear read-outs of the tower's stage-1 objective (discarded after training)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.colour = nn.Linear(width, 1 + len(COLOURS))
        self.shape = nn.Linear(width, 1 + len(SHAPES))
        self.row = nn.Linear(width, GRID)
        self.col = nn.Linear(width, GRID)
        self.present = nn.Linear(width, NUM_CLASSES - 1)


def tower_losses(tower: CLIPVisionModel, heads: TowerHeads, batch) -> dict[str, torch.Tensor]:
    out = tower(pixel_values=batch.pixel_values, output_hidden_states=True)
    features = out.hidden_states[-2][:, 1:]  # LLaVA's feature layer, CLS dropped
    ce = nn.functional.cross_entropy
    objects = batch.patch_class > 0
    colour = torch.where(objects, (batch.patch_class - 1) // len(SHAPES) + 1, 0)
    shape = torch.where(objects, (batch.patch_class - 1) % len(SHAPES) + 1, 0)
    colour_logits, shape_logits = heads.colour(features), heads.shape(features)
    # background is 93 % of the patches: weight object patches up so colour and shape are learned
    weight = lambda n: torch.tensor([1.0] + [5.0] * n)
    losses = {
        "colour": ce(colour_logits.flatten(0, 1), colour.flatten(), weight=weight(len(COLOURS))),
        "shape": ce(shape_logits.flatten(0, 1), shape.flatten(), weight=weight(len(SHAPES))),
        "row": ce(heads.row(features).flatten(0, 1), batch.patch_row.flatten()),
        "col": ce(heads.col(features).flatten(0, 1), batch.patch_col.flatten()),
        "present": nn.functional.binary_cross_entropy_with_logits(heads.present(out.pooler_output), batch.present),
    }
    with torch.no_grad():
        colour_hit = colour_logits.argmax(-1) == colour
        shape_hit = shape_logits.argmax(-1) == shape
        losses["acc_colour"] = colour_hit[objects].float().mean()
        losses["acc_shape"] = shape_hit[objects].float().mean()
        losses["acc_object_patch"] = (colour_hit & shape_hit)[objects].float().mean()
        losses["acc_background"] = (shape_hit & colour_hit)[~objects].float().mean()
    return losses


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def save(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load(path: Path) -> dict | None:
    return torch.load(path, weights_only=True) if path.exists() else None


def resume(path: Path, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer) -> int:
    """Load ``modules`` (by their checkpoint keys) and ``optimizer`` from ``path`` if it exists; the step to start at."""
    state = load(path)
    if state is None:
        return 0
    for key, module in modules.items():
        module.load_state_dict(state[key])
    optimizer.load_state_dict(state["optimizer"])
    return state["step"]


def append_log(path: Path, row: dict) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


def truncate_log(path: Path, step: int) -> None:
    """Drop log rows at or after ``step`` (a resumed run rewrites them)."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] < step]
    path.write_text("".join(row + "\n" for row in rows))


def build_model(processor) -> LlavaForConditionalGeneration:
    tokenizer = processor.tokenizer
    config = shapes_llava_config(len(tokenizer), tokenizer.convert_tokens_to_ids("<image>"))
    return LlavaForConditionalGeneration(config)


def train_tower(args, model: LlavaForConditionalGeneration, out: Path) -> None:
    tower = model.model.vision_tower
    heads = TowerHeads(tower.config.hidden_size)
    params = list(tower.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.tower_lr, weight_decay=0.01)
    start = resume(out / "tower.pt", {"tower": tower, "heads": heads}, optimizer)
    log = out / "tower_log.jsonl"
    truncate_log(log, start)
    tower.train()
    bar = tqdm(range(start, args.tower_steps), desc="tower", initial=start, total=args.tower_steps)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.tower_steps, args.tower_lr, 100)
        batch = tower_batch(step, args.tower_batch, args.seed)
        losses = tower_losses(tower, heads, batch)
        total = losses["colour"] + losses["shape"] + 0.2 * (losses["row"] + losses["col"]) + losses["present"]
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        row = {"step": step, "loss": float(total), **{k: round(float(v), 4) for k, v in losses.items()}}
        append_log(log, row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", obj=f"{row['acc_object_patch']:.2f}")
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == args.tower_steps:
            save(
                out / "tower.pt",
                {"step": step + 1, "tower": tower.state_dict(), "heads": heads.state_dict(), "optimizer": optimizer.state_dict()},
            )


def first_answer_accuracy(logits: torch.Tensor, batch) -> list[tuple[str, bool]]:
    index = batch.first_answer_index
    predicted = logits[torch.arange(len(index)), index - 1].argmax(-1)
    target = batch.input_ids[torch.arange(len(index)), index]
    return list(zip(batch.kinds, (predicted == target).tolist(), strict=True))


def train_vlm(args, model: LlavaForConditionalGeneration, processor, out: Path) -> None:
    tower_state = load(out / "tower.pt")
    if tower_state is None:
        raise SystemExit(f"stage vlm needs {out / 'tower.pt'}: run the tower stage first")
    model.model.vision_tower.load_state_dict(tower_state["tower"])
    model.model.vision_tower.requires_grad_(False)
    params = [p for name, p in model.named_parameters() if not name.startswith("model.vision_tower")]
    optimizer = torch.optim.AdamW(params, lr=args.vlm_lr, weight_decay=0.01, betas=(0.9, 0.98))
    start = resume(out / "vlm.pt", {"model": model}, optimizer)
    log = out / "vlm_log.jsonl"
    truncate_log(log, start)
    model.train()
    model.model.vision_tower.eval()
    tokenizer = processor.tokenizer
    image_token_id = model.config.image_token_id
    settings = DialogueSettings()
    recent: dict[str, list[bool]] = defaultdict(list)
    bar = tqdm(range(start, args.vlm_steps), desc="vlm", initial=start, total=args.vlm_steps)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.vlm_steps, args.vlm_lr, 200)
        batch = dialogue_batch(step, args.vlm_batch, args.seed, tokenizer, image_token_id, settings)
        output = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            pixel_values=batch.pixel_values,
            labels=batch.labels,
        )
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        for kind, correct in first_answer_accuracy(output.logits.detach(), batch):
            recent[kind] = (recent[kind] + [correct])[-200:]
        row = {"step": step, "loss": round(float(output.loss), 4), "lr": optimizer.param_groups[0]["lr"]}
        row["first_answer_correct"] = {kind: c for kind, c in first_answer_accuracy(output.logits.detach(), batch)}
        append_log(log, {**row, "first_answer_correct": [c for _, c in first_answer_accuracy(output.logits.detach(), batch)], "kinds": batch.kinds})
        bar.set_postfix(loss=f"{row['loss']:.3f}", **{k[:6]: f"{sum(v) / len(v):.2f}" for k, v in sorted(recent.items())})
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == args.vlm_steps:
            save(out / "vlm.pt", {"step": step + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=Path("checkpoints/shapes_vlm"))
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--tower-steps", type=int, default=600)
    parser.add_argument("--tower-batch", type=int, default=16)
    parser.add_argument("--tower-lr", type=float, default=2e-3)
    parser.add_argument("--vlm-steps", type=int, default=3000)
    parser.add_argument("--vlm-batch", type=int, default=8)
    parser.add_argument("--vlm-lr", type=float, default=1.5e-3)
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    processor = build_processor()
    model = build_model(processor)
    started = time.time()
    if "tower" in args.stages:
        train_tower(args, model, args.output_dir)
    if "vlm" in args.stages:
        train_vlm(args, model, processor, args.output_dir)
    print(f"done in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
