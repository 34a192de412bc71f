"""Structure the engine promises: every module imports on its own, one decoder loop, public names only,
and the drivers' default method listings work in a fresh process."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("llava", "kvcompress", "bench", "toolkit_common")
OPTIONAL_DEPENDENCIES = {"llava.eval.lmms_eval_plugin": "lmms_eval"}  # an extra (pip install -e ".[lmms]")

ISOLATED_IMPORTS = r"""
import importlib, os, sys, traceback
import torch, transformers  # heavy third-party imports once; each child then imports one of our modules
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name.split(".")[0] in ("llava", "kvcompress", "bench", "toolkit_common"):
                traceback.print_exc()
                os._exit(1)
            print(f"OPTIONAL {name} {error.name.split('.')[0]}", flush=True)
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        print(f"FAILED {name}", flush=True)
"""


def module_names() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_module_imports_alone_in_a_fresh_interpreter():
    """A forked child per module, with none of our modules loaded before it: an import circle fails here."""
    done = subprocess.run(
        [sys.executable, "-c", ISOLATED_IMPORTS, *module_names()], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert "FAILED" not in done.stdout, done.stdout + done.stderr
    optional = [line.split()[1:] for line in done.stdout.splitlines() if line.startswith("OPTIONAL")]
    assert all(OPTIONAL_DEPENDENCIES.get(module) == dependency for module, dependency in optional), optional


def python_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_exactly_one_loop_over_decoder_layers_in_llava():
    loops = []
    for path in python_files("llava"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.For | ast.comprehension) and any(
                isinstance(part, ast.Attribute) and part.attr == "layers" for part in ast.walk(node.iter)
            ):
                loops.append(f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}")
    assert len(loops) == 1 and loops[0].startswith("llava/model/language_model/pruning_llama.py"), loops


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for package in PACKAGES:
        for path in python_files(package):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES:
                    offenders += [
                        f"{path.relative_to(ROOT)}: {node.module}.{alias.name}"
                        for alias in node.names
                        if alias.name.startswith("_") and not alias.name.startswith("__")
                    ]
    assert offenders == []


def test_kvcompress_does_not_import_llava():
    imports = [
        f"{path.relative_to(ROOT)}: {line.strip()}"
        for path in python_files("kvcompress")
        for line in path.read_text().splitlines()
        if re.match(r"\s*(from|import) llava\b", line)
    ]
    assert imports == []


def test_ablation_drivers_default_listings_run_in_a_fresh_process():
    """The ``python -c`` lines ``eval.sh`` and ``eval_head.sh`` run when METHODS / STRATEGIES are unset."""
    for script, expected in (("eval.sh", "fastv"), ("eval_head.sh", "sparsity")):
        code = re.search(r"\"\$PYTHON\" -c '([^']+)'", (ROOT / script).read_text()).group(1)
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert expected in done.stdout.split()
