"""Does a VLM look at the image regions? Accuracy per benchmark and question type under three conditions.

* ``vanilla``: the held-out image, all 576 visual tokens;
* ``blank``: every question asked about the background texture alone (no objects): the answer priors,
  which should sit near chance (colour 1/6, shape 1/4, yes / no 1/2, options 1/4);
* ``random_64``: the held-out image with a random 64 of the 576 tokens kept from layer 1 on (the
  earliest layer the engine prunes at; layer 0 sees all 576, no later layer does).

    python -m llava.shapes.quality --model-path playground/models/shapes-llava --eval-dir playground/data/eval/shapes

Writes ``<eval-dir>/quality.json`` and ``quality.md`` (also printed). The bars of the shipped model:
vanilla >= 90 % on each benchmark; random_64 at least 15 points below vanilla on the one-cell types.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from llava.eval.inference import GenerationSettings, ModelBundle, answer_batch, load_model_bundle
from llava.eval.model_vqa_loader import load_vqa_samples
from llava.eval.model_vqa_science import load_science_samples
from llava.eval.run_loop import EvalSample
from llava.eval.summarize import markdown
from llava.shapes.benchmarks import BENCHMARKS, answer_key, ensure_benchmarks, normalise
from llava.shapes.questions import ONE_CELL
from llava.shapes.scene import Scene, render

CONDITIONS = {"vanilla": (None, {}), "blank": (None, {}), "random_64": ("random", {"keep": 64, "agg_layer": 1})}


def held_out_samples(root: Path, benchmark: str) -> list[EvalSample]:
    """A benchmark folder's questions as the project's loaders read them."""
    if benchmark == "gqa":
        return load_vqa_samples(root / "llava_gqa_testdev_balanced.jsonl", root / "data/images")[0]
    if benchmark == "pope":
        return load_vqa_samples(root / "llava_pope_test.jsonl", root / "val2014")[0]
    return load_science_samples(root / "llava_test_CQM-A.json", root / "images/test", single_pred_prompt=True)[0]


def blank_image(seed: int = 0) -> Image.Image:
    """The benchmark's textured background with no object on it."""
    return render(Scene((), seed))


def correct_by_type(
    bundle: ModelBundle, samples: Sequence[EvalSample], key: dict, blank: bool, batch_size: int, desc: str
) -> dict[str, list[bool]]:
    """``{question type: [answer right?, ...]}`` for one benchmark under one condition."""
    by_type: dict[str, list[bool]] = defaultdict(list)
    settings = GenerationSettings(max_new_tokens=4)
    for start in tqdm(range(0, len(samples), batch_size), desc=desc, unit="batch", leave=False):
        batch = samples[start : start + batch_size]
        images = [blank_image(index) if blank else sample.load_image() for index, sample in enumerate(batch, start)]
        answers, _ = answer_batch(bundle, settings, [sample.prompt for sample in batch], images)
        for sample, answer in zip(batch, answers, strict=True):
            kind, truth = key[sample.question_id]
            by_type[kind].append(normalise(answer) == truth)
    return by_type


def percent(marks: Sequence[bool]) -> float:
    return round(100 * sum(marks) / len(marks), 1)


def measure(model_path: str, eval_dir: Path, batch_size: int) -> dict[str, dict[str, dict[str, float]]]:
    """``{condition: {benchmark: {"all": %, <type>: %, ...}}}``."""
    results: dict[str, dict[str, dict[str, float]]] = {}
    for condition, (method, params) in CONDITIONS.items():
        bundle = load_model_bundle(model_path, method, params)
        results[condition] = {}
        for benchmark in BENCHMARKS:
            root = eval_dir / benchmark
            by_type = correct_by_type(bundle, held_out_samples(root, benchmark), answer_key(root, benchmark),
                                      condition == "blank", batch_size, f"{condition} {benchmark}")
            everything = [mark for marks in by_type.values() for mark in marks]
            results[condition][benchmark] = {"all": percent(everything), **{k: percent(v) for k, v in sorted(by_type.items())}}
    return results


def quality_table(results: dict[str, dict[str, dict[str, float]]]) -> tuple[list[str], list[list]]:
    columns = [(benchmark, kind) for benchmark, cells in results["vanilla"].items() for kind in cells]
    header = ["condition", *[f"{benchmark}:{kind}" for benchmark, kind in columns]]
    return header, [[condition, *(cells[b].get(k) for b, k in columns)] for condition, cells in results.items()]


def bars(results: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """One line per bar, saying whether it holds."""
    lines = []
    for benchmark, cells in results["vanilla"].items():
        lines.append(f"vanilla {benchmark} {cells['all']:.1f} % >= 90: {'met' if cells['all'] >= 90 else 'UNMET'}")
    for benchmark, cells in results["vanilla"].items():
        for kind in (k for k in cells if k in ONE_CELL):
            drop = cells[kind] - results["random_64"][benchmark][kind]
            lines.append(f"random_64 {benchmark}:{kind} costs {drop:.1f} points >= 15: {'met' if drop >= 15 else 'UNMET'}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", type=Path, default=Path("playground/models/shapes-llava"))
    parser.add_argument("--eval-dir", type=Path, default=Path("playground/data/eval/shapes"))
    parser.add_argument("--per-benchmark", type=int, default=120, help="questions per benchmark when they are generated")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    if not (args.model_path / "config.json").is_file():
        parser.error(f"no model at {args.model_path} (config.json missing)")
    if args.batch_size < 1 or args.per_benchmark < 1:
        parser.error("--batch-size and --per-benchmark must be positive")
    ensure_benchmarks(args.eval_dir, args.per_benchmark)
    results = measure(str(args.model_path), args.eval_dir, args.batch_size)
    report = markdown(*quality_table(results)) + "\n" + "\n".join(f"* {line}" for line in bars(results)) + "\n"
    (args.eval_dir / "quality.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    (args.eval_dir / "quality.md").write_text(report, encoding="utf-8")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
