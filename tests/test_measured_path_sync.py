"""The measured path never waits for the device: a pruned prefill reads nothing back to the host, and the record
it leaves reads back as before (issue #30, item 6).

Every registered method (the learned ones where ``playground/models/shapes-llava`` ships their checkpoints) runs
a prefill of the tiny LLaVA under ``DeviceSyncGuard``:

* everywhere: a ``TorchFunctionMode`` that fails on each device->host read (``Tensor.tolist``, ``item``,
  ``__int__``, ``__float__``, ``__bool__``, ``__index__``, ``cpu``, ``numpy``, ``.to`` the CPU from another
  device) and on each op CUDA runs only after reading a size or a value back (``nonzero``, ``masked_select``,
  ``unique``, ``bincount``, ``equal``, boolean-mask indexing, ``repeat_interleave`` by a tensor), so the CPU
  run catches what would be a sync on CUDA;
* on CUDA, also ``torch.cuda.set_sync_debug_mode("error")`` inside the pruning stage and the pre-LLM choice
  (the toolkit's code on the prefill path; the stock LLaVA / Llama code around them only by the mode above).

``SANCTIONED``: the reads that stay, each with its reason (input checks before any layer, transformers' own,
data-dependent shapes); inside them the guard is off. Afterwards the record (``pruning_record``, the stages'
tensors and metadata) equals what the code recorded before the change (values written down from it, for FastV,
SparseVLM and CDPruner), and every reader gets Python values.
"""

from __future__ import annotations

import functools
import importlib
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

from llava.model.builder import load_pretrained_model
from llava.pruning.registry import available_methods
from tests.conftest import llava_prompt, pixel_values

SHAPES_MODEL = Path(__file__).resolve().parents[1] / "playground" / "models" / "shapes-llava"
LEARNED = ("learned", "learned_merger")
TINY_PARAMS = {"fastv_fine_head": {"heads": 2}}  # the tiny LLaVA has 4 heads
OPTIONS = [  # other code paths of the same methods
    ("fastv", {"token_selection_method": "weighted_combination"}),
    ("sparsevlm", {"version": "v2"}),
    ("sparsevlm", {"positions": "original"}),
    ("vispruner", {"diverse_order": "raster"}),
]

HOST_READS = {
    torch.Tensor.tolist, torch.Tensor.item, torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__bool__,
    torch.Tensor.__index__, torch.Tensor.cpu, torch.Tensor.numpy,
}
DATA_SHAPED = {  # CUDA reads a size or a value back before it can return
    torch.nonzero, torch.Tensor.nonzero, torch.argwhere, torch.Tensor.argwhere, torch.masked_select,
    torch.Tensor.masked_select, torch.unique, torch.Tensor.unique, torch.unique_consecutive,
    torch.Tensor.unique_consecutive, torch.bincount, torch.Tensor.bincount, torch.equal, torch.Tensor.equal,
}
MASK_INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__, torch.Tensor.index_put_, torch.Tensor.index_put}
REPEATS = {torch.repeat_interleave, torch.Tensor.repeat_interleave}

# (where, reason): the reads left on the prefill path; ``module:qualname``, patched wherever it was imported
SANCTIONED = (
    ("llava.model.placeholders:has_placeholders", "input check: LLaVA's IMAGE_TOKEN_INDEX placeholders in the ids, before any work"),
    ("llava.model.vision:check_image_tokens", "input check: one image token per visual feature, before the vision tower"),
    ("llava.pruning.span:span_from_token_id", "input check: one contiguous image run of equal length per sample, before any layer"),
    ("llava.pruning.span:validate_span", "input check: the span inside the prompt and before the query, before any layer"),
    ("transformers.models.llava.modeling_llava:LlavaModel.get_placeholder_mask", "transformers: image tokens == features check"),
    ("transformers.masking_utils:_ignore_causal_mask_sdpa", "transformers: SDPA reads whether the padding mask is all ones"),
    ("llava.pruning.span:compaction_index", "equal kept counts per sample, checked at each compaction (not in this change's files)"),
    ("llava.model.pre_llm:instruction_bounds", "the instruction's ragged slices need host ints: one [B, 2] read before the vision tower"),
    ("llava.pruning.methods.sparsevlm:most_raters", "data-dependent width: the most text raters of any sample"),
    ("llava.pruning.methods.sparsevlm:replacement_columns", "data-dependent width: the most moved columns of any sample"),
    ("llava.pruning.methods.learned:per_sample_keep", "threshold rule: the batch keeps the largest count (data-dependent width)"),
    ("llava.pruning.learned.text_attention:question_rows", "learned: question rows' check and width (not in this change's files)"),
    ("llava.pruning.head_selection:select_tokens_dynamic", "ablation_a: a per-sample search on the host (head counts are shapes)"),
    ("llava.pruning.text_guided:rope_logit_bias", "SparseVLM v2: its +-1 sign vector is built on the CPU and copied (not in this change's files)"),
)
MEASURED = (  # on CUDA the driver's sync check is on inside these
    "llava.model.language_model.pruning_llama:PruningLlamaModel._run_stage",
    "llava.model.pre_llm:choose_prompt_tokens",
)


