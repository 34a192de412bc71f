"""Questions about a scene, by type, with their answers; every one needs specific regions of the image.

One cell:      ``colour_at`` / ``shape_at`` (cell ``b4``), ``right_of`` (the shape right of a unique X).
Several cells: ``count`` (how many X), ``most_common`` (the colour with the most shapes, unique by 2).
Whole image:   ``exists`` (is there an X?), with POPE's negatives: ``random`` (any absent object),
               ``popular`` (the most frequent absent object under the generator's weights),
               ``adversarial`` (absent, but its colour and its shape are each present on other objects).

Cells are named as in a spreadsheet, one word each: column letter ``a``-``f`` from the left, row number
``1``-``6`` from the top (``b4`` = row 4, column 2). A single word per cell makes the lookup one content
match for a small model (with ``row 4 , column 2`` the LM first has to bind each number to its word; a
32-layer width-64 LM trained for 375 steps with the attention curriculum found only the row or only
the column, 1/6 of the mass). Answers are single words (digits for counts).
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from llava.shapes.scene import COLOUR_WEIGHTS, COLOURS, SHAPE_WEIGHTS, SHAPES, Scene, ShapeObject

ONE_CELL = ("colour_at", "shape_at", "right_of")
SEVERAL_CELLS = ("count", "most_common")
WHOLE_IMAGE = ("exists",)
QUESTION_TYPES = ONE_CELL + SEVERAL_CELLS + WHOLE_IMAGE
POPE_SPLITS = ("random", "popular", "adversarial")
MAX_COUNT = 5
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}


@dataclass(frozen=True)
class Question:
    """A question, its answer, its type, and for ``exists`` the POPE split of a negative (else None)."""

    text: str
    answer: str
    kind: str
    split: str | None = None
    # 0-based cells the answer depends on: the asked cell; for right_of the named object's cell, then the
    # answer's; the counted / matching objects' cells (count, exists, most_common: all objects)
    cells: tuple[tuple[int, int], ...] = ()

    @property
    def evidence_cells(self) -> tuple[tuple[int, int], ...]:
        """The 0-based (row, col) cells holding the objects the answer reads: the asked cell (colour_at,
        shape_at); the named object's cell, then the answer's (right_of); the counted objects' (count); every
        object's (most_common); the matching object's for a present ``exists``, none for an absent one or a
        count of 0. The benchmark files write it as each question's ``cells`` (unchanged, so answers already
        written stay valid); ``llava.eval.evidence`` maps it to patches for evidence recall."""
        return self.cells


def _cells(objects: Iterable[ShapeObject]) -> tuple[tuple[int, int], ...]:
    return tuple((o.row, o.col) for o in objects)


def cell_name(row: int, col: int) -> str:
    """Spreadsheet name of a 0-based cell: ``cell_name(3, 1) == "b4"``."""
    return f"{'abcdef'[col]}{row + 1}"


def colour_at(scene: Scene, rng: random.Random) -> Question | None:
    obj = rng.choice(scene.objects)
    return Question(
        f"what colour is the shape in cell {cell_name(obj.row, obj.col)} ?",
        obj.colour,
        "colour_at",
        cells=((obj.row, obj.col),),
    )


def shape_at(scene: Scene, rng: random.Random) -> Question | None:
    obj = rng.choice(scene.objects)
    return Question(
        f"what shape is in cell {cell_name(obj.row, obj.col)} ?", obj.shape, "shape_at", cells=((obj.row, obj.col),)
    )


def right_of(scene: Scene, rng: random.Random) -> Question | None:
    """The shape in the cell right of an object whose colour + shape is unique in the scene."""
    candidates = [
        (obj, right)
        for obj in scene.objects
        if scene.count(obj.colour, obj.shape) == 1 and (right := scene.at(obj.row, obj.col + 1)) is not None
    ]
    if not candidates:
        return None
    obj, right = rng.choice(candidates)
    return Question(
        f"what shape is right of the {obj.colour} {obj.shape} ?",
        right.shape,
        "right_of",
        cells=((obj.row, obj.col), (right.row, right.col)),
    )


def count(scene: Scene, rng: random.Random) -> Question | None:
    """How many shapes of one kind, or of one colour (0 to ``MAX_COUNT``)."""
    if rng.random() < 0.5:
        shape = rng.choice(SHAPES)
        counted, text = [o for o in scene.objects if o.shape == shape], f"how many {PLURALS[shape]} are there ?"
    else:
        colour = rng.choice(list(COLOURS))
        counted, text = [o for o in scene.objects if o.colour == colour], f"how many {colour} shapes are there ?"
    if len(counted) > MAX_COUNT:
        return None
    return Question(text, str(len(counted)), "count", cells=_cells(counted))


def most_common(scene: Scene, rng: random.Random) -> Question | None:
    """Asked only when one colour leads every other by at least two shapes."""
    ranked = Counter(obj.colour for obj in scene.objects).most_common()
    runner_up = ranked[1][1] if len(ranked) > 1 else 0
    if ranked[0][1] - runner_up < 2:
        return None
    return Question("which colour is most common ?", ranked[0][0], "most_common", cells=_cells(scene.objects))


def _absent(scene: Scene) -> list[tuple[str, str]]:
    return [(c, s) for c, s in itertools.product(COLOURS, SHAPES) if not scene.has(c, s)]


def exists(scene: Scene, rng: random.Random, split: str | None = None, positive: bool | None = None) -> Question | None:
    """``is there a X ?``: a present object (yes) or an absent one chosen by the POPE ``split`` (no)."""
    positive = rng.random() < 0.5 if positive is None else positive
    split = split or rng.choice(POPE_SPLITS)
    if positive:
        obj = rng.choice(scene.objects)
        colour, shape = obj.colour, obj.shape
    else:
        absent = _absent(scene)
        if split == "popular":
            weight = {
                (c, s): COLOUR_WEIGHTS[i] * SHAPE_WEIGHTS[j]
                for (i, c), (j, s) in itertools.product(enumerate(COLOURS), enumerate(SHAPES))
            }
            absent = sorted(absent, key=lambda pair: -weight[pair])[:3]
        elif split == "adversarial":
            colours = {o.colour for o in scene.objects}
            shapes = {o.shape for o in scene.objects}
            absent = [(c, s) for c, s in absent if c in colours and s in shapes]
        if not absent:
            return None
        colour, shape = rng.choice(absent)
    matching = [o for o in scene.objects if (o.colour, o.shape) == (colour, shape)]
    return Question(f"is there a {colour} {shape} ?", "yes" if positive else "no", "exists", split, _cells(matching))


GENERATORS = {
    "colour_at": colour_at,
    "shape_at": shape_at,
    "right_of": right_of,
    "count": count,
    "most_common": most_common,
    "exists": exists,
}


def ask(scene: Scene, kind: str, rng: random.Random, tries: int = 1) -> Question | None:
    """A question of type ``kind`` about ``scene`` (None when the scene cannot pose one)."""
    if kind not in GENERATORS:
        raise ValueError(f"unknown question type {kind!r}; valid: {', '.join(QUESTION_TYPES)}")
    for _ in range(tries):
        question = GENERATORS[kind](scene, rng)
        if question is not None:
            return question
    return None


def multiple_choice(question: Question, rng: random.Random) -> tuple[list[str], int]:
    """Four options (the answer and three distractors of the same kind, shuffled) and the answer's index."""
    if question.kind in ("colour_at", "most_common"):
        pool = list(COLOURS)
    elif question.kind in ("shape_at", "right_of"):
        pool = list(SHAPES)
    elif question.kind == "count":
        pool = [str(n) for n in range(MAX_COUNT + 1)]
    else:
        raise ValueError(f"no multiple-choice form for {question.kind!r}")
    options = [question.answer, *rng.sample([p for p in pool if p != question.answer], 3)]
    rng.shuffle(options)
    return options, options.index(question.answer)


