"""Training batches of the shapes VLM, generated on the fly (sample ``i`` of a seed is fixed).

* ``tower_batch``: images and per-patch targets for the vision tower's first stage: the colour + shape
  class of the object covering each patch (0 = background), the row and column of the patch's cell,
  and the set of objects in the image (for the [CLS] token).
* ``dialogue_batch``: multi-turn dialogues for the LLaVA stage. The first turn is exactly the evaluation
  prompt (``build_question_prompt`` + ``tokenizer_image_token``); further turns about the same image
  follow in vicuna_v1's layout (``ASSISTANT: answer</s>USER: ...``), so one forward over the 576 image
  tokens supervises several answers. Labels are the answer tokens and their ``</s>``; each turn also
  names the image patches its answer reads (``hop_patches``, the target of the attention loss).

Images are JPEG-encoded and decoded (quality 80-95) as the shipped benchmark images are JPEG.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from llava.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX
from llava.conversation import build_question_prompt
from llava.mm_utils import tokenizer_image_token
from llava.shapes.questions import PLURALS, Question, ask, cell_name, multiple_choice
from llava.shapes.scene import (
    COLOURS,
    GRID,
    PATCHES_PER_SIDE,
    SHAPES,
    Scene,
    ShapeObject,
    cell_patches,
    centre_patch,
    patch_objects,
    render,
    sample_scene,
)
from llava.shapes.vocabulary import OPTION_PROMPT, SHORT_ANSWER_PROMPT

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
NUM_CLASSES = 1 + len(COLOURS) * len(SHAPES)
OPTION_LETTERS = "ABCD"
TRAIN_SEED_OFFSET = 10_000_000  # training scenes never share a seed with the benchmarks (seeds < 10^7)


def object_class(colour: str, shape: str) -> int:
    """1 + index of the (colour, shape) pair; 0 is background."""
    return 1 + list(COLOURS).index(colour) * len(SHAPES) + SHAPES.index(shape)


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def pixels(image: Image.Image) -> torch.Tensor:
    """``[3, 336, 336]`` CLIP-normalised pixels (what the CLIP processor gives for a 336 px image)."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(((array - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1).copy())


def scene_pixels(scene: Scene, rng: random.Random) -> torch.Tensor:
    return pixels(jpeg(render(scene), rng.randint(80, 95)))


@dataclass
class TowerBatch:
    pixel_values: torch.Tensor  # [B, 3, 336, 336]
    patch_class: torch.Tensor  # [B, 576] object class under each patch (0 = background)
    patch_row: torch.Tensor  # [B, 576] cell row of each patch
    patch_col: torch.Tensor  # [B, 576]
    present: torch.Tensor  # [B, NUM_CLASSES - 1] multi-hot of the objects in the image
    patch_centre: torch.Tensor  # [B, 576] bool: the patch holds an object's centre (``centre_patch``)


def centre_mask(objects: tuple[ShapeObject, ...] | list[ShapeObject]) -> torch.Tensor:
    """``[576]`` bool: the centre patches of ``objects``."""
    mask = torch.zeros(PATCHES_PER_SIDE * PATCHES_PER_SIDE, dtype=torch.bool)
    mask[[centre_patch(obj) for obj in objects]] = True
    return mask


