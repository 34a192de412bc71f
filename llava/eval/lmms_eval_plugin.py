"""lmms-eval model plugin: evaluate a (pruned) LLaVA-1.5 on any lmms-eval task.

Registered through the ``lmms_eval.models`` entry point as ``llava_prune``::

    lmms-eval --model llava_prune --model_args pretrained=llava-hf/llava-1.5-7b-hf,pruning_method=fastv,visual_token_num=128 --tasks gqa

``model_args``: ``pretrained``, ``pruning_method``, ``visual_token_num``, ``H``, ``head_strategy``,
``enable_dynamic_selection``, ``conv_mode`` (vicuna_v1), ``image_aspect_ratio`` (pad), ``device``,
``dtype``; any other key is passed to the method as a parameter. Prompts use the LLaVA-1.5 template
with the task's context as the question; a request with several images uses the first (LLaVA-1.5
takes one image); a request without an image runs unpruned. Only ``generate_until`` is supported.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lmms_eval.api.model import lmms

from llava.eval.cli_args import DEFAULT_MODEL_PATH, DYNAMIC_SELECTION_METHOD
from llava.eval.inference import GenerationSettings, answer_batch, load_model_bundle

MODEL_ID = "llava_prune"


def manifest() -> Any:
    """The payload of the ``lmms_eval.models`` entry point (lmms-eval's ``ModelManifest``)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.LlavaPrune")


def truncate_at_stop_strings(text: str, stop_strings: list[str]) -> str:
    """Cut a reply at the first occurrence of any stop string (lmms-eval's ``until``)."""
    cut = min((text.index(stop) for stop in stop_strings if stop and stop in text), default=len(text))
    return text[:cut]


class LlavaPrune(lmms):
    """lmms-eval "simple" model wrapping ``llava.eval.inference`` with a pruning method."""

    is_simple = True

    def __init__(
        self,
        pretrained: str = DEFAULT_MODEL_PATH,
        pruning_method: str | None = None,
        visual_token_num: int | None = None,
        H: int | None = None,
        head_strategy: str | None = None,
        enable_dynamic_selection: bool = False,
        conv_mode: str = "vicuna_v1",
        image_aspect_ratio: str = "pad",
        device: str | None = None,
        dtype: str | None = None,
        **method_params: Any,
    ) -> None:
        super().__init__()
        method_params.pop("batch_size", None)  # lmms-eval may pass it; requests are answered one by one
        named = {"visual_token_num": visual_token_num, "heads": H, "head_strategy": head_strategy}
        method_params.update({name: value for name, value in named.items() if value is not None})
        method = DYNAMIC_SELECTION_METHOD if str(enable_dynamic_selection).lower() == "true" else pruning_method
        self.bundle = load_model_bundle(pretrained, method, method_params, device, dtype)
        self.settings = GenerationSettings(conv_mode=conv_mode, image_aspect_ratio=image_aspect_ratio)

    def _settings_for(self, gen_kwargs: dict[str, Any]) -> GenerationSettings:
        overrides = {
            name: gen_kwargs[name]
            for name in ("max_new_tokens", "temperature", "top_p", "num_beams")
            if gen_kwargs.get(name) is not None
        }
        return dataclasses.replace(self.settings, **overrides)

    def generate_until(self, requests: list[Any]) -> list[str]:
        """Answer each request ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)``."""
        replies = []
        for request in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            visuals = [visual for visual in doc_to_visual(self.task_dict[task][split][doc_id]) if visual is not None]
            images = [visuals[0].convert("RGB")] if visuals else None
            texts, _ = answer_batch(self.bundle, self._settings_for(gen_kwargs), [context], images)
            until = gen_kwargs.get("until") or []
            replies.append(truncate_at_stop_strings(texts[0], [until] if isinstance(until, str) else list(until)))
        return replies

    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        """Not supported: the pruning engine is evaluated on generation tasks."""
        raise NotImplementedError("llava_prune supports generate_until tasks only")

    def generate_until_multi_round(self, requests: list[Any]) -> list[str]:
        """Not supported (LLaVA-1.5 evaluation is single round)."""
        raise NotImplementedError("llava_prune supports single-round generate_until tasks only")
