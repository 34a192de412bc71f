"""lmms-eval model plugin: evaluate a (pruned) LLaVA-1.5 or LLaVA-NeXT on any lmms-eval task.

Registered through the ``lmms_eval.models`` entry point as ``llava_prune``::

    lmms-eval --model llava_prune --model_args pretrained=llava-hf/llava-1.5-7b-hf,pruning_method=fastv,visual_token_num=128 --tasks gqa

``model_args``: ``pretrained`` (LLaVA-1.5 or LLaVA-NeXT, ``docs/families.md``), ``pruning_method``,
``visual_token_num`` or ``retain_ratio`` (share of each image's tokens), ``H``, ``head_strategy``,
``enable_dynamic_selection``, ``conv_mode`` (vicuna_v1), ``image_aspect_ratio`` (pad), ``device``,
``dtype``, ``device_map``, ``attn_implementation``, ``use_flash_attn``, ``load_8bit``, ``load_4bit`` (as
``load_pretrained_model`` takes them), ``batch_size`` (default 1; on the command line use lmms-eval's ``--batch_size``, which it
always passes); any other key is passed to the method as a parameter. Prompts use the LLaVA-1.5 template with the task's context as the question; a
request with several images uses the first (LLaVA-1.5 takes one image); a request without an image runs
unpruned. Only ``generate_until`` is supported.

Requests are answered ``batch_size`` at a time (consecutive requests with the same generation settings
that all have an image or all have none), as ``llava.eval.model_vqa_loader --batch-size`` answers them.
Each reply is an lmms-eval ``GenerationResult``: its token counts carry the request's pruning record
(``sample_pruning_record``: kept tokens per layer, equivalent tokens, FLOPs and FLOPs ratio; the unpruned
cost with ``flops_ratio`` 1.0 when nothing was pruned), which lmms-eval writes into each logged sample
as ``token_counts[0]["pruning"]``. The run's mean equivalent tokens and FLOPs ratio go through
lmms-eval's ``log_metrics`` into the aggregated result's ``throughput`` section
(``avg_equivalent_tokens``, ``avg_flops_ratio``), beside its generated tokens and latency.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from typing import Any

from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.models.model_utils.gen_metrics import log_metrics
from PIL import Image

from llava.eval.cli_args import DEFAULT_MODEL_PATH, DYNAMIC_SELECTION_METHOD
from llava.eval.inference import GenerationSettings, answer_batch, load_model_bundle, prompt_tokens
from llava.eval.run_loop import consecutive_batches

MODEL_ID = "llava_prune"


def manifest() -> Any:
    """The payload of the ``lmms_eval.models`` entry point (lmms-eval's ``ModelManifest``)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.LlavaPrune")


def truncate_at_stop_strings(text: str, stop_strings: Sequence[str]) -> str:
    """Cut a reply at the first occurrence of any stop string (lmms-eval's ``until``)."""
    cut = min((text.index(stop) for stop in stop_strings if stop and stop in text), default=len(text))
    return text[:cut]


def parse_batch_size(value: int | str) -> int:
    """lmms-eval's ``batch_size`` (a model arg or ``--batch_size``) as a positive integer; ``auto`` is refused."""
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"llava_prune: batch_size must be a positive integer, got {value!r}")
    return int(text)


@dataclasses.dataclass
class PruningTokenCounts(TokenCounts):
    """lmms-eval's per-request token counts plus the request's pruning record (``pruning`` in ``to_dict``)."""

    pruning: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """What lmms-eval logs in the sample's ``token_counts``."""
        counts: dict[str, Any] = super().to_dict()
        if self.pruning is not None:
            counts["pruning"] = self.pruning
        return counts


@dataclasses.dataclass(frozen=True)
class PendingRequest:
    """One ``generate_until`` request, ready to answer."""

    context: str
    settings: GenerationSettings
    stop_strings: tuple[str, ...]
    image: Image.Image | None

    def batch_key(self) -> tuple[GenerationSettings, bool]:
        """Requests answered in one batch share their settings and whether they have an image."""
        return self.settings, self.image is None


def run_summary(results: Sequence[GenerationResult], seconds: float) -> dict[str, Any]:
    """``log_metrics`` arguments for a run: generated tokens, latency, mean equivalent tokens and FLOPs ratio."""
    counts = [result.token_counts for result in results]
    generated = sum(count.output_tokens or 0 for count in counts)
    records = [count.pruning for count in counts]
    return {
        "total_elapsed_time": seconds,
        "total_gen_tokens": generated,
        "avg_speed": generated / seconds if seconds > 0 else 0.0,
        "additional_metrics": {
            "total_requests": len(results),
            "equivalent_tokens": sum(record["equivalent_tokens"] for record in records) / len(records),
            "flops_ratio": sum(record["flops_ratio"] for record in records) / len(records),
        },
    }


