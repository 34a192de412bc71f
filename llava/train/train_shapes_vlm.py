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
``--export`` writes the llava-hf checkpoint (safetensors, config, tokenizer, processor), the loss
curve PNG, the logs (``training_logs/``) and ``training_record.json`` (steps per stage, every run's
settings). ``--continue-from`` trains the VLM stage further from such an export (e.g. the shipped
model: training checkpoints do not travel with a clone), on the batches after those it has seen, with
a fresh optimizer and its own warm-up and cosine schedule.

    python -m llava.train.train_shapes_vlm --output-dir checkpoints/shapes_vlm --export playground/models/shapes-llava
    python -m llava.train.train_shapes_vlm --output-dir checkpoints/shapes_vlm --resume     # after an interruption
    python -m llava.train.train_shapes_vlm --output-dir checkpoints/more --stages vlm --vlm-steps 1500 \
        --attention-weight 0 --continue-from playground/models/shapes-llava --export playground/models/shapes-llava
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm
from transformers import CLIPVisionModel, LlavaForConditionalGeneration

from llava.pruning.scoring import decoder_attention_rows
from llava.shapes.model import build_processor, shapes_llava_config
from llava.shapes.scene import COLOURS, GRID, SHAPES
from llava.shapes.training_data import NUM_CLASSES, DialogueBatch, DialogueSettings, dialogue_batch, tower_batch
from llava.train.count_init import init_count_circuit
from llava.train.lookup_init import init_lookup_circuit
from llava.train.option_init import init_option_circuit
from toolkit_common.cli import setting_error
from toolkit_common.jsonl import drop_records_from_step
from toolkit_common.training import (
    append_log,
    load_checkpoint,
    read_log,
    resume,
    run_settings,
    save_checkpoint,
    warmup_cosine_lr,
)

STAGES = ("tower", "vlm")
TRAINING_RECORD = "training_record.json"
RUNS = "runs.jsonl"  # in --output-dir: the settings of every training invocation
BASE_RECORD = "continued_from.json"  # in --output-dir: the training record of the export a run continues
TOWER_RECORD = "tower_from.json"  # in --output-dir: the training record of the export the tower stage started from
LOGS = ("tower_log.jsonl", "vlm_log.jsonl")
CENTRE_WEIGHT = 20.0  # positive weight of the tower's centre-patch objective


@dataclass(frozen=True)
class HopHead:
    """The attention head a hop supervises, and its loss: ``-log`` of the mass on the targets, or (a
    ``distribution`` hop) the cross-entropy ``-sum_t w_t log a_t`` to the targets' weights ``w``."""

    layer: int
    head: int
    distribution: bool = False


# key words, then the image twice (the lookup circuit's heads); the objects hop after the lookup; the
# option lines' letters in the other head of layer 1; the right option once the answer is read (layer 5)
HOP_HEADS = {
    "key_words": HopHead(1, 0),
    "first_image": HopHead(2, 0),
    "second_image": HopHead(4, 0),
    "objects": HopHead(3, 0, distribution=True),
    "option": HopHead(5, 0),
    "letters": HopHead(1, 1),
}


