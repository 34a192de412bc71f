"""Devices and dtypes (``toolkit_common.devices``): ``--device auto``, the one synchronising timer helper, peak
memory per device, and the kvcompress default path checked for operators Apple's MPS backend lacks (run on
the CPU: every ``aten`` operator that runs must have an MPS kernel in this torch's ``native_functions.yaml``,
and the model paths must create no float64 tensor)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from kvcompress.adapters import adapter_for
from kvcompress.analysis.calibration import CalibrationSet, measure_intervention, reference_outputs
from kvcompress.analysis.collector import collect_head_statistics
from kvcompress.analysis.gates import GateTrainingConfig, train_gates
from kvcompress.classification import HeadClassification
from kvcompress.evaluation.perplexity import strided_perplexity
from kvcompress.evaluation.query_agnostic import query_agnostic_generate
from kvcompress.evaluation.timing import PeakMemory, greedy_generate
from kvcompress.methods.dead_heads import DeadHeadPruner
from kvcompress.methods.registry import METHODS, MethodSettings, build_method
from toolkit_common import devices
from toolkit_common.devices import MpsOpError, RaiseOnMpsMissingOps, mps_missing_ops, op_runs_on_mps

from .conftest import VOCAB, tiny_gpt_neox, tiny_llama

ROOT = Path(__file__).resolve().parents[2]
needs_native_functions = pytest.mark.skipif(not devices.native_functions_path().is_file(),
                                            reason="this torch ships no torchgen native_functions.yaml")


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "mps_available", lambda: False)
    assert devices.resolve_device("auto") == torch.device("cpu") == devices.resolve_device(None)
    monkeypatch.setattr(devices, "mps_available", lambda: True)
    assert devices.resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.resolve_device("auto") == torch.device("cuda")
    assert devices.resolve_device("cpu") == torch.device("cpu")


def test_device_problems_are_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "mps_available", lambda: False)
    assert devices.device_problem("auto") is None and devices.device_problem("cpu") is None
    assert devices.device_problem("cuda:1").startswith("--device cuda:1: CUDA is not available here")
    assert "MPS is not available here" in devices.device_problem("mps")
    assert "unknown device" in devices.device_problem("tpu")
    assert devices.dtype_of("bfloat16") is torch.bfloat16
    with pytest.raises(ValueError, match="valid: float32, bfloat16, float16"):
        devices.dtype_of("float64")


def test_synchronize_waits_on_cuda_and_mps_and_not_on_the_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(("cuda", device)))
    monkeypatch.setattr(torch.mps, "synchronize", lambda: calls.append(("mps", None)))
    devices.synchronize(torch.device("cpu"))
    devices.synchronize("cuda:0")
    devices.synchronize(torch.device("mps"))
    assert calls == [("cuda", "cuda:0"), ("mps", None)]


def test_one_synchronising_helper_serves_every_timer():
    """No timer of the scripts, bench or kvcompress calls the backends' synchronize itself."""
    pattern = re.compile(r"torch\.(cuda|mps)\.synchronize")
    offenders = [str(path.relative_to(ROOT)) for folder in ("kvcompress", "bench", "scripts")
                 for path in (ROOT / folder).rglob("*.py") if pattern.search(path.read_text(encoding="utf-8"))]
    assert offenders == []


def test_peak_memory_reads_each_device_s_counter(monkeypatch):
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 123)
    with PeakMemory(torch.device("cuda")) as cuda:
        pass
    assert (cuda.peak_bytes, cuda.source) == (123, "cuda_max_allocated")
    monkeypatch.setattr(torch.mps, "synchronize", lambda: None)
    monkeypatch.setattr(torch.mps, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 456)
    monkeypatch.setattr(torch.mps, "current_allocated_memory", lambda: 78)
    with PeakMemory(torch.device("mps")) as mps:
        pass
    assert (mps.peak_bytes, mps.source) == (456, "mps_driver_allocated")


# --- operators MPS lacks -------------------------------------------------------------------------------------


