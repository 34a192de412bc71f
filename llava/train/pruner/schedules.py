"""Schedules over training steps ``t`` in ``[0, T]`` (``s = min(t / T, 1)``), pure functions.

* Temperature, geometric: ``tau(t) = tau_0 * (tau_1 / tau_0) ** s`` (0.99 -> 0.4 by default).
* Loss weights, cosine: ``w(t) = w_1 + (w_0 - w_1) * (1 + cos(pi * s)) / 2`` (adversarial 1 -> 10).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Ramp:
    """A value going from ``start`` (step 0) to ``end`` (step ``total_steps`` and after)."""

    start: float
    end: float


def progress(step: int, total_steps: int) -> float:
    """``s = min(step / total_steps, 1)``."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    return min(step / total_steps, 1.0)


def annealed_temperature(ramp: Ramp, step: int, total_steps: int) -> float:
    """Geometric annealing ``tau_0 * (tau_1 / tau_0) ** s``."""
    return ramp.start * (ramp.end / ramp.start) ** progress(step, total_steps)


def cosine_weight(ramp: Ramp, step: int, total_steps: int) -> float:
    """Cosine ramp ``w_1 + (w_0 - w_1) * (1 + cos(pi s)) / 2``."""
    return ramp.end + (ramp.start - ramp.end) * (1.0 + math.cos(math.pi * progress(step, total_steps))) / 2.0