class DeviceSyncError(AssertionError):
    """A device->host read on the measured path."""


def _has_mask_index(index: Any) -> bool:
    if isinstance(index, torch.Tensor):
        return index.dtype == torch.bool and index.dim() > 0
    return isinstance(index, tuple | list) and any(_has_mask_index(i) for i in index)


def _reads_back(func: Callable, args: tuple, kwargs: dict) -> bool:
    if func in HOST_READS or func in DATA_SHAPED:
        return True
    if func in MASK_INDEXING:
        return len(args) > 1 and _has_mask_index(args[1])
    if func in REPEATS:
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
        return isinstance(repeats, torch.Tensor) and kwargs.get("output_size") is None
    if func is torch.Tensor.to and isinstance(args[0], torch.Tensor) and args[0].device.type != "cpu":
        target = [a for a in (*args[1:], kwargs.get("device")) if isinstance(a, str | torch.device)]
        return any(torch.device(t).type == "cpu" for t in target)
    return False


def _caller() -> str:
    frame = sys._getframe(2)
    while frame is not None and ("torch/" in frame.f_code.co_filename or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    return "?" if frame is None else f"{frame.f_code.co_filename}:{frame.f_lineno} ({frame.f_code.co_name})"


class DeviceSyncGuard(TorchFunctionMode):
    """Fails on a device->host read outside a sanctioned place; on CUDA the driver's check runs in ``measured``."""

    def __init__(self) -> None:
        super().__init__()
        self.sanctioned = 0
        self.measured = 0
        self.cuda = torch.cuda.is_available()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.sanctioned and _reads_back(func, args, kwargs):
            raise DeviceSyncError(f"device->host read {getattr(func, '__qualname__', func)} at {_caller()}")
        return func(*args, **kwargs)

    def _cuda_mode(self) -> None:
        if self.cuda:
            torch.cuda.set_sync_debug_mode("error" if self.measured and not self.sanctioned else "default")

    @contextmanager
    def sanction(self) -> Iterator[None]:
        self.sanctioned += 1
        self._cuda_mode()
        try:
            yield
        finally:
            self.sanctioned -= 1
            self._cuda_mode()

    @contextmanager
    def measure(self) -> Iterator[None]:
        self.measured += 1
        self._cuda_mode()
        try:
            yield
        finally:
            self.measured -= 1
            self._cuda_mode()


def _resolve(where: str) -> tuple[Any, str, Any]:
    module_name, qualname = where.split(":")
    owner: Any = importlib.import_module(module_name)
    *path, name = qualname.split(".")
    for part in path:
        owner = getattr(owner, part)
    return owner, name, owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)


def _wrap_everywhere(monkeypatch, where: str, context: Callable[[], Any]) -> None:
    """``where`` (``module:qualname``) run inside ``context()``, at its definition and wherever it was imported."""
    owner, name, original = _resolve(where)

    @functools.wraps(original)
    def wrapped(*args, **kwargs):
        with context():
            return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)
    if isinstance(owner, type):
        return
    for module in list(sys.modules.values()):
        if module is not owner and getattr(module, name, None) is original:
            monkeypatch.setattr(module, name, wrapped)