@needs_native_functions
def test_the_check_knows_what_mps_runs_and_what_it_lacks():
    assert op_runs_on_mps("mm") and op_runs_on_mps("add.Tensor")  # an MPS kernel; a structured delegate's
    assert op_runs_on_mps("_scaled_dot_product_flash_attention_for_cpu")  # SDPA picks the math kernel on MPS
    assert op_runs_on_mps("_linalg_eigh") is False and op_runs_on_mps("no_such_op") is None
    assert mps_missing_ops(["aten::mm", "aten::_linalg_eigh", "prims::whatever"]) == ["aten::_linalg_eigh"]
    with pytest.raises(MpsOpError, match="aten::_linalg_eigh.* has no MPS kernel"), RaiseOnMpsMissingOps():
        torch.linalg.eigh(torch.eye(3))
    with pytest.raises(MpsOpError, match="MPS has no float64"), RaiseOnMpsMissingOps():
        torch.zeros(2, dtype=torch.float64)


def classification_for(model) -> HeadClassification:
    """One dead head per layer (not the last KV group's) and the last KV group positional."""
    shape = adapter_for(model).model_shape(model)
    labels = [["gathering"] * shape.num_query_heads for _ in range(shape.num_layers)]
    for layer in range(shape.num_layers):
        labels[layer][0] = "dead"
        for head in shape.query_heads_of(shape.num_kv_heads - 1):
            labels[layer][head] = "positional"
    return HeadClassification(shape, labels, "test")


@needs_native_functions
@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt_neox], ids=["llama", "gpt_neox"])
def test_the_default_path_uses_no_operator_or_dtype_mps_lacks(build):
    """Every registered method: greedy generation on its cache, strided perplexity, the query-agnostic protocol;
    then the analysis (statistics, a calibration intervention, two gate steps), all on the CPU under the check."""
    model = build(layers=2)
    torch.manual_seed(2)
    ids = torch.randint(0, VOCAB, (1, 40))
    classification = classification_for(model)
    with RaiseOnMpsMissingOps() as check:
        for name in METHODS:
            method = build_method(name, MethodSettings(classification, sinks=2, window=8, context_length=40))
            with method.apply(model) as handle:
                greedy_generate(model, ids, 2, handle.new_cache())
                strided_perplexity(model, ids[0], handle.new_cache, max_length=32, stride=16, progress=False)
                query_agnostic_generate(model, ids[:, :34], ids[:, 34:], 2, handle.new_cache())
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in check.seen or "aten::bmm" in check.seen
    calibration = CalibrationSet([ids[:, :32]], [])
    with RaiseOnMpsMissingOps(check_dtypes=False):  # the statistics keep float64 sums on the CPU on purpose
        collect_head_statistics(model, [ids], chunk_rows=16, progress=False)
        reference = reference_outputs(model, calibration)
        measure_intervention(model, DeadHeadPruner([(0, 1)]), calibration, reference)
        train_gates(model, calibration, GateTrainingConfig(sinks=2, window=8, steps=2, head_penalty=0.01),
                    progress=False)


# --- the shared flags ----------------------------------------------------------------------------------------


def test_the_shared_flags_keep_each_script_s_defaults_and_apply_in_one_place(monkeypatch):
    import argparse
    import importlib.util

    from bench import query_agnostic
    from toolkit_common.script_args import Execution, apply_execution_flags, execution_flags, threads_flag

    spec = importlib.util.spec_from_file_location("defaults_benchmark", ROOT / "scripts" / "benchmark.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    hub = ["--model", "EleutherAI/pythia-70m"]
    args = benchmark.parse_args(hub)
    assert (args.threads, args.device, args.dtype, args.out, args.model) == (None, "auto", "float32", None,
                                                                          "EleutherAI/pythia-70m")
    gates = ROOT / "docs" / "kvcompress_results" / "head_classification_gates_w128.json"
    args = query_agnostic.parse_args([*hub, "--classification", str(gates), "--torch-dtype", "bfloat16"])
    assert (args.threads, args.dtype) == (1, "bfloat16")

    parser = argparse.ArgumentParser(parents=[threads_flag(2), execution_flags()])
    threads = torch.get_num_threads()
    try:
        execution = apply_execution_flags(parser.parse_args(["--threads", "1", "--dtype", "float16", "--device", "cpu"]))
        assert execution == Execution(torch.device("cpu"), torch.float16, 1) and torch.get_num_threads() == 1
        assert execution.metadata() == {"device": "cpu", "dtype": "float16", "threads": 1}
    finally:
        torch.set_num_threads(threads)
