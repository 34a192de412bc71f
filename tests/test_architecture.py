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
    """The planner ``eval.sh`` / ``eval_head.sh`` run before any configuration, with METHODS / STRATEGIES unset."""
    for driver, mode, expected in (("eval.sh", "methods", "fastv"), ("eval_head.sh", "heads", "sparsity")):
        assert f"llava.eval.ablation_plan {mode}" in (ROOT / driver).read_text()
        command = [sys.executable, "-m", "llava.eval.ablation_plan", mode, "--model-path", "tiny-random-llava",
                   "--tokens", "64"]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert expected in done.stdout.split()


GENERIC_CODE = ("llava/model", "llava/pruning", "llava/eval")
METHODS_PACKAGE = "llava/pruning/methods"
COMPARISONS = (ast.Eq, ast.NotEq, ast.In, ast.NotIn)


def method_name_comparisons(source: str, method_names: set[str]) -> list[str]:
    """Comparisons in ``source`` of something that reads a method name against a literal method name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare) or not all(isinstance(op, COMPARISONS) for op in node.ops):
            continue
        operands = [node.left, *node.comparators]
        literals = {
            part.value
            for operand in operands
            for part in (operand.elts if isinstance(operand, ast.Tuple | ast.List | ast.Set) else [operand])
            if isinstance(part, ast.Constant) and isinstance(part.value, str)
        }
        reads_a_method_name = any(
            not isinstance(operand, ast.Constant)
            and ("method" in ast.unparse(operand).lower() or ast.unparse(operand).endswith(".name"))
            for operand in operands
        )
        if literals & method_names and reads_a_method_name:
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_generic_code_compares_no_method_name_with_a_literal():
    """A method's own cases live in its class (hooks the generic code calls: ``use_fast_v``,
    ``params_for_model``, ``pre_llm``, ...) or in its drop-in class (``drop_in.py``), never as
    ``if method.name == "fastv"`` in generic code.

    Scope: the engine, loader and wrappers (``llava/model/``), the algorithms and the registry outside the
    methods package (``llava/pruning/`` minus ``llava/pruning/methods/``, whose modules are the methods
    themselves) and the evaluation code (``llava/eval/``). Flagged: a comparison (``==``, ``!=``, ``in``,
    ``not in``) with a string literal that is a registered method's name (alone or in a tuple, list or set)
    on one side and, on another, an expression that reads a method name (its source mentions ``method`` or
    ends in ``.name``). Literals naming other things pass even when they spell a method's name
    (``convention == "fastv"`` is the FLOPs convention) and so do comparisons with non-method names
    (``token_selection_method == "max_head"``). Scripts, benches and the demo driver are outside the scope.
    """
    from llava.pruning.registry import available_methods

    names = set(available_methods())
    detector_cases = {
        'method.name == "fastv"': 1,
        'pruning_method != "random"': 1,
        'args.pruning_method not in (None, "fastv")': 1,
        'convention == "fastv"': 0,
        'token_selection_method == "max_head"': 0,
    }
    assert {case: len(method_name_comparisons(case, names)) for case in detector_cases} == detector_cases
    offenders = [
        f"{path.relative_to(ROOT)}:{hit}"
        for package in GENERIC_CODE
        for path in python_files(package)
        if not path.relative_to(ROOT).as_posix().startswith(f"{METHODS_PACKAGE}/")
        for hit in method_name_comparisons(path.read_text(), names)
    ]
    assert offenders == [], offenders
