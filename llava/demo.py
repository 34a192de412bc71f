"""`make demo`: the visual-token pruning ablation on the shipped shapes VLM, with an HTML report.

Every configuration (vanilla; every registered method at each budget; FastV + head selection for
head strategies x head counts; the dynamic selector ``ablation_a``) runs on the three held-out shapes
benchmarks through the project's own entry points, in this process, with the arguments
``scripts/v1_5/7b/{gqa,pope,sqa}.sh`` pass them: the loader writes the answers file and its run record
(and resumes), the scorer writes the result record (with coverage), ``summarize`` builds the table and
plots. The model is loaded once (``reusing_loaded_models``); a second run finds every answer on disk and
only re-scores. Then a per-question-type table, kept-token overlays for a few one-cell questions, and
``<eval-dir>/summary/index.html``.

    python -m llava.demo [--model-path DIR] [--eval-dir DIR] [--tokens 192 128 64] [--head-grid full]
"""

from __future__ import annotations

import argparse
import csv
import html
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig, LlavaConfig

from llava.eval import chunking, model_vqa_loader, model_vqa_science, summarize
from llava.eval.cli_args import DYNAMIC_SELECTION_METHOD, build_parser, pruning_method, pruning_params
from llava.eval.inference import GenerationSettings, answer_batch, load_model_bundle, reusing_loaded_models
from llava.eval.jsonl_io import read_jsonl
from llava.eval.run_loop import open_image
from llava.eval.scorers import gqa, pope, scienceqa
from llava.model.builder import planned_method, pruning_decoder, split_engine_fields
from llava.model.vision import image_features_per_image
from llava.pruning.head_selection import HEAD_STRATEGIES
from llava.pruning.learned.checkpoint import shipped_pruner_path
from llava.pruning.registry import available_methods
from llava.shapes.benchmarks import BENCHMARKS, answer_key, ensure_benchmarks, normalise
from llava.shapes.questions import ONE_CELL
from llava.viz import kept_at_stage, kept_overlay, plot_tokens_per_layer, save_kept_record
from toolkit_common.cli import setting_error

DEFAULT_MODEL = Path("playground/models/shapes-llava")
DEFAULT_EVAL_DIR = Path("playground/data/eval/shapes")
DEFAULT_HEAD_STRATEGIES = ("sum", "entropy", "max_attention")
ABLATION_ONLY = ("learned_merger",)  # issue 18's pre-LLM merger ablation (llava.train.shapes_pruner_runs), not a default row


@dataclass(frozen=True)
class Config:
    """One ablation row, named as ``scripts/v1_5/7b/common.sh`` names its result folder."""

    method: str = "vanilla"
    tokens: int | None = None
    heads: int | None = None
    strategy: str | None = None
    variant: str | None = None  # a name for ``method_params`` (e.g. a learned-pruner ablation)
    method_params: tuple[tuple[str, str], ...] = ()  # --method-param KEY=VALUE flags

    @property
    def name(self) -> str:
        if self.method == "vanilla":
            return "vanilla"
        name = f"{self.method}_t{self.tokens}"
        if self.heads is not None:
            name += f"_h{self.heads}"
        return name + (f"_{self.strategy}" if self.strategy else "") + (f"_{self.variant}" if self.variant else "")

    def loader_flags(self) -> list[str]:
        if self.method == "vanilla":
            return []
        flags = ["--enable-dynamic-selection"] if self.method == "dynamic" else ["--pruning_method", self.method]
        flags += ["--visual_token_num", str(self.tokens)]
        if self.heads is not None:
            flags += ["--H", str(self.heads)]
        if self.strategy:
            flags += ["--head-strategy", self.strategy]
        for key, value in self.method_params:
            flags += ["--method-param", f"{key}={value}"]
        return flags


def ablation_configs(tokens: Sequence[int], methods: Sequence[str], head_strategies: Sequence[str], head_counts: Sequence[int]) -> list[Config]:
    configs = [Config()]
    for method in methods:
        configs += [Config(method, t) for t in tokens]
    for t in tokens:
        configs += [Config("fastv_fine_head", t, h, s) for h in head_counts for s in head_strategies]
        configs.append(Config("dynamic", t))
    return configs


