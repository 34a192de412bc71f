"""The query-agnostic protocol (context compressed before the question) and its bench (tiny models, no kvpress)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import DynamicCache, PreTrainedTokenizerFast

from bench import kvpress_rows
from bench.query_agnostic import judge_kvpress_row, parse_args
from bench.query_agnostic_plan import KVPRESS, OURS, Unit, groups_for_reduction, plan_units
from bench.query_agnostic_prompts import perplexity_windows
from bench.query_agnostic_table import markdown_table, merge_rows
from kvcompress.adapters import ModelShape
from kvcompress.analysis.calibration import with_cheapest_windows
from kvcompress.attention import kvcompress_attention, observing
from kvcompress.attention_math import snapkv_keep_indices
from kvcompress.classification import HeadClassification
from kvcompress.evaluation.benchmark import QUERY_AGNOSTIC, QUESTION_AWARE, measure_passkey
from kvcompress.evaluation.passkey import FILLER, QUESTION, TASK, PasskeyPrompt, make_passkey_prompts
from kvcompress.evaluation.query_agnostic import prefill_context, query_agnostic_generate
from kvcompress.evaluation.timing import greedy_generate
from kvcompress.methods.baselines import SnapKV
from kvcompress.methods.positional import PositionalHeadOptimizer
from kvcompress.methods.registry import kv_fraction

from .conftest import VOCAB, tiny_llama

REPO = Path(__file__).resolve().parents[2]
GATES = REPO / "docs/kvcompress_results/head_classification_gates_w128.json"


class DigitTokenizer:
    """``decode`` of ids as their decimal digits (what ``answer_has_key`` reads), for tiny random models."""

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(str(int(i) % 10) for i in ids)


def random_prompt(length: int = 60, question: int = 8, seed: int = 3) -> PasskeyPrompt:
    torch.manual_seed(seed)
    ids = torch.randint(0, VOCAB, (1, length))
    return PasskeyPrompt(ids, torch.tensor([[1, 2, 3]]), "123", 0.5, question_start=length - question)


def tiny_fast_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on the passkey texts (offsets like a real fast tokenizer)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([TASK, FILLER * 4, QUESTION, "The pass key is 12345. Remember it."], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


def test_prompt_split_is_one_tokenization_cut_at_the_question():
    tokenizer = tiny_fast_tokenizer()
    prompts = make_passkey_prompts(tokenizer, 200, 3, depth_range=(0.1, 0.9))
    assert [p.depth for p in prompts] == pytest.approx([0.1, 0.5, 0.9])
    for prompt in prompts:
        assert torch.equal(torch.cat([prompt.context_ids, prompt.question_ids], 1), prompt.input_ids)
        assert tokenizer.decode(prompt.question_ids[0]).strip() == QUESTION.strip()
        assert "What is the pass key" not in tokenizer.decode(prompt.context_ids[0])


def test_query_agnostic_equals_whole_prompt_for_the_full_model():
    model = tiny_llama()
    prompt = random_prompt()
    whole = greedy_generate(model, prompt.input_ids, 6, DynamicCache())
    split = query_agnostic_generate(model, prompt.context_ids, prompt.question_ids, 6, DynamicCache())
    assert torch.equal(split.generation.new_tokens, whole.new_tokens)
    assert split.context_kv_bytes < split.generation.kv_bytes  # measured before the question came
    dropped = greedy_generate(model, prompt.context_ids, 6, DynamicCache())  # no question: other tokens
    assert not torch.equal(dropped.new_tokens, whole.new_tokens)
    tokenizer = DigitTokenizer()
    aware = measure_passkey(model, tokenizer, DynamicCache, [prompt], QUESTION_AWARE)
    agnostic = measure_passkey(model, tokenizer, DynamicCache, [prompt], QUERY_AGNOSTIC)
    assert aware["passkey_accuracy"] == agnostic["passkey_accuracy"]
    assert agnostic["passkey_compressed_tokens"] == prompt.question_start
    assert aware["passkey_compressed_tokens"] == prompt.input_ids.shape[1]
    assert "passkey_context_kv_bytes" in agnostic and "passkey_context_kv_bytes" not in aware


def test_question_on_the_context_cache_gives_the_whole_prompt_logits():
    model = tiny_llama()
    prompt = random_prompt()
    cache = DynamicCache()
    prefill_context(model, prompt.context_ids, cache)
    with torch.no_grad():
        split = model(prompt.question_ids, past_key_values=cache, use_cache=True).logits
        whole = model(prompt.input_ids, use_cache=False).logits[:, prompt.question_start:]
    assert torch.allclose(split, whole, atol=1e-5)


def test_static_windows_see_the_same_keys_in_both_protocols():
    """Windowed heads keep sinks + the last window tokens whatever the split: same greedy tokens."""
    model = tiny_llama()
    prompt = random_prompt()
    with PositionalHeadOptimizer([(0, 0), (1, 1), (3, 0)], sinks=2, window=12).apply(model) as handle:
        whole = greedy_generate(model, prompt.input_ids, 6, handle.new_cache())
        split = query_agnostic_generate(model, prompt.context_ids, prompt.question_ids, 6, handle.new_cache())
    assert torch.equal(split.generation.new_tokens, whole.new_tokens)


def snapkv_expected_positions(model, context: torch.Tensor, budget: int, window: int, kernel: int) -> list:
    """SnapKV's selection computed independently: q/k of the context alone (no cache), last ``window`` queries."""
    captured = {}
    attentions = [layer.self_attn for layer in model.model.layers]
    with kvcompress_attention(model), observing(attentions, lambda i: lambda m, q, k, v: captured.__setitem__(i, (q, k))), \
            torch.no_grad():
        model(context, use_cache=False)
    expected = []
    for layer in range(len(attentions)):
        query, key = captured[layer]
        heads, kv_heads = query.shape[1], key.shape[1]
        query_to_kv = torch.arange(heads) // (heads // kv_heads)
        expected.append(snapkv_keep_indices(query[:, :, -window:], key.index_select(1, query_to_kv), query_to_kv,
                                            kv_heads, query.shape[-1] ** -0.5, budget, kernel))
    return expected


