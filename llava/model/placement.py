"""Where and how a model's weights are loaded: device, dtype, ``device_map``, attention kernel, 8-/4-bit.

LLaVA's ``load_pretrained_model`` arguments with LLaVA's defaults: CUDA and float16 when a GPU is there,
MPS (float16) on a Mac, else the CPU in float32; ``device_map`` spreads a model over several devices
(accelerate's hooks move each layer's inputs), ``load_8bit`` / ``load_4bit`` quantise the linear layers with
bitsandbytes (the ``quant`` extra), ``use_flash_attn`` picks ``flash_attention_2``. Every check here runs
before any weight is read.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import torch

from toolkit_common.devices import DTYPES, device_problem, dtype_of, resolve_device

ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
_KERNEL_PACKAGES = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}


@dataclass(frozen=True)
class Placement:
    """How to load one model: ``device`` and ``dtype`` resolved; the rest as ``from_pretrained`` takes it."""

    device: torch.device
    dtype: torch.dtype
    device_map: str | dict[str, Any] | None = None
    attn_implementation: str | None = None
    quantization: str | None = None  # "8bit" | "4bit"

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``from_pretrained`` (dtype, device map, attention kernel, quantisation)."""
        kwargs: dict[str, Any] = {"dtype": self.dtype}
        if self.device_map is not None:
            kwargs["device_map"] = self.device_map
        if self.attn_implementation is not None:
            kwargs["attn_implementation"] = self.attn_implementation
        if self.quantization is not None:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_8bit=self.quantization == "8bit",
                load_in_4bit=self.quantization == "4bit",
                bnb_4bit_compute_dtype=self.dtype,
                bnb_4bit_use_double_quant=True,
                bnb_4bit_quant_type="nf4",
            )
            kwargs.setdefault("device_map", {"": str(self.device)})
        return kwargs

    @property
    def dispatched(self) -> bool:
        """Whether accelerate places the weights (a device map or quantisation): no ``.to(device)`` after."""
        return self.device_map is not None or self.quantization is not None


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """``dtype`` as a ``torch.dtype``; ``None``: float16 on CUDA and MPS (LLaVA's default), float32 on the CPU."""
    if dtype is None or dtype == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype.removeprefix("torch.") not in DTYPES:
        raise ValueError(f"torch_dtype {dtype!r} is unknown; valid: {', '.join(DTYPES)}")
    return dtype_of(dtype.removeprefix("torch."))


def plan_placement(
    device: str | torch.device | None = None,
    torch_dtype: torch.dtype | str | None = None,
    device_map: str | dict[str, Any] | None = None,
    attn_implementation: str | None = None,
    use_flash_attn: bool = False,
    load_8bit: bool = False,
    load_4bit: bool = False,
) -> Placement:
    """Validate the loading arguments (one line per problem, before any weight is read)."""
    if isinstance(device, str) and (problem := device_problem(device)):
        raise ValueError(problem)
    resolved = resolve_device(device) if not isinstance(device, torch.device) else device
    dtype = resolve_dtype(torch_dtype, resolved)
    if use_flash_attn:
        if attn_implementation not in (None, "flash_attention_2"):
            raise ValueError(f"use_flash_attn=True asks for flash_attention_2, but attn_implementation={attn_implementation!r}")
        attn_implementation = "flash_attention_2"
    if attn_implementation is not None:
        if attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation {attn_implementation!r} is unknown; valid: {', '.join(ATTN_IMPLEMENTATIONS)}")
        package = _KERNEL_PACKAGES.get(attn_implementation)
        if package is not None and importlib.util.find_spec(package) is None:
            raise ValueError(
                f"attn_implementation={attn_implementation!r} needs the {package} package (pip install flash-attn"
                " --no-build-isolation, on a CUDA machine); sdpa is the default and needs nothing"
            )
        if package is not None and resolved.type != "cuda":
            raise ValueError(f"attn_implementation={attn_implementation!r} runs on CUDA only; this load is on {resolved.type}")
    if load_8bit and load_4bit:
        raise ValueError("load_8bit and load_4bit are exclusive: pick one")
    quantization = "8bit" if load_8bit else "4bit" if load_4bit else None
    if quantization is not None and importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(
            f"load_{quantization}=True needs bitsandbytes: pip install 'llava-prune[quant]' (or pip install bitsandbytes)"
        )
    if isinstance(device_map, str) and device_map not in ("auto", "balanced", "balanced_low_0", "sequential"):
        raise ValueError(f"device_map {device_map!r} is unknown; valid: auto, balanced, balanced_low_0, sequential, or a dict")
    return Placement(resolved, dtype, device_map, attn_implementation, quantization)
