"""Pictures of what a pruning method kept, drawn after the fact from a saved pruning record (JSON).

A record (``save_kept_record``) holds the image path, the question, the cells its answer depends on,
and per pruning stage the layer and the kept patches (raster indices into the 24 x 24 grid):

* ``overlay``: the image as the model sees it (LLaVA-1.5's padding: centred on a square of CLIP's mean
  colour, as the eval pads it; then resized to a multiple of the 24-patch grid, at least 336 px) with
  pruned patches faded and the answer's evidence cells outlined, their patches marked green when kept and
  red when pruned (last stage kept); any image size works;
* ``layers``: span tokens per layer (multi-stage methods shrink in steps).

    python -m llava.viz overlay --record kept.json --output kept.png
    python -m llava.viz layers --record kept.json --output layers.png
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from transformers.image_utils import OPENAI_CLIP_MEAN

from llava.eval.evidence import evidence_patches
from llava.mm_utils import expand2square, to_rgb
from toolkit_common.cli import setting_error

GRID_SIDE = 24  # 336 px / patch 14
MODEL_SIDE = 336  # LLaVA-1.5's input side: overlays are never drawn smaller
PAD_COLOUR = tuple(int(channel * 255) for channel in OPENAI_CLIP_MEAN)  # LLaVA pads with CLIP's mean, so rounded


def save_kept_record(path: Path, image: str, question: str, cells: Sequence, method: str, record: Any, sample: int = 0) -> dict:
    """Write the kept patches of ``sample`` from a ``PruningRecord`` (engine) as JSON; returns the dict."""
    start = int(record.span[sample, 0])
    stages = [
        {"layer": stage.layer, "kept": sorted((stage.kept_positions(sample) - start).tolist())} for stage in record.stages
    ]
    payload = {
        "image": str(image),
        "question": question,
        "cells": [list(cell) for cell in cells],
        "method": method,
        "num_layers": record.num_layers,
        "span": record.span_length,
        "stages": stages,
        "span_per_layer": record.sample_span_per_layer(sample),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload), encoding="utf-8")
    return payload


def model_view(image: Image.Image) -> Image.Image:
    """``image`` as the model sees it: padded to a square of CLIP's mean colour (LLaVA-1.5's "pad"), resized
    to the multiple of ``GRID_SIDE`` nearest its side (at least ``MODEL_SIDE``), so every patch is whole."""
    square = expand2square(to_rgb(image), PAD_COLOUR)
    side = GRID_SIDE * max(MODEL_SIDE // GRID_SIDE, round(square.width / GRID_SIDE))
    return square if square.width == side else square.resize((side, side), Image.Resampling.BICUBIC)


EVIDENCE_KEPT, EVIDENCE_PRUNED = (0, 170, 0), (220, 0, 0)  # outlines of an evidence cell's kept / pruned patches


def evidence_counts(kept: Sequence[int], cells: Sequence[Sequence[int]], grid_cells: int = 6) -> tuple[int, int]:
    """``(kept, total)`` patches of the evidence ``cells`` (the answer's cells; ``grid_cells`` x ``grid_cells``
    over the 24 x 24 patch grid): what an overlay's caption reports."""
    patches = set(evidence_patches(cells, grid_cells, GRID_SIDE))
    return len(patches & set(kept)), len(patches)


