"""The configurations of the ablation drivers (``eval.sh``, ``eval_head.sh``), planned before any run.

Each line printed is the arguments of one ``run_config`` call (``METHOD TOKENS [HEADS STRATEGY]``); notes
go to stderr. Planning with the model's own config (its head count, layers and visual tokens):

* a method that needs a checkpoint the model does not ship (a ``*_checkpoint`` parameter the model folder
  does not fill in: ``learned_merger`` always, ``learned`` at a budget without ``learned_pruner_t<T>.pt``)
  is left out, saying so;
* a head count above the model's heads per layer is clamped to it, with a warning (a requested list that
  then repeats a count runs it once); without ``--heads`` the head driver runs a quarter, half,
  three quarters and all of the model's heads (8 16 24 32 on LLaVA-1.5-7B; 1 2 on the 2-head shapes VLM);
* every other configuration is planned as the loader plans it; one that the loader would refuse stops
  the driver before its first run (exit 2, one line naming each refused configuration).

A model whose config cannot be read here (a hub id not cached, an original-format checkpoint) is not
checked: a warning says so, and each run reports its own problems.

    python -m llava.eval.ablation_plan methods --model-path M --tokens 64 128 [--methods fastv pdrop]
    python -m llava.eval.ablation_plan heads --model-path M --tokens 64 [--heads 8 16] [--strategies sum]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llava.eval.cli_args import DYNAMIC_SELECTION_METHOD
from toolkit_common.cli import setting_error

HEAD_METHOD = "fastv_fine_head"
DYNAMIC = "dynamic"  # the drivers' name for --enable-dynamic-selection (method DYNAMIC_SELECTION_METHOD)
HEAD_FRACTIONS = (0.25, 0.5, 0.75, 1.0)  # default head counts, as fractions of the model's heads
CHECKPOINT_SUFFIX = "_checkpoint"


@dataclass(frozen=True)
class PlannedRun:
    """One ``run_config`` call: the per-dataset scripts' ``METHOD TOKENS [HEADS [STRATEGY]]``."""

    method: str
    tokens: int
    heads: int | None = None
    strategy: str | None = None

    def script_args(self) -> str:
        """The arguments as the drivers pass them to ``run_config``."""
        values = [self.method, self.tokens, self.heads, self.strategy]
        return " ".join(str(value) for value in values if value is not None)

    def registry_method(self) -> str:
        """The registered method this run loads."""
        return DYNAMIC_SELECTION_METHOD if self.method == DYNAMIC else self.method

    def params(self) -> dict[str, Any]:
        """The method parameters the loader gets from ``--H`` / ``--head-strategy``."""
        named = {"heads": self.heads, "head_strategy": self.strategy}
        return {key: value for key, value in named.items() if value is not None}


@dataclass(frozen=True)
class ModelShape:
    """What planning needs of the model: its text config and visual tokens per image (None: not read)."""

    text_config: Any = None
    span: int | None = None

    @property
    def heads(self) -> int | None:
        """Attention heads per layer, or None when the config was not read."""
        return None if self.text_config is None else self.text_config.num_attention_heads


