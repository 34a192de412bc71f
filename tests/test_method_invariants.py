"""The engine's promises, checked for every registered method (a new method is covered by registering it):

* a batch of three prompts of different lengths (left padded) and images == three single runs
  (logits of the text after the image, and greedy tokens);
* greedy generation with the KV cache == ``generate(use_cache=False)``;
* the record after ``generate`` == the record after ``forward`` over the prompt.

On the tiny LLaVA (every method, ``learned`` with a random checkpoint whose masks keep a different number
of tokens per sample) and on the tiny Llama LM with a text span (the in-LLM methods).
"""

import pytest
import torch

from llava.model.builder import load_pretrained_model
from llava.pruning.registry import available_methods, build_method, method_class, plan_method
from tests.conftest import assert_cached_generation_equals_recompute, llava_prompt, pixel_values
from tests.train.conftest import write_checkpoint, write_merger_checkpoint

BUDGET = 64
SHAPES = [(6, 12), (3, 5), (9, 2)]  # (text before the image, text after it) per prompt
EXTRA_PARAMS = {"fastv_fine_head": {"heads": 2}}


@pytest.fixture(scope="module")
def trained_checkpoints(tmp_path_factory) -> dict[str, str]:
    """Random checkpoints of the methods that need one: ``{method name: path}``."""
    folder = tmp_path_factory.mktemp("trained")
    return {
        "learned": write_checkpoint(folder / "pruner.pt", use_attn_residual=True, layers=[6, 12, 18]),
        "learned_merger": write_merger_checkpoint(folder / "merger.pt", num_outputs=BUDGET),
    }


def method_for(name: str, checkpoints: dict[str, str] | None, num_layers: int, span: int):
    if name == "learned":
        return build_method("learned", {"pruner_checkpoint": checkpoints["learned"]})
    if name == "learned_merger":
        return plan_method(name, BUDGET, num_layers, span, {"merger_checkpoint": checkpoints["learned_merger"]})
    return plan_method(name, BUDGET, num_layers, span, EXTRA_PARAMS.get(name))


def left_padded(prompts: list[torch.Tensor], pad: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = p
        mask[i, width - len(p) :] = 1
    return ids, mask


@pytest.fixture(scope="module")
def llava():
    return load_pretrained_model("tiny-random-llava")[1]


@pytest.mark.parametrize("name", available_methods())
@torch.no_grad()
def test_llava_batch_equals_single_and_cache_equals_no_cache(llava, name, trained_checkpoints):
    llava.set_pruning_method(method_for(name, trained_checkpoints, 32, 576))
    try:
        image_id = llava.config.image_token_id
        prompts = [llava_prompt(image_id, p, s, seed=40 + i)[0] for i, (p, s) in enumerate(SHAPES)]
        pixels = pixel_values(3, seed=4)
        ids, mask = left_padded(prompts)
        batched = llava(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
        batched_tokens = llava.generate(
            input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=3, min_new_tokens=3,
            do_sample=False, pad_token_id=3,
        )[:, ids.shape[1] :]
        kept_counts = []
        for i, (prompt, (_, suffix)) in enumerate(zip(prompts, SHAPES, strict=True)):
            single = llava(input_ids=prompt[None], pixel_values=pixels[i : i + 1]).logits[0]
            record = llava.language_model.last_pruning_record
            kept_counts.append([stage.kept_counts[0] for stage in record.stages])
            torch.testing.assert_close(batched[i, -suffix:], single[-suffix:], atol=2e-4, rtol=1e-3)
            tokens = llava.generate(
                input_ids=prompt[None], pixel_values=pixels[i : i + 1], max_new_tokens=3, min_new_tokens=3, do_sample=False
            )[0, len(prompt) :]
            assert torch.equal(batched_tokens[i], tokens), f"prompt {i}"
        if name == "learned":  # the samples really keep different counts, so the padding path is exercised
            assert len({tuple(c) for c in kept_counts}) > 1
        assert_cached_generation_equals_recompute(llava, prompts[0][None], pixels[:1], steps=4)
        assert_cached_generation_equals_recompute(llava, ids, pixels, steps=3, attention_mask=mask, pad_token_id=3)
    finally:
        llava.set_pruning_method(None)


IN_LLM = [name for name in available_methods() if not method_class(name).pre_llm]


@pytest.mark.parametrize("name", [n for n in IN_LLM if n != "learned"])
@torch.no_grad()
def test_lm_batch_equals_single_and_cache_equals_no_cache(name, trained_checkpoints):
    model = load_pretrained_model("tiny-random-llama")[1]
    model.model.set_pruning_method(method_for(name, trained_checkpoints, 32, 576))
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(5, 400, (p + 576 + s,), generator=generator) for p, s in SHAPES]
    ids, mask = left_padded(prompts)
    spans = torch.tensor([[ids.shape[1] - len(q) + p, ids.shape[1] - len(q) + p + 576] for q, (p, _) in zip(prompts, SHAPES, strict=True)])
    batched = model(input_ids=ids, attention_mask=mask, prune_span=spans).logits
    for i, (prompt, (p, suffix)) in enumerate(zip(prompts, SHAPES, strict=True)):
        single = model(input_ids=prompt[None], prune_span=(p, p + 576)).logits[0]
        torch.testing.assert_close(batched[i, -suffix:], single[-suffix:], atol=2e-4, rtol=1e-3)
    assert_cached_generation_equals_recompute(model, prompts[0][None], None, steps=4, prune_span=(6, 582))