def test_query_agnostic_snapkv_selects_from_the_context_last_tokens():
    model = tiny_llama()
    prompt = random_prompt(length=80, question=12)
    budget, window, kernel = 30, 8, 7
    with SnapKV(budget, window, kernel).apply(model) as handle:
        agnostic = handle.new_cache()
        query_agnostic_generate(model, prompt.context_ids, prompt.question_ids, 1, agnostic)
        aware = handle.new_cache()
        greedy_generate(model, prompt.input_ids, 1, aware)
    expected = snapkv_expected_positions(model, prompt.context_ids, budget, window, kernel)
    differs = False
    for layer, (a, b) in enumerate(zip(agnostic.layers, aware.layers, strict=True)):
        held = a.groups[0].positions[..., :budget]  # the context's kept tokens (then the question's and the answer's)
        assert torch.equal(held, expected[layer]), f"layer {layer}"
        assert held.max() < prompt.question_start  # chosen before the question existed
        differs |= not torch.equal(b.groups[0].positions[..., :budget], held)
    assert differs  # question-aware: the question's queries choose (and its tokens are the window)


def test_kv_target_and_plan_order():
    shape = ModelShape(2, 4, 2, 8)
    scores = {"window_gate": [[0.1, 0.9], [0.2, 0.3]]}
    labels = [["gathering"] * 4, ["gathering"] * 4]
    base = HeadClassification(shape, labels, "gates", {"window_score": "window_gate"}, scores)
    k = groups_for_reduction(base, 0.5, 1000, 4, 64)
    assert k == 2 and 1 - kv_fraction(with_cheapest_windows(base, 2), 1000, 4, 64) == pytest.approx(0.5 * (1 - 68 / 1000))
    ours, theirs = plan_units([2], ["passkey_600", "passkey_1000"], "perplexity", [QUERY_AGNOSTIC, QUESTION_AWARE],
                              ["SnapKVPress"], kvpress=True)
    assert ours[0] == Unit(OURS, "full", None, "perplexity", QUERY_AGNOSTIC)
    assert ours[1].task == "passkey_1000"  # longest first
    first_aware = next(i for i, unit in enumerate(ours) if unit.protocol == QUESTION_AWARE)
    assert all(unit.protocol == QUERY_AGNOSTIC for unit in ours[:first_aware])
    assert ours[first_aware].method == "snapkv"
    assert {unit.method for unit in ours[-6:]} == {"full", "positional+dead", "streaming_llm"}
    assert len(ours) == 4 * 3 + 4 * 2 and all(unit.side == KVPRESS for unit in theirs)
    assert len({unit.key("x") for unit in ours + theirs}) == len(ours) + len(theirs)


def row(side, method, groups, task, protocol, fraction, **measures):
    return {"side": side, "method": method, "groups": groups, "task": task, "protocol": protocol,
            "kv_fraction": fraction, **measures}


