"""`make demo`: the visual-token pruning ablation on the shipped shapes VLM, with an HTML report.

Every configuration (vanilla; every registered method at each budget; FastV + head selection for
head strategies x head counts; the dynamic selector ``ablation_a``) runs on the three held-out shapes
benchmarks through the project's own entry points, in this process, with the arguments
``scripts/v1_5/7b/{gqa,pope,sqa}.sh`` pass them: the loader writes the answers file and its run record
(and resumes), the scorer writes the result record (with coverage), ``summarize`` builds the table and
plots. The model is loaded once (``reusing_loaded_models``); a second run finds every answer on disk and
only re-scores. Then a per-question-type table, kept-token overlays for a few one-cell questions, and
``<eval-dir>/summary/index.html``.

Every score comes with its bootstrap 95 % interval (``llava.eval.intervals``; rel paired with vanilla over
the same questions), ``random`` runs ``--random-seeds`` keep-set seeds (their mean and spread is a row of its
own), POPE-style accuracy stands beside F1 and ScienceQA-style first-letter accuracy beside the strict one,
``summary/ranks.md`` ranks the rows per budget with paired-bootstrap differences, and ``evidence recall``
(``llava.eval.evidence``) says how much of the cells each answer reads every pruning stage kept; the loop
has the loaders record each answer's kept patches for it (``--record-kept-patches``). The report sets the published
LLaVA-1.5-7B numbers (``PUBLISHED``) beside ours.

    python -m llava.demo [--model-path DIR] [--eval-dir DIR] [--questions N] [--tokens 192 128 64]
                         [--random-seeds 5] [--head-grid full]
"""

from __future__ import annotations

import argparse
import csv
import html
import json
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
from llava.eval.evidence import answers_evidence, attach_evidence
from llava.eval.inference import GenerationSettings, answer_batch, load_model_bundle, reusing_loaded_models
from llava.eval.jsonl_io import read_jsonl
from llava.eval.results import read_results
from llava.eval.run_loop import open_image
from llava.eval.scorers import gqa, pope, scienceqa
from llava.model.builder import planned_method, pruning_decoder, split_engine_fields
from llava.model.vision import image_features_per_image
from llava.pruning.head_selection import HEAD_STRATEGIES
from llava.pruning.learned.checkpoint import shipped_pruner_path
from llava.pruning.registry import available_methods
from llava.shapes.benchmarks import (
    BENCHMARKS,
    answer_key,
    ensure_benchmarks,
    evidence_cells,
    normalise,
    written_settings,
)
from llava.shapes.questions import ONE_CELL
from llava.viz import evidence_counts, kept_at_stage, kept_overlay, plot_tokens_per_layer, save_kept_record
from toolkit_common.cli import setting_error

DEFAULT_MODEL = Path("playground/models/shapes-llava")
DEFAULT_EVAL_DIR = Path("playground/data/eval/shapes")
DEFAULT_QUESTIONS = 120
DEFAULT_HEAD_STRATEGIES = ("sum", "entropy", "max_attention")
ABLATION_ONLY = ("learned_merger",)  # issue 18's pre-LLM merger ablation (llava.train.shapes_pruner_runs), not a default row
RESULT_NAMES = {"gqa": "gqa", "pope": "pope", "scienceqa": "sqa"}  # result record (and table column) per benchmark