def benchmark_steps(eval_dir: Path, benchmark: str, config: Config) -> tuple[tuple[Callable, list[str]], tuple[Callable, list[str]], Path]:
    """(loader main, argv), (scorer main, argv) and the merged answers file, as the per-dataset scripts build them."""
    root = eval_dir / benchmark
    result = eval_dir / "results" / config.name / ("sqa.json" if benchmark == "scienceqa" else f"{benchmark}.json")
    if benchmark == "gqa":
        split = "llava_gqa_testdev_balanced"
        answers = root / "answers" / split / config.name
        loader = (model_vqa_loader.main, ["--question-file", str(root / f"{split}.jsonl"), "--image-folder", str(root / "data/images")])
        scorer = (gqa.main, ["--questions", str(root / "data/testdev_balanced_questions.json"), "--result-file", str(answers / "merge.jsonl"),
                             "--predictions-file", str(answers / "testdev_balanced_predictions.json"), "--result-json", str(result)])
    elif benchmark == "pope":
        answers = root / "answers" / config.name
        question_file = str(root / "llava_pope_test.jsonl")
        loader = (model_vqa_loader.main, ["--question-file", question_file, "--image-folder", str(root / "val2014")])
        scorer = (pope.main, ["--annotation-dir", str(root / "coco"), "--question-file", question_file,
                              "--result-file", str(answers / "merge.jsonl"), "--result-json", str(result)])
    else:
        answers = root / "answers" / config.name
        loader = (model_vqa_science.main, ["--question-file", str(root / "llava_test_CQM-A.json"), "--image-folder",
                                           str(root / "images/test"), "--single-pred-prompt"])
        scorer = (scienceqa.main, ["--base-dir", str(root), "--result-file", str(answers / "merge.jsonl"), "--result-json", str(result)])
    return loader, scorer, answers


def run_config(args: argparse.Namespace, config: Config, benchmark: str) -> int:
    """Answer (resuming) and score one benchmark; the worst exit code of the steps."""
    (loader, loader_args), (scorer, scorer_args), answers = benchmark_steps(args.eval_dir, benchmark, config)
    answers.mkdir(parents=True, exist_ok=True)
    common = ["--model-path", str(args.model_path), "--answers-file", str(answers / "1_0.jsonl"), "--num-chunks", "1",
              "--chunk-idx", "0", "--temperature", "0", "--conv-mode", "vicuna_v1", "--batch-size", str(args.batch_size),
              "--max_new_tokens", "8"]
    code = loader([*common, *config.loader_flags(), *loader_args])
    if code != 0:
        return code
    merged = chunking.main(["--answers-dir", str(answers), "--num-chunks", "1", "--output", str(answers / "merge.jsonl")])
    return merged or scorer(scorer_args)


def per_type_table(eval_dir: Path, configs: Sequence[Config]) -> tuple[list[str], list[list]]:
    """Accuracy (%) per question type and benchmark for every configuration that has answers."""
    keys = {benchmark: answer_key(eval_dir / benchmark, benchmark) for benchmark in BENCHMARKS}
    columns = sorted({(b, kind) for b, key in keys.items() for kind, _ in key.values()})
    rows = []
    for config in configs:
        cells: list = [config.name]
        answers_by_benchmark = {}
        for benchmark in BENCHMARKS:  # each answers file read once per configuration
            answers_file = benchmark_steps(eval_dir, benchmark, config)[2] / "merge.jsonl"
            if answers_file.exists():
                lines = read_jsonl(answers_file, required_fields=("question_id", "text"))[0]
                answers_by_benchmark[benchmark] = {a["question_id"]: a["text"] for a in lines}
        for benchmark, kind in columns:
            answers = answers_by_benchmark.get(benchmark)
            if answers is None:
                cells.append(None)
                continue
            hits = [normalise(answers.get(qid, "")) == truth for qid, (k, truth) in keys[benchmark].items() if k == kind]
            cells.append(round(100 * sum(hits) / len(hits), 1) if hits else None)
        rows.append(cells)
    return ["config", *[f"{b}:{k}" for b, k in columns]], rows


