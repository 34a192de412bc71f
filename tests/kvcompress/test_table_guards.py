"""Tables that must not mislead: ``bench.query_agnostic --table-only`` never writes an empty table over
results, and ``scripts/benchmark.py`` always compares kvcompress methods with ``full_kvcompress``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from bench import query_agnostic
from bench.query_agnostic_table import save_merged

ROOT = Path(__file__).resolve().parents[2]
CLASSIFICATION = ROOT / "docs" / "kvcompress_results" / "head_classification_gates_w128.json"


def shipped_results(folder: Path) -> dict[str, str]:
    """A results folder as shipped (tables, no rows) and its contents."""
    folder.mkdir(parents=True)
    contents = {"results.md": "| method |\n|---|\n| ours: full |\n", "results.json": '{"lines": [1]}'}
    for name, text in contents.items():
        (folder / name).write_text(text)
    return contents


def test_table_only_without_rows_warns_and_leaves_the_results_alone(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "query_agnostic"
    contents = shipped_results(out)
    model = tmp_path / "model"
    model.mkdir()
    query_agnostic.main(["--table-only", "--out", str(out), "--model", str(model), "--classification",
                         str(CLASSIFICATION), "--ppl-windows", "0"])
    assert "nothing to merge" in capsys.readouterr().err
    assert {path.name: path.read_text() for path in out.iterdir()} == contents


def test_merging_no_rows_writes_nothing(tmp_path: Path) -> None:
    contents = shipped_results(tmp_path / "out")
    assert save_merged([], ["passkey_1000"], None, {}, tmp_path / "out") is None
    assert {path.name: path.read_text() for path in (tmp_path / "out").iterdir()} == contents


def benchmark_script():
    """``scripts/benchmark.py`` as a module."""
    spec = importlib.util.spec_from_file_location("benchmark_script", ROOT / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("methods", "expected"), [
    (["full", "dead@gates"], ["full", "full_kvcompress", "dead@gates"]),
    (["snapkv", "full"], ["snapkv", "full", "full_kvcompress"]),
    (["positional@gates"], ["full_kvcompress", "positional@gates"]),
    (["full"], ["full"]),
    (["full", "full_kvcompress", "dead"], ["full", "full_kvcompress", "dead"]),
])
def test_benchmark_adds_full_kvcompress_when_a_kvcompress_method_is_compared(methods: list[str], expected: list[str],
                                                                             capsys: pytest.CaptureFixture) -> None:
    assert benchmark_script().with_kvcompress_control(methods) == expected
    assert ("added full_kvcompress" in capsys.readouterr().err) == (expected != methods)


def test_benchmark_parse_args_adds_the_control(capsys: pytest.CaptureFixture) -> None:
    args = benchmark_script().parse_args(["--model", "EleutherAI/pythia-70m", "--classification", f"gates={CLASSIFICATION}",
                                          "--methods", "full", "dead@gates"])
    assert args.methods == ["full", "full_kvcompress", "dead@gates"]