class TowerHeads(nn.Module):
    """Linear read-outs of the tower's stage-1 objective (discarded after training)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.colour = nn.Linear(width, 1 + len(COLOURS))
        self.shape = nn.Linear(width, 1 + len(SHAPES))
        self.row = nn.Linear(width, GRID)
        self.col = nn.Linear(width, GRID)
        self.present = nn.Linear(width, NUM_CLASSES - 1)
        self.centre = nn.Linear(width, 1)


def colour_and_shape(patch_class: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based colour and shape indices of each patch's object class (0 for background)."""
    objects = patch_class > 0
    colour = torch.where(objects, (patch_class - 1) // len(SHAPES) + 1, 0)
    return colour, torch.where(objects, (patch_class - 1) % len(SHAPES) + 1, 0)


def tower_losses(tower: CLIPVisionModel, heads: TowerHeads, batch) -> dict[str, torch.Tensor]:
    out = tower(pixel_values=batch.pixel_values, output_hidden_states=True)
    features = out.hidden_states[-2][:, 1:]  # LLaVA's feature layer, CLS dropped
    ce = nn.functional.cross_entropy
    objects = batch.patch_class > 0
    colour, shape = colour_and_shape(batch.patch_class)
    colour_logits, shape_logits = heads.colour(features), heads.shape(features)
    centre_logits = heads.centre(features).squeeze(-1)
    # background is 93 % of the patches: weight object patches up so colour and shape are learned
    weight = lambda n: torch.tensor([1.0] + [5.0] * n)
    losses = {
        "colour": ce(colour_logits.flatten(0, 1), colour.flatten(), weight=weight(len(COLOURS))),
        "shape": ce(shape_logits.flatten(0, 1), shape.flatten(), weight=weight(len(SHAPES))),
        "row": ce(heads.row(features).flatten(0, 1), batch.patch_row.flatten()),
        "col": ce(heads.col(features).flatten(0, 1), batch.patch_col.flatten()),
        "present": nn.functional.binary_cross_entropy_with_logits(heads.present(out.pooler_output), batch.present),
        # one centre patch per object among 576: weighted up like the object classes
        "centre": nn.functional.binary_cross_entropy_with_logits(
            centre_logits, batch.patch_centre.float(), pos_weight=torch.tensor(CENTRE_WEIGHT)),
    }
    with torch.no_grad():
        colour_hit = colour_logits.argmax(-1) == colour
        shape_hit = shape_logits.argmax(-1) == shape
        losses["acc_colour"] = colour_hit[objects].float().mean()
        losses["acc_shape"] = shape_hit[objects].float().mean()
        losses["acc_object_patch"] = (colour_hit & shape_hit)[objects].float().mean()
        losses["acc_background"] = (shape_hit & colour_hit)[~objects].float().mean()
        centre_hit = (centre_logits > 0) == batch.patch_centre
        losses["acc_centre"] = centre_hit[batch.patch_centre].float().mean()  # recall
        losses["acc_not_centre"] = centre_hit[objects & ~batch.patch_centre].float().mean()  # other object patches
    return losses


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
    if start == 0 and args.tower_from:
        tower.load_state_dict(LlavaForConditionalGeneration.from_pretrained(args.tower_from).model.vision_tower.state_dict())
        (out / TOWER_RECORD).write_text(json.dumps(read_training_record(args.tower_from), indent=1), encoding="utf-8")
    log = out / "tower_log.jsonl"
    drop_records_from_step(log, start)
    tower.train()
    bar = tqdm(range(start, args.tower_steps), desc="tower", initial=start, total=args.tower_steps)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine_lr(step, args.tower_steps, args.tower_lr, 100)
        batch = tower_batch(step, args.tower_batch, args.seed)
        losses = tower_losses(tower, heads, batch)
        total = losses["colour"] + losses["shape"] + 0.2 * (losses["row"] + losses["col"]) + losses["present"] + losses["centre"]
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        row = {"step": step, "loss": float(total), **{k: round(float(v), 4) for k, v in losses.items()}}
        append_log(log, row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", obj=f"{row['acc_object_patch']:.2f}")
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == args.tower_steps:
            save_checkpoint(
                out / "tower.pt",
                {"step": step + 1, "tower": tower.state_dict(), "heads": heads.state_dict(), "optimizer": optimizer.state_dict()},
            )


def answer_accuracy(logits: torch.Tensor, batch: DialogueBatch) -> dict[str, list[bool]]:
    """Per question type: was each turn's first answer token the greedy prediction?"""
    hits: dict[str, list[bool]] = defaultdict(list)
    for row, kinds in enumerate(batch.kinds):
        index = batch.answer_index[row, : len(kinds)]
        predicted = logits[row, index - 1].argmax(-1)
        for kind, hit in zip(kinds, (predicted == batch.input_ids[row, index]).tolist(), strict=True):
            hits[kind].append(hit)
    return hits


def hop_losses(model: LlavaForConditionalGeneration, hidden_states, batch: DialogueBatch,
               heads: dict[str, HopHead]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per hop: ``(loss, mass)``, the mean over the hop's queries of its loss (``HopHead``) and of the
    attention mass its head gives to the targets (``batch.hops``); hops without a query in the batch are
    left out."""
    lm = model.model.language_model
    batch_size, length = batch.input_ids.shape
    position_ids = torch.arange(length).expand(batch_size, -1)  # right padded: what LlamaModel uses
    rope = lm.rotary_emb(hidden_states[0], position_ids)
    results = {}
    for name, spec in heads.items():
        targets = batch.hops[name]
        used = targets.used
        if not used.any():
            continue
        probs = decoder_attention_rows(lm.layers[spec.layer], hidden_states[spec.layer], rope,
                                       batch.attention_mask.bool(), targets.query.clamp(min=0))[:, spec.head]
        probs, weights = probs[used], targets.weights[used]  # [U, T]
        mass = (probs * (weights > 0)).sum(-1)
        if spec.distribution:
            weights = weights / weights.sum(-1, keepdim=True)
            loss = -(weights * torch.log(probs + 1e-6)).sum(-1)
        else:
            loss = -torch.log(mass + 1e-6)
        results[name] = (loss.mean(), mass.mean())
    return results


@torch.no_grad()
def write_circuits(model: LlavaForConditionalGeneration, heads_state: dict, tokenizer, seed: int) -> None:
    """The lookup, option and counting circuits (``llava.train.lookup_init``, ``option_init``,
    ``count_init``), their read-outs calibrated on 8 training images' tower features."""
    tower = model.model.vision_tower
    heads = TowerHeads(tower.config.hidden_size)
    heads.load_state_dict(heads_state)
    batch = tower_batch(10**6, 8, seed)  # a step index the tower stage never reaches
    features = tower(batch.pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:].flatten(0, 1)
    colour, shape = colour_and_shape(batch.patch_class.flatten())
    labels = {"row": batch.patch_row.flatten(), "col": batch.patch_col.flatten(), "colour": colour, "shape": shape}
    init_lookup_circuit(model, heads, features, labels, tokenizer)
    init_option_circuit(model, tokenizer)
    init_count_circuit(model, heads.centre, features, batch.patch_centre.flatten(), tokenizer)


def train_vlm(args, model: LlavaForConditionalGeneration, processor, out: Path) -> None:
    """Projector + LM on dialogues: answer cross-entropy + ``attention_weight`` x the hop attention loss.

    The hop loss (``hop_losses``, the mean over the supervised hops of ``HOP_HEADS``) shows heads where to
    look: from the position predicting each answer, the question's key words (layer 1), the patches of
    the cells the answer reads (layers 2 and 4: for right_of the named object, then the cell right of
    it), for count / most-common BOS and each counted object's centre patch as a uniform distribution
    (layer 3: the share BOS keeps says how many), and in the option form the right option's word (layer
    5); from each option word, its letter (layer 1, head 1). It is a curriculum, decaying to 0 over the
    first ``attention_steps``: from the answer loss alone a small LM on a CPU found these lookups too
    slowly (answers at the priors for 1100 steps with ideal features; at step 200 without the key-word hop
    the image attention was the same for every question about an image; the option form stayed at chance
    over 1750 steps).
    """
    if args.continue_from:
        model.load_state_dict(LlavaForConditionalGeneration.from_pretrained(args.continue_from).state_dict())
        base = read_training_record(args.continue_from)
        (out / BASE_RECORD).write_text(json.dumps(base, indent=1), encoding="utf-8")  # for a later --export
        offset = base["vlm_steps"]
        for name in LOGS:  # the curves show the whole history
            if not (out / name).exists() and (args.continue_from / "training_logs" / name).exists():
                (out / name).write_bytes((args.continue_from / "training_logs" / name).read_bytes())
    else:
        tower_state = load_checkpoint(out / "tower.pt")
        if tower_state is None:
            raise SystemExit(f"stage vlm needs {out / 'tower.pt'}: run the tower stage first")
        model.model.vision_tower.load_state_dict(tower_state["tower"])
        offset = 0
    model.model.vision_tower.requires_grad_(False)
    params = [p for name, p in model.named_parameters() if not name.startswith("model.vision_tower")]
    optimizer = torch.optim.AdamW(params, lr=args.vlm_lr, weight_decay=0.01, betas=(0.9, 0.98))
    start = resume(out / "vlm.pt", {"model": model}, optimizer)
    if start == 0 and args.lookup_init and not args.continue_from:
        write_circuits(model, tower_state["heads"], processor.tokenizer, args.seed)
    log = out / "vlm_log.jsonl"
    drop_records_from_step(log, offset + start)
    model.train()
    model.model.vision_tower.eval()
    tokenizer = processor.tokenizer
    settings = dialogue_settings(args)
    recent: dict[str, list[bool]] = defaultdict(list)
    bar = tqdm(range(start, args.vlm_steps), desc="vlm", initial=start, total=args.vlm_steps)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine_lr(step, args.vlm_steps, args.vlm_lr, 200)
        batch = dialogue_batch(offset + step, args.vlm_batch, args.seed, tokenizer, model.config.image_token_id, settings)
        # right-padded batch and no attention mask: SDPA's causal fast path (a padding mask takes a
        # path 2-3 x slower on CPU); the pads sit after every real token and carry no labels
        output = model(
            input_ids=batch.input_ids, pixel_values=batch.pixel_values, labels=batch.labels, output_hidden_states=True
        )
        hops = hop_losses(model, output.hidden_states, batch, {name: HOP_HEADS[name] for name in args.hops})
        hop_loss = torch.stack([loss for loss, _ in hops.values()]).mean() if hops else output.loss.new_zeros(())
        weight = args.attention_weight * max(0.0, 1 - step / args.attention_steps)
        loss = output.loss + weight * hop_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        hits = answer_accuracy(output.logits.detach(), batch)
        for kind, kind_hits in hits.items():
            recent[kind] = (recent[kind] + kind_hits)[-300:]
        row = {
            "step": offset + step,
            "loss": round(float(output.loss), 4),
            "hop_loss": round(float(hop_loss), 4),
            "hop_mass": {name: round(float(mass), 4) for name, (_, mass) in hops.items()},
            "attention_weight": weight,
            "lr": optimizer.param_groups[0]["lr"],
            "correct": {kind: [int(h) for h in kind_hits] for kind, kind_hits in hits.items()},
        }
        append_log(log, row)
        bar.set_postfix(
            loss=f"{row['loss']:.3f}", hop=f"{float(hop_loss):.2f}", **{k[:6]: f"{sum(v) / len(v):.2f}" for k, v in sorted(recent.items())}
        )
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == args.vlm_steps:
            save_checkpoint(out / "vlm.pt", {"step": step + 1, "offset": offset, "model": model.state_dict(),
                                  "optimizer": optimizer.state_dict()})


def dialogue_settings(args) -> DialogueSettings:
    """The training dialogues' mix of question kinds and forms, from ``--kind-weights`` / ``--multiple-choice-share``."""
    defaults = DialogueSettings()
    weights = dict(defaults.kind_weights) | dict(args.kind_weights or [])
    share = defaults.multiple_choice_share if args.multiple_choice_share is None else args.multiple_choice_share
    return DialogueSettings(kind_weights=tuple(weights.items()), multiple_choice_share=share)


def kind_weight(text: str) -> tuple[str, float]:
    """``KIND=WEIGHT`` of ``--kind-weights``."""
    kinds = dict(DialogueSettings().kind_weights)
    kind, _, weight = text.partition("=")
    if kind not in kinds:
        raise argparse.ArgumentTypeError(f"unknown question kind {kind!r}; valid: {', '.join(kinds)}")
    try:
        value = float(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the weight after '=' must be a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the weight must be >= 0")
    return kind, value


def plot_training_curves(out: Path, target: Path) -> None:
    """Loss curves of both stages and the LM's per-type answer accuracy (moving mean over 50 steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tower, vlm = read_log(out / "tower_log.jsonl"), read_log(out / "vlm_log.jsonl")
    smooth = lambda values, n=50: [sum(values[max(0, i - n + 1) : i + 1]) / len(values[max(0, i - n + 1) : i + 1]) for i in range(len(values))]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot([r["step"] for r in tower], smooth([r["loss"] for r in tower]), label="loss")
    for key in ("acc_colour", "acc_shape"):
        axes[0].plot([r["step"] for r in tower], smooth([r[key] for r in tower]), label=key.removeprefix("acc_") + " accuracy")
    axes[0].set(title="stage 1: vision tower, per-patch objective", xlabel="step")
    steps = [r["step"] for r in vlm]
    axes[1].plot(steps, smooth([r["loss"] for r in vlm]), label="answer loss")
    axes[1].plot(steps, smooth([r["hop_loss"] for r in vlm]), label="hop attention loss")
    axes[1].plot(steps, [r["attention_weight"] for r in vlm], label="hop loss weight", linestyle="--")
    axes[1].set(title="stage 2: projector + LM", xlabel="step")
    for kind in sorted({k for r in vlm for k in r["correct"]}):
        hits = [(r["step"], sum(r["correct"][kind]) / len(r["correct"][kind])) for r in vlm if r["correct"].get(kind)]
        axes[2].plot([s for s, _ in hits], smooth([h for _, h in hits]), label=kind)
    axes[2].set(title="stage 2: first answer token correct (training turns)", xlabel="step", ylim=(0, 1.02))
    for axis in axes:
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(target, dpi=90)
    plt.close(figure)


def read_training_record(folder: Path) -> dict:
    path = folder / TRAINING_RECORD
    if not path.is_file():
        raise SystemExit(f"{folder} has no {TRAINING_RECORD}: --continue-from needs a folder written by --export")
    return json.loads(path.read_text(encoding="utf-8"))


def export(args, model: LlavaForConditionalGeneration, processor, target: Path) -> None:
    """The llava-hf checkpoint (safetensors, config, tokenizer, processor), the training curves PNG, the
    logs and the training record (steps per stage, the settings of every run that led to the weights)."""
    state = load_checkpoint(args.output_dir / "vlm.pt")
    if state is None:
        raise SystemExit(f"--export needs {args.output_dir / 'vlm.pt'}: run the vlm stage first")
    model.load_state_dict(state["model"])
    if (args.output_dir / BASE_RECORD).is_file():  # this output dir continues an export
        record = json.loads((args.output_dir / BASE_RECORD).read_text(encoding="utf-8"))
    else:
        tower = load_checkpoint(args.output_dir / "tower.pt")
        record = {"tower_steps": tower["step"] if tower else 0, "vlm_steps": 0, "runs": []}
        if (args.output_dir / TOWER_RECORD).is_file():  # the tower stage went on from an export's tower
            origin = json.loads((args.output_dir / TOWER_RECORD).read_text(encoding="utf-8"))
            record["tower_steps"] += origin["tower_steps"]
            record["tower_started_from"] = origin
    record["vlm_steps"] = state.get("offset", 0) + state["step"]
    record["runs"] = [*record["runs"], *read_log(args.output_dir / RUNS)]
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    processor.save_pretrained(target)
    (target / "training_logs").mkdir(exist_ok=True)
    for name in LOGS:
        if (args.output_dir / name).exists():
            (target / "training_logs" / name).write_bytes((args.output_dir / name).read_bytes())
    (target / TRAINING_RECORD).write_text(json.dumps(record, indent=1), encoding="utf-8")
    plot_training_curves(args.output_dir, target / "training_curves.png")
    print(f"exported {record['tower_steps']} tower steps and {record['vlm_steps']} VLM steps to {target}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=Path("checkpoints/shapes_vlm"))
    parser.add_argument("--stages", nargs="*", choices=STAGES, default=list(STAGES), help="none: only --export")
    parser.add_argument("--tower-steps", type=int, default=600)
    parser.add_argument("--tower-batch", type=int, default=16)
    parser.add_argument("--tower-lr", type=float, default=2e-3)
    parser.add_argument("--tower-from", type=Path,
                        help="an exported checkpoint whose vision tower the tower stage starts from (its read-outs start fresh)")
    parser.add_argument("--vlm-steps", type=int, default=3000)
    parser.add_argument("--vlm-batch", type=int, default=8)
    parser.add_argument("--vlm-lr", type=float, default=1.5e-3)
    parser.add_argument("--hops", nargs="*", choices=list(HOP_HEADS), default=list(HOP_HEADS),
                        help="hops the attention loss supervises (where: "
                             + ", ".join(f"{name} layer {h.layer} head {h.head}" for name, h in HOP_HEADS.items()) + ")")
    parser.add_argument("--attention-weight", type=float, default=1.0)
    parser.add_argument("--attention-steps", type=int, default=1500, help="the hop loss decays to 0 over these steps")
    parser.add_argument("--lookup-init", action=argparse.BooleanOptionalAction, default=True,
                        help="start the LM with the lookup, option and counting circuits written in "
                             "(llava.train.lookup_init, option_init, count_init)")
    parser.add_argument("--kind-weights", type=kind_weight, nargs="+", metavar="KIND=WEIGHT",
                        help="sampling weights of the question kinds in the training dialogues (the others keep "
                             f"their defaults: {', '.join(f'{k}={w:g}' for k, w in DialogueSettings().kind_weights)})")
    parser.add_argument("--multiple-choice-share", type=float,
                        help=f"share of non-POPE questions asked in the option form (default {DialogueSettings().multiple_choice_share})")
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--export", type=Path, help="write the llava-hf checkpoint here after training")
    parser.add_argument("--continue-from", type=Path,
                        help="an exported checkpoint (with training_record.json) to train the vlm stage further from")
    parser.add_argument("--resume", action="store_true", help="continue the stages' checkpoints in --output-dir")
    parser.add_argument("--overwrite", action="store_true", help="start the stages again (their checkpoints and logs are deleted)")
    args = parser.parse_args(argv)
    for flag in ("tower_steps", "tower_batch", "vlm_steps", "vlm_batch", "checkpoint_every", "threads", "attention_steps"):
        if getattr(args, flag) < 1:
            setting_error(parser, f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.multiple_choice_share is not None and not 0 <= args.multiple_choice_share <= 1:
        setting_error(parser, f"--multiple-choice-share must be in [0, 1], got {args.multiple_choice_share}")
    if args.resume and args.overwrite:
        setting_error(parser, "--resume and --overwrite exclude each other")
    started_stages = [stage for stage in args.stages if (args.output_dir / f"{stage}.pt").exists()]
    if started_stages and not (args.resume or args.overwrite):
        setting_error(parser, f"{args.output_dir} holds checkpoints of stage(s) {', '.join(started_stages)}: "
                              "pass --resume to continue them or --overwrite to start again")
    if args.continue_from is not None:
        if args.stages != ["vlm"]:
            setting_error(parser, f"--continue-from trains the vlm stage only: pass --stages vlm, got {args.stages}")
        if not (args.continue_from / TRAINING_RECORD).is_file():
            setting_error(parser, f"--continue-from {args.continue_from} has no {TRAINING_RECORD} (a folder written by --export)")
    elif "vlm" in args.stages and "tower" not in args.stages and not (args.output_dir / "tower.pt").exists():
        setting_error(parser, f"stage vlm needs {args.output_dir / 'tower.pt'}: run the tower stage first (--stages tower vlm)")
    if args.overwrite:
        for stage in args.stages:
            for name in (f"{stage}.pt", f"{stage}_log.jsonl"):
                (args.output_dir / name).unlink(missing_ok=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    processor = build_processor()
    model = build_model(processor)
    started = time.time()
    if args.stages:
        append_log(args.output_dir / RUNS, run_settings(args))
    if "tower" in args.stages:
        train_tower(args, model, args.output_dir)
    if "vlm" in args.stages:
        train_vlm(args, model, processor, args.output_dir)
    print(f"done in {time.time() - started:.0f} s")
    if args.export:
        export(args, model, processor, args.export)
    return 0


if __name__ == "__main__":
    sys.exit(main())
