"""Every kvcompress entry point and bench script runs with ``--dtype bfloat16 --device cpu`` on a tiny GPT-NeoX
saved to a folder (``--model PATH``), loads the model in bfloat16 and records device and dtype in its output."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
import torch
from transformers import GPTNeoXForCausalLM

from kvcompress.adapters import adapter_for
from kvcompress.classification import HeadClassification
from kvcompress.models.wikitext_neox import neox_config, train_tokenizer

ROOT = Path(__file__).resolve().parents[2]
BF16 = ["--dtype", "bfloat16", "--device", "cpu", "--threads", "1"]
SMALL_QUALITY = ["--ppl-max-length", "64", "--ppl-stride", "32", "--ppl-windows", "1", "--passkey-len", "150",
                 "--passkey-prompts", "1"]


def script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"device_script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A 2-layer GPT-NeoX with a trained byte-level BPE in a folder, a text, and a ranked classification."""
    root = tmp_path_factory.mktemp("tiny_neox")
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", "from", "home", "."]
    text = root / "text.txt"
    text.write_text("".join(" ".join(words[(i * 7 + j) % len(words)] for j in range(12)) + "\n" for i in range(200)),
                    encoding="utf-8")
    tokenizer = train_tokenizer(text, 300)
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(neox_config(len(tokenizer), 32, 2, 4, bos_token_id=tokenizer.bos_token_id,
                                           eos_token_id=tokenizer.eos_token_id))
    folder = root / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    shape = adapter_for(model).model_shape(model)
    labels = [["gathering"] * shape.num_query_heads for _ in range(shape.num_layers)]
    labels[1][0] = "dead"
    costs = [[0.01 * (layer * shape.num_kv_heads + kv) for kv in range(shape.num_kv_heads)]
             for layer in range(shape.num_layers)]
    classification = root / "classification.json"
    HeadClassification(shape, labels, "calibration", {"window_score": "window_cost"}, {"window_cost": costs}).save(
        classification)
    return {"model": folder, "text": text, "classification": classification, "root": root}


class LoadedDtypes(list):
    """The dtype of every model ``load_model_and_tokenizer`` (the scripts' one loader) returned to the modules
    passed to :meth:`watch` (the scripts under ``scripts/`` are executed afresh, so they see the patched loader)."""

    def __init__(self, monkeypatch):
        super().__init__()
        from kvcompress.models import loading

        self.monkeypatch, self.original = monkeypatch, loading.load_model_and_tokenizer
        self.watch(loading)

    def load(self, name, dtype=torch.float32, device="cpu"):
        model, tokenizer = self.original(name, dtype, device)
        self.append(next(model.parameters()).dtype)
        return model, tokenizer

    def watch(self, *modules: ModuleType) -> None:
        for module in modules:
            self.monkeypatch.setattr(module, "load_model_and_tokenizer", self.load)


@pytest.fixture
def loaded_dtypes(monkeypatch) -> LoadedDtypes:
    return LoadedDtypes(monkeypatch)


def test_analyze_attention_runs_in_bfloat16_and_records_it(tiny, tmp_path, loaded_dtypes):
    out = tmp_path / "analysis"
    script("analyze_attention").main([
        "--model", str(tiny["model"]), "--text", str(tiny["text"]), "--seq-len", "48", "--samples", "1",
        "--lengths", "32", "--chunk-rows", "16", "--out", str(out), "--calibrate", "--calibration-text",
        str(tiny["text"]), "--calibration-texts", "1", "--calibration-text-len", "32", "--calibration-prompts", "0",
        "--optimize-gates", "--gate-texts", "1", "--gate-text-len", "32", "--gate-prompts", "0", "--gate-steps", "2",
        "--local-window", "8", *BF16])
    assert loaded_dtypes == [torch.bfloat16]
    assert json.loads((out / "run.json").read_text())["dtype"] == "bfloat16"
    for name in ("head_classification.json", "head_classification_calibration.json", "head_classification_gates_w8.json"):
        parameters = json.loads((out / name).read_text())["parameters"]
        assert (parameters["dtype"], parameters["device"]) == ("bfloat16", "cpu"), name


def test_benchmark_runs_in_bfloat16_and_records_it(tiny, tmp_path, loaded_dtypes):
    out = tmp_path / "benchmark"
    script("benchmark").main([
        "--model", str(tiny["model"]), "--text", str(tiny["text"]), "--classification", f"c={tiny['classification']}",
        "--methods", "full", "positional+dead", "snapkv", "--window", "8", "--prompt-lens", "48",
        "--new-tokens", "3", "--warmup", "0", "--repeats", "1", "--out", str(out), *SMALL_QUALITY, *BF16])
    assert loaded_dtypes == [torch.bfloat16]
    results = json.loads((out / "results.json").read_text())
    assert (results["metadata"]["dtype"], results["metadata"]["device"]) == ("bfloat16", "cpu")
    assert [row["method"] for row in results["results"]] == ["full", "full_kvcompress", "positional+dead", "snapkv"]
    assert all("perplexity" in row and "peak_memory_source" in row for row in results["results"])


