"""Training batches of the learned pruner, generated in-process; two sources (``TrainConfig.data``).

Sample ``i`` of seed ``s`` is a deterministic function of ``(s, i)``:

* ``synthetic`` (tests, smoke runs): random pixels ``N(0, 1)`` and a question/answer pair from a small
  list, laid out as LLaVA-1.5's vicuna prompt with the image expanded to its visual tokens:
  ``<s> "USER: " <image> x n_image "\n" question " ASSISTANT:" | " " answer </s>``;
* ``shapes`` (the shipped shapes VLM): a training scene (seeds above the benchmarks') and one question
  about it, in the short-answer, option or yes / no form the benchmarks ask (``llava.shapes``), in the
  vicuna_v1 prompt; the image as the model's processor gives it.

Batches are left-padded; labels are -100 everywhere except on the answer tokens.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from llava.constants import IGNORE_INDEX
from llava.pruning.span import span_from_token_id
from llava.shapes.scene import sample_scene
from llava.shapes.training_data import DialogueSettings, dialogue, encode_dialogue, scene_pixels

QUESTION_ANSWERS = (
    ("What is in the image?", "A dog."),
    ("Is there a cat?", "No."),
    ("What color is the car?", "Red."),
    ("How many people are there?", "Two."),
    ("Is it daytime?", "Yes."),
    ("Where is the ball?", "On the grass."),
)
IMAGE_SIZE = 336


@dataclass
class PrunerBatch:
    """Model inputs plus the positions the pruner needs.

    ``span``: ``[B, 2]`` (start, end) of the image tokens; ``query_index``: ``[B]`` last prompt token.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor
    span: torch.Tensor
    query_index: torch.Tensor

    def to(self, device: torch.device | str) -> PrunerBatch:
        """The same batch with every tensor on ``device``."""
        return PrunerBatch(**{name: getattr(self, name).to(device) for name in self.__dataclass_fields__})


@dataclass
class PrunerSample:
    prompt_ids: list[int]
    answer_ids: list[int]
    pixel_values: torch.Tensor  # [3, H, W]


def synthetic_sample(index: int, seed: int, tokenizer, image_token_id: int, num_image_tokens: int) -> PrunerSample:
    """Sample ``index`` of the synthetic set ``seed`` (see module docstring)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
    question, answer = QUESTION_ANSWERS[int(torch.randint(len(QUESTION_ANSWERS), (1,), generator=generator))]
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
    prompt = (
        [tokenizer.bos_token_id]
        + encode("USER: ")
        + [image_token_id] * num_image_tokens
        + encode(f"\n{question} ASSISTANT:")
    )
    pixels = torch.randn(3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    return PrunerSample(prompt, encode(f" {answer}") + [tokenizer.eos_token_id], pixels)


SHAPES_SAMPLE_SEED = 7_000_000_000  # scene seeds of the pruner's shapes samples: far above the VLM's and the benchmarks'


def shapes_sample(index: int, seed: int, tokenizer, image_token_id: int, num_image_tokens: int) -> PrunerSample:
    """Sample ``index`` of the shapes training split for seed ``seed`` (see module docstring)."""
    settings = DialogueSettings(turns=(1, 1))
    scene_seed = SHAPES_SAMPLE_SEED + seed * 1_000_003 + index
    rng = random.Random(scene_seed + 1)
    scene = sample_scene(scene_seed, *settings.objects)
    turns = dialogue(scene, rng, settings)
    ids, _, (answer_start,) = encode_dialogue(turns, tokenizer, image_token_id, num_image_tokens, "vicuna_v1")
    return PrunerSample(ids[:answer_start], ids[answer_start:], scene_pixels(scene, rng))


SAMPLE_SOURCES = {"synthetic": synthetic_sample, "shapes": shapes_sample}


def collate(samples: list[PrunerSample], pad_token_id: int, image_token_id: int) -> PrunerBatch:
    """Left-pad prompt + answer to one width; labels only on the answer."""
    width = max(len(s.prompt_ids) + len(s.answer_ids) for s in samples)
    input_ids = torch.full((len(samples), width), pad_token_id, dtype=torch.long)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    attention_mask = torch.zeros_like(input_ids)
    query_index = torch.empty(len(samples), dtype=torch.long)
    for row, sample in enumerate(samples):
        ids = sample.prompt_ids + sample.answer_ids
        start = width - len(ids)
        input_ids[row, start:] = torch.tensor(ids)
        attention_mask[row, start:] = 1
        labels[row, width - len(sample.answer_ids) :] = torch.tensor(sample.answer_ids)
        query_index[row] = width - len(sample.answer_ids) - 1
    return PrunerBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=labels,
        pixel_values=torch.stack([s.pixel_values for s in samples]),
        span=span_from_token_id(input_ids, image_token_id),
        query_index=query_index,
    )


def training_batch(
    source: str,
    step: int,
    batch_size: int,
    seed: int,
    tokenizer,
    image_token_id: int,
    num_image_tokens: int,
    dataset_size: int | None = None,
) -> PrunerBatch:
    """Batch ``step`` of ``source`` (``synthetic`` / ``shapes``): samples ``(step * batch_size + i) mod dataset_size``
    (no modulo when None), ``i < batch_size``."""
    indices = [step * batch_size + i for i in range(batch_size)]
    if dataset_size is not None:
        indices = [index % dataset_size for index in indices]
    make = SAMPLE_SOURCES[source]
    samples = [make(index, seed, tokenizer, image_token_id, num_image_tokens) for index in indices]
    return collate(samples, tokenizer.pad_token_id, image_token_id)
