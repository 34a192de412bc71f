"""The procedural shapes VQA: scenes, questions, tokenizer coverage and the three benchmarks' layout."""

import filecmp
import json
import random

import numpy as np
import pytest

from llava.eval.scorers.gqa import score_gqa
from llava.eval.scorers.pope import load_labels, score_pope
from llava.eval.scorers.scienceqa import score_scienceqa
from llava.shapes.benchmarks import write_benchmarks
from llava.shapes.questions import POPE_SPLITS, ask, exists
from llava.shapes.scene import GRID, cell_patches, patch_objects, render, sample_scene
from llava.shapes.training_data import DialogueSettings, dialogue_batch, tower_batch
from llava.shapes.vocabulary import build_tokenizer


def test_scene_is_a_function_of_its_seed_and_objects_sit_in_distinct_cells():
    a, b = sample_scene(5), sample_scene(5)
    assert a == b and np.array_equal(np.asarray(render(a)), np.asarray(render(b)))
    assert sample_scene(6) != a
    cells = [(o.row, o.col) for o in a.objects]
    assert len(set(cells)) == len(cells) and all(0 <= r < GRID and 0 <= c < GRID for r, c in cells)


def test_each_object_owns_patches_only_inside_its_cell():
    scene = sample_scene(11)
    owners = patch_objects(scene).reshape(-1)
    for index, obj in enumerate(scene.objects, start=1):
        owned = set(np.flatnonzero(owners == index).tolist())
        assert owned and owned <= set(cell_patches(obj.row, obj.col))


def test_background_texture_varies_so_no_pixel_answers():
    pixels = np.asarray(render(sample_scene(3))).astype(float)
    assert pixels[:56, :56].std() > 3  # textured, not flat


@pytest.mark.parametrize("seed", range(20))
def test_answers_follow_from_the_scene(seed):
    scene, rng = sample_scene(seed), random.Random(seed)
    q = ask(scene, "colour_at", rng)
    ((row, col),) = q.cells
    assert scene.at(row, col).colour == q.answer and f"cell {'abcdef'[col]}{row + 1} ?" in q.text
    q = ask(scene, "shape_at", rng)
    assert scene.at(*q.cells[0]).shape == q.answer
    q = ask(scene, "right_of", rng, tries=3)
    if q is not None:
        (r, c), (r2, c2) = q.cells
        assert (r2, c2) == (r, c + 1) and scene.at(r2, c2).shape == q.answer
    for split in POPE_SPLITS:
        q = exists(scene, rng, split=split, positive=False)
        if q is None:
            continue
        colour, shape = q.text.split()[3:5]
        assert q.answer == "no" and not scene.has(colour, shape)
        if split == "adversarial":
            assert scene.count(colour=colour) and scene.count(shape=shape)
    q = exists(scene, rng, positive=True)
    assert q.answer == "yes" and scene.has(*q.text.split()[3:5])


def test_tokenizer_covers_prompts_questions_and_answers_without_unknown_words():
    tokenizer = build_tokenizer()
    batch = dialogue_batch(0, 16, 0, tokenizer, tokenizer.convert_tokens_to_ids("<image>"), DialogueSettings())
    assert tokenizer.unk_token_id not in batch.input_ids.tolist()
    assert (batch.input_ids == tokenizer.convert_tokens_to_ids("<image>")).sum(1).tolist() == [576] * 16


def test_tower_targets_match_the_scene():
    batch = tower_batch(0, 2, 0)
    assert batch.pixel_values.shape == (2, 3, 336, 336) and batch.patch_class.shape == (2, 576)
    assert int(batch.present.sum(1).min()) >= 1 and batch.patch_row.max() == GRID - 1


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_benchmarks(root, 24)
    return root


def test_benchmarks_are_deterministic(benchmarks, tmp_path):
    write_benchmarks(tmp_path, 24)
    for name in ("gqa/llava_gqa_testdev_balanced.jsonl", "pope/llava_pope_test.jsonl", "scienceqa/problems.json"):
        assert filecmp.cmp(benchmarks / name, tmp_path / name, shallow=False), name


def test_ground_truth_answers_score_perfectly_with_the_project_scorers(benchmarks):
    gqa_truth = json.loads((benchmarks / "gqa/data/testdev_balanced_questions.json").read_text())
    answers = [{"question_id": qid, "text": entry["answer"]} for qid, entry in gqa_truth.items()]
    assert score_gqa(gqa_truth, answers)["accuracy"] == 100.0
    kinds = [json.loads(line)["kind"] for line in (benchmarks / "gqa/llava_gqa_testdev_balanced.jsonl").open()]
    assert set(kinds) == {"colour_at", "shape_at", "right_of", "count", "most_common"}

    questions = [json.loads(line) for line in (benchmarks / "pope/llava_pope_test.jsonl").open()]
    labels = load_labels(questions, benchmarks / "pope/coco")
    answers = [{"question_id": qid, "text": label} for qid, (_, label) in labels.items()]
    pope = score_pope(answers, labels)
    assert pope["f1_mean"] == 100.0
    assert sorted(label for _, label in labels.values()).count("yes") == len(labels) // 2

    problems = json.loads((benchmarks / "scienceqa/problems.json").read_text())
    answers = [{"question_id": pid, "text": "ABCD"[p["answer"]]} for pid, p in problems.items()]
    assert score_scienceqa(problems, list(problems), answers)["img_accuracy"] == 100.0
    letters = {p["answer"] for p in problems.values()}
    assert len(letters) > 1  # the answer letter is shuffled


def test_every_benchmark_image_exists(benchmarks):
    for line in (benchmarks / "gqa/llava_gqa_testdev_balanced.jsonl").open():
        assert (benchmarks / "gqa/data/images" / json.loads(line)["image"]).is_file()
    for entry in json.loads((benchmarks / "scienceqa/llava_test_CQM-A.json").read_text()):
        assert (benchmarks / "scienceqa/images/test" / entry["image"]).is_file()
