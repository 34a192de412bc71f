"""How much a method's named option changes what it keeps, on SmolLM2-135M (a trained model's attention).

For each passkey prompt (the filler + key context as the prunable span, the last prompt token as the
query), the method runs at its official default and with one option set, both planned for the same
equivalent-token budget (or given the same ``--param`` values, e.g. SparseVLM's stage budgets); the keep
sets of each stage are compared by Jaccard index ``|A & B| / |A | B|`` (original token indices; for
SparseVLM the tokens kept by score, cluster tokens left out). Prints one markdown row per option: mean
Jaccard per stage and the share of prompts whose last-stage keep sets are identical.

    python -m bench.option_jaccard --method pdrop --option positions=original --option count_rounding=round
    python -m bench.option_jaccard --method sparsevlm --param stage_budgets=[66,30,17] \
        --option score_before_layer=true --option recycling=false --option positions=original --combined
"""

from __future__ import annotations

import argparse
import json

import torch

from bench.passkey_strategies import context_span, load_smollm2, make_passkey_prompts
from llava.eval.cli_args import parse_method_param
from llava.pruning.methods.sparsevlm import kept_by_score_positions
from llava.pruning.registry import build_method, plan_method


def jaccard(a: list[int], b: list[int]) -> float:
    """``|a & b| / |a | b|`` of two index lists (1.0 for two empty lists)."""
    union = set(a) | set(b)
    return len(set(a) & set(b)) / len(union) if union else 1.0


@torch.no_grad()
def keep_sets(model, method, input_ids: torch.Tensor, span: tuple[int, int]) -> list[list[int]]:
    """Original indices kept at each stage of ``method`` on one prompt."""
    model.model.set_pruning_method(method)
    model(input_ids=input_ids, prune_span=span)
    record = model.model.last_pruning_record
    if method.name == "sparsevlm":
        return kept_by_score_positions(record)
    return [stage.kept_index[0].tolist() for stage in record.stages]


def make_method(name: str, params: dict, budget: float | None, num_layers: int, span: int):
    """The method with ``params``, planned for ``budget`` equivalent tokens (None: ``params`` alone)."""
    if budget is None:
        return build_method(name, params)
    return plan_method(name, budget, num_layers, span, params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", required=True, help="registry name of an in-LLM method, e.g. pdrop")
    parser.add_argument("--option", type=parse_method_param, action="append", required=True,
                        help="name=value compared with the default (repeat for several options)")
    parser.add_argument("--param", type=parse_method_param, action="append", default=[],
                        help="name=value given to both runs instead of a budget (e.g. stage_budgets=[66,30,17])")
    parser.add_argument("--combined", action="store_true", help="also compare all options set together")
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--length", type=int, default=600, help="passkey prompt length in tokens")
    parser.add_argument("--keep-fraction", type=float, default=0.25,
                        help="budget as a share of the span (equivalent tokens)")
    args = parser.parse_args()
    if args.prompts < 1 or not 0 < args.keep_fraction <= 1:
        parser.error("--prompts must be >= 1 and --keep-fraction in (0, 1]")
    tokenizer, model = load_smollm2()
    layers = model.config.num_hidden_layers
    base = dict(args.param)
    variants = [{name: value} for name, value in args.option]
    if args.combined and len(variants) > 1:
        variants.append(dict(args.option))
    scores: dict[str, list[list[float]]] = {json.dumps(v): [] for v in variants}
    for prompt in make_passkey_prompts(tokenizer, args.length, args.prompts, seed=0):
        span = context_span(tokenizer, prompt)
        width = span[1] - span[0]
        budget = None if base else args.keep_fraction * width
        official = keep_sets(model, make_method(args.method, base, budget, layers, width), prompt.input_ids, span)
        for variant in variants:
            method = make_method(args.method, {**base, **variant}, budget, layers, width)
            other = keep_sets(model, method, prompt.input_ids, span)
            scores[json.dumps(variant)].append([jaccard(a, b) for a, b in zip(official, other, strict=True)])
    budget = f"parameters {base}" if base else f"budget {args.keep_fraction:.0%} of the span"
    print(f"{args.method} on SmolLM2-135M, {args.prompts} passkey prompts of {args.length} tokens, {budget}")
    print("| option | Jaccard per stage (mean) | identical last keep set |")
    print("|---|---|---|")
    for variant, rows in scores.items():
        per_stage = [sum(column) / len(column) for column in zip(*rows, strict=True)]
        identical = sum(row[-1] == 1.0 for row in rows) / len(rows)
        print(f"| `{variant}` | {' / '.join(f'{j:.2f}' for j in per_stage)} | {identical:.0%} |")


if __name__ == "__main__":
    main()
