"""Issue 18's runs: the learned pruner on the shipped shapes VLM, per budget and ablated at 64 tokens.

Every run trains with ``configs/shapes_pruner.yaml`` plus its overrides into
``<runs-dir>/<run>/`` (resumable: a finished run is not trained again, an interrupted one resumes), then:

* the soft / hard mask gap: first-answer-token accuracy under the training's soft masks and under the
  planned hard masks, on held-out shapes samples (``llava.train.eval_pruner``);
* the budget runs are shipped beside the model (``learned_pruner_t<T>.pt``), so ``make demo`` has
  ``learned`` rows; the ablations are answered on the held-out benchmarks through the demo's own
  entry points (``llava.demo.run_config``), as rows ``learned_t64_<run>``.

Runs (``--runs``; default all):

    t192, t128, t64          the budgets, attention residual learnable, adversarial 1 -> 10, spectral norm
    residual_off             t64 without the attention residual
    residual_fixed           t64 with the residual weight fixed at its initial 100
    no_adversarial           t64 trained on task + sparsity (+ token count, binarization) only
    no_spectral_norm         t64 with a plain discriminator
    merger                   no in-LLM pruner: the TokenMerger as a pre-LLM stage, 64 merged tokens replace
                             the 576 (method learned_merger; task loss only; no soft / hard gap)

    python -m llava.train.shapes_pruner_runs --steps 300            # then: make demo (the table with learned rows)

Writes ``<results-dir>/runs.json`` (per run: steps, training seconds, soft / hard accuracy, kept counts)
and ``runs.md``, and copies each run's training curves there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from llava.demo import Config, run_config
from llava.eval.inference import reusing_loaded_models
from llava.eval.summarize import markdown
from llava.pruning.learned.checkpoint import CHECKPOINT_NAME, read_checkpoint
from llava.shapes.benchmarks import BENCHMARKS, ensure_benchmarks
from llava.train.eval_pruner import HELD_OUT_SEED, run_evaluation
from llava.train.pruner.config import load_train_config
from llava.train.pruner.merger_training import CHECKPOINT as MERGER_CHECKPOINT
from llava.train.pruner.merger_training import held_out_accuracy, train_merger
from llava.train.train_pruner import CURVES_NAME, ship_pruner
from llava.train.train_pruner import main as train_main

CONFIG = Path("configs/shapes_pruner.yaml")
BUDGET_RUNS = {f"t{tokens}": tokens for tokens in (192, 128, 64)}
ABLATIONS = {
    "residual_off": ["method_settings.use_attn_residual=false"],
    "residual_fixed": ["method_settings.learnable_attn_weight=false"],
    "no_adversarial": ["loss_weights.adversarial={start: 0, end: 0}"],
    "no_spectral_norm": ["method_settings.use_spectral_norm=false"],
}
ABLATION_BUDGET = 64
MERGER_RUN = "merger"
RUNS = (*BUDGET_RUNS, *ABLATIONS, MERGER_RUN)


def run_overrides(run: str) -> list[str]:
    """The config overrides of a run (its budget first)."""
    tokens = BUDGET_RUNS.get(run, ABLATION_BUDGET)
    return [f"method_settings.visual_token_num={tokens}", *ABLATIONS.get(run, [])]


def checkpoint_of(run: str, folder: Path) -> Path:
    return folder / (MERGER_CHECKPOINT if run == MERGER_RUN else CHECKPOINT_NAME)


def trained_steps(checkpoint: Path) -> int:
    return read_checkpoint(checkpoint)["step"] if checkpoint.is_file() else 0


def train_run(run: str, folder: Path, steps: int, model_path: Path) -> float:
    """Train (or resume) one run to ``steps``; seconds spent now (0 when it was already done)."""
    done = trained_steps(checkpoint_of(run, folder))
    if done >= steps:
        return 0.0
    if run == MERGER_RUN:
        config = load_train_config(CONFIG, [f"model_path={model_path}", f"training.steps={steps}"])
        started = time.time()
        train_merger(config, ABLATION_BUDGET, folder)
        return time.time() - started
    argv = ["--config", str(CONFIG), "--output-dir", str(folder), "--steps", str(steps),
            "--set", f"model_path={model_path}", *[flag for o in run_overrides(run) for flag in ("--set", o)]]
    started = time.time()
    train_main([*argv, "--resume"] if done else argv)
    return time.time() - started


def mask_gap(run: str, folder: Path, model_path: Path, samples: int) -> dict:
    """Soft and hard first-answer-token accuracy of a run on held-out shapes samples."""
    overrides = [f"model_path={model_path}", *run_overrides(run)]
    results = {}
    for mode in ("soft", "hard"):
        summary = run_evaluation(str(CONFIG), mode, str(folder / CHECKPOINT_NAME), samples, HELD_OUT_SEED, 4, overrides)
        results[mode] = summary["answer_accuracy"]
        if mode == "hard":
            results["kept_per_layer"] = sorted(set(summary["samples"][0]["kept_per_layer"]), reverse=True)
            results["equivalent_tokens"] = summary["equivalent_tokens"]
    return results


def merger_accuracy(folder: Path, model_path: Path, samples: int) -> dict:
    """The merger run's held-out first-answer-token accuracy (it has no soft masks)."""
    config = load_train_config(CONFIG, [f"model_path={model_path}"])
    result = held_out_accuracy(config, folder / MERGER_CHECKPOINT, samples, HELD_OUT_SEED)
    return {"soft": None, "hard": result["answer_accuracy"], "kept_per_layer": [ABLATION_BUDGET],
            "equivalent_tokens": result["equivalent_tokens"]}