def read_model_shape(model_path: str) -> tuple[ModelShape, str | None]:
    """The model's shape, and a warning when its config cannot be read here (then nothing is checked)."""
    from transformers import AutoConfig, LlavaConfig

    from llava.model.builder import TINY_MODELS
    from llava.model.tiny import build_tiny_llava_config, tiny_llama_config
    from llava.model.vision import image_features_per_image

    try:
        if model_path in TINY_MODELS:
            config = build_tiny_llava_config() if model_path == "tiny-random-llava" else tiny_llama_config()
        else:
            config = AutoConfig.from_pretrained(model_path)
    except (OSError, ValueError, KeyError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return ModelShape(), f"cannot read the config of {model_path} ({reason}): configurations are not checked before the runs"
    if isinstance(config, LlavaConfig):
        return ModelShape(config.text_config, image_features_per_image(config)), None
    return ModelShape(getattr(config, "text_config", config)), None


def missing_checkpoint(run: PlannedRun, model_path: str) -> str | None:
    """Why ``run`` cannot load: a checkpoint parameter of its method that the model does not ship, or None."""
    from llava.pruning.registry import method_class

    method = method_class(run.registry_method())
    params = method.params_for_model(run.params(), model_path, run.tokens)
    for name in method.parameter_names():
        if not name.endswith(CHECKPOINT_SUFFIX):
            continue
        path = params.get(name)
        if path is None:
            return f"{run.method}: left out (needs {name}=<path>, which {model_path} does not ship)"
        if not Path(path).is_file():
            return f"{run.method} at {run.tokens} tokens: left out ({name} {path} does not exist)"
    return None


def default_heads(method: str) -> int | None:
    """The ``heads`` default of a registered method, or None when it takes no head count."""
    from llava.pruning.registry import method_class

    fields = {field.name: field for field in dataclasses.fields(method_class(method))}
    head_field = fields.get("heads")
    return None if head_field is None or head_field.default is dataclasses.MISSING else head_field.default


def clamp_default_heads(run: PlannedRun, model_heads: int | None) -> tuple[PlannedRun, str | None]:
    """``run`` with its method's default head count clamped to the model's heads (and the warning), when
    the default exceeds them; else unchanged."""
    default = None if run.heads is not None else default_heads(run.registry_method())
    if default is None or model_heads is None or default <= model_heads:
        return run, None
    warning = (f"warning: {run.method}: its default heads={default} exceeds the model's {model_heads} attention heads "
               f"per layer; running heads={model_heads}")
    return dataclasses.replace(run, heads=model_heads), warning


def head_counts(requested: Sequence[int] | None, model_heads: int | None) -> tuple[list[int], list[str]]:
    """The head counts to run and the warnings: ``requested`` clamped to ``model_heads`` (a repeated count
    once), or without a request the ``HEAD_FRACTIONS`` of the model's heads (8 16 24 32 without a config)."""
    if requested is None:
        total = model_heads or 32
        return sorted({max(1, math.ceil(fraction * total)) for fraction in HEAD_FRACTIONS}), []
    if model_heads is None:
        return list(dict.fromkeys(requested)), []
    above = [count for count in requested if count > model_heads]
    warnings = [f"warning: heads {' '.join(map(str, above))} exceed the model's {model_heads} attention heads per "
                f"layer: clamped to {model_heads}"] if above else []
    return list(dict.fromkeys(min(count, model_heads) for count in requested)), warnings


def plan_problem(run: PlannedRun, shape: ModelShape, model_path: str) -> str | None:
    """Why the loader would refuse ``run`` on this model (planned as it plans it), or None."""
    from llava.model.builder import planned_method

    if shape.text_config is None:
        return None
    try:
        planned_method(run.registry_method(), shape.text_config, shape.span, run.tokens, run.params(), model_path)
    except (ValueError, OSError) as error:
        return f"{run.script_args()}: {str(error).strip().splitlines()[0]}"
    return None


def method_runs(methods: Sequence[str], tokens: Sequence[int], model_path: str, shape: ModelShape) -> tuple[list[PlannedRun], list[str]]:
    """``eval.sh``'s runs (each method at each budget, budgets inner) and the notes on what changed."""
    runs, notes = [], []
    for method in methods:
        for budget in tokens:
            run, warning = clamp_default_heads(PlannedRun(method, budget), shape.heads)
            skipped = missing_checkpoint(run, model_path)
            if skipped:
                notes.append(skipped)
                continue
            notes.append(warning)
            runs.append(run)
    return runs, list(dict.fromkeys(note for note in notes if note))


def head_runs(tokens: Sequence[int], heads: Sequence[int], strategies: Sequence[str]) -> list[PlannedRun]:
    """``eval_head.sh``'s runs: per budget, every head count x strategy of ``HEAD_METHOD``, then the dynamic selector."""
    runs = []
    for budget in tokens:
        runs += [PlannedRun(HEAD_METHOD, budget, count, strategy) for count in heads for strategy in strategies]
        runs.append(PlannedRun(DYNAMIC, budget))
    return runs


def build_parser() -> argparse.ArgumentParser:
    """``methods`` (eval.sh) and ``heads`` (eval_head.sh) sub-commands."""
    parser = argparse.ArgumentParser(prog="python -m llava.eval.ablation_plan", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("methods", "heads"):
        command = commands.add_parser(name)
        command.add_argument("--model-path", required=True)
        command.add_argument("--tokens", type=int, nargs="+", required=True)
    methods = commands.choices["methods"]
    methods.add_argument("--methods", nargs="*", default=None, help="default: every registered method")
    methods.add_argument("--exclude", nargs="*", default=[], help="methods left out")
    heads = commands.choices["heads"]
    heads.add_argument("--heads", type=int, nargs="*", default=None, help="default: 1/4, 1/2, 3/4, all of the model's heads")
    heads.add_argument("--strategies", nargs="*", default=None, help="default: every head strategy")
    return parser


def planned_runs(args: argparse.Namespace, shape: ModelShape) -> tuple[list[PlannedRun], list[str]]:
    """The runs a sub-command asks for, and its notes."""
    from llava.pruning.head_selection import HEAD_STRATEGIES
    from llava.pruning.registry import available_methods

    if args.command == "methods":
        chosen = [m for m in (args.methods or available_methods()) if m not in args.exclude]
        return method_runs(chosen, args.tokens, args.model_path, shape)
    counts, notes = head_counts(args.heads or None, shape.heads)
    return head_runs(args.tokens, counts, args.strategies or HEAD_STRATEGIES), notes


def unknown_names(args: argparse.Namespace) -> str | None:
    """The methods or head strategies asked for that do not exist, as one line, or None."""
    from llava.pruning.head_selection import HEAD_STRATEGIES
    from llava.pruning.registry import available_methods

    given, valid = ((args.methods or [], available_methods()) if args.command == "methods"
                    else (args.strategies or [], HEAD_STRATEGIES))
    unknown = [name for name in given if name not in valid]
    return f"unknown: {' '.join(unknown)}; valid: {', '.join(valid)}" if unknown else None


def main(argv: Sequence[str] | None = None) -> int:
    """Print the planned runs, one per line; exit 2 (nothing printed on stdout) when one would be refused."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if any(budget < 1 for budget in args.tokens) or any(count < 1 for count in getattr(args, "heads", None) or []):
        setting_error(parser, "token budgets and head counts must be >= 1")
    if problem := unknown_names(args):
        setting_error(parser, problem)
    shape, warning = read_model_shape(args.model_path)
    runs, notes = planned_runs(args, shape)
    for note in ([warning] if warning else []) + notes:
        print(note, file=sys.stderr)
    problems = [problem for run in runs if (problem := plan_problem(run, shape, args.model_path))]
    if problems:
        setting_error(parser, f"{len(problems)} configuration(s) cannot run on {args.model_path}: {'; '.join(problems)}")
    print("\n".join(run.script_args() for run in runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