PUBLISHED_SOURCES = {
    "sparsevlm": "SparseVLM paper's LLaVA-1.5-7B table (Zhang et al., 2024, \"SparseVLM: Visual Token Sparsification for "
                 "Efficient Vision-Language Model Inference\")",
    "cdpruner": "CDPruner paper's LLaVA-1.5-7B table (\"Beyond Attention or Similarity: Maximizing Conditional Diversity "
                "for Token Pruning in MLLMs\"), its own protocol",
}
PUBLISHED_VANILLA = {"gqa": 61.9, "pope": 85.9, "sqa": 69.5}  # LLaVA-1.5-7B, 576 tokens (SparseVLM paper's table)
PUBLISHED = {  # (source, method, tokens): GQA, POPE (F1, mean of the splits), SQA-IMG: LLaVA-1.5-7B, copied from the papers
    ("sparsevlm", "fastv", 192): {"gqa": 52.7, "pope": 64.8, "sqa": 67.3},
    ("sparsevlm", "fastv", 128): {"gqa": 49.6, "pope": 59.6, "sqa": 60.2},
    ("sparsevlm", "fastv", 64): {"gqa": 46.1, "pope": 48.0, "sqa": 51.1},
    ("sparsevlm", "sparsevlm", 192): {"gqa": 57.6, "pope": 83.6, "sqa": 69.1},
    ("sparsevlm", "sparsevlm", 128): {"gqa": 56.0, "pope": 80.5, "sqa": 67.1},
    ("sparsevlm", "sparsevlm", 64): {"gqa": 52.7, "pope": 75.1, "sqa": 62.2},
    ("sparsevlm", "pdrop", 192): {"gqa": 57.1, "pope": 82.3, "sqa": 70.2},
    ("sparsevlm", "pdrop", 128): {"gqa": 56.0, "pope": 82.3, "sqa": 69.9},
    ("cdpruner", "fastv", 128): {"gqa": 55.3, "pope": 70.0, "sqa": 68.7},
    ("cdpruner", "pdrop", 128): {"gqa": 56.8, "pope": 77.9, "sqa": 69.5},
    ("cdpruner", "sparsevlm", 128): {"gqa": 57.0, "pope": 83.3, "sqa": 69.3},
    ("cdpruner", "cdpruner", 128): {"gqa": 59.3, "pope": 87.3, "sqa": 69.0},
    ("cdpruner", "vispruner", 128): {"gqa": 58.4, "pope": 85.0, "sqa": 69.1},
    ("cdpruner", "cdpruner", 64): {"gqa": 58.6, "pope": 87.0, "sqa": 68.1},
}
"""Published LLaVA-1.5-7B numbers set beside ours (the project's ``shared/REFERENCE.md`` collects them); the
relative score of each is against ``PUBLISHED_VANILLA`` (the CDPruner table lists no vanilla row)."""


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


def random_seed_configs(tokens: Sequence[int], seeds: int) -> list[Config]:
    """``random`` at keep-set seeds 1 .. ``seeds`` - 1 (seed 0, the method's default, is the plain row)."""
    return [Config("random", t, variant=f"seed{seed}", method_params=(("seed", str(seed)),))
            for t in tokens for seed in range(1, seeds)]


def result_path(eval_dir: Path, benchmark: str, config: Config) -> Path:
    """The result record the scorer writes for one configuration and benchmark."""
    return eval_dir / "results" / config.name / f"{RESULT_NAMES[benchmark]}.json"


