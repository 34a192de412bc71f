"""The shipped shapes VLM loads like any llava-hf checkpoint and answers held-out questions at the bar."""

from pathlib import Path

import pytest
from transformers import LlavaForConditionalGeneration

from llava.eval.inference import GenerationSettings, answer_batch, load_model_bundle
from llava.shapes.benchmarks import answer_key, normalise, write_benchmarks
from llava.shapes.quality import held_out_samples

ONE_CELL_LOOKUPS = ("colour_at", "shape_at")

SHIPPED = Path(__file__).resolve().parents[2] / "playground" / "models" / "shapes-llava"
BAR = 0.9
pytestmark = pytest.mark.skipif(not (SHIPPED / "model.safetensors").is_file(), reason=f"no shipped model at {SHIPPED}")


def test_loads_with_stock_transformers():
    model = LlavaForConditionalGeneration.from_pretrained(SHIPPED)
    assert model.config.text_config.num_hidden_layers >= 8
    assert model.config.text_config.num_key_value_heads < model.config.text_config.num_attention_heads


def accuracy(benchmark: str, root: Path, kinds: tuple[str, ...] | None = None) -> tuple[int, int]:
    """(right, asked) on a fixed held-out sample of 24 questions (restricted to ``kinds`` when given)."""
    write_benchmarks(root, 24, names=(benchmark,))
    key = answer_key(root / benchmark, benchmark)
    samples = [s for s in held_out_samples(root / benchmark, benchmark) if kinds is None or key[s.question_id][0] in kinds]
    bundle = load_model_bundle(str(SHIPPED))
    answers, _ = answer_batch(
        bundle, GenerationSettings(max_new_tokens=4), [s.prompt for s in samples], [s.load_image() for s in samples]
    )
    return sum(normalise(a) == key[s.question_id][1] for s, a in zip(samples, answers, strict=True)), len(samples)


@pytest.mark.parametrize(
    ("benchmark", "kinds"),
    [
        ("pope", None),
        ("gqa", ONE_CELL_LOOKUPS),
        ("gqa", None),
        ("scienceqa", None),
    ],
    ids=["pope", "gqa-one-cell", "gqa-all", "scienceqa"],
)
def test_answers_a_fixed_held_out_sample_at_the_bar(benchmark, kinds, tmp_path):
    right, asked = accuracy(benchmark, tmp_path, kinds)
    assert asked >= 8
    assert right / asked >= BAR, f"{benchmark}: {right} / {asked} correct"
