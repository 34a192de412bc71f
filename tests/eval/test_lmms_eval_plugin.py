"""The lmms-eval plugin: entry-point registration and a generate_until call, offline.

lmms-eval is not a dependency, so the test puts a minimal stand-in for the names the plugin uses
(``lmms_eval.api.model.lmms``, ``lmms_eval.api.instance``'s ``TokenCounts`` / ``GenerationResult``,
``lmms_eval.models.registry_v2.ModelManifest``, ``gen_metrics.log_metrics``) first on ``sys.path``, hiding
a real lmms-eval for the test (``make test-lmms`` runs the real one).
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
    "lmms_eval/api/instance.py": (
        "from dataclasses import dataclass\n\n"
        "@dataclass\nclass TokenCounts:\n"
        "    input_tokens: int | None = None\n    output_tokens: int | None = None\n    reasoning_tokens: int | None = None\n\n"
        "    def to_dict(self):\n        return {k: v for k, v in vars(self).items() if v is not None}\n\n"
        "@dataclass\nclass GenerationResult:\n    text: str\n    token_counts: TokenCounts | None = None\n"
    ),
    "lmms_eval/models/__init__.py": "",
    "lmms_eval/models/model_utils/__init__.py": "",
    "lmms_eval/models/model_utils/gen_metrics.py": (
        "LOGGED = []\n\n"
        "def log_metrics(total_elapsed_time, total_gen_tokens, avg_speed, additional_metrics=None):\n"
        "    LOGGED.append({'total_gen_tokens': total_gen_tokens, **(additional_metrics or {})})\n"
    ),
    "lmms_eval/models/registry_v2.py": (
        "from dataclasses import dataclass\n\n"
        "@dataclass(frozen=True)\nclass ModelManifest:\n"
        "    model_id: str\n    simple_class_path: str | None = None\n    chat_class_path: str | None = None\n"
    ),
}


def plugin_modules() -> list[str]:
    """Loaded modules of lmms-eval (real or stand-in) and of the plugin."""
    return [name for name in sys.modules if name.startswith(("lmms_eval", "llava.eval.lmms_eval_plugin"))]


@pytest.fixture
def stub_lmms_eval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name in plugin_modules():  # a real lmms-eval already imported: hidden now, restored after the test
        monkeypatch.delitem(sys.modules, name)
    for relative, text in STUB_FILES.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in plugin_modules():
        del sys.modules[name]


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


def toy_requests(docs: dict[int, dict], gen_kwargs: dict[str, Any]) -> list[FakeRequest]:
    """One ``generate_until`` request per document of the ``toy`` task."""
    return [FakeRequest(("What is it?", gen_kwargs, lambda d: [d["image"]], doc_id, "toy", "test")) for doc_id in docs]


def test_generate_until_answers_with_pruning_and_stops(stub_lmms_eval) -> None:
    from lmms_eval.models.model_utils.gen_metrics import LOGGED

    from llava.eval.lmms_eval_plugin import LlavaPrune, truncate_at_stop_strings

    model = LlavaPrune(pretrained="tiny-random-llava", pruning_method="fastv", visual_token_num=64)
    docs = {0: {"image": Image.new("RGB", (50, 30), (10, 20, 200))}, 1: {"image": None}}
    model.task_dict = {"toy": {"test": docs}}
    requests = [
        FakeRequest(("What is it?", {"max_new_tokens": 3, "until": ["\n\n"]}, lambda d: [d["image"]], 0, "toy", "test")),
        FakeRequest(("Text only?", {"max_new_tokens": 2}, lambda d: [d["image"]], 1, "toy", "test")),
    ]
    replies = model.generate_until(requests)
    assert len(replies) == 2 and all(isinstance(reply.text, str) for reply in replies)
    pruned, unpruned = (reply.token_counts.to_dict()["pruning"] for reply in replies)
    assert pruned["method"] == "fastv" and pruned["equivalent_tokens"] < pruned["span_length"]
    assert 0 < pruned["flops_ratio"] < 1 and unpruned["flops_ratio"] == 1.0
    assert model.bundle.model.pruning_record is None  # the last request had no image: unpruned
    (logged,) = LOGGED
    assert logged["total_requests"] == 2
    assert logged["equivalent_tokens"] == pytest.approx((pruned["equivalent_tokens"] + unpruned["equivalent_tokens"]) / 2)
    assert truncate_at_stop_strings("yes\n\nmore", ["\n\n", "Q:"]) == "yes"
    with pytest.raises(NotImplementedError):
        model.loglikelihood(requests)


def test_batched_replies_equal_one_by_one(stub_lmms_eval) -> None:
    from llava.eval.lmms_eval_plugin import LlavaPrune

    colours = [(10, 20, 200), (200, 30, 10), (40, 180, 60), (90, 90, 90), (250, 250, 0)]
    docs = {i: {"image": Image.new("RGB", (40 + 7 * i, 30), colour)} for i, colour in enumerate(colours)}
    replies = {}
    for batch_size in ("1", "2"):
        model = LlavaPrune(pretrained="tiny-random-llava", pruning_method="fastv", visual_token_num=64, batch_size=batch_size)
        model.task_dict = {"toy": {"test": docs}}
        replies[batch_size] = model.generate_until(toy_requests(docs, {"max_new_tokens": 3}))
    assert [r.text for r in replies["2"]] == [r.text for r in replies["1"]]
    assert [r.token_counts.pruning["kept_per_layer"] for r in replies["2"]] == [
        r.token_counts.pruning["kept_per_layer"] for r in replies["1"]
    ]


def test_llava_next_through_the_plugin_prunes_each_image_by_its_own_token_count(stub_lmms_eval) -> None:
    from llava.eval.lmms_eval_plugin import LlavaPrune

    model = LlavaPrune(pretrained="tiny-random-llava-next", pruning_method="pdrop", retain_ratio="0.25")
    docs = {0: {"image": Image.new("RGB", (200, 130), (10, 20, 200))}, 1: {"image": Image.new("RGB", (300, 300), (9, 9, 9))}}
    model.task_dict = {"toy": {"test": docs}}
    replies = model.generate_until(toy_requests(docs, {"max_new_tokens": 2}))
    records = [reply.token_counts.to_dict()["pruning"] for reply in replies]
    assert [record["span_length"] for record in records] == [234, 336]
    assert [record["equivalent_tokens"] for record in records] == pytest.approx([0.25 * 234, 0.25 * 336], abs=1.0)


@pytest.mark.parametrize("batch_size", ["0", "auto", "-2"])
def test_batch_size_must_be_a_positive_integer(stub_lmms_eval, batch_size: str) -> None:
    from llava.eval.lmms_eval_plugin import parse_batch_size

    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        parse_batch_size(batch_size)


def test_consecutive_batches_keep_order_and_split_on_key() -> None:
    from llava.eval.run_loop import consecutive_batches

    batches = list(consecutive_batches([1, 3, 5, 7, 2, 4, 9], 2, lambda n: n % 2))
    assert batches == [[1, 3], [5, 7], [2, 4], [9]]
