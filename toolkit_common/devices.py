"""Devices and dtypes of the scripts, in one place: ``--device auto`` resolved (cuda, else mps, else cpu), the
clock synchronised before a timing is read (CUDA and MPS run asynchronously), peak memory per device, and a
check that a code path uses no operator Apple's MPS backend lacks.

* :func:`resolve_device` / :func:`device_problem`: ``auto`` -> ``cuda`` when ``torch.cuda.is_available()``,
  else ``mps`` when ``torch.backends.mps.is_available()``, else ``cpu``; an explicit device this machine lacks
  is a one-line problem (checked before any model loads).
* :func:`synchronize`: waits for the device's queued kernels (no-op on the CPU). Every timer of the project
  (``kvcompress.evaluation.timing``, ``bench.timing``, the bench scripts) calls it around its clock reads.
* :class:`PeakDeviceMemory`: ``torch.cuda.max_memory_allocated`` since the block began on CUDA; on MPS, which
  has no peak counter, the driver's allocated bytes at the block's end after emptying the allocator cache at
  its start (the caching allocator keeps what the block freed, so this bounds the block's peak of live
  tensors from above; ``torch.mps.current_allocated_memory`` is recorded beside it); ``None`` on the CPU,
  where callers measure the process RSS (``kvcompress.evaluation.timing.PeakMemory``).
* :func:`mps_missing_ops` / :class:`RaiseOnMpsMissingOps`: which ``aten`` operators run on a CPU code path
  have no MPS kernel, read from the ``native_functions.yaml`` that ships with this torch (``torchgen``): an
  operator is MPS-ready when its dispatch table (or that of its structured delegate) names ``MPS`` or a
  composite kernel. ``float64`` / complex tensors are refused too (MPS has no float64), where asked. Run a
  script's whole path under the operator check with ``TOOLKIT_CHECK_MPS_OPS=1``
  (``toolkit_common.script_args.apply_execution_flags`` enters it); ``tests/kvcompress/test_devices.py`` runs
  the kvcompress default path under it. On a Mac, ``PYTORCH_ENABLE_MPS_FALLBACK=1`` runs an operator MPS
  lacks on the CPU instead of failing (slow, but it runs).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from pathlib import Path

import torch

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("float32", "bfloat16", "float16")
MPS_CHECK_ENV = "TOOLKIT_CHECK_MPS_OPS"
"""Set to ``1`` to run a script's whole path under :class:`RaiseOnMpsMissingOps` (on any device)."""


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str | None = "auto") -> torch.device:
    """``auto`` (or ``None``): cuda when available, else mps when available, else cpu; other names as given."""
    if name in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    return torch.device(name)


def device_problem(name: str | None) -> str | None:
    """Why ``--device name`` cannot run on this machine (one line), or None."""
    if name in (None, "auto", "cpu"):
        return None
    kind = name.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only torch build" if torch.version.cuda is None else "no visible GPU"
        return f"--device {name}: CUDA is not available here ({build}); valid here: auto, cpu"
    if kind == "mps" and not mps_available():
        return f"--device {name}: MPS is not available here (Apple silicon and macOS 12.3+ only); valid here: auto, cpu"
    if kind not in DEVICES:
        return f"--device {name}: unknown device; valid: {', '.join(DEVICES)}"
    return None


def dtype_of(name: str) -> torch.dtype:
    """``float32`` / ``bfloat16`` / ``float16`` -> the torch dtype."""
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; valid: {', '.join(DTYPES)}")
    return getattr(torch, name)


def synchronize(device: torch.device | str | None) -> None:
    """Wait until the device has run what was queued (CUDA, MPS); nothing on the CPU. Call before reading a clock."""
    kind = torch.device(device).type if device is not None else "cpu"
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()


