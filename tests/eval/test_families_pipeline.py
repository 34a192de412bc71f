"""The evaluation loaders on another family: a LLaVA-NeXT folder answers a question file end to end through
``model_vqa_loader`` (its own processor: anyres tiles, ``<image>`` expanded per image size), pruned by a
share of each image's tokens, with the pruning record per answer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llava.eval import model_vqa_loader
from llava.eval.inference import GenerationSettings, answer_batch, load_model_bundle
from llava.model.tiny import build_tiny_llava_next, build_tiny_llava_next_processor
from tests.eval.helpers import make_image, read_lines, write_lines

SIZES = ((200, 130), (130, 200), (300, 300), (200, 130))


@pytest.fixture(scope="module")
def next_folder(tmp_path_factory) -> Path:
    """A tiny random LLaVA-NeXT saved as a llava-hf folder (weights, config, processor, tokenizer)."""
    folder = tmp_path_factory.mktemp("tiny-llava-next")
    build_tiny_llava_next(seed=0).save_pretrained(folder)
    build_tiny_llava_next_processor().save_pretrained(folder)
    return folder


def question_file(tmp_path: Path) -> Path:
    questions = []
    for index, size in enumerate(SIZES):
        make_image(tmp_path / "images" / f"{index}.png", size, (40 * index, 100, 200 - 30 * index))
        questions.append({"question_id": index, "image": f"{index}.png", "text": f"what is {index}?"})
    return write_lines(tmp_path / "questions.jsonl", questions)


def test_model_vqa_loader_answers_with_a_llava_next_folder_pruned_by_retain_ratio(next_folder, tmp_path):
    answers = tmp_path / "answers.jsonl"
    code = model_vqa_loader.main([
        "--model-path", str(next_folder), "--question-file", str(question_file(tmp_path)),
        "--image-folder", str(tmp_path / "images"), "--answers-file", str(answers), "--max_new_tokens", "3",
        "--pruning_method", "sparsevlm", "--retain-ratio", "0.25", "--batch-size", "2",
    ])
    assert code == 0
    records = read_lines(answers)
    assert [r["question_id"] for r in records] == [0, 1, 2, 3]
    spans = {0: 234, 1: 240, 2: 336, 3: 234}
    for record in records:
        metadata = record["metadata"]
        assert metadata["kept_per_layer"][0] == spans[record["question_id"]]  # that image's own token count
        assert metadata["equivalent_tokens"] == pytest.approx(0.25 * spans[record["question_id"]], abs=1.0)


@torch.no_grad()
def test_a_batch_of_one_size_answers_as_singles(next_folder, tmp_path):
    from PIL import Image

    bundle = load_model_bundle(str(next_folder), "fastv", {"retain_ratio": 0.5})
    settings = GenerationSettings(max_new_tokens=3)
    images = [Image.new("RGB", (200, 130), colour) for colour in ((10, 20, 30), (200, 10, 90))]
    questions = ["what colour?", "which shape is it?"]
    batched, batched_costs = answer_batch(bundle, settings, questions, images)
    singles = [answer_batch(bundle, settings, [q], [image]) for q, image in zip(questions, images, strict=True)]
    assert batched == [answers[0] for answers, _ in singles]
    assert batched_costs == [costs[0] | {"prefill_ms": batched_costs[i]["prefill_ms"]} for i, (_, costs) in enumerate(singles)]


@torch.no_grad()
def test_a_question_cut_to_fit_the_context_is_cut_in_what_the_processor_encodes(next_folder):
    from PIL import Image

    bundle = load_model_bundle(str(next_folder), "fastv", {"retain_ratio": 0.5})
    settings = GenerationSettings(max_new_tokens=2, truncate_long_prompts=True)
    context = bundle.model.config.text_config.max_position_embeddings
    _, (cost,) = answer_batch(bundle, settings, ["x" * context], [Image.new("RGB", (200, 130), (10, 20, 30))])
    assert cost["truncated_question_tokens"] > 0
    assert bundle.model.language_model.pruning_state.prompt_length + settings.max_new_tokens <= context
