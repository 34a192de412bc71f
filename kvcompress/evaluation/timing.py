"""Latency, memory and FLOPs measurements for greedy generation.

* TTFT: wall time of the prefill forward plus the first token's argmax.
* TPOT: mean wall time of one decoding step afterwards; throughput = new tokens / total time. Every clock
  read is preceded by ``toolkit_common.devices.synchronize`` (CUDA and MPS queue their kernels).
* Peak memory (``PeakMemory``; ``source`` says which): ``torch.cuda.max_memory_allocated`` on CUDA; on MPS the
  driver's allocated bytes at the end of the block after emptying the allocator cache at its start (MPS has
  no peak counter; ``toolkit_common.devices.PeakDeviceMemory``); on Linux CPU the process peak RSS (``VmHWM``)
  since the block began - it includes the weights and the runtime. Writing ``5`` to ``/proc/self/clear_refs``
  resets ``VmHWM`` to the current RSS (Linux >= 4.0), so several methods are measured apart in one process:
  checked by allocating and freeing 1 GiB, resetting, and allocating 64 MiB (peak = RSS + 64 MiB, not + 1 GiB;
  ``tests/kvcompress/test_evaluation.py``). Memory a previous method freed but the C allocator kept would
  still count, so the block first collects garbage and asks glibc to return free memory (``malloc_trim``);
  ``start_bytes`` is the RSS the block began at. Where the reset is refused the peak is ``None``.
* Prefill FLOPs (analytic): ``2·N·Σ_linear (in·out)`` plus ``4·N²·D`` per query head and layer
  (``QK^T`` and ``PV`` as the SDPA math kernel computes them).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers.cache_utils import Cache

from kvcompress.adapters import adapter_for
from kvcompress.cache import kv_cache_bytes
from toolkit_common.devices import PeakDeviceMemory, synchronize
from toolkit_common.transformers_compat import cache_kwargs


@dataclass
class GenerationTiming:
    new_tokens: torch.Tensor  # [1, T]
    ttft_s: float
    tpot_s: float
    total_s: float
    kv_bytes: int


def greedy_generate(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int, cache: Cache) -> GenerationTiming:
    """Greedy decoding with an explicit loop (one prefill, then one token per step) and its timings."""
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    tokens, step_times = [], []
    with torch.no_grad():
        synchronize(device)
        start = time.perf_counter()
        logits = model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **cache_kwargs(cache)).logits[:, -1]
        token = logits.argmax(-1, keepdim=True)
        synchronize(device)
        ttft = time.perf_counter() - start
        tokens.append(token)
        for _ in range(max_new_tokens - 1):
            step = time.perf_counter()
            logits = model(input_ids=token, use_cache=True, **cache_kwargs(cache)).logits[:, -1]
            token = logits.argmax(-1, keepdim=True)
            synchronize(device)
            step_times.append(time.perf_counter() - step)
            tokens.append(token)
        total = time.perf_counter() - start
    tpot = sum(step_times) / len(step_times) if step_times else float("nan")
    return GenerationTiming(torch.cat(tokens, 1), ttft, tpot, total, kv_cache_bytes(cache))


class PeakMemory:
    """Context manager measuring peak memory in bytes (``None`` where it cannot be measured); see the module
    docstring. ``start_bytes``: the RSS when the block began (CPU). ``source``: ``cuda_max_allocated``,
    ``mps_driver_allocated`` or ``cpu_peak_rss`` (None where nothing was measured)."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.peak_bytes: int | None = None
        self.start_bytes: int | None = None
        self.source: str | None = None
        self._reset = False
        self._accelerator = PeakDeviceMemory(self.device) if self.device.type in ("cuda", "mps") else None

    def __enter__(self) -> PeakMemory:
        if self._accelerator is not None:
            self._accelerator.__enter__()
            return self
        gc.collect()
        release_free_memory()
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")
            self._reset = True
        self.start_bytes = process_memory().get("VmRSS")
        return self

    def __exit__(self, *exc_info) -> None:
        if self._accelerator is not None:
            self._accelerator.__exit__(*exc_info)
            self.peak_bytes, self.source = self._accelerator.peak_bytes, self._accelerator.source
        elif self._reset:
            self.peak_bytes = process_memory().get("VmHWM")
            self.source = "cpu_peak_rss" if self.peak_bytes is not None else None


def process_memory() -> dict[str, int]:
    """``VmRSS`` / ``VmHWM`` of this process in bytes, from ``/proc/self/status`` (empty where absent)."""
    status = Path("/proc/self/status")
    if not status.exists():
        return {}
    return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in status.read_text().splitlines()
            if line.startswith(("VmRSS:", "VmHWM:"))}


def release_free_memory() -> None:
    """Ask glibc to give freed heap memory back to the system (``malloc_trim(0)``); a no-op elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def rotated(names: list[str], round_index: int) -> list[str]:
    """``names`` rotated left by ``round_index`` places: the run order of one round of side-by-side
    timing, so that no method always runs first (right after a warm cache or an idle spell)."""
    shift = round_index % len(names)
    return names[shift:] + names[:shift]


def prefill_flops(model: nn.Module, tokens: int) -> int:
    """Analytic prefill FLOPs for ``tokens`` tokens (see module docstring)."""
    linear = sum(module.in_features * module.out_features for module in model.modules()
                 if isinstance(module, nn.Linear))
    adapter = adapter_for(model)
    attention = sum(4 * tokens * tokens * adapter.head_dim(module) * adapter.num_query_heads(module)
                    for module in adapter.attention_modules(model))
    return 2 * tokens * linear + attention
