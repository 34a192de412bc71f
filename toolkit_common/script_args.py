"""The flags the kvcompress scripts and the bench scripts share, declared once: argparse parent parsers
(``argparse.ArgumentParser(parents=[...])``) and the one function that applies them.

    parser = argparse.ArgumentParser(parents=[threads_flag(), model_flag(), text_flag(DEFAULT_TEXT),
                                              out_flag(help="..."), execution_flags()])
    args = parser.parse_args(argv)
    check_execution_flags(parser, args)          # before any work: an unavailable --device is one line, exit 2
    execution = apply_execution_flags(args)      # threads set; execution.device / .dtype for loading the model
    metadata.update(execution.metadata())        # {"device": "cpu", "dtype": "bfloat16", "threads": 2}

Each builder takes the default (and help) a script had before, so every script keeps its flag's name, default
and behaviour: ``--threads`` (torch's CPU threads; ``None`` leaves torch's default), ``--model`` (``smollm2``
by default), ``--text`` (the WikiText-2 file the script reads), ``--out``, and ``--device`` /
``--dtype`` (``toolkit_common.devices``: ``auto`` = cuda, else mps, else cpu; float32 by default).
``--torch-dtype`` / ``--torch_dtype`` are accepted for ``--dtype``, LLaVA's evaluation scripts' spelling.
"""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from toolkit_common.cli import setting_error
from toolkit_common.devices import (
    DEVICES,
    DTYPES,
    RaiseOnMpsMissingOps,
    device_problem,
    dtype_of,
    mps_check_requested,
    resolve_device,
)

_exit_stack = contextlib.ExitStack()  # holds the process-wide MPS operator check (TOOLKIT_CHECK_MPS_OPS=1)


def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


def threads_flag(default: int | None = None, help: str | None = None) -> argparse.ArgumentParser:
    """``--threads N``: torch's CPU threads (``default`` None: torch's own default)."""
    parser = _parent()
    parser.add_argument("--threads", type=int, default=default,
                        help=help or ("CPU threads (default: torch's)" if default is None else f"CPU threads (default {default})"))
    return parser


def model_flag(default: str = "smollm2", help: str | None = None) -> argparse.ArgumentParser:
    """``--model NAME``: ``smollm2`` (offline GGUF), ``neox-wikitext`` (shipped), a hub id or a local folder."""
    parser = _parent()
    parser.add_argument("--model", default=default,
                        help=help or "smollm2 (offline GGUF), neox-wikitext (shipped) or a hub id / folder")
    return parser


def text_flag(default: str | Path, type: type = str, help: str | None = None) -> argparse.ArgumentParser:
    """``--text PATH``: the text file the script reads (each passes its WikiText-2 file; ``type`` str or Path)."""
    parser = _parent()
    parser.add_argument("--text", type=type, default=type(default), help=help or "text file (default: WikiText-2 test)")
    return parser


def out_flag(default: Any = None, type: type = str, help: str | None = None,
             required: bool = False) -> argparse.ArgumentParser:
    """``--out PATH``: where the results go."""
    parser = _parent()
    kwargs: dict[str, Any] = {"required": True} if required else {"default": default}
    parser.add_argument("--out", type=type, help=help, **kwargs)
    return parser


def execution_flags(device: str = "auto", dtype: str = "float32") -> argparse.ArgumentParser:
    """``--device {auto,cpu,cuda,mps}`` and ``--dtype {float32,bfloat16,float16}`` (alias ``--torch-dtype``)."""
    parser = _parent()
    parser.add_argument("--device", default=device, metavar="{" + ",".join(DEVICES) + "}",
                        help="where the model runs: auto = cuda when available, else mps, else cpu (cuda:N works too; "
                             f"default {device})")
    parser.add_argument("--dtype", "--torch-dtype", "--torch_dtype", dest="dtype", default=dtype, choices=DTYPES,
                        help=f"weights and activations (default {dtype})")
    return parser


@dataclass(frozen=True)
class Execution:
    """Where and how a script computes, resolved from its flags."""

    device: torch.device
    dtype: torch.dtype
    threads: int

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def metadata(self) -> dict[str, Any]:
        """``{"device": "cuda:0" | "cpu" | ..., "dtype": "bfloat16", "threads": N}`` for a result's metadata."""
        return {"device": str(self.device), "dtype": self.dtype_name, "threads": self.threads}


def execution_problem(args: argparse.Namespace) -> str | None:
    """Why ``--device`` cannot run here (one line), or None."""
    return device_problem(getattr(args, "device", None))


def check_execution_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``setting_error`` (one line, exit 2) when ``--device`` names a device this machine lacks."""
    if problem := execution_problem(args):
        setting_error(parser, problem)


def apply_execution_flags(args: argparse.Namespace) -> Execution:
    """Apply the shared flags: ``torch.set_num_threads(--threads)`` when given, ``--device`` resolved
    (``auto``), ``--dtype`` as a torch dtype. With ``TOOLKIT_CHECK_MPS_OPS=1`` the rest of the process runs
    under ``toolkit_common.devices.RaiseOnMpsMissingOps`` (an operator MPS lacks raises, on any device; float64
    is not checked there, since the statistics keep float64 sums on the CPU on purpose)."""
    threads = getattr(args, "threads", None)
    if threads:
        torch.set_num_threads(threads)
    execution = Execution(resolve_device(getattr(args, "device", "auto")), dtype_of(getattr(args, "dtype", "float32")),
                          torch.get_num_threads())
    if mps_check_requested():
        _exit_stack.enter_context(RaiseOnMpsMissingOps(check_dtypes=False))
    return execution
