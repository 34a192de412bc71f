"""A stopwatch for a region of device work that never synchronises where it runs; the time is read later.

* CUDA: ``start`` / ``stop`` record a ``torch.cuda.Event(enable_timing=True)`` each on the device's current
  stream, which costs no synchronisation; the time is the GPU's between the two events
  (``start_event.elapsed_time(end_event)``), read on the first ``elapsed_ms``, which waits for the end event
  then (``Event.synchronize``), i.e. when a reader asks, not inside the timed code.
* Every other device: ``time.perf_counter`` at ``start`` and ``stop`` (on the CPU the work is done when the
  region returns; on MPS, which runs asynchronously too, this is the time to queue the work).

Usage (the pruning engine times each selection with it, ``llava.pruning.record.StageRecord.selection_ms``)::

    with Stopwatch(device) as watch:
        ...                      # queue the work
    ...
    watch.elapsed_ms             # read (CUDA: synchronises the end event) when needed
"""

from __future__ import annotations

import time
from typing import Any

import torch


class Stopwatch:
    """Elapsed milliseconds of the work between ``start()`` and ``stop()`` on ``device``, read lazily."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device("cpu" if device is None else device)
        self._start: Any = None
        self._end: Any = None
        self._elapsed_ms: float | None = None

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"

    def _mark(self) -> Any:
        if not self.on_cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    def start(self) -> Stopwatch:
        """Begin timing (CUDA: an event recorded on the current stream; no synchronisation)."""
        self._start, self._end, self._elapsed_ms = self._mark(), None, None
        return self

    def stop(self) -> Stopwatch:
        """End timing (CUDA: an event recorded on the current stream; no synchronisation)."""
        if self._start is None:
            raise RuntimeError("Stopwatch.stop() before start()")
        self._end = self._mark()
        return self

    def __enter__(self) -> Stopwatch:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def elapsed_ms(self) -> float:
        """Milliseconds from ``start`` to ``stop``; on CUDA the first read waits for the end event (then cached)."""
        if self._elapsed_ms is None:
            if self._end is None:
                raise RuntimeError("Stopwatch read before stop()")
            if self.on_cuda:
                self._end.synchronize()
                self._elapsed_ms = float(self._start.elapsed_time(self._end))
            else:
                self._elapsed_ms = (self._end - self._start) * 1000.0
        return self._elapsed_ms

    def __repr__(self) -> str:
        state = "running" if self._end is None and self._elapsed_ms is None else "stopped"
        return f"Stopwatch(device={str(self.device)!r}, {state})"
