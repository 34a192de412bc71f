"""Evidence recall: the share of the patches a question's answer reads that each pruning stage keeps.

Every shapes question records the cells its answer reads (``cells`` of the question lines,
``llava.shapes.questions.Question.evidence_cells``: the asked cell; for right-of the named object's cell
and the answer's; the counted objects' cells; for most-common every object's; for a present object its
cell; none for an absent one or a count of 0). A cell of the 6 x 6 grid over the 336 px image covers
4 x 4 of the vision tower's 24 x 24 patches (336 / 14), so question ``q`` reads the patches ``E_q``
(16 per cell). Stage ``s`` of the run's pruning record keeps ``K_qs`` of the ``S`` image patches
(``kept_stages`` in the answer's metadata, written by the loaders' ``--record-kept-patches``). Then

    recall_qs = |K_qs ∩ E_q| / |E_q|          chance_qs = |K_qs| / S

``chance`` is the expected recall of a uniformly random keep set of the same size (random's expectation).
A row's recall at stage ``s`` is the mean over its questions with evidence (``E_q`` not empty), its
interval the percentile bootstrap of that mean over questions (``llava.eval.intervals``); chance likewise.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llava.eval import intervals
from llava.eval.inference import KEPT_FIELD

GRID_CELLS = 6  # llava.shapes.scene.GRID
PATCHES_PER_SIDE = 24  # 336 px / 14 px patches


def evidence_patches(cells: Sequence[Sequence[int]], grid_cells: int = GRID_CELLS,
                     patches_per_side: int = PATCHES_PER_SIDE) -> list[int]:
    """Sorted raster indices (into the ``patches_per_side`` x ``patches_per_side`` patch grid) of the patches
    the 0-based ``(row, col)`` cells of a ``grid_cells`` x ``grid_cells`` grid cover."""
    per_cell = patches_per_side // grid_cells
    patches = {
        (row * per_cell + dy) * patches_per_side + col * per_cell + dx
        for row, col in cells for dy in range(per_cell) for dx in range(per_cell)
    }
    return sorted(patches)


def question_evidence(cells: Sequence[Sequence[int]], stages: Sequence[Mapping[str, Any]],
                      span: int = PATCHES_PER_SIDE**2) -> list[list[int]] | None:
    """Per stage ``[layer, evidence patches kept, evidence patches, patches kept, span]`` of one question, or
    None when it reads no cell (recall undefined)."""
    evidence = set(evidence_patches(cells))
    if not evidence:
        return None
    return [[int(stage["layer"]), len(evidence & set(stage["kept"])), len(evidence), len(stage["kept"]), span]
            for stage in stages]


def recall_by_stage(per_question: Mapping[str, Sequence[Sequence[int]]], resamples: int = intervals.RESAMPLES,
                    seed: int = intervals.SEED) -> list[dict[str, Any]]:
    """Per stage (first pruning stage first): ``layer`` (the most common one), ``recall`` and ``chance`` in %
    with the bootstrap interval of ``recall`` (``recall_low`` / ``recall_high``), and ``questions`` (how many
    questions with evidence reached the stage). ``per_question``: ``question_evidence`` of each question."""
    depth = max((len(stages) for stages in per_question.values()), default=0)
    summary = []
    for position in range(depth):
        rows = [stages[position] for _, stages in sorted(per_question.items()) if len(stages) > position]
        recall = intervals.bootstrap_mean([100 * kept / total for _, kept, total, _, _ in rows], resamples, seed)
        chance = intervals.bootstrap_mean([100 * kept / span for _, _, _, kept, span in rows], resamples, seed)
        layer = Counter(layer for layer, *_ in rows).most_common(1)[0][0]
        summary.append({"layer": layer, "recall": recall[0], "recall_low": recall[1], "recall_high": recall[2],
                        "chance": chance[0], "questions": len(rows)})
    return summary


def answers_evidence(answers: Sequence[Mapping[str, Any]], cells: Mapping[str, Sequence[Sequence[int]]]) -> dict[str, list] | None:
    """``{question id: question_evidence}`` of an answers file's answers (those whose question reads cells);
    None when no answer recorded its kept patches (an unpruned run, or answers written without
    ``--record-kept-patches``)."""
    recorded = [answer for answer in answers if KEPT_FIELD in (answer.get("metadata") or {})]
    if not recorded:
        return None
    evidence = {}
    for answer in recorded:
        qid = str(answer["question_id"])
        found = question_evidence(cells.get(qid, ()), answer["metadata"][KEPT_FIELD])
        if found is not None:
            evidence[qid] = found
    return evidence


def attach_evidence(result_json: Path, evidence: Mapping[str, list] | None) -> None:
    """Add ``evidence`` (``{"questions": {question id: question_evidence}}``) to a scorer's result record
    (``llava.eval.results``), which ``llava.eval.summarize`` pools per row; None removes it."""
    record = json.loads(result_json.read_text(encoding="utf-8"))
    record.pop("evidence", None)
    if evidence is not None:
        record["evidence"] = {"questions": dict(evidence)}
    result_json.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
