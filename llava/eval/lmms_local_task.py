"""Turn a benchmark folder in LLaVA's layout into a local lmms-eval task, scored as the project scores it.

lmms-eval reads its tasks from the hub; a benchmark on disk (the shipped shapes benchmarks, or your own
GQA / POPE files) becomes a task folder for ``--include_path``::

    python -m llava.eval.lmms_local_task --format pope --benchmark playground/data/eval/shapes/pope \
        --task shapes_pope --output lmms_tasks/
    lmms-eval --model llava_prune --model_args pretrained=playground/models/shapes-llava,pruning_method=fastv,visual_token_num=64 \
        --tasks shapes_pope --include_path lmms_tasks/

The folder holds ``<task>.jsonl`` (one document per question: id, absolute image path, prompt text,
answer), ``<task>.yaml`` (``dataset_path: json`` over that file, greedy decoding) and ``<task>_utils.py``,
which re-exports this module's ``doc_to_visual`` / ``doc_to_text`` / ``process_*`` functions. The metric
``accuracy`` (percent) uses the project's parsing: POPE's no/not rule, GQA's exact match after
normalisation, so lmms-eval and the project's scorers agree question by question.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from llava.eval.answer_normalization import normalize_short_answer, parse_pope_answer
from toolkit_common.jsonl import read_jsonl_strict as read_jsonl

FORMATS = ("pope", "gqa")
GQA_SPLIT = "llava_gqa_testdev_balanced"
# The importable name of this module: under ``python -m`` its ``__name__`` is ``__main__``, which the
# task's utils file (imported by lmms-eval in another process) cannot import from.
UTILS_SOURCE_MODULE = "llava.eval.lmms_local_task"


def pope_documents(benchmark: Path) -> list[dict[str, Any]]:
    """POPE layout: ``llava_pope_test.jsonl``, ``val2014/`` images, ``coco/coco_pope_<split>.json`` labels."""
    questions = read_jsonl(benchmark / "llava_pope_test.jsonl")
    labels = {}
    for label_file in sorted((benchmark / "coco").glob("coco_pope_*.json")):
        for entry in read_jsonl(label_file):
            labels[str(entry["question_id"])] = entry["label"].strip().lower()
    return [
        {"question_id": str(q["question_id"]), "image": str((benchmark / "val2014" / q["image"]).resolve()),
         "text": q["text"], "answer": labels[str(q["question_id"])]}
        for q in questions
    ]


def gqa_documents(benchmark: Path) -> list[dict[str, Any]]:
    """GQA layout: ``llava_gqa_testdev_balanced.jsonl``, ``data/images/``, ``data/testdev_balanced_questions.json``."""
    truth = json.loads((benchmark / "data" / "testdev_balanced_questions.json").read_text(encoding="utf-8"))
    return [
        {"question_id": str(q["question_id"]), "image": str((benchmark / "data" / "images" / q["image"]).resolve()),
         "text": q["text"], "answer": truth[str(q["question_id"])]["answer"]}
        for q in read_jsonl(benchmark / f"{GQA_SPLIT}.jsonl")
    ]


DOCUMENTS = {"pope": pope_documents, "gqa": gqa_documents}


def pope_correct(reply: str, answer: str) -> bool:
    return parse_pope_answer(reply) == answer


def gqa_correct(reply: str, answer: str) -> bool:
    return normalize_short_answer(reply) == normalize_short_answer(answer)


def doc_to_visual(doc: dict[str, Any]) -> list[Image.Image]:
    with Image.open(doc["image"]) as image:
        return [image.convert("RGB")]


def doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, Any] | None = None) -> str:
    """The question file's text unchanged (it already carries the answer instruction)."""
    return doc["text"]


def process_pope(doc: dict[str, Any], results: Sequence[str]) -> dict[str, float]:
    return {"accuracy": 100.0 * pope_correct(results[0], doc["answer"])}


def process_gqa(doc: dict[str, Any], results: Sequence[str]) -> dict[str, float]:
    return {"accuracy": 100.0 * gqa_correct(results[0], doc["answer"])}


def task_yaml(task: str, documents: Path, benchmark_format: str, max_new_tokens: int) -> str:
    utils = f"{task}_utils"
    return f"""task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {json.dumps(str(documents.resolve()))}
test_split: test
output_type: generate_until
doc_to_visual: !function {utils}.doc_to_visual
doc_to_text: !function {utils}.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  temperature: 0
  top_p: 1.0
  num_beams: 1
  do_sample: false
  until: []
process_results: !function {utils}.process_{benchmark_format}
metric_list:
  - metric: accuracy
    aggregation: mean
    higher_is_better: true
metadata:
  - version: 0.0
"""


def utils_source(benchmark_format: str) -> str:
    """The ``<task>_utils.py`` text: re-exports of this module's task functions under its importable name."""
    names = f"doc_to_text, doc_to_visual, process_{benchmark_format}"
    return f"from {UTILS_SOURCE_MODULE} import {names}  # noqa: F401\n"


def write_task(benchmark: Path, benchmark_format: str, task: str, output: Path, max_new_tokens: int = 16) -> Path:
    """Write ``<output>/<task>.{jsonl,yaml}`` and ``<task>_utils.py``; return the YAML's path."""
    if benchmark_format not in FORMATS:
        raise ValueError(f"unknown benchmark format {benchmark_format!r}; valid: {', '.join(FORMATS)}")
    if not task.isidentifier():
        raise ValueError(f"task name {task!r} must be a Python identifier (it names the utils module)")
    output.mkdir(parents=True, exist_ok=True)
    documents = output / f"{task}.jsonl"
    documents.write_text("".join(json.dumps(doc) + "\n" for doc in DOCUMENTS[benchmark_format](benchmark)), encoding="utf-8")
    (output / f"{task}_utils.py").write_text(utils_source(benchmark_format), encoding="utf-8")
    yaml_path = output / f"{task}.yaml"
    yaml_path.write_text(task_yaml(task, documents, benchmark_format, max_new_tokens), encoding="utf-8")
    return yaml_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", choices=FORMATS, required=True, help="the benchmark folder's layout")
    parser.add_argument("--benchmark", type=Path, required=True, help="the benchmark folder (LLaVA layout)")
    parser.add_argument("--task", required=True, help="the lmms-eval task name (a Python identifier)")
    parser.add_argument("--output", type=Path, required=True, help="task folder to pass as --include_path")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args(argv)
    if not args.benchmark.is_dir():
        parser.error(f"--benchmark {args.benchmark} is not a folder")
    try:
        path = write_task(args.benchmark, args.format, args.task, args.output, args.max_new_tokens)
    except (ValueError, FileNotFoundError, KeyError) as error:
        parser.error(str(error))
    print(f"wrote {path}; run lmms-eval with --tasks {args.task} --include_path {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
