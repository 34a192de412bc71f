"""``llava.viz`` overlays on images of any size: LLaVA's padding (CLIP's mean colour, as the eval pads) and a
resize to whole patches before the 24 x 24 grid is drawn."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llava import viz

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = Path("/work/shared/data/images")


def odd_image(size: tuple[int, int]) -> Image.Image:
    """A red image with a blue block in its top-left quarter."""
    image = Image.new("RGB", size, (200, 30, 30))
    image.paste((20, 40, 220), (0, 0, size[0] // 4, size[1] // 4))
    return image


def saved_record(tmp_path: Path, image: Path, kept: list[int]) -> Path:
    """A kept-token record (as ``save_kept_record`` writes it) for ``image``."""
    record = {"image": str(image), "question": "q", "cells": [[0, 0]], "method": "m", "num_layers": 2, "span": 576,
              "stages": [{"layer": 1, "kept": kept}], "span_per_layer": [576, len(kept)]}
    path = tmp_path / "kept.json"
    path.write_text(json.dumps(record))
    return path


@pytest.mark.parametrize(("size", "side"), [((333, 517), 528), ((517, 333), 528), ((40, 30), 336), ((336, 336), 336),
                                            ((1001, 3), 1008)])
def test_overlay_of_any_size_is_the_padded_square_on_whole_patches(size: tuple[int, int], side: int) -> None:
    overlay = viz.kept_overlay(odd_image(size), range(576), [])
    assert overlay.size == (side, side) and side % viz.GRID_SIDE == 0


def test_the_padding_is_llavas_mean_colour_around_the_centred_image() -> None:
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(ROOT / "playground" / "models" / "shapes-llava")
    assert tuple(int(channel * 255) for channel in processor.image_mean) == viz.PAD_COLOUR  # as process_images pads
    pixels = np.asarray(viz.model_view(odd_image((333, 517))))
    assert tuple(pixels[264, 2]) == viz.PAD_COLOUR and tuple(pixels[264, -3]) == viz.PAD_COLOUR  # side bands
    assert tuple(pixels[264, 264]) == (200, 30, 30)  # the image, centred
    faded = np.asarray(viz.kept_overlay(odd_image((333, 517)), [], []))
    assert faded[264, 264, 1] > 150  # nothing kept: everything faded towards white


def test_overlay_command_on_an_odd_size_image(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = tmp_path / "photo.png"
    odd_image((333, 517)).save(image)
    output = tmp_path / "overlay.png"
    assert viz.main(["overlay", "--record", str(saved_record(tmp_path, image, list(range(0, 576, 3)))),
                     "--output", str(output)]) == 0
    with Image.open(output) as drawn:
        assert drawn.size == (528, 528)


@pytest.mark.skipif(not PHOTOS.is_dir() or not any(PHOTOS.glob("*.jpg")), reason=f"no photos in {PHOTOS}")
def test_overlay_command_on_the_shared_photos(tmp_path: Path) -> None:
    for photo in sorted(PHOTOS.glob("*.jpg")):
        output = tmp_path / f"{photo.stem}.png"
        assert viz.main(["overlay", "--record", str(saved_record(tmp_path, photo, list(range(100, 300)))),
                         "--output", str(output)]) == 0
        with Image.open(output) as drawn, Image.open(photo) as original:
            assert drawn.width == drawn.height and drawn.width % viz.GRID_SIDE == 0
            assert abs(drawn.width - max(original.size)) <= viz.GRID_SIDE