def kept_overlay(image: Image.Image, kept: Sequence[int], cells: Sequence[Sequence[int]], grid_cells: int = 6) -> Image.Image:
    """``image`` as the model sees it (``model_view``) with patches outside ``kept`` faded to 25 % and the
    answer's evidence ``cells`` (of a ``grid_cells`` x ``grid_cells`` grid over the padded square) outlined in
    black, each of their patches outlined inside it in green when kept, in red when pruned (the patches
    evidence recall counts, ``llava.eval.evidence``)."""
    pixels = np.asarray(model_view(image), dtype=np.float32)
    patch = pixels.shape[0] // GRID_SIDE
    keep = np.zeros(GRID_SIDE * GRID_SIDE, dtype=bool)
    keep[list(kept)] = True
    faded = np.repeat(np.repeat(keep.reshape(GRID_SIDE, GRID_SIDE), patch, 0), patch, 1)
    pixels = np.where(faded[..., None], pixels, 0.25 * pixels + 0.75 * 255)
    result = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(result)
    cell = pixels.shape[0] // grid_cells
    per_cell = GRID_SIDE // grid_cells
    for row, col in cells:
        for dy in range(per_cell):
            for dx in range(per_cell):
                y, x = row * per_cell + dy, col * per_cell + dx
                colour = EVIDENCE_KEPT if keep[y * GRID_SIDE + x] else EVIDENCE_PRUNED
                draw.rectangle((x * patch + 1, y * patch + 1, (x + 1) * patch - 2, (y + 1) * patch - 2), outline=colour, width=1)
        draw.rectangle((col * cell, row * cell, (col + 1) * cell - 1, (row + 1) * cell - 1), outline=(0, 0, 0), width=3)
    return result


def plot_tokens_per_layer(records: Sequence[dict], path: Path) -> None:
    """Span tokens per layer, one line per record's method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    for record in records:
        axis.step(range(record["num_layers"]), record["span_per_layer"], where="post", label=record["method"])
    axis.set(xlabel="layer", ylabel="visual tokens", title="visual tokens each layer processes")
    axis.legend(fontsize="small")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def kept_at_stage(record: dict, stage: int = -1) -> Sequence[int]:
    """Patches stage ``stage`` of a saved record kept (default the last; all of them when nothing was pruned)."""
    return record["stages"][stage]["kept"] if record["stages"] else range(record["span"])


def draw_overlay(record: dict, output: Path, image_root: Path | None = None) -> None:
    image_path = Path(record["image"]) if image_root is None else image_root / record["image"]
    with Image.open(image_path) as image:
        kept_overlay(image, kept_at_stage(record), record["cells"]).save(output)


RECORD_FIELDS = {"overlay": ("image", "cells", "stages", "span"), "layers": ("method", "num_layers", "span_per_layer")}
"""The fields of a saved record each picture reads."""


def load_record(path: Path, picture: str) -> dict:
    """A saved record with the fields ``picture`` reads; a one-line ``ValueError`` naming what is wrong."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"--record {path}: not a JSON record ({str(error).splitlines()[0]})") from None
    if not isinstance(record, dict):
        raise ValueError(f"--record {path}: expected a JSON object (save_kept_record), got {type(record).__name__}")
    missing = [name for name in RECORD_FIELDS[picture] if name not in record]
    if missing:
        raise ValueError(f"--record {path}: missing field(s) {', '.join(missing)} (a {picture} needs "
                         f"{', '.join(RECORD_FIELDS[picture])}; records come from save_kept_record)")
    if picture == "overlay":
        kept = list(kept_at_stage(record))
        if not all(isinstance(k, int) and 0 <= k < GRID_SIDE * GRID_SIDE for k in kept):
            raise ValueError(f"--record {path}: kept patches must be indices in [0, {GRID_SIDE * GRID_SIDE - 1}]")
    return record


def draw(picture: str, records: list[dict], output: Path) -> None:
    """Draw ``picture`` of ``records`` to ``output``; a one-line ``ValueError`` for an image that cannot be
    read or an output that cannot be written."""
    if not output.parent.is_dir():
        raise ValueError(f"--output {output}: no folder {output.parent}")
    try:
        if picture == "overlay":
            draw_overlay(records[0], output)
        else:
            plot_tokens_per_layer(records, output)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise ValueError(f"cannot draw the {picture}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("picture", choices=("overlay", "layers"))
    parser.add_argument("--record", type=Path, nargs="+", required=True, help="kept-token record(s) (JSON)")
    parser.add_argument("--output", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    missing = [str(path) for path in args.record if not path.is_file()]
    if missing:
        setting_error(parser, f"record file(s) not found: {', '.join(missing)}")
    if args.picture == "overlay" and len(args.record) != 1:
        setting_error(parser, "overlay draws one record: pass a single --record")
    try:
        draw(args.picture, [load_record(path, args.picture) for path in args.record], args.output)
    except ValueError as error:
        setting_error(parser, str(error))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
