"""The three held-out shapes benchmarks, written in LLaVA's evaluation layout (deterministic by seed).

Under ``<root>`` (default ``playground/data/eval/shapes``), so that ``EVAL_DIR=<root>`` makes the
project's ``gqa.sh`` / ``pope.sh`` / ``sqa.sh`` and their scorers run unchanged:

* ``gqa/``: short answers (one-cell and several-cell types), ``llava_gqa_testdev_balanced.jsonl``,
  ``data/images/``, ground truth ``data/testdev_balanced_questions.json`` (GQA accuracy);
* ``pope/``: ``is there a X ?`` with POPE's random / popular / adversarial negatives, half yes,
  ``llava_pope_test.jsonl``, ``val2014/``, labels ``coco/coco_pope_<split>.json`` (the POPE scorer);
* ``scienceqa/``: four options A-D (ScienceQA layout), ``llava_test_CQM-A.json``, ``images/test/<id>/``,
  ``problems.json`` and ``pid_splits.json`` (the ScienceQA scorer).

Every question has its own scene; benchmark scenes use seeds below the training offset, so training
never sees them. Each question line also carries ``kind`` (question type) and ``cells`` (0-based cells
the answer depends on, ``Question.evidence_cells``; ``evidence_cells`` reads them back) for per-type
tables, overlays and evidence recall.

    python -m llava.shapes.benchmarks --root playground/data/eval/shapes --per-benchmark 120
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from llava.shapes.questions import ONE_CELL, POPE_SPLITS, SEVERAL_CELLS, Question, ask, exists, multiple_choice
from llava.shapes.scene import Scene, render, sample_scene
from llava.shapes.training_data import OPTION_LETTERS
from llava.shapes.vocabulary import SHORT_ANSWER_PROMPT

BENCHMARKS = ("gqa", "pope", "scienceqa")
SEED_BASE = {"gqa": 1_000_000, "pope": 2_000_000, "scienceqa": 3_000_000}
JPEG_QUALITY = 90
COMPLETE_MARKER = "benchmark.json"  # written last: a benchmark folder without it is partial


def scene_questions(benchmark: str, count: int, seed: int) -> Iterator[tuple[int, Scene, Question]]:
    """``count`` (scene seed, scene, question) triples; question types (and POPE splits / labels) cycle."""
    if benchmark == "pope":
        plan = [(split, positive) for split in POPE_SPLITS for positive in (True, False)]
    elif benchmark == "gqa":
        plan = list(ONE_CELL + SEVERAL_CELLS)
    else:
        plan = list(ONE_CELL + ("count",))
    scene_seed = SEED_BASE[benchmark] + seed * 100_000
    made = 0
    while made < count:
        scene_seed += 1
        rng = random.Random(scene_seed)
        scene = sample_scene(scene_seed)
        wanted = plan[made % len(plan)]
        if benchmark == "pope":
            question = exists(scene, rng, split=wanted[0], positive=wanted[1])
        else:
            question = ask(scene, wanted, rng)
        if question is not None:
            made += 1
            yield scene_seed, scene, question


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write(temporary)`` beside ``path``, then ``os.replace`` it onto ``path``: a kill while writing leaves
    the old file or none, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    write(temporary)
    os.replace(temporary, path)


def write_json(path: Path, payload, lines: bool = False) -> None:
    """``payload`` as JSON (or one JSON line per item), written atomically."""
    text = "".join(json.dumps(item) + "\n" for item in payload) if lines else json.dumps(payload, indent=1)
    replace_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def save_image(scene: Scene, path: Path) -> None:
    """The scene as a JPEG, written atomically."""
    replace_atomically(path, lambda temporary: render(scene).save(temporary, format="JPEG", quality=JPEG_QUALITY))


def write_gqa(root: Path, count: int, seed: int) -> None:
    lines, truth = [], {}
    for scene_seed, scene, question in scene_questions("gqa", count, seed):
        qid = f"shapes{scene_seed}"
        image = f"{qid}.jpg"
        save_image(scene, root / "data" / "images" / image)
        lines.append(
            {"question_id": qid, "image": image, "text": f"{question.text}\n{SHORT_ANSWER_PROMPT}",
             "kind": question.kind, "cells": question.cells}
        )
        truth[qid] = {"answer": question.answer, "question": question.text, "types": {"semantic": question.kind}}
    write_json(root / "llava_gqa_testdev_balanced.jsonl", lines, lines=True)
    write_json(root / "data" / "testdev_balanced_questions.json", truth)


def write_pope(root: Path, count: int, seed: int) -> None:
    lines, labels = [], {split: [] for split in POPE_SPLITS}
    for scene_seed, scene, question in scene_questions("pope", count, seed):
        qid = f"shapes{scene_seed}"
        image = f"{qid}.jpg"
        save_image(scene, root / "val2014" / image)
        lines.append(
            {"question_id": qid, "image": image, "text": f"{question.text}\n{SHORT_ANSWER_PROMPT}",
             "category": question.split, "kind": question.kind, "cells": question.cells}
        )
        labels[question.split].append({"question_id": qid, "label": question.answer})
    lines.sort(key=lambda line: POPE_SPLITS.index(line["category"]))  # LLaVA's file is grouped by split
    write_json(root / "llava_pope_test.jsonl", lines, lines=True)
    for split, rows in labels.items():
        write_json(root / "coco" / f"coco_pope_{split}.json", rows, lines=True)


def write_scienceqa(root: Path, count: int, seed: int) -> None:
    entries, problems = [], {}
    for scene_seed, scene, question in scene_questions("scienceqa", count, seed):
        pid = f"shapes{scene_seed}"
        options, answer = multiple_choice(question, random.Random(scene_seed + 7))
        save_image(scene, root / "images" / "test" / pid / "image.jpg")
        listing = "\n".join(f"{letter}. {option}" for letter, option in zip(OPTION_LETTERS, options, strict=True))
        entries.append(
            {"id": pid, "image": f"{pid}/image.jpg", "kind": question.kind, "cells": question.cells,
             "conversations": [{"from": "human", "value": f"<image>\n{question.text}\n{listing}"},
                               {"from": "gpt", "value": OPTION_LETTERS[answer]}]}
        )
        problems[pid] = {"question": question.text, "choices": options, "answer": answer, "image": "image.jpg",
                         "split": "test", "kind": question.kind}
    write_json(root / "llava_test_CQM-A.json", entries)
    write_json(root / "problems.json", problems)
    write_json(root / "pid_splits.json", {"test": list(problems)})


def answer_key(root: Path, benchmark: str) -> dict[str, tuple[str, str]]:
    """``{question_id: (question type, expected answer)}`` of a written benchmark (answers as the model
    should reply: a word, ``yes`` / ``no``, or an option letter, lower case)."""
    if benchmark == "gqa":
        truth = json.loads((root / "data" / "testdev_balanced_questions.json").read_text(encoding="utf-8"))
        return {qid: (entry["types"]["semantic"], entry["answer"]) for qid, entry in truth.items()}
    if benchmark == "pope":
        lines = [json.loads(line) for line in (root / "llava_pope_test.jsonl").read_text(encoding="utf-8").splitlines() if line]
        labels = {}
        for split in POPE_SPLITS:
            for line in (root / "coco" / f"coco_pope_{split}.json").read_text(encoding="utf-8").splitlines():
                if line:
                    entry = json.loads(line)
                    labels[entry["question_id"]] = entry["label"]
        return {line["question_id"]: (f"exists_{line['category']}", labels[line["question_id"]]) for line in lines}
    problems = json.loads((root / "problems.json").read_text(encoding="utf-8"))
    return {pid: (entry["kind"], OPTION_LETTERS[entry["answer"]].lower()) for pid, entry in problems.items()}


def evidence_cells(root: Path, benchmark: str) -> dict[str, list[list[int]]]:
    """``{question_id: cells}`` of a written benchmark: the cells each answer reads
    (``Question.evidence_cells``, written as the question's ``cells``)."""
    if benchmark == "scienceqa":
        entries = json.loads((root / "llava_test_CQM-A.json").read_text(encoding="utf-8"))
        return {str(entry["id"]): entry.get("cells", []) for entry in entries}
    name = "llava_gqa_testdev_balanced.jsonl" if benchmark == "gqa" else "llava_pope_test.jsonl"
    lines = [json.loads(line) for line in (root / name).read_text(encoding="utf-8").splitlines() if line]
    return {str(line["question_id"]): line.get("cells", []) for line in lines}


def normalise(answer: str) -> str:
    """A reply as :func:`answer_key` spells answers: first word, lower case, trailing punctuation dropped."""
    words = answer.strip().lower().split()
    return words[0].rstrip(".,") if words else ""


WRITERS = {"gqa": write_gqa, "pope": write_pope, "scienceqa": write_scienceqa}


def write_benchmarks(root: Path, per_benchmark: int, seed: int = 0, names: tuple[str, ...] = BENCHMARKS) -> None:
    """Write the benchmarks ``names`` under ``root``: every file atomically, then the benchmark's marker
    ``COMPLETE_MARKER`` (its settings) last, so a benchmark without the marker is known to be partial."""
    for name in names:
        (root / name / COMPLETE_MARKER).unlink(missing_ok=True)
        WRITERS[name](root / name, per_benchmark, seed)
        write_json(root / name / COMPLETE_MARKER, {"per_benchmark": per_benchmark, "seed": seed})


def written_settings(root: Path, name: str) -> dict | None:
    """The settings a complete benchmark was written with (its marker), or None when it is absent or partial."""
    marker = root / name / COMPLETE_MARKER
    return json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else None


def ensure_benchmarks(root: Path, per_benchmark: int, seed: int = 0) -> list[str]:
    """Write the benchmarks under ``root`` that are missing or partial (a run killed while writing them); the
    names written. A complete benchmark is kept as it is, whatever ``per_benchmark`` asks (its answers stay valid)."""
    missing = [name for name in BENCHMARKS if written_settings(root, name) is None]
    if missing:
        print(f"writing the shapes benchmarks {', '.join(missing)} ({per_benchmark} questions each) under {root}")
        write_benchmarks(root, per_benchmark, seed, tuple(missing))
    for name in sorted(set(BENCHMARKS) - set(missing)):
        settings = written_settings(root, name)
        if settings != {"per_benchmark": per_benchmark, "seed": seed}:
            print(f"note: {root / name} was written with {settings}; kept as it is (delete it to write it again)")
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("playground/data/eval/shapes"))
    parser.add_argument("--per-benchmark", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--benchmarks", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    args = parser.parse_args(argv)
    if args.per_benchmark < 1:
        parser.error(f"--per-benchmark must be >= 1, got {args.per_benchmark}")
    write_benchmarks(args.root, args.per_benchmark, args.seed, tuple(args.benchmarks))
    print(f"wrote {', '.join(args.benchmarks)} ({args.per_benchmark} questions each) under {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
