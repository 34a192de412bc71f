"""The shipped shapes VLM loads like any llava-hf checkpoint and answers held-out questions at the bar."""

from pathlib import Path

import pytest
from transformers import LlavaForConditionalGeneration

from llava.eval.inference import GenerationSettings, answer_batch, load_model_bundle
from llava.shapes.benchmarks import answer_key, normalise, write_benchmarks
from llava.shapes.quality import held_out_samples

SHIPPED = Path(__file__).resolve().parents[2] / "playground" / "models" / "shapes-llava"
BAR = 0.9
pytestmark = pytest.mark.skipif(not (SHIPPED / "model.safetensors").is_file(), reason=f"no shipped model at {SHIPPED}")


def test_loads_with_stock_transformers():
    model = LlavaForConditionalGeneration.from_pretrained(SHIPPED)
    assert model.config.text_config.num_hidden_layers >= 8
    assert model.config.text_config.num_key_value_heads < model.config.text_config.num_attention_heads


@pytest.mark.parametrize("benchmark", ["gqa", "pope", "scienceqa"])
def test_answers_a_fixed_held_out_sample_at_the_bar(benchmark, tmp_path):
    write_benchmarks(tmp_path, 24, names=(benchmark,))
    samples = held_out_samples(tmp_path / benchmark, benchmark)
    key = answer_key(tmp_path / benchmark, benchmark)
    bundle = load_model_bundle(str(SHIPPED))
    answers, _ = answer_batch(
        bundle, GenerationSettings(max_new_tokens=4), [s.prompt for s in samples], [s.load_image() for s in samples]
    )
    correct = [normalise(answer) == key[s.question_id][1] for s, answer in zip(samples, answers, strict=True)]
    assert sum(correct) / len(correct) >= BAR, f"{benchmark}: {sum(correct)} / {len(correct)} correct"
