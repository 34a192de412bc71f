"""Benchmark building blocks on tiny models: perplexity through the cache, greedy loop, registry, table."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import DynamicCache

from kvcompress.adapters import ModelShape
from kvcompress.classification import HeadClassification
from kvcompress.evaluation.benchmark import BenchmarkSettings, markdown_table, measure_quality, measure_speed
from kvcompress.evaluation.perplexity import strided_perplexity
from kvcompress.evaluation.speed_table import plot_ratios, ratio_table, ratios_by_length, report
from kvcompress.evaluation.text import split_windows
from kvcompress.evaluation.timing import PeakMemory, greedy_generate, prefill_flops, process_memory, rotated
from kvcompress.methods.dead_heads import DeadHeadPruner
from kvcompress.methods.registry import METHODS, MethodSettings, build_method, kv_fraction


def test_cached_perplexity_equals_direct_computation(tiny_model):
    torch.manual_seed(0)
    tokens = torch.randint(0, 90, (100,))
    result = strided_perplexity(tiny_model, tokens, DynamicCache, max_length=40, stride=20, progress=False)
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, 100 - 40 + 1, 20):
            window = tokens[start : start + 40][None]
            logits = tiny_model(window, use_cache=False).logits[0, 19:-1]
            nll += F.cross_entropy(logits, window[0, 20:], reduction="sum").item()
            count += 20
    assert result["tokens"] == count == 80
    assert result["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_greedy_loop_matches_uncached_argmax(tiny_model, input_ids):
    reference = input_ids[:1]
    with torch.no_grad():
        for _ in range(5):
            next_token = tiny_model(reference, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            reference = torch.cat([reference, next_token], 1)
    run = greedy_generate(tiny_model, input_ids[:1], 5, DynamicCache())
    assert torch.equal(run.new_tokens, reference[:, input_ids.shape[1]:])
    assert run.ttft_s > 0 and run.kv_bytes > 0


def test_prefill_flops_drop_in_proportion_to_removed_heads(tiny_model):
    full = prefill_flops(tiny_model, 64)
    with DeadHeadPruner([(0, 0), (1, 0)]).apply(tiny_model):
        pruned = prefill_flops(tiny_model, 64)
    assert pruned < full


def test_registry_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="valid methods: .*snapkv"):
        build_method("h2o", MethodSettings())
    with pytest.raises(ValueError, match="needs a head classification"):
        build_method("positional", MethodSettings())
    assert {"full", "full_kvcompress", "dead", "positional", "positional+dead", "streaming_llm", "snapkv"} <= set(METHODS)


def test_kv_fraction_formula():
    shape = ModelShape(2, 4, 2, 8)  # 4 KV groups
    labels = [["positional", "positional", "gathering", "gathering"], ["dead", "dead", "gathering", "dead"]]
    classification = HeadClassification(shape, labels, "test")
    # group (0,0) windowed: its ring of 4+64 = 68 of 1000; group (1,0) removed; 2 full groups
    assert kv_fraction(classification, 1000, 4, 64) == pytest.approx((2 * 1000 + 68) / 4000)
    assert kv_fraction(classification, 1000, 4, 64, with_dead=False) == pytest.approx((3 * 1000 + 68) / 4000)


def test_speed_side_by_side_quality_per_context_and_table(tiny_model):
    torch.manual_seed(0)
    tokens = torch.randint(0, 90, (200,))
    settings = BenchmarkSettings(tokens[None, :50], new_tokens=4, warmup=1, repeats=2, ppl_max_length=40,
                                 ppl_stride=20, ppl_max_windows=3)
    streaming_method = build_method("streaming_llm", MethodSettings(context_length=50, kv_fraction=0.5))
    speed = measure_speed(tiny_model, {"full": build_method("full", MethodSettings()),
                                       "streaming_llm": streaming_method}, settings)
    assert speed["streaming_llm"]["kv_bytes"] < speed["full"]["kv_bytes"]
    assert all(row["speed_repeats"] == 2 and row["ttft_s"] > 0 and row["tpot_s"] > 0 for row in speed.values())
    assert tiny_model.config._attn_implementation == "sdpa"  # every method was undone after its runs
    contexts = []

    def make_method(context):
        contexts.append(context)
        return build_method("streaming_llm", MethodSettings(context_length=context, kv_fraction=0.5))

    full = measure_quality(tiny_model, None, lambda context: build_method("full", MethodSettings()), settings,
                           tokens, [])
    streaming = measure_quality(tiny_model, None, make_method, settings, tokens, [])
    assert contexts == [20]  # the perplexity context (max_length - stride)
    assert streaming["perplexity"] != full["perplexity"]
    rows = [{"method": "full", **speed["full"], **full}, {"method": "streaming_llm", **speed["streaming_llm"], **streaming}]
    table = markdown_table(rows)
    assert table.count("\n") == 4 and "| streaming_llm |" in table and "TTFT vs full" in table


def test_split_windows_needs_enough_text():
    with pytest.raises(ValueError, match="need 3 windows"):
        split_windows(torch.arange(10), 4, 3)


def test_rotated_order_puts_every_method_first_once_per_cycle():
    names = ["full", "dead", "snapkv"]
    orders = [rotated(names, round_index) for round_index in range(4)]
    assert orders[:3] == [["full", "dead", "snapkv"], ["dead", "snapkv", "full"], ["snapkv", "full", "dead"]]
    assert orders[3] == orders[0] and all(sorted(order) == sorted(names) for order in orders)


def test_benchmark_quality_rows_depend_on_the_budget_only_for_baselines():
    import argparse
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "benchmark.py"
    spec = importlib.util.spec_from_file_location("benchmark_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = argparse.Namespace(model="m", sinks=4, window=128, text="t", ppl_max_length=512, ppl_stride=256,
                              ppl_windows=16, no_perplexity=False, passkey_len=1000, passkey_prompts=50)
    other_budget = argparse.Namespace(**vars(args), budget_from="positional+dead@gates", kv_fraction=None)
    assert script.quality_key("full", None, args, None) == script.quality_key("full", None, other_budget, None)
    assert script.quality_key("snapkv", None, args, 0.5) != script.quality_key("snapkv", None, args, 0.6)
    assert script.quality_key("full", None, args, None) != script.quality_key("full", None,
                                                                              argparse.Namespace(**{**vars(args), "window": 64}), None)


@pytest.mark.skipif(not process_memory(), reason="needs /proc/self/status (Linux)")
def test_peak_memory_is_reset_between_blocks_of_one_process():
    """A block that allocates 256 MiB peaks ~256 MiB above where it began; the next block, which allocates
    16 MiB after that memory was freed, does not inherit the earlier peak (VmHWM reset, not process lifetime)."""
    cpu = torch.device("cpu")
    with PeakMemory(cpu) as big:
        tensor = torch.ones(64 * 2**20)  # 256 MiB, written so that its pages are resident
        del tensor
    with PeakMemory(cpu) as small:
        tensor = torch.ones(4 * 2**20)  # 16 MiB
        del tensor
    if big.peak_bytes is None:
        pytest.skip("/proc/self/clear_refs refused the reset")
    assert big.peak_bytes - big.start_bytes >= 200 * 2**20
    assert small.peak_bytes - small.start_bytes < 100 * 2**20
    assert small.peak_bytes < big.peak_bytes - 150 * 2**20


def test_report_has_a_section_per_length_and_ratios_to_both_references():
    rows = [{"method": name, "prompt_tokens": length, "new_tokens": 64, "ttft_s": ttft * length,
             "tpot_s": tpot, "kv_bytes": kv * length, "peak_memory_bytes": 2**30}
            for length in (2048, 4096)
            for name, ttft, tpot, kv in (("full", 1.0, 0.10, 100), ("full_kvcompress", 1.0, 0.08, 100),
                                         ("positional+dead@gates", 0.8, 0.06, 50))]
    table = ratio_table(rows[:3])
    assert "| TTFT / full | TPOT / full | peak RSS / full | KV / full | TTFT / full_kvcompress |" in table
    assert "| positional+dead@gates | 0.80x | 0.60x | 1.00x | 0.50x | 0.80x | 0.75x | 1.00x | 0.50x |" in table
    text = report(rows)
    assert text.count("## prompt") == 2 and "## prompt 4096 tokens, 64 new tokens" in text
    assert "full_kvcompress" not in ratio_table([rows[0], rows[2]]).splitlines()[0]  # a missing reference: no columns


def test_ratios_by_length_divide_by_the_reference_at_each_length_and_the_plot_is_written(tmp_path):
    rows = [{"method": name, "prompt_tokens": length, "ttft_s": 1.0, "tpot_s": tpot * length, "kv_bytes": 100,
             "peak_memory_bytes": None}
            for length in (2048, 8192) for name, tpot in (("full", 0.1), ("positional+dead", 0.05))]
    rows.append({"method": "snapkv", "prompt_tokens": 4096, "ttft_s": 1.0, "tpot_s": 1.0, "kv_bytes": 50})  # no full at 4096
    ratios = ratios_by_length(rows)
    assert ratios["TPOT"]["positional+dead"] == [(2048, pytest.approx(0.5)), (8192, pytest.approx(0.5))]
    assert ratios["TPOT"]["full"] == [(2048, 1.0), (8192, 1.0)]
    assert "snapkv" not in ratios["KV"] and ratios["peak RSS"] == {}
    plot_ratios(rows, tmp_path / "ratios.png")
    assert (tmp_path / "ratios.png").stat().st_size > 0