def test_merge_rows_and_table():
    rows = [
        row(OURS, "full", None, "passkey_1000", QUERY_AGNOSTIC, 1.0, passkey_accuracy=1.0, context_kv_bytes=1000),
        row(OURS, "full", None, "perplexity", QUERY_AGNOSTIC, 1.0, perplexity=20.0, context_kv_bytes=400),
        row(OURS, "snapkv", 45, "passkey_1000", QUERY_AGNOSTIC, 0.6, passkey_accuracy=0.5, context_kv_bytes=590),
        row(OURS, "snapkv", 45, "passkey_1000", QUESTION_AWARE, 0.61, passkey_accuracy=1.0),
        row(OURS, "snapkv", 45, "perplexity", QUERY_AGNOSTIC, 0.75, perplexity=22.0, context_kv_bytes=300),
        row(KVPRESS, "KnormPress", 45, "passkey_1000", QUERY_AGNOSTIC, 0.6, passkey_accuracy=0.25,
            context_kv_bytes=600),
        row(KVPRESS, "KnormPress", 45, "perplexity", QUERY_AGNOSTIC, 0.75, perplexity=25.0),
    ]
    lines = merge_rows(rows)
    assert [(line["side"], line["method"]) for line in lines] == [
        (OURS, "full"), (OURS, "snapkv"), (KVPRESS, "KnormPress")]
    snap = lines[1]["tasks"]
    assert snap["passkey_1000"]["kv_reduction"] == pytest.approx(0.4)  # the query-agnostic context's
    assert snap["passkey_1000"]["measured_kv_reduction"] == pytest.approx(0.41)
    assert snap["passkey_1000"][QUERY_AGNOSTIC]["passkey_accuracy"] == 0.5
    assert snap["passkey_1000"][QUESTION_AWARE]["passkey_accuracy"] == 1.0
    assert snap["perplexity"][QUERY_AGNOSTIC]["ppl_vs_full"] == pytest.approx(0.1)
    knorm = lines[2]["tasks"]
    assert knorm["passkey_1000"]["measured_kv_reduction"] == pytest.approx(0.4)  # against our full row
    assert knorm["perplexity"][QUERY_AGNOSTIC]["ppl_vs_full"] == pytest.approx(0.25)
    table = markdown_table(lines, ["passkey_1000"], "perplexity").splitlines()
    assert table[3] == "| ours: snapkv | 45 | 40.0 / 41.0 | 25.0 / 25.0 | 50% | 100% | 22.000 | +10.0% |"
    assert table[4] == "| kvpress: KnormPress | 45 | 40.0 / 40.0 | 25.0 / - | 25% | - | 25.000 | +25.0% |"


def test_kvpress_row_judged_like_ours():
    records = {"passkey_600": [{"answer": "123"}, {"answer": "456"}]}
    judged = judge_kvpress_row({"task": "passkey_600", "new_tokens": [[1, 2, 3, 0], [4, 5, 7]]}, records,
                               DigitTokenizer())
    assert judged["passkey_accuracy"] == 0.5 and "new_tokens" not in judged


def test_kvpress_side_pure_functions():
    assert kvpress_rows.expected_kept(946, 0.43) == int(946 * 0.57)
    assert kvpress_rows.expected_kept(946, 0.0) == 946
    with pytest.raises(RuntimeError, match="expected 539"):
        kvpress_rows.check_compressed([946] * 3, 946, 0.43, "SnapKVPress")
    kvpress_rows.check_compressed([539] * 3, 946, 0.43, "SnapKVPress")
    jobs = [{"key": "a"}, {"key": "b"}]
    assert kvpress_rows.pending_jobs(jobs, [{"key": "a"}]) == [{"key": "b"}]
    summary = kvpress_rows.summarise({"key": "a", "task": "perplexity"}, [
        {"nll_sum": 10.0, "tokens": 5, "context_kv_bytes": 8, "kept_tokens": 3, "context_tokens": 6},
        {"nll_sum": 20.0, "tokens": 5, "context_kv_bytes": 4, "kept_tokens": 3, "context_tokens": 6}], 1.0)
    assert summary["perplexity"] == pytest.approx(math.exp(3.0)) and summary["context_kv_bytes"] == 6


def test_perplexity_windows_cut_like_strided_perplexity():
    tokens = torch.arange(100)
    windows = perplexity_windows(tokens, 40, 20, None)
    assert len(windows) == 4 and windows[1]["context_ids"] == list(range(20, 40))
    assert windows[1]["target_ids"] == list(range(40, 60))
    assert json.loads(json.dumps(windows)) == windows


@pytest.mark.parametrize(("argv", "message"), [
    (["--targets", "1.2"], "--targets"),
    (["--classification", "missing.json"], "no such file"),
    (["--groups", "500"], "cannot window 500 KV groups"),
    (["--passkey-lens", "40"], "--passkey-lens"),
    (["--depth-range", "0.9", "0.1"], "--depth-range"),
    (["--text", "missing.txt"], "--text missing.txt"),
    (["--ppl-stride", "600"], "stride"),
])
def test_bad_input_is_one_line_error(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        parse_args(["--model", "EleutherAI/pythia-70m", "--classification", str(GATES), *argv])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1