class LlavaPrune(lmms):
    """lmms-eval "simple" model wrapping ``llava.eval.inference`` with a pruning method."""

    is_simple = True

    def __init__(
        self,
        pretrained: str = DEFAULT_MODEL_PATH,
        pruning_method: str | None = None,
        visual_token_num: int | None = None,
        retain_ratio: float | str | None = None,
        H: int | None = None,
        head_strategy: str | None = None,
        enable_dynamic_selection: bool = False,
        conv_mode: str = "vicuna_v1",
        image_aspect_ratio: str = "pad",
        device: str | None = None,
        dtype: str | None = None,
        device_map: str | None = None,
        attn_implementation: str | None = None,
        use_flash_attn: bool | str = False,
        load_8bit: bool | str = False,
        load_4bit: bool | str = False,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,  # lmms-eval's ``--max_batch_size`` (for ``auto``): unused
        **method_params: Any,
    ) -> None:
        super().__init__()
        self.batch_size = parse_batch_size(batch_size)
        named = {
            "visual_token_num": visual_token_num, "heads": H, "head_strategy": head_strategy,
            "retain_ratio": None if retain_ratio is None else float(retain_ratio),
        }
        method_params.update({name: value for name, value in named.items() if value is not None})
        method = DYNAMIC_SELECTION_METHOD if str(enable_dynamic_selection).lower() == "true" else pruning_method
        flags = {"use_flash_attn": use_flash_attn, "load_8bit": load_8bit, "load_4bit": load_4bit}
        self.bundle = load_model_bundle(
            pretrained, method, method_params, device, dtype, device_map=device_map,
            attn_implementation=attn_implementation, **{name: str(value).lower() == "true" for name, value in flags.items()},
        )
        self.settings = GenerationSettings(conv_mode=conv_mode, image_aspect_ratio=image_aspect_ratio)

    def _settings_for(self, gen_kwargs: dict[str, Any]) -> GenerationSettings:
        overrides = {
            name: gen_kwargs[name]
            for name in ("max_new_tokens", "temperature", "top_p", "num_beams")
            if gen_kwargs.get(name) is not None
        }
        return dataclasses.replace(self.settings, **overrides)

    def _pending(self, request: Any) -> PendingRequest:
        """A request ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)`` with its first image loaded."""
        context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
        visuals = [visual for visual in doc_to_visual(self.task_dict[task][split][doc_id]) if visual is not None]
        until = gen_kwargs.get("until") or []
        stop_strings = (until,) if isinstance(until, str) else tuple(until)
        image = visuals[0].convert("RGB") if visuals else None
        return PendingRequest(context, self._settings_for(gen_kwargs), stop_strings, image)

    def _record(self, sample: int, cost: dict[str, Any], with_image: bool) -> dict[str, Any]:
        """Sample ``sample``'s pruning record of the last batch; the unpruned cost when nothing was pruned."""
        model = self.bundle.model
        record = model.sample_pruning_record(sample) if with_image and hasattr(model, "sample_pruning_record") else None
        return record if record is not None else {**cost, "flops_ratio": 1.0}

    def _answer(self, batch: list[PendingRequest]) -> Iterator[GenerationResult]:
        """Answer one batch; each reply with its token counts and pruning record."""
        with_image = batch[0].image is not None
        images = [pending.image for pending in batch] if with_image else None
        settings = batch[0].settings
        texts, costs = answer_batch(self.bundle, settings, [pending.context for pending in batch], images)
        tokenizer = self.bundle.tokenizer
        for sample, (pending, text, cost) in enumerate(zip(batch, texts, costs, strict=True)):
            prompt = prompt_tokens(self.bundle, settings, pending.context, with_image)
            counts = PruningTokenCounts(
                input_tokens=len(prompt) - cost.get("truncated_question_tokens", 0),
                output_tokens=len(tokenizer(text, add_special_tokens=False).input_ids),
                pruning=self._record(sample, cost, with_image),
            )
            yield GenerationResult(truncate_at_stop_strings(text, pending.stop_strings), counts)

    def generate_until(self, requests: list[Any]) -> list[GenerationResult]:
        """Answer the requests ``batch_size`` at a time, in order; log the run's pruning summary."""
        started = time.perf_counter()
        pending = (self._pending(request) for request in requests)
        results = [
            result
            for batch in consecutive_batches(pending, self.batch_size, PendingRequest.batch_key)
            for result in self._answer(batch)
        ]
        if results:
            log_metrics(**run_summary(results, time.perf_counter() - started))
        return results

    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        """Not supported: the pruning engine is evaluated on generation tasks."""
        raise NotImplementedError("llava_prune supports generate_until tasks only")

    def generate_until_multi_round(self, requests: list[Any]) -> list[str]:
        """Not supported (LLaVA-1.5 evaluation is single round)."""
        raise NotImplementedError("llava_prune supports single-round generate_until tasks only")
