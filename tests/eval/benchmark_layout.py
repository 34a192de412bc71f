"""A miniature ``playground/data/eval`` with every benchmark in LLaVA's file layout (two questions each)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from PIL import Image

from tests.eval.helpers import make_image, write_lines


def _images(folder: Path, names: list[str]) -> None:
    for index, name in enumerate(names):
        make_image(folder / name, (48 + 20 * index, 40), (30 + 90 * index, 140, 200 - 60 * index))


def _vqa_questions(path: Path, ids: list, images: list[str], **fields) -> list[dict]:
    questions = [
        {"question_id": qid, "image": image, "text": f"Question {qid}?", **fields} for qid, image in zip(ids, images, strict=True)
    ]
    write_lines(path, questions)
    return questions


def _mmbench_tsv(path: Path) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (20, 160, 90)).save(buffer, format="PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\n"
        f"1\tWhich colour?\tnan\tgreen\tred\t\t\tA\tcolour\t{encoded}\n"
        f"2\tWhich shape?\tLook.\tsquare\tcircle\ttriangle\t\tB\tshape\t{encoded}\n",
        encoding="utf-8",
    )


def build_eval_dir(root: Path) -> Path:
    """Create the miniature layout under ``root`` and return it."""
    images = ["a.png", "b.png"]
    _images(root / "vqav2" / "test2015", images)
    _vqa_questions(root / "vqav2" / "llava_vqav2_mscoco_test-dev2015.jsonl", [1, 2], images)
    _vqa_questions(root / "vqav2" / "llava_vqav2_mscoco_test2015.jsonl", [1, 2], images)

    _images(root / "gqa" / "data" / "images", images)
    _vqa_questions(root / "gqa" / "llava_gqa_testdev_balanced.jsonl", ["g1", "g2"], images)
    (root / "gqa" / "data" / "testdev_balanced_questions.json").write_text(
        json.dumps({"g1": {"answer": "yes"}, "g2": {"answer": "red"}})
    )

    _images(root / "vizwiz" / "test", images)
    _vqa_questions(root / "vizwiz" / "llava_test.jsonl", [10, 11], images)

    _images(root / "scienceqa" / "images" / "test" / "s1", ["image.png"])
    entries = [
        {"id": "s1", "image": "s1/image.png", "conversations": [{"from": "human", "value": "<image>\nPick.\nA. x\nB. y"}]},
        {"id": "s2", "conversations": [{"from": "human", "value": "Pick one.\nA. x\nB. y"}]},
    ]
    (root / "scienceqa" / "llava_test_CQM-A.json").write_text(json.dumps(entries))
    problems = {"s1": {"choices": ["x", "y"], "answer": 0, "image": "image.png"}, "s2": {"choices": ["x", "y"], "answer": 1}}
    (root / "scienceqa" / "problems.json").write_text(json.dumps(problems))
    (root / "scienceqa" / "pid_splits.json").write_text(json.dumps({"test": ["s1", "s2"]}))

    _images(root / "textvqa" / "train_images", images)
    write_lines(root / "textvqa" / "llava_textvqa_val_v051_ocr.jsonl", [
        {"question_id": "a", "image": "a.png", "text": "what brand?\nReference OCR token: nike\nAnswer briefly."},
        {"question_id": "b", "image": "b.png", "text": "what number?\nReference OCR token: 5\nAnswer briefly."},
    ])
    (root / "textvqa" / "TextVQA_0.5.1_val.json").write_text(json.dumps({"data": [
        {"image_id": "a", "question": "what brand?", "answers": ["nike"] * 10},
        {"image_id": "b", "question": "what number?", "answers": ["5"] * 10},
    ]}))

    _images(root / "pope" / "val2014", images)
    _vqa_questions(root / "pope" / "llava_pope_test.jsonl", [1, 2], images, category="random")
    write_lines(root / "pope" / "coco" / "coco_pope_random.json", [{"label": "yes"}, {"label": "no"}])

    mme_root = root / "MME" / "MME_Benchmark_release_version"
    _images(mme_root / "artwork" / "images", ["10.png"])
    (mme_root / "artwork" / "questions_answers_YN").mkdir(parents=True)
    (mme_root / "artwork" / "questions_answers_YN" / "10.txt").write_text("Is it art?\tYes\nIs it a dog?\tNo\n")
    write_lines(root / "MME" / "llava_mme.jsonl", [
        {"question_id": "artwork/10.png", "image": "artwork/images/10.png", "text": "Is it art?", "category": "artwork"},
        {"question_id": "artwork/10.png", "image": "artwork/images/10.png", "text": "Is it a dog?", "category": "artwork"},
    ])

    _mmbench_tsv(root / "mmbench" / "mmbench_dev_20230712.tsv")
    _mmbench_tsv(root / "mmbench_cn" / "mmbench_dev_cn_20231003.tsv")

    _images(root / "mm-vet" / "images", images)
    _vqa_questions(root / "mm-vet" / "llava-mm-vet.jsonl", [0, 1], images)
    return root