def overlay_questions(eval_dir: Path, count: int) -> list[dict]:
    """The first ``count`` one-cell GQA-style questions (their overlays show whether the cell was kept)."""
    lines = read_jsonl(eval_dir / "gqa" / "llava_gqa_testdev_balanced.jsonl", required_fields=("question_id", "text"))[0]
    return [line for line in lines if line.get("kind") in ONE_CELL][:count]


def draw_overlays(args: argparse.Namespace, configs: Sequence[Config], report: Path) -> dict[str, list[tuple[str, str]]]:
    """Kept-token overlays at the smallest budget: ``{question id: [(config name, png name), ...]}`` and records."""
    questions = overlay_questions(args.eval_dir, args.overlays)
    smallest = min(args.tokens)
    chosen = [c for c in configs if c.tokens == smallest and (c.heads is None or c.strategy == DEFAULT_HEAD_STRATEGIES[0])]
    settings = GenerationSettings(max_new_tokens=1)
    pictures: dict[str, list[tuple[str, str]]] = defaultdict(list)
    records = []
    for question in questions:
        image_path = args.eval_dir / "gqa" / "data" / "images" / question["image"]
        image = open_image(image_path)
        name = f"{question['question_id']}_image.png"
        kept_overlay(image, range(576), question["cells"]).save(report / name)
        pictures[question["question_id"]].append(("vanilla (all 576)", name))
        for config in chosen:
            bundle = load_model_bundle(str(args.model_path), *config_method(config))
            answer_batch(bundle, settings, [question["text"]], [image])
            record = pruning_decoder(bundle.model).pruning_state.record
            saved = save_kept_record(report / f"{question['question_id']}_{config.name}.json", str(image_path),
                                     question["text"], question["cells"], config.name, record)
            records.append(saved)
            png = f"{question['question_id']}_{config.name}.png"
            kept_overlay(image, kept_at_stage(saved, 0), question["cells"]).save(report / png)  # the first prune
            pictures[question["question_id"]].append((config.name, png))
    if records:
        per_method = {r["method"]: r for r in records}
        plot_tokens_per_layer(list(per_method.values()), report.parent / "tokens_per_layer.png")
    return pictures


def config_method(config: Config) -> tuple[str | None, dict]:
    """``(pruning_method, params)`` of a configuration, resolved from its loader flags as the loader does."""
    args = build_parser("demo").parse_args(["--question-file", "-", "--answers-file", "-", *config.loader_flags()])
    return pruning_method(args), pruning_params(args)


def as_number(cell: str) -> float | str:
    """A CSV cell as a float when it is a number (so the page rounds it), else unchanged."""
    try:
        return float(cell) if cell not in ("True", "False") else cell
    except ValueError:
        return cell