class PeakDeviceMemory:
    """Peak accelerator memory of a block (see the module docstring); ``peak_bytes`` is None on the CPU.
    ``source`` names what was read: ``cuda_max_allocated``, ``mps_driver_allocated`` or ``None``."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.peak_bytes: int | None = None
        self.current_bytes: int | None = None
        self.source: str | None = None

    def __enter__(self) -> PeakDeviceMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.device.type == "mps":
            synchronize(self.device)
            torch.mps.empty_cache()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
            self.source = "cuda_max_allocated"
        elif self.device.type == "mps":
            synchronize(self.device)
            self.peak_bytes = torch.mps.driver_allocated_memory()
            self.current_bytes = torch.mps.current_allocated_memory()
            self.source = "mps_driver_allocated"


# --- operators Apple's MPS backend lacks ---------------------------------------------------------------------

COMPOSITE_KEYS = ("CompositeImplicitAutograd", "CompositeExplicitAutograd", "CompositeExplicitAutogradNonFunctional")
MPS_EQUIVALENTS = {
    # CompositeImplicit dispatchers pick a kernel by device; on the CPU they pick these, on MPS another one
    "_scaled_dot_product_flash_attention_for_cpu": "_scaled_dot_product_attention_math_for_mps",
    "_scaled_dot_product_flash_attention_for_cpu_backward": "_scaled_dot_product_attention_math_for_mps",
}
"""CPU-only kernels that a device-dispatching composite (``scaled_dot_product_attention``) chooses on the
CPU, and the MPS kernel the same call chooses on MPS (which must exist)."""
MPS_UNSUPPORTED_DTYPES = (torch.float64, torch.complex64, torch.complex128)


def native_functions_path() -> Path:
    import torchgen

    return Path(torchgen.__file__).parent / "packaged" / "ATen" / "native" / "native_functions.yaml"


@functools.cache
def _native_functions() -> dict[str, dict]:
    """``{"name.overload": entry}`` of this torch's ``native_functions.yaml`` (the overload ``default`` has no dot)."""
    import yaml

    entries = yaml.load(native_functions_path().read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return {entry["func"].split("(", 1)[0]: entry for entry in entries if isinstance(entry, dict) and "func" in entry}


def _dispatch_keys(entry: dict) -> set[str]:
    return {key.strip() for keys in (entry.get("dispatch") or {}) for key in keys.split(",")}


def op_runs_on_mps(name: str) -> bool | None:
    """Whether ``aten`` operator ``name`` (``"add.Tensor"``, ``"mm"``) has an MPS or a composite kernel in
    this torch's ``native_functions.yaml``; None for an operator the file does not list."""
    name = MPS_EQUIVALENTS.get(name, name)
    entries = _native_functions()
    entry = entries.get(name)
    if entry is None:
        return None
    seen = set()
    while entry is not None and id(entry) not in seen:
        seen.add(id(entry))
        keys = _dispatch_keys(entry)
        if "MPS" in keys or keys & set(COMPOSITE_KEYS):
            return True
        if "dispatch" not in entry and "structured_delegate" not in entry:
            return True  # no dispatch table: CompositeImplicitAutograd
        entry = entries.get(entry.get("structured_delegate", ""))
    return False


@functools.cache
def _lacks_mps(full_name: str) -> bool:
    namespace, _, name = full_name.rpartition("::")
    return namespace in ("", "aten") and op_runs_on_mps(name.removesuffix(".default")) is False


def mps_missing_ops(op_names: Iterable[str]) -> list[str]:
    """The ``aten`` operators of ``op_names`` (``"aten::add.Tensor"`` or ``"add.Tensor"``) that MPS lacks."""
    return [name for name in sorted(set(op_names)) if _lacks_mps(name)]


def _tensors(value) -> Iterable[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


class MpsOpError(RuntimeError):
    """An operator (or a dtype) on the checked path that Apple's MPS backend does not run."""


class RaiseOnMpsMissingOps(torch.utils._python_dispatch.TorchDispatchMode):
    """Inside the block every ``aten`` operator is checked as it runs (on any device, typically the CPU):
    one without an MPS kernel, or (``check_dtypes``) one producing a float64 / complex tensor, raises
    :class:`MpsOpError` naming it. ``seen`` holds every operator that ran (``"aten::mm"``, ...).

    ``check_dtypes=False`` for code that keeps float64 sums on the CPU on purpose (the attention statistics):
    on a CPU run a tensor that would live on the accelerator cannot be told from one kept on the host."""

    def __init__(self, allowed: Iterable[str] = (), check_dtypes: bool = True):
        super().__init__()
        self.allowed = set(allowed)
        self.check_dtypes = check_dtypes
        self.seen: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name()  # "aten::add.Tensor"
        self.seen.add(name)
        if name not in self.allowed and _lacks_mps(name):
            raise MpsOpError(f"{name} has no MPS kernel in torch {torch.__version__} (on a Mac, "
                             "PYTORCH_ENABLE_MPS_FALLBACK=1 runs it on the CPU)")
        out = func(*args, **(kwargs or {}))
        bad = [t.dtype for t in _tensors(out) if t.dtype in MPS_UNSUPPORTED_DTYPES] if self.check_dtypes else []
        if bad and name not in self.allowed:
            raise MpsOpError(f"{name} produced a {bad[0]} tensor: MPS has no {str(bad[0]).removeprefix('torch.')}")
        return out


def mps_check_requested() -> bool:
    """Whether ``TOOLKIT_CHECK_MPS_OPS`` asks to run under :class:`RaiseOnMpsMissingOps`."""
    return os.environ.get(MPS_CHECK_ENV, "") not in ("", "0")