def benchmark_steps(eval_dir: Path, benchmark: str, config: Config) -> tuple[tuple[Callable, list[str]], tuple[Callable, list[str]], Path]:
    """(loader main, argv), (scorer main, argv) and the merged answers file, as the per-dataset scripts build them."""
    root = eval_dir / benchmark
    result = result_path(eval_dir, benchmark, config)
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
    """Answer (resuming) and score one benchmark, then add the answers' evidence recall to the result record;
    the worst exit code of the steps."""
    (loader, loader_args), (scorer, scorer_args), answers = benchmark_steps(args.eval_dir, benchmark, config)
    answers.mkdir(parents=True, exist_ok=True)
    common = ["--model-path", str(args.model_path), "--answers-file", str(answers / "1_0.jsonl"), "--num-chunks", "1",
              "--chunk-idx", "0", "--temperature", "0", "--conv-mode", "vicuna_v1", "--batch-size", str(args.batch_size),
              "--max_new_tokens", "8", "--record-kept-patches"]
    code = loader([*common, *config.loader_flags(), *loader_args])
    if code != 0:
        return code
    merged = chunking.main(["--answers-dir", str(answers), "--num-chunks", "1", "--output", str(answers / "merge.jsonl")])
    code = merged or scorer(scorer_args)
    result = result_path(args.eval_dir, benchmark, config)
    if not merged and result.is_file():
        lines = read_jsonl(answers / "merge.jsonl", required_fields=("question_id", "text"))[0]
        attach_evidence(result, answers_evidence(lines, evidence_cells(args.eval_dir / benchmark, benchmark)))
    return code


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
    """Kept-token overlays at the smallest budget: ``{question id: [(caption, png name), ...]}`` (the caption
    names the configuration and how many of the evidence cells' patches its first stage kept) and records."""
    questions = overlay_questions(args.eval_dir, args.overlays)
    smallest = min(args.tokens)
    chosen = [c for c in configs if c.tokens == smallest and c.variant is None
              and (c.heads is None or c.strategy == DEFAULT_HEAD_STRATEGIES[0])]
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
            kept = kept_at_stage(saved, 0)  # the first prune
            kept_overlay(image, kept, question["cells"]).save(report / png)
            found, total = evidence_counts(kept, question["cells"])
            layer = f" at layer {saved['stages'][0]['layer']}" if saved["stages"] else ""
            pictures[question["question_id"]].append((f"{config.name}: evidence {found}/{total}{layer}", png))
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


def read_csv(path: Path) -> tuple[list[str], list[list]]:
    """A table the summary wrote, numbers as floats."""
    with path.open(encoding="utf-8", newline="") as handle:
        header, *rows = list(csv.reader(handle))
    return header, [[as_number(cell) for cell in row] for row in rows]


def _relative(scores: dict[str, float], vanilla: dict[str, float]) -> float:
    return sum(100 * scores[name] / vanilla[name] for name in vanilla) / len(vanilla)


def published_comparison(rows: Sequence[summarize.SummaryRow]) -> tuple[list[str], list[list]]:
    """Per published (source, budget): each method's LLaVA-1.5-7B numbers and relative score, ours beside them
    (relative with its interval), and both ranks among the methods that source lists at that budget."""
    boot = summarize.Bootstrap(rows)
    ours = {(row.config.method, row.config.tokens): row for row in rows
            if row.config.heads is None and not row.config.dynamic and row.config.params is None}
    header = ["source", "tokens", "method", "LLaVA-1.5-7B GQA / POPE / SQA", "LLaVA-1.5-7B rel %", "rank there",
              "ours GQA / POPE / SQA", "ours rel % [95% CI]", "rank here"]
    cells = []
    for source, tokens in sorted({(key[0], key[2]) for key in PUBLISHED}, key=lambda key: (key[0], -key[1])):
        listed = sorted((method, numbers) for (where, method, budget), numbers in PUBLISHED.items() if (where, budget) == (source, tokens))
        theirs = {method: _relative(numbers, PUBLISHED_VANILLA) for method, numbers in listed}
        here = {method: summarize.relative_score(ours[method, tokens], boot.vanilla) for method, _ in listed if (method, tokens) in ours}
        here = {method: value for method, value in here.items() if value is not None}
        for method, numbers in sorted(listed, key=lambda item: -theirs[item[0]]):
            row = ours.get((method, tokens))
            own = " / ".join(summarize._format(row.scores.get(name)) for name in ("gqa", "pope", "sqa")) if row else ""
            relative = ""
            if method in here:
                low, high = summarize._interval(boot.relative(row))
                relative = f"{here[method]:.1f}" + (f" [{low:.1f}, {high:.1f}]" if low is not None else "")
            rank_here = 1 + sum(value > here[method] for value in here.values()) if method in here else None
            cells.append([source, tokens, method, " / ".join(f"{numbers[name]:.1f}" for name in ("gqa", "pope", "sqa")),
                          round(theirs[method], 1), 1 + sum(value > theirs[method] for value in theirs.values()),
                          own, relative, rank_here])
    return header, cells


