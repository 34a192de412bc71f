"""Evidence recall (llava.eval.evidence) on hand-built pruning records."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from llava.eval import evidence
from llava.pruning.record import PruningRecord
from llava.shapes.questions import Question
from llava.shapes.scene import cell_patches


def test_a_cell_covers_its_four_by_four_patches():
    assert evidence.evidence_patches([(0, 0)]) == [0, 1, 2, 3, 24, 25, 26, 27, 48, 49, 50, 51, 72, 73, 74, 75]
    assert evidence.evidence_patches([(3, 1), (5, 5)]) == sorted(cell_patches(3, 1) + cell_patches(5, 5))
    assert evidence.evidence_patches([]) == []
    question = Question("what shape is in cell b4 ?", "circle", "shape_at", cells=((3, 1),))
    assert question.evidence_cells == ((3, 1),)


def test_recall_per_stage_against_the_chance_of_a_random_keep_set():
    cell = evidence.evidence_patches([(0, 0)])
    stages = [{"layer": 2, "kept": cell[:12] + list(range(300, 400))},  # 12 of 16 evidence patches, 112 kept
              {"layer": 8, "kept": cell[:4]}]  # 4 of 16, 4 kept
    found = evidence.question_evidence([(0, 0)], stages)
    assert found == [[2, 12, 16, 112, 576], [8, 4, 16, 4, 576]]
    assert evidence.question_evidence([], stages) is None  # an absent object reads no cell
    other = evidence.question_evidence([(5, 5)], stages)  # nothing of its cell kept
    summary = evidence.recall_by_stage({"a": found, "b": other})
    assert [stage["layer"] for stage in summary] == [2, 8]
    assert summary[0]["recall"] == pytest.approx(100 * (12 / 16 + 0) / 2)
    assert summary[0]["chance"] == pytest.approx(100 * 112 / 576)
    assert summary[0]["recall_low"] <= summary[0]["recall"] <= summary[0]["recall_high"]
    assert summary[1]["recall"] == pytest.approx(100 * 4 / 16 / 2) and summary[1]["questions"] == 2


@dataclass
class Stage:
    """The part of ``llava.pruning.record.StageRecord`` evidence reads: the layer and the kept positions."""

    layer: int
    kept_index: torch.Tensor

    def kept_positions(self, sample: int) -> torch.Tensor:
        return self.kept_index[sample]


def test_kept_patches_of_a_left_padded_sample_and_of_answers(tmp_path: Path):
    kept = torch.tensor([[5, 6, 30], [3, 4, 5]])  # positions in the unpruned input; span starts at 5 and at 3
    record = PruningRecord("m", torch.tensor([[5, 581], [3, 579]]), num_layers=4, stages=[Stage(2, kept)])
    assert record.sample_kept_stages(0) == [{"layer": 2, "kept": [0, 1, 25]}]
    assert record.sample_kept_stages(1) == [{"layer": 2, "kept": [0, 1, 2]}]

    answers = [{"question_id": "q1", "text": "red", "metadata": {evidence.KEPT_FIELD: record.sample_kept_stages(0)}},
               {"question_id": "q2", "text": "no", "metadata": {evidence.KEPT_FIELD: []}}]
    found = evidence.answers_evidence(answers, {"q1": [[0, 0]], "q2": []})
    assert found == {"q1": [[2, 3, 16, 3, 576]]}  # patches 0, 1 and 25 lie in cell a1; q2 reads no cell
    assert evidence.answers_evidence([{"question_id": "q1", "text": "red", "metadata": {}}], {"q1": [[0, 0]]}) is None

    result = tmp_path / "gqa.json"
    result.write_text(json.dumps({"benchmark": "gqa", "score": 1.0}))
    evidence.attach_evidence(result, found)
    assert json.loads(result.read_text())["evidence"] == {"questions": found}
    evidence.attach_evidence(result, None)
    assert "evidence" not in json.loads(result.read_text())