def table_html(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{'' if v is None else html.escape(summarize._format(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(summary: Path, model_path: Path, per_type: tuple, pictures: dict, wall_s: float) -> Path:
    with (summary / "results.csv").open(encoding="utf-8", newline="") as handle:
        header, *rows = list(csv.reader(handle))
    rows = [[as_number(cell) for cell in row] for row in rows]
    plots = [p.name for p in sorted(summary.glob("*.png"))]
    figures = "".join(f'<figure><img src="{html.escape(p)}" alt="{html.escape(p)}"><figcaption>{html.escape(p)}</figcaption></figure>' for p in plots)
    overlay_rows = "".join(
        f"<h3>{html.escape(qid)}</h3><div class=row>"
        + "".join(f'<figure><img src="report/{html.escape(png)}" alt="{html.escape(name)}"><figcaption>{html.escape(name)}</figcaption></figure>'
                  for name, png in entries)
        + "</div>"
        for qid, entries in pictures.items()
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Pruning ablation: {html.escape(model_path.name)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:12px}}td,th{{border:1px solid #ccc;padding:2px 6px}}
figure{{display:inline-block;margin:4px;text-align:center;max-width:100%}}figure img{{max-width:100%}}.row figure img{{width:168px}}</style></head><body>
<h1>Visual-token pruning ablation on {html.escape(str(model_path))}</h1>
<p>Wall time of this run: {wall_s:.0f} s. Scores: GQA-style accuracy, POPE mean F1, ScienceQA-style option accuracy;
relative_% is the mean over benchmarks of score / vanilla score.</p>
<h2>Summary</h2>{table_html(header, rows)}
<h2>Accuracy per question type (%)</h2>{table_html(*per_type)}
<h2>Plots</h2>{figures}
<h2>Kept tokens at each method's first pruning stage (pruned patches faded; the answer's cells outlined)</h2>{overlay_rows}
</body></html>"""
    index = summary / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def build_demo_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--eval-dir", type=Path, default=DEFAULT_EVAL_DIR, help="benchmarks (written here if missing), answers, results")
    parser.add_argument("--per-benchmark", type=int, default=120, help="questions per benchmark when they are generated")
    parser.add_argument("--tokens", type=int, nargs="+", default=[192, 128, 64])
    parser.add_argument("--methods", nargs="+", default=None,
                        help="default: every registered method but learned_merger (learned at the budgets the model ships a pruner for)")
    parser.add_argument("--head-grid", choices=("default", "full"), default="default",
                        help=f"default: strategies {' '.join(DEFAULT_HEAD_STRATEGIES)} at half the heads per layer; "
                        "full: every strategy x every head count")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--overlays", type=int, default=3, help="one-cell questions to draw kept-token overlays for")
    return parser


def model_config(model_path: Path) -> tuple[LlavaConfig | None, str | None]:
    """The LLaVA config of the model folder, or the one-line reason there is none usable."""
    if not (model_path / "config.json").is_file():
        return None, (f"no model at {model_path} (config.json missing): pass --model-path, or train the shipped one with "
                      "python -m llava.train.train_shapes_vlm --export playground/models/shapes-llava")
    try:
        config = AutoConfig.from_pretrained(model_path)
    except (OSError, ValueError) as error:
        return None, f"--model-path {model_path}: unreadable config.json ({str(error).splitlines()[0]})"
    if not isinstance(config, LlavaConfig):
        return None, f"--model-path {model_path}: a {type(config).__name__}, not a LLaVA model (the demo needs images)"
    return config, None


def setting_problems(args: argparse.Namespace, config: LlavaConfig) -> list[str]:
    """Every demo flag that cannot work with this model, one line each (checked before any work)."""
    registered = available_methods()
    problems = []
    unknown = sorted(set(args.methods) - set(registered))
    if unknown:
        problems.append(f"unknown method(s) {', '.join(unknown)}; registered: {', '.join(registered)}")
    ablation_only = sorted(set(args.methods) & set(ABLATION_ONLY))
    if ablation_only:
        problems.append(f"--methods {' '.join(ablation_only)}: needs a trained merger per run; run it with "
                        "python -m llava.train.shapes_pruner_runs")
    span = image_features_per_image(config)
    bad_tokens = [t for t in args.tokens if not 0 < t <= span]
    if bad_tokens:
        problems.append(f"--tokens {' '.join(map(str, bad_tokens))}: a budget must lie in [1, {span}] (the model's visual tokens)")
    if len(set(args.tokens)) != len(args.tokens):
        problems.append(f"--tokens {' '.join(map(str, args.tokens))}: give each budget once")
    for flag, value, least in (("--batch-size", args.batch_size, 1), ("--per-benchmark", args.per_benchmark, 1),
                               ("--overlays", args.overlays, 0)):
        if value < least:
            problems.append(f"{flag} must be >= {least}, got {value}")
    if args.eval_dir.exists() and not args.eval_dir.is_dir():
        problems.append(f"--eval-dir {args.eval_dir}: a file, not a folder")
    return problems


def plan_problems(configs: Sequence[Config], model_path: Path, config: LlavaConfig) -> list[str]:
    """Why a configuration's method cannot be planned on this model (e.g. a budget FastV cannot reach at
    its layer): what the loader would refuse, found before any run starts (distinct messages)."""
    rows_by_problem: dict[str, list[str]] = defaultdict(list)
    for row in configs:
        if row.method == "vanilla":
            continue
        method, params = config_method(row)
        _, params = split_engine_fields({k: v for k, v in params.items() if k != "visual_token_num"})
        try:
            planned_method(method, config.text_config, image_features_per_image(config), row.tokens, params,
                           str(model_path))
        except (ValueError, OSError) as error:
            rows_by_problem[str(error)].append(row.name)
    return [f"{', '.join(rows)}: {problem}" for problem, rows in rows_by_problem.items()]


def demo_configs(args: argparse.Namespace, config: LlavaConfig) -> list[Config]:
    """The ablation rows the flags ask for, without ``learned`` rows the model ships no pruner for (said)."""
    heads = config.text_config.num_attention_heads
    if args.head_grid == "default":
        strategies, counts = DEFAULT_HEAD_STRATEGIES, (max(1, heads // 2),)
    else:
        strategies, counts = HEAD_STRATEGIES, tuple(range(1, heads + 1))
    # fastv_fine_head runs in the head grid, ablation_a as the "dynamic" rows (--enable-dynamic-selection)
    methods = [m for m in args.methods if m not in ("fastv_fine_head", DYNAMIC_SELECTION_METHOD)]
    configs = ablation_configs(args.tokens, methods, strategies, counts)
    unshipped = [c for c in configs if c.method == "learned" and not shipped_pruner_path(args.model_path, c.tokens).is_file()]
    if unshipped:
        print(f"learned: no pruner shipped for {', '.join(c.name for c in unshipped)} "
              f"(train one with python -m llava.train.train_pruner ... --ship {args.model_path}); those rows are left out")
    return [c for c in configs if c not in unshipped]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_demo_parser()
    args = parser.parse_args(argv)
    args.methods = args.methods or [m for m in available_methods() if m not in ABLATION_ONLY]
    config, problem = model_config(args.model_path)
    if problem:
        setting_error(parser, problem)
    problems = setting_problems(args, config)
    if problems:
        setting_error(parser, "; ".join(problems))
    configs = demo_configs(args, config)
    problems = plan_problems(configs, args.model_path, config)
    if problems:
        setting_error(parser, "; ".join(problems))
    ensure_benchmarks(args.eval_dir, args.per_benchmark)
    started = time.time()
    failed = []
    with reusing_loaded_models():
        for index, row in enumerate(configs, 1):
            for benchmark in BENCHMARKS:
                print(f"=== [{index}/{len(configs)}] {row.name} on {benchmark} ===", flush=True)
                if run_config(args, row, benchmark) != 0:
                    failed.append(f"{row.name}/{benchmark}")
        summary = args.eval_dir / "summary"
        summary_code = summarize.main(["--results-dir", str(args.eval_dir / "results"), "--output-dir", str(summary)])
        per_type = per_type_table(args.eval_dir, configs)
        (summary / "per_type.md").write_text(summarize.markdown(*per_type), encoding="utf-8")
        print(summarize.markdown(*per_type))
        report = summary / "report"
        report.mkdir(parents=True, exist_ok=True)
        pictures = draw_overlays(args, configs, report)
    curves = args.model_path / "training_curves.png"
    if curves.exists():
        shutil.copy(curves, summary / "training_curves.png")
    index = write_report(summary, args.model_path, per_type, pictures, time.time() - started)
    print(f"report: {index} ({time.time() - started:.0f} s)")
    if failed:
        print(f"error: {len(failed)} run(s) failed or are incomplete: {', '.join(failed)}; re-run to resume", file=sys.stderr)
        return 1
    return summary_code


if __name__ == "__main__":
    sys.exit(main())