def ablation_row(run: str, folder: Path):
    """The demo configuration that answers the benchmarks with a run's checkpoint."""
    if run == MERGER_RUN:
        return Config("learned_merger", ABLATION_BUDGET, method_params=(("merger_checkpoint", str(folder / MERGER_CHECKPOINT)),))
    return Config("learned", ABLATION_BUDGET, variant=run, method_params=(("pruner_checkpoint", str(folder / CHECKPOINT_NAME)),))


def answer_ablation(run: str, folder: Path, model_path: Path, eval_dir: Path) -> int:
    """The ablation's rows on the held-out benchmarks, through the demo's loader and scorers."""
    ensure_benchmarks(eval_dir, 120)
    config = ablation_row(run, folder)
    demo_args = argparse.Namespace(eval_dir=eval_dir, model_path=model_path, batch_size=8)
    with reusing_loaded_models():
        return max(run_config(demo_args, config, benchmark) for benchmark in BENCHMARKS)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS))
    parser.add_argument("--steps", type=int, default=load_train_config(CONFIG).training.steps)
    parser.add_argument("--model-path", type=Path, default=Path("playground/models/shapes-llava"))
    parser.add_argument("--runs-dir", type=Path, default=Path("checkpoints/shapes_pruner"))
    parser.add_argument("--eval-dir", type=Path, default=Path("playground/data/eval/shapes"))
    parser.add_argument("--results-dir", type=Path, default=Path("docs/learned_pruner_results"))
    parser.add_argument("--gap-samples", type=int, default=200, help="held-out samples for the soft / hard gap")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.gap_samples < 1:
        parser.error("--steps and --gap-samples must be >= 1")
    if not (args.model_path / "config.json").is_file():
        parser.error(f"no model at {args.model_path} (config.json missing)")
    summary_path = args.results_dir / "runs.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    for run in args.runs:
        folder = args.runs_dir / run
        print(f"=== {run}: {' '.join(run_overrides(run))} ===", flush=True)
        seconds = train_run(run, folder, args.steps, args.model_path)
        entry = summary.get(run, {}) | {"steps": trained_steps(checkpoint_of(run, folder)),
                                        "overrides": [] if run == MERGER_RUN else run_overrides(run)}
        entry["train_seconds"] = round(entry.get("train_seconds", 0) + seconds, 1)  # over every session that trained it
        if run == MERGER_RUN:
            entry |= merger_accuracy(folder, args.model_path, args.gap_samples)
        else:
            entry |= mask_gap(run, folder, args.model_path, args.gap_samples)
        if run in BUDGET_RUNS:
            entry["shipped"] = str(ship_pruner(folder, args.model_path))
        elif answer_ablation(run, folder, args.model_path, args.eval_dir) != 0:
            print(f"error: answering the benchmarks with {run} failed", file=sys.stderr)
            return 1
        summary[run] = entry
        args.results_dir.mkdir(parents=True, exist_ok=True)
        if run != MERGER_RUN:
            (args.results_dir / f"{run}_training.png").write_bytes((folder / CURVES_NAME).read_bytes())
        summary_path.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    header = ["run", "steps", "train s", "soft acc", "hard acc", "hard - soft", "kept after each pruning layer"]
    rows = [[run, e["steps"], e.get("train_seconds"), e["soft"], e["hard"], None if e["soft"] is None else round(e["hard"] - e["soft"], 4),
             " / ".join(map(str, e["kept_per_layer"]))] for run, e in summary.items()]
    table = markdown(header, rows)
    (args.results_dir / "runs.md").write_text(table, encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