@pytest.fixture()
def guard(monkeypatch) -> DeviceSyncGuard:
    guard = DeviceSyncGuard()
    for where, _reason in SANCTIONED:
        _wrap_everywhere(monkeypatch, where, guard.sanction)
    for where in MEASURED:
        _wrap_everywhere(monkeypatch, where, guard.measure)
    return guard


@contextmanager
def guarded(guard: DeviceSyncGuard) -> Iterator[None]:
    previous = torch.cuda.get_sync_debug_mode() if guard.cuda else None
    try:
        with torch.no_grad(), guard:
            yield
    finally:
        if guard.cuda:
            torch.cuda.set_sync_debug_mode(previous)


# ----- the prefills -----------------------------------------------------------------------------------------
def method_cases() -> list:
    cases = []
    for name in available_methods():
        if name not in LEARNED:
            cases.append(pytest.param("tiny-random-llava", name, {**TINY_PARAMS.get(name, {}), "visual_token_num": 64}, id=name))
    for name, options in OPTIONS:
        label = "-".join(f"{value}" for value in options.values())
        cases.append(pytest.param("tiny-random-llava", name, {**options, "visual_token_num": 64}, id=f"{name}-{label}"))
    shipped = SHAPES_MODEL / "learned_pruner_t64.pt"
    skip = pytest.mark.skipif(not shipped.exists(), reason="no learned pruner shipped in playground/models/shapes-llava")
    cases.append(pytest.param(str(SHAPES_MODEL), "learned", {"visual_token_num": 64}, id="learned-planned", marks=skip))
    cases.append(pytest.param(str(SHAPES_MODEL), "learned", {"pruner_checkpoint": str(shipped)}, id="learned-threshold", marks=skip))
    return cases  # learned_merger: no merger checkpoint is shipped


def left_padded_batch(model) -> dict[str, torch.Tensor]:
    """Two prompts of different lengths, left padded (the samples' text after the image differs)."""
    image_id, vocab = model.config.image_token_id, model.config.text_config.vocab_size
    prompts = [llava_prompt(image_id, 5, 9, seed=0, vocab=vocab)[0], llava_prompt(image_id, 3, 4, seed=1, vocab=vocab)[0]]
    width = max(len(p) for p in prompts)
    ids = torch.full((2, width), model.config.text_config.pad_token_id or 0)
    mask = torch.zeros(2, width, dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt) :], mask[i, width - len(prompt) :] = prompt, 1
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.cat([pixel_values(seed=0), pixel_values(seed=1)])}


def single_prompt(model) -> dict[str, torch.Tensor]:
    vocab = model.config.text_config.vocab_size
    return {"input_ids": llava_prompt(model.config.image_token_id, 5, 9, vocab=vocab), "pixel_values": pixel_values()}