def _patch_cells() -> tuple[torch.Tensor, torch.Tensor]:
    side = 24
    index = torch.arange(side * side)
    per_cell = side // GRID
    return (index // side) // per_cell, (index % side) // per_cell


def tower_batch(step: int, batch_size: int, seed: int) -> TowerBatch:
    rows, cols = _patch_cells()
    values, classes, present, centres = [], [], [], []
    for i in range(batch_size):
        sample_seed = TRAIN_SEED_OFFSET + (seed * 1_000_003 + step) * batch_size + i
        rng = random.Random(sample_seed)
        scene = sample_scene(sample_seed, 1, 14)
        values.append(scene_pixels(scene, rng))
        owners = patch_objects(scene)
        lookup = np.array([0] + [object_class(o.colour, o.shape) for o in scene.objects])
        classes.append(torch.from_numpy(lookup[owners]))
        hot = torch.zeros(NUM_CLASSES - 1)
        for obj in scene.objects:
            hot[object_class(obj.colour, obj.shape) - 1] = 1
        present.append(hot)
        centres.append(centre_mask(scene.objects))
    batch = len(values)
    return TowerBatch(
        torch.stack(values), torch.stack(classes), rows.expand(batch, -1), cols.expand(batch, -1), torch.stack(present),
        torch.stack(centres),
    )


HOPS = ("key_words", "first_image", "second_image", "objects", "option", "letters")
# the objects hop weighs BOS as this many objects: with n counted, BOS keeps K / (n + K) of the attention,
# which for n = 0..5 (K = 4: 1, .80, .67, .57, .50, .44) is spread more evenly than 1 / (n + 1)
# (1, .50, .33, .25, .20, .17): with K = 1 a trained model told 2, 3 and 4 apart in 60 % of the questions
BOS_COUNT_WEIGHT = 4.0


@dataclass
class HopTargets:
    """Where some queries' attention should go: query ``k`` of sample ``b`` sits at ``query[b, k]`` (-1: no
    query) and should attend to the positions where ``weights[b, k]`` is positive (a distribution over them
    where the loss asks for one)."""

    query: torch.Tensor  # [B, K] positions
    weights: torch.Tensor  # [B, K, T] float, >= 0

    @property
    def used(self) -> torch.Tensor:
        """``[B, K]`` bool: a query with at least one target."""
        return (self.query >= 0) & (self.weights > 0).any(-1)


@dataclass
class DialogueBatch:
    """Dialogues about ``B`` images; turn ``q`` of sample ``b`` answers from ``answer_index[b, q]`` on."""

    input_ids: torch.Tensor  # [B, T] right padded: under the causal mask, pads change nothing before them
    attention_mask: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor
    answer_index: torch.Tensor  # [B, Q] position of each turn's first answer token, -1 for no turn
    # what each answer reads (queries: the positions predicting the turns' first answer tokens), by hop:
    # ``key_words`` the question's key words (cell, colour, shape; ``key_word_positions``), ``first_image`` /
    # ``second_image`` the image patches of the cells the answer reads (``hop_cells``), ``objects`` (count,
    # most-common: the centre patch of each object counted, and BOS weighted as ``BOS_COUNT_WEIGHT`` of
    # them: the share of BOS tells how many), ``option`` the word of the right option; and ``letters`` (queries: every
    # option word) the option's own letter, two tokens back
    hops: dict[str, HopTargets]
    image_start: torch.Tensor  # [B] position of the first image token
    kinds: list[list[str]]  # question type of each turn ("options" for the option form)


def hop_cells(kind: str, cells: tuple[tuple[int, int], ...]) -> tuple[tuple, tuple]:
    """The cells a question reads in its two hops: right_of finds the named object, then the cell right
    of it; every other type reads the same cells twice."""
    return (cells[:1], cells[1:]) if kind == "right_of" else (cells, cells)


def patch_mask(cells: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """``[576]`` bool: the patches of ``cells``."""
    mask = torch.zeros(PATCHES_PER_SIDE * PATCHES_PER_SIDE, dtype=torch.bool)
    for row, col in cells:
        mask[cell_patches(row, col)] = True
    return mask


def question_text(question: Question, rng: random.Random, multiple_choice_share: float) -> tuple[str, str]:
    """The question as asked (short-answer or option form) and the expected reply."""
    if question.kind != "exists" and rng.random() < multiple_choice_share:
        options, answer_index = multiple_choice(question, rng)
        lines = "\n".join(f"{letter}. {option}" for letter, option in zip(OPTION_LETTERS, options, strict=True))
        return f"{question.text}\n{lines}\n{OPTION_PROMPT}", OPTION_LETTERS[answer_index]
    return f"{question.text}\n{SHORT_ANSWER_PROMPT}", question.answer


@dataclass(frozen=True)
class DialogueSettings:
    turns: tuple[int, int] = (3, 6)
    objects: tuple[int, int] = (5, 12)
    kind_weights: tuple[tuple[str, float], ...] = (
        ("colour_at", 3.0),
        ("shape_at", 3.0),
        ("right_of", 2.0),
        ("count", 2.0),
        ("most_common", 1.0),
        ("exists", 3.0),
    )
    multiple_choice_share: float = 0.3
    conv_modes: tuple[str, ...] = ("vicuna_v1", "llava_v1")


def dialogue(scene: Scene, rng: random.Random, settings: DialogueSettings) -> list[tuple[str, str, str, tuple]]:
    """``[(question text, reply, kind, cells), ...]`` for one scene."""
    kinds, weights = zip(*settings.kind_weights, strict=True)
    turns = []
    for _ in range(rng.randint(*settings.turns)):
        question = ask(scene, rng.choices(kinds, weights=weights)[0], rng, tries=3)
        if question is not None:
            turns.append((*question_text(question, rng, settings.multiple_choice_share), question.kind, question.cells))
    if turns:
        return turns
    fallback = ask(scene, "colour_at", rng)
    return [(*question_text(fallback, rng, 0.0), "colour_at", fallback.cells)]


KEY_WORDS_OF_MOST_COMMON = ("most", "common")


def key_word_ids(tokenizer) -> set[int]:
    """Ids of the words that say what a question asks about: cell names, colours, shapes, plurals, and
    ``most common``."""
    words = [cell_name(r, c) for r in range(GRID) for c in range(GRID)] + list(COLOURS) + list(SHAPES) + \
        list(PLURALS.values()) + list(KEY_WORDS_OF_MOST_COMMON)
    return set(tokenizer.convert_tokens_to_ids(words))


def key_word_positions(ids: list[int], start: int, end: int, key_ids: set[int], question_mark: int) -> list[int]:
    """Positions in ``ids[start:end]`` of key words before the question's ``?`` (options after it are not the question)."""
    stop = next((i for i in range(start, end) if ids[i] == question_mark), end)
    return [i for i in range(start, stop) if ids[i] in key_ids]


def encode_dialogue(
    turns: list[tuple[str, str, str, tuple]], tokenizer, image_token_id: int, num_image_tokens: int, conv_mode: str
) -> tuple[list[int], list[int], list[int]]:
    """Ids and labels of a dialogue, and the index of each turn's first answer token."""
    eos = tokenizer.eos_token_id
    encode = lambda text: tokenizer(text, add_special_tokens=False).input_ids
    ids = tokenizer_image_token(
        build_question_prompt(turns[0][0], conv_mode, True), tokenizer, image_token_id, num_image_tokens
    )
    labels = [IGNORE_INDEX] * len(ids)
    answer_starts = []
    for turn_index, (question, reply, _, _) in enumerate(turns):
        if turn_index > 0:
            prompt = encode(f"USER: {question} ASSISTANT:")
            ids += prompt
            labels += [IGNORE_INDEX] * len(prompt)
        answer = encode(f" {reply}") + [eos]
        answer_starts.append(len(ids))
        ids += answer
        labels += answer
    assert DEFAULT_IMAGE_TOKEN not in turns[0][0]
    return ids, labels, answer_starts


def option_positions(ids: list[int], start: int, end: int, letter_ids: dict[int, str], dot: int) -> dict[str, tuple[int, int]]:
    """``{letter: (letter position, option word position)}`` of the option lines (``A . red``) in ``ids[start:end]``."""
    return {letter_ids[ids[i]]: (i, i + 2) for i in range(start, end - 2) if ids[i] in letter_ids and ids[i + 1] == dot}


def object_centres(scene: Scene, cells: tuple[tuple[int, int], ...]) -> list[int]:
    """Raster indices of the centre patches of the objects in ``cells``."""
    return [centre_patch(obj) for row, col in cells if (obj := scene.at(row, col)) is not None]


def dialogue_batch(
    step: int, batch_size: int, seed: int, tokenizer, image_token_id: int, settings: DialogueSettings
) -> DialogueBatch:
    rows, values, kinds, scenes, turn_lists = [], [], [], [], []
    key_ids, question_mark = key_word_ids(tokenizer), tokenizer.convert_tokens_to_ids("?")
    letter_ids = {tokenizer.convert_tokens_to_ids(letter): letter for letter in OPTION_LETTERS}
    dot = tokenizer.convert_tokens_to_ids(".")
    for i in range(batch_size):
        sample_seed = TRAIN_SEED_OFFSET + (seed * 1_000_003 + step) * batch_size + i
        rng = random.Random(sample_seed + 1)
        scene = sample_scene(sample_seed, *settings.objects)
        turns = dialogue(scene, rng, settings)
        rows.append(encode_dialogue(turns, tokenizer, image_token_id, 576, rng.choice(settings.conv_modes)))
        kinds.append(["options" if reply in OPTION_LETTERS else kind for _, reply, kind, _ in turns])  # what the log tallies
        scenes.append(scene)
        turn_lists.append(turns)
        values.append(scene_pixels(scene, rng))
    width = max(len(ids) for ids, _, _ in rows)
    most_turns = max(len(starts) for _, _, starts in rows)
    most_options = len(OPTION_LETTERS) * most_turns
    input_ids = torch.full((batch_size, width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    mask = torch.zeros_like(input_ids)
    answer_index = torch.full((batch_size, most_turns), -1, dtype=torch.long)
    answer_weights = {name: torch.zeros(batch_size, most_turns, width) for name in HOPS if name != "letters"}
    letter_query = torch.full((batch_size, most_options), -1, dtype=torch.long)
    letter_weights = torch.zeros(batch_size, most_options, width)
    image_patches = PATCHES_PER_SIDE**2
    for row, (ids, lab, starts) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(lab)
        mask[row, : len(ids)] = 1
        answer_index[row, : len(starts)] = torch.tensor(starts)
        image = ids.index(image_token_id)
        question_start, option_count = image + image_patches, 0
        for turn, (start, (_, reply, kind, cells)) in enumerate(zip(starts, turn_lists[row], strict=True)):
            answer_weights["key_words"][row, turn, key_word_positions(ids, question_start, start, key_ids, question_mark)] = 1
            first, second = hop_cells(kind, cells)
            answer_weights["first_image"][row, turn, image : image + image_patches] = patch_mask(first).float()
            answer_weights["second_image"][row, turn, image : image + image_patches] = patch_mask(second).float()
            if kind in ("count", "most_common"):
                centres = [image + p for p in object_centres(scenes[row], cells)]
                answer_weights["objects"][row, turn, 0] = BOS_COUNT_WEIGHT / (len(centres) + BOS_COUNT_WEIGHT)
                answer_weights["objects"][row, turn, centres] = 1 / (len(centres) + BOS_COUNT_WEIGHT)
            options = option_positions(ids, question_start, start, letter_ids, dot)
            if reply in options:
                answer_weights["option"][row, turn, options[reply][1]] = 1
            for letter_position, word_position in options.values():
                letter_query[row, option_count] = word_position
                letter_weights[row, option_count, letter_position] = 1
                option_count += 1
            question_start = start
    image_start = (input_ids == image_token_id).int().argmax(dim=1)
    turn_query = torch.where(answer_index >= 0, answer_index - 1, -1)
    hops = {name: HopTargets(turn_query, weights) for name, weights in answer_weights.items()}
    hops["letters"] = HopTargets(letter_query, letter_weights)
    return DialogueBatch(input_ids, mask, labels, torch.stack(values), answer_index, hops, image_start, kinds)