def test_kv_tradeoff_runs_in_bfloat16_and_records_it(tiny, tmp_path, loaded_dtypes):
    out = tmp_path / "tradeoff"
    script("kv_tradeoff").main([str(tiny["classification"]), "--model", str(tiny["model"]), "--text",
                                str(tiny["text"]), "--groups", "1", "--window", "8", "--methods", "positional+dead",
                                "--out", str(out), *SMALL_QUALITY, *BF16])
    assert loaded_dtypes == [torch.bfloat16]
    rows = [json.loads(line) for line in (out / "tradeoff.jsonl").read_text().splitlines()]
    assert {(row["dtype"], row["device"]) for row in rows} == {("bfloat16", "cpu")} and len(rows) == 2


def test_query_agnostic_bench_runs_in_bfloat16_and_records_it(tiny, tmp_path, loaded_dtypes):
    from bench import query_agnostic

    loaded_dtypes.watch(query_agnostic)
    out = tmp_path / "qa"
    query_agnostic.main(["--model", str(tiny["model"]), "--classification", str(tiny["classification"]),
                         "--text", str(tiny["text"]), "--groups", "1", "--window", "8", "--passkey-lens", "150",
                         "--passkey-prompts", "1", "--ppl-windows", "1", "--ppl-max-length", "64", "--ppl-stride",
                         "32", "--protocols", "query_agnostic", "--no-kvpress", "--out", str(out), *BF16])
    assert loaded_dtypes == [torch.bfloat16]
    metadata = json.loads((out / "results.json").read_text())["metadata"]
    assert (metadata["dtype"], metadata["device"]) == ("bfloat16", "cpu")
    rows = [json.loads(line) for line in (out / "rows_ours.jsonl").read_text().splitlines()]
    assert rows and {(row["dtype"], row["device"]) for row in rows} == {("bfloat16", "cpu")}


def test_head_removal_and_profile_benches_run_in_bfloat16(tiny, capsys, loaded_dtypes):
    from bench import head_removal, kvcompress_profile

    loaded_dtypes.watch(head_removal, kvcompress_profile)
    common = ["--model", str(tiny["model"]), "--text", str(tiny["text"]), *BF16]
    head_removal.main([str(tiny["classification"]), "--tokens", "32", "--repeats", "1", *common])
    kvcompress_profile.main(["--methods", "full", "dead", "--classification", f"c={tiny['classification']}",
                             "--tokens", "32", "--decode", "1", "--top", "2", *common])
    assert loaded_dtypes == [torch.bfloat16, torch.bfloat16]
    printed = capsys.readouterr().out
    assert printed.count("device=cpu dtype=bfloat16") == 2


def test_train_gpt_neox_trains_in_bfloat16_and_records_it(tiny, tmp_path):
    from kvcompress.train_gpt_neox import main as train_main

    out = tmp_path / "run"
    assert train_main(["--output-dir", str(out), "--train-text", str(tiny["text"]), "--test-text",
                       str(tmp_path / "absent.txt"), "--steps", "1", "--vocab-size", "300", "--hidden-size", "32",
                       "--heads", "4", "--layers", "1", "--seq-len", "32", "--batch-size", "2", "--eval-every", "1",
                       *BF16]) == 0
    run = json.loads((out / "runs.jsonl").read_text().splitlines()[-1])
    assert (run["dtype"], run["device"]) == ("bfloat16", "cpu")
    weights = torch.load(out / "last.pt", weights_only=True)["model"]
    assert {tensor.dtype for tensor in weights.values() if tensor.is_floating_point()} == {torch.bfloat16}


@pytest.mark.parametrize("entry", ["analyze_attention", "benchmark", "kv_tradeoff"])
def test_a_device_this_machine_lacks_is_a_one_line_setting_error(entry, tiny, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = [str(tiny["classification"]), "--groups", "1"] if entry == "kv_tradeoff" else []
    with pytest.raises(SystemExit) as stopped:
        script(entry).main([*argv, "--model", str(tiny["model"]), "--text", str(tiny["text"]), "--device", "cuda"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and len(lines) == 1 and "--device cuda: CUDA is not available here" in lines[0]