def on_device(inputs: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    device = next(model.parameters()).device
    return {key: value.to(device) for key, value in inputs.items()}


@functools.lru_cache(maxsize=2)
def _loaded(path: str, name: str, params: str):
    return load_pretrained_model(path, pruning_method=name, **json.loads(params))[1]


def loaded(path: str, name: str, params: dict):
    return _loaded(path, name, json.dumps(params, sort_keys=True))


@pytest.mark.parametrize(("path", "name", "params"), method_cases())
def test_prefill_reads_nothing_back_outside_the_sanctioned_places(guard, path, name, params):
    model = loaded(path, name, params)
    for inputs in (single_prompt(model), left_padded_batch(model)):
        inputs = on_device(inputs, model)
        with guarded(guard):
            model(**inputs)
        record = model.language_model.last_pruning_record
        assert record is not None and record.stages, name
        device = inputs["input_ids"].device
        for stage in record.stages:  # kept on the device as recorded, read as Python values
            assert stage.kept_index.device == device and stage.scores.device.type == device.type
            assert isinstance(stage.selection_ms, float) and stage.selection_ms >= 0.0
            json.dumps(stage.metadata)
        json.dumps(model.pruning_record)
        json.dumps(model.language_model.pruning_state.record.summary())


# ----- the record reads back as before --------------------------------------------------------------------
# written down from the code before the change (CPU), batch of one, ``single_prompt``
FASTV = {
    "kept_index": [[9, 19, 59, 94, 118, 167, 174, 175, 180, 214, 227, 239, 244, 259, 286, 289, 307, 370, 390, 403,
                    427, 435, 438, 472, 487, 507, 514, 544, 556, 557]],
    "metadata": {"method": "avg_all_heads", "max_head_idx": [2],
                 "head_importance": [[0.9761725068092346, 0.9759923219680786, 0.9763261079788208, 0.975889265537262]]},
    "record": {"method": "fastv", "span_length": 576, "kept_per_layer": [576] * 2 + [30] * 30, "equivalent_tokens": 64.12,
               "stages": [{"layer": 2, "kept": 30}], "flops": 198947840, "flops_ratio": 0.0905},
}
SPARSEVLM_STAGES = [
    {"layer": 3, "kept": 82, "merged": 16, "raters": [6],
     "kept_by_score": [[0, 1, 18, 42, 43, 45, 63, 89, 137, 143, 159, 160, 162, 174, 179, 182, 195, 200, 201, 206, 215,
                        216, 221, 223, 226, 232, 233, 236, 244, 249, 255, 263, 264, 269, 275, 297, 303, 305, 312, 319,
                        344, 378, 380, 382, 401, 410, 415, 423, 426, 427, 430, 435, 436, 437, 438, 445, 447, 451, 463,
                        477, 488, 491, 495, 541, 551, 553]],
     "cluster_centres": [[381, 3, 50, 17, 180, 166, 27, 26, 87, 490, 69, 158, 317, 389, 129, 557]],
     "merged_positions": [[386, 8, 55, 22, 185, 171, 32, 31, 92, 495, 74, 163, 322, 394, 134, 562]]},
    {"layer": 7, "kept": 32, "merged": 2, "raters": [6],
     "kept_by_score": [[0, 1, 2, 7, 25, 26, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46, 47, 48, 49,
                        50, 51, 52, 53, 54]],
     "cluster_centres": [[22, 19]], "merged_positions": [[226, 211]]},
    {"layer": 16, "kept": 18, "merged": 1, "raters": [6],
     "kept_by_score": [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17]],
     "cluster_centres": [[20]], "merged_positions": [[415]]},
]
CDPRUNER_KEPT = [[5, 9, 10, 23, 30, 34, 62, 71, 78, 111, 113, 116, 122, 143, 176, 178, 188, 196, 198, 206, 213, 215,
                  218, 242, 251, 254, 273, 280, 296, 300, 303, 308, 319, 328, 333, 336, 338, 352, 356, 358, 365, 382,
                  386, 396, 397, 406, 414, 423, 435, 439, 440, 443, 444, 456, 476, 482, 489, 499, 500, 509, 527, 536,
                  541, 570]]


def guarded_prefill(guard: DeviceSyncGuard, name: str):
    """The prefill on the CPU in float32, where the values were written down (the guard runs on every device)."""
    model = loaded("tiny-random-llava", name, {"visual_token_num": 64, "device": "cpu"})
    with guarded(guard):
        model(**on_device(single_prompt(model), model))
    return model, model.language_model.last_pruning_record


def test_fastv_record_reads_back_as_before(guard):
    model, record = guarded_prefill(guard, "fastv")
    stage = record.stages[0]
    assert stage.kept_index.tolist() == FASTV["kept_index"] and stage.kept_valid is None
    assert isinstance(stage.device_metadata["max_head_idx"], torch.Tensor)  # recorded as a tensor ...
    metadata = stage.metadata  # ... read as lists
    assert metadata["method"] == FASTV["metadata"]["method"] and metadata["max_head_idx"] == [2]
    assert metadata["head_importance"][0] == pytest.approx(FASTV["metadata"]["head_importance"][0], rel=1e-5)
    assert model.language_model.last_selection_metadata == metadata
    assert model.language_model.last_gen_kept_indices.tolist() == FASTV["kept_index"]
    summary = model.pruning_record
    assert {key: summary[key] for key in FASTV["record"]} == FASTV["record"]
    assert summary["selection_ms"] == round(record.selection_ms, 3) >= 0.0


