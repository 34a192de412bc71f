"""``python -m llava.shapes.quality`` on a random shapes VLM: every condition and type is measured and the bars are judged."""

import json

from llava.shapes import quality
from llava.shapes.benchmarks import normalise
from llava.shapes.scene import render, sample_scene


def test_quality_measures_every_condition_benchmark_and_type(random_shapes_vlm, tmp_path, capsys):
    assert quality.main(["--model-path", str(random_shapes_vlm), "--eval-dir", str(tmp_path), "--per-benchmark", "6"]) == 0
    results = json.loads((tmp_path / "quality.json").read_text())
    assert set(results) == {"vanilla", "blank", "random_64"}
    assert set(results["vanilla"]) == {"gqa", "pope", "scienceqa"}
    assert all(0 <= value <= 100 for cells in results.values() for per in cells.values() for value in per.values())
    report = capsys.readouterr().out
    assert "vanilla gqa" in report and ("met" in report or "UNMET" in report)


def test_blank_image_is_the_background_without_objects():
    image = quality.blank_image(3)
    assert image.size == (336, 336)
    assert image.tobytes() != render(sample_scene(3)).tobytes()


def test_normalise_reads_the_first_word():
    assert normalise(" Red.\n") == "red" and normalise("") == "" and normalise("B, because") == "b"