def write_report(summary: Path, model_path: Path, per_type: tuple, pictures: dict, wall_s: float,
                 rows: Sequence[summarize.SummaryRow], settings: dict) -> Path:
    header, table_rows = read_csv(summary / "results.csv")
    shown = summarize.with_intervals_shown(header, table_rows)
    ranks = ""
    if (summary / "ranks.csv").is_file():
        rank_header, rank_rows = read_csv(summary / "ranks.csv")
        ranks = table_html(*summarize.rank_display(rank_header, rank_rows))
    plots = [p.name for p in sorted(summary.glob("*.png"))]
    figures = "".join(f'<figure><img src="{html.escape(p)}" alt="{html.escape(p)}"><figcaption>{html.escape(p)}</figcaption></figure>' for p in plots)
    overlay_rows = "".join(
        f"<h3>{html.escape(qid)}</h3><div class=row>"
        + "".join(f'<figure><img src="report/{html.escape(png)}" alt="{html.escape(name)}"><figcaption>{html.escape(name)}</figcaption></figure>'
                  for name, png in entries)
        + "</div>"
        for qid, entries in pictures.items()
    )
    sources = "".join(f"<li><b>{html.escape(key)}</b>: {html.escape(text)}</li>" for key, text in PUBLISHED_SOURCES.items())
    vanilla = ", ".join(f"{name.upper()} {value}" for name, value in PUBLISHED_VANILLA.items())
    seeds = ""
    if settings["seeds"] > 1:
        seeds = (f"<li><b>random</b> runs keep-set seeds 0-{settings['seeds'] - 1} at {settings['seed_tokens']} tokens (one keep set per "
                 "seed, shared by every question): one row per seed, and the row <i>mean over N seeds</i> (scores, relative and "
                 "intervals averaged over the seeds, resampled together), with <b>seeds</b> and the seeds' relative range "
                 "<b>relative_seed_min / max</b>.</li>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Pruning ablation: {html.escape(model_path.name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:110em}}table{{border-collapse:collapse;font-size:12px}}td,th{{border:1px solid #ccc;padding:2px 6px}}
.claim{{border-left:4px solid #c00;padding:.3em .8em;background:#fff4f4}}
figure{{display:inline-block;margin:4px;text-align:center;max-width:100%}}figure img{{max-width:100%}}.row figure img{{width:168px}}</style></head><body>
<h1>Visual-token pruning ablation on {html.escape(str(model_path))}</h1>
<p class=claim><b>Rankings on this model follow where it reads the image and do not predict LLaVA-1.5-7B's.</b> The shapes VLM
answers through circuits written into layers 1-5 (the question's key words at layer 1, the cell lookup at layer 2 head 0, counting
at layer 3, the option letter at layer 5; docs/shapes_vlm.md): a method that keeps the patches those layers read keeps the answer,
whatever it would do on a real model. The published LLaVA-1.5-7B numbers stand beside ours below; their ranking is not ours.</p>
<h2>Published LLaVA-1.5-7B numbers beside ours</h2>
<p>Relative % = mean over GQA, POPE (F1) and SQA of score / vanilla score; published ones against LLaVA-1.5-7B's vanilla ({vanilla},
SparseVLM paper's row; the CDPruner table lists none). Ranks are among the methods the source lists at that budget. Sources:</p>
<ul>{sources}</ul>
{table_html(*published_comparison(rows))}
<h2>How to read the numbers</h2>
<ul>
<li><b>Intervals</b>: every score is followed by its 95 % interval in brackets: a percentile bootstrap over the questions
(1000 resamples, seed 0; POPE resampled within each split; <code>llava/eval/intervals.py</code>). {settings['questions']} questions per
benchmark. <b>relative_%</b> = mean over benchmarks of 100 x score / vanilla score; its interval is paired: each resample scores the
row and vanilla on the same questions.</li>
<li><b>Scores</b>: gqa = GQA-style accuracy; pope = POPE-style F1 (mean over the random / popular / adversarial splits) with
<b>pope_acc</b> (accuracy, mean over splits) beside it; sqa = ScienceQA-style strict option accuracy (LLaVA's parsing) with
<b>sqa_first_letter</b> (the reply's first option letter) beside it.</li>
{seeds}<li><b>Evidence recall</b>: every question records the cells its answer reads (the asked cell; for right-of the named object's and
the answer's; the counted objects'; every object for most-common; the object asked about when present; absent objects and counts
of 0 read none and are left out). Each 56 px cell is 4 x 4 of the tower's 24 x 24 patches. <b>evidence_recall_%</b> is the mean
over questions of the share of those patches the first pruning stage (at <b>evidence_layer</b>) keeps, with its interval;
<b>evidence_chance_%</b> = kept / 576, what a random keep set of that size recalls on average; <b>evidence_stages</b> lists every
stage as L&lt;layer&gt; recall/chance (multi-stage methods prune again deeper). The model reads the cells at layers 1-5, so a stage at
layer 2 that drops the evidence loses the answer, while a stage after layer 5 costs little whatever it keeps.</li>
<li><b>Ranks</b> (<code>summary/ranks.md</code>): per budget, the rows by relative score; "vs best" / "vs next" is the paired-bootstrap
difference in relative points to the best row and to the next one down with its 95 % interval, <b>*</b> where the interval excludes 0
(a difference beyond the noise of {settings['questions']} questions per benchmark). Rows without a * between them are not told apart
by this run.</li>
</ul>
<p>Wall time of this run: {wall_s:.0f} s.</p>
<h2>Summary</h2>{table_html(*shown)}
<h2>Ranks per budget (relative %, paired bootstrap)</h2>{ranks}
<h2>Accuracy per question type (%)</h2>{table_html(*per_type)}
<h2>Plots</h2>{figures}
<h2>Kept tokens at each method's first pruning stage</h2>
<p>Pruned patches faded; the answer's evidence cells outlined in black, their patches green when kept and red when pruned; the
caption gives the evidence patches kept.</p>{overlay_rows}
</body></html>"""
    index = summary / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def has_evidence(eval_dir: Path, config: Config) -> bool:
    """Whether every benchmark's result record of a configuration carries evidence recall."""
    for benchmark in BENCHMARKS:
        path = result_path(eval_dir, benchmark, config)
        if not path.is_file() or "evidence" not in json.loads(path.read_text(encoding="utf-8")):
            return False
    return True


def build_demo_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--eval-dir", type=Path, default=None,
                        help=f"benchmarks (written here if missing), answers, results (default {DEFAULT_EVAL_DIR}; with "
                        f"--questions N other than {DEFAULT_QUESTIONS}: {DEFAULT_EVAL_DIR}_qN)")
    parser.add_argument("--questions", "--per-benchmark", dest="questions", type=int, default=None,
                        help=f"questions per benchmark (default {DEFAULT_QUESTIONS}, or as many as --eval-dir holds); an "
                        "--eval-dir written with another count is refused")
    parser.add_argument("--tokens", type=int, nargs="+", default=[192, 128, 64])
    parser.add_argument("--random-seeds", type=int, default=5,
                        help="random's keep-set seeds 0 .. N-1, each a row, and a row of their mean and spread")
    parser.add_argument("--seed-tokens", type=int, nargs="+", default=None,
                        help="the budgets (of --tokens) random runs its extra seeds at (default: the smallest, where "
                        "the keep set matters most; all three budgets would take the default demo past 10 minutes on 2 cores)")
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
    for flag, value, least in (("--batch-size", args.batch_size, 1), ("--questions", args.questions, 1),
                               ("--overlays", args.overlays, 0), ("--random-seeds", args.random_seeds, 1)):
        if value < least:
            problems.append(f"{flag} must be >= {least}, got {value}")
    stray = sorted(set(args.seed_tokens) - set(args.tokens))
    if stray:
        problems.append(f"--seed-tokens {' '.join(map(str, stray))}: not among --tokens {' '.join(map(str, args.tokens))}")
    if args.eval_dir.exists() and not args.eval_dir.is_dir():
        problems.append(f"--eval-dir {args.eval_dir}: a file, not a folder")
    elif args.questions_given:
        counts = {name: (written_settings(args.eval_dir, name) or {}).get("per_benchmark") for name in BENCHMARKS}
        other = {name: count for name, count in counts.items() if count is not None and count != args.questions}
        if other:
            problems.append(f"--questions {args.questions}: {args.eval_dir} holds {', '.join(f'{n} ({c} questions)' for n, c in other.items())}; "
                            "pass another --eval-dir or delete those folders")
    return problems


def resolve_counts(args: argparse.Namespace) -> None:
    """``args.questions`` (as given, else what the eval dir's benchmarks hold, else ``DEFAULT_QUESTIONS``),
    ``args.eval_dir`` (the default one per question count) and ``args.seed_tokens``."""
    args.questions_given = args.questions is not None
    if args.eval_dir is None:
        count = args.questions or DEFAULT_QUESTIONS
        args.eval_dir = DEFAULT_EVAL_DIR if count == DEFAULT_QUESTIONS else DEFAULT_EVAL_DIR.with_name(f"{DEFAULT_EVAL_DIR.name}_q{count}")
    if args.questions is None:
        written = {(written_settings(args.eval_dir, name) or {}).get("per_benchmark")
                   for name in BENCHMARKS} if args.eval_dir.is_dir() else set()
        written.discard(None)
        args.questions = written.pop() if len(written) == 1 else DEFAULT_QUESTIONS
    args.seed_tokens = [min(args.tokens)] if args.seed_tokens is None else args.seed_tokens


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
    if "random" in methods:
        configs += random_seed_configs(args.seed_tokens, args.random_seeds)
    unshipped = [c for c in configs if c.method == "learned" and not shipped_pruner_path(args.model_path, c.tokens).is_file()]
    if unshipped:
        print(f"learned: no pruner shipped for {', '.join(c.name for c in unshipped)} "
              f"(train one with python -m llava.train.train_pruner ... --ship {args.model_path}); those rows are left out")
    return [c for c in configs if c not in unshipped]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_demo_parser()
    args = parser.parse_args(argv)
    args.methods = args.methods or [m for m in available_methods() if m not in ABLATION_ONLY]
    resolve_counts(args)
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
    ensure_benchmarks(args.eval_dir, args.questions)
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
    rows = summarize.build_rows(read_results(args.eval_dir / "results"))
    settings = {"questions": args.questions, "seeds": args.random_seeds if "random" in args.methods else 1,
                "seed_tokens": " / ".join(map(str, sorted(args.seed_tokens, reverse=True)))}
    index = write_report(summary, args.model_path, per_type, pictures, time.time() - started, rows, settings)
    print(f"report: {index} ({time.time() - started:.0f} s)")
    unrecorded = [row.name for row in configs if row.method != "vanilla" and not has_evidence(args.eval_dir, row)]
    if unrecorded:
        print(f"note: no evidence recall for {len(unrecorded)} configuration(s) ({', '.join(unrecorded[:4])}"
              f"{', ...' if len(unrecorded) > 4 else ''}): their answers predate the kept-patch records; delete their "
              f"answers under {args.eval_dir}/<benchmark>/answers to record them")
    if failed:
        print(f"error: {len(failed)} run(s) failed or are incomplete: {', '.join(failed)}; re-run to resume", file=sys.stderr)
        return 1
    return summary_code


if __name__ == "__main__":
    sys.exit(main())