def test_sparsevlm_record_reads_back_as_before(guard):
    from llava.pruning.methods.sparsevlm import kept_by_score_positions

    model, record = guarded_prefill(guard, "sparsevlm")
    assert [stage.summary() for stage in record.stages] == [
        {"layer": s["layer"], "kept": s["kept"], "merged": s["merged"]} for s in SPARSEVLM_STAGES
    ]
    for stage, expected in zip(record.stages, SPARSEVLM_STAGES, strict=True):
        metadata = stage.metadata
        assert isinstance(stage.device_metadata["kept_by_score"], torch.Tensor)
        for key in ("raters", "kept_by_score", "cluster_centres", "merged_positions"):
            assert metadata[key] == expected[key], (stage.layer, key)
        assert metadata["cluster_tokens"] == expected["merged"] and metadata["cluster_layout"] == "after_kept"
    assert record.summary()["kept_per_layer"] == [576] * 3 + [82] * 4 + [32] * 9 + [18] * 16
    assert model.pruning_record["equivalent_tokens"] == 82.25
    positions = kept_by_score_positions(record)
    assert [len(p) for p in positions] == [66, 30, 17] and positions[0][:3] == [5, 6, 23]


def test_cdpruner_record_reads_back_as_before(guard):
    model, record = guarded_prefill(guard, "cdpruner")
    (stage,) = record.stages
    assert stage.layer == 0 and stage.kept_index.tolist() == CDPRUNER_KEPT
    assert stage.metadata == {"method": "cdpruner", "relevance": "llm_text_embeddings"}
    assert record.summary()["kept_per_layer"] == [64] * 32 and model.pruning_record["flops"] == 127156224


# ----- the pieces --------------------------------------------------------------------------------------------
def test_stopwatch_reads_lazily():
    from toolkit_common.stopwatch import Stopwatch

    watch = Stopwatch("cpu")
    with pytest.raises(RuntimeError, match="before stop"):
        _ = watch.start().elapsed_ms
    with watch:
        sum(range(1000))
    assert watch.stop().elapsed_ms >= 0.0 and watch.elapsed_ms == watch.elapsed_ms
    if torch.cuda.is_available():
        with Stopwatch("cuda") as cuda_watch:
            torch.ones(256, 256, device="cuda").matmul(torch.ones(256, 256, device="cuda"))
        assert cuda_watch.elapsed_ms > 0.0


def test_metadata_view_converts_tensors_and_leaves_the_rest():
    from llava.pruning.selection import TokenSelection

    stored = {"kept": torch.tensor([[1, 2]]), "ragged": [torch.tensor([3]), torch.tensor([4, 5])], "pair": (torch.tensor(1.5), "a"), "n": 2}
    selection = TokenSelection(torch.tensor([[1, 2]]), torch.zeros(1, 3), stored)
    assert selection.metadata == {"kept": [[1, 2]], "ragged": [[3], [4, 5]], "pair": (1.5, "a"), "n": 2}
    selection.metadata["kept"].append(9)  # a copy: the record is unchanged
    assert selection.metadata["kept"] == [[1, 2]] and torch.equal(selection.device_metadata["kept"], torch.tensor([[1, 2]]))
    with pytest.raises(AttributeError):
        selection.metadata = {}


@pytest.mark.parametrize("seed", range(20))
def test_padded_text_raters_equal_text_raters_per_sample(seed):
    from llava.pruning.methods.sparsevlm import padded_text_raters
    from llava.pruning.text_guided import text_raters

    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 12, (3,), generator=generator).tolist()
    visual = torch.randn(3, 9, 16, generator=generator)
    text = torch.randn(3, 12, 16, generator=generator) * (1 + seed % 4)
    valid = torch.arange(12)[None] < torch.tensor(lengths)[:, None]
    raters = padded_text_raters(visual, text, valid)
    for b, length in enumerate(lengths):
        assert raters[b, :length].tolist() == text_raters(visual[b], text[b, :length]).tolist()
        assert not raters[b, length:].any()
