"""The lmms-eval plugin: entry-point registration and a generate_until call, offline.

lmms-eval is not a dependency, so the test puts a minimal stand-in for the three names the plugin
uses (``lmms_eval.api.model.lmms``, ``lmms_eval.models.registry_v2.ModelManifest``) on ``sys.path``.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

STUB_FILES = {
    "lmms_eval/__init__.py": "",
    "lmms_eval/api/__init__.py": "",
    "lmms_eval/api/model.py": "class lmms:\n    def __init__(self):\n        self.task_dict = {}\n",
    "lmms_eval/models/__init__.py": "",
    "lmms_eval/models/registry_v2.py": (
        "from dataclasses import dataclass\n\n"
        "@dataclass(frozen=True)\nclass ModelManifest:\n"
        "    model_id: str\n    simple_class_path: str | None = None\n    chat_class_path: str | None = None\n"
    ),
}


@pytest.fixture
def stub_lmms_eval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    if importlib.util.find_spec("lmms_eval") is not None and "lmms_eval" not in sys.modules:
        pytest.skip("a real lmms-eval is installed")
    for relative, text in STUB_FILES.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in [name for name in sys.modules if name.startswith(("lmms_eval", "llava.eval.lmms_eval_plugin"))]:
        monkeypatch.delitem(sys.modules, name)


@dataclass
class FakeRequest:
    args: tuple[Any, ...]


def test_entry_point_resolves_to_an_lmms_model(stub_lmms_eval) -> None:
    (entry,) = [ep for ep in entry_points(group="lmms_eval.models") if ep.name == "llava_prune"]
    manifest = entry.load()()
    assert manifest.model_id == "llava_prune"
    module_name, class_name = manifest.simple_class_path.rsplit(".", 1)
    model_class = getattr(importlib.import_module(module_name), class_name)
    from lmms_eval.api.model import lmms

    assert issubclass(model_class, lmms) and model_class.is_simple


def test_generate_until_answers_with_pruning_and_stops(stub_lmms_eval) -> None:
    from llava.eval.lmms_eval_plugin import LlavaPrune, truncate_at_stop_strings

    model = LlavaPrune(pretrained="tiny-random-llava", pruning_method="fastv", visual_token_num=64)
    docs = {0: {"image": Image.new("RGB", (50, 30), (10, 20, 200))}, 1: {"image": None}}
    model.task_dict = {"toy": {"test": docs}}
    requests = [
        FakeRequest(("What is it?", {"max_new_tokens": 3, "until": ["\n\n"]}, lambda d: [d["image"]], 0, "toy", "test")),
        FakeRequest(("Text only?", {"max_new_tokens": 2}, lambda d: [d["image"]], 1, "toy", "test")),
    ]
    replies = model.generate_until(requests)
    assert len(replies) == 2 and all(isinstance(reply, str) for reply in replies)
    assert model.bundle.model.pruning_record is None  # the last request had no image: unpruned
    assert truncate_at_stop_strings("yes\n\nmore", ["\n\n", "Q:"]) == "yes"
    with pytest.raises(NotImplementedError):
        model.loglikelihood(requests)
