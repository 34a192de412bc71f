"""Query-agnostic KV compression, side by side with kvpress 0.5.5 (issue 17).

In the query-agnostic setting (multi-turn chat, prefix caching; kvpress's protocol) the context is
compressed before the question arrives (:mod:`kvcompress.evaluation.query_agnostic`). This bench

1. writes one prompt file (``prompts.jsonl``: passkey context / question token ids cut from one
   tokenization, answer, depth, length; the strided perplexity windows' ids), read by both sides;
2. picks the windowed KV-group counts ``k`` of the ranked classification whose KV reduction at the
   longest passkey context is nearest each ``--targets`` value (:mod:`bench.query_agnostic_plan`);
3. measures our rows: full; windowed + dead at each ``k``; StreamingLLM and SnapKV matched to the same
   KV fraction at each task's context; passkey in both protocols (query-agnostic, and the whole-prompt
   question-aware one) and the strided perplexity (query-agnostic by construction);
4. builds ``.venv-kvpress`` if missing (:mod:`bench.kvpress_venv`) and runs ``bench/kvpress_rows.py`` in
   it as a subprocess, at the same time as step 3: each press at ``compression_ratio = 1 - f(k, T_task)``;
5. merges both into ``results.md`` / ``results.json`` / ``results.png`` (rewritten after every row).

Rows are appended to ``rows_ours.jsonl`` / ``rows_kvpress.jsonl`` as they finish; a re-run with the same
settings and prompts reuses them. ``--table-only`` re-merges what is there (the rows measured with these
settings on the folder's ``prompts.jsonl``); with no such row it warns and writes nothing, so an empty
table never replaces results.

    python -m bench.query_agnostic --model smollm2 --threads 1
    python -m bench.query_agnostic --no-kvpress --passkey-prompts 10 --out /tmp/qa_quick
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bench.kvpress_rows import PRESSES
from bench.kvpress_venv import KVPRESS_VENV, build_venv, installed_versions, is_built
from bench.query_agnostic_plan import OURS, Unit, groups_for_reduction, plan_units
from bench.query_agnostic_prompts import (
    PERPLEXITY_TASK,
    file_digest,
    passkey_task,
    perplexity_windows,
    read_prompt_file,
    write_prompt_file,
)
from bench.query_agnostic_table import save_merged
from kvcompress.analysis.calibration import with_cheapest_windows
from kvcompress.classification import CLASSIFICATION_HINT, HeadClassification
from kvcompress.evaluation.benchmark import PROTOCOLS, QUERY_AGNOSTIC, BenchmarkSettings, measure_quality
from kvcompress.evaluation.passkey import answer_has_key, make_passkey_prompts
from kvcompress.evaluation.query_agnostic import prefill_context
from kvcompress.evaluation.text import DEFAULT_TEXT, load_token_stream
from kvcompress.methods.registry import MethodSettings, build_method, kv_fraction
from kvcompress.models.loading import load_model_and_tokenizer, model_problem, model_slug
from toolkit_common.cli import missing_file_problem, setting_error
from toolkit_common.jsonl import JsonlAppender, drop_incomplete_tail, read_jsonl
from toolkit_common.script_args import (
    apply_execution_flags,
    execution_flags,
    execution_problem,
    model_flag,
    out_flag,
    text_flag,
    threads_flag,
)

DEFAULT_CLASSIFICATION = Path("docs/kvcompress_results/head_classification_gates_w128.json")
KVPRESS_SCRIPT = Path(__file__).with_name("kvpress_rows.py")
MIN_PASSKEY_LENGTH = 128  # task sentence + needle + question take ~70 tokens
PROMPT_FILE = "prompts.jsonl"
ROW_FILES = ("rows_ours.jsonl", "rows_kvpress.jsonl")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[model_flag(), text_flag(DEFAULT_TEXT, type=Path),
                 threads_flag(1, help="torch threads of each side"),
                 out_flag(type=Path, help="default results/query_agnostic_<model>/"), execution_flags()])
    parser.add_argument("--classification", type=Path, default=DEFAULT_CLASSIFICATION,
                        help="ranked classification (gate or calibration scores)")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.25, 0.43, 0.50],
                        help="KV reductions (fractions in (0, 1)) at the longest passkey context")
    parser.add_argument("--groups", type=int, nargs="+", default=None, help="explicit k values instead of --targets")
    parser.add_argument("--sinks", type=int, default=4)
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--passkey-lens", type=int, nargs="+", default=[600, 1000])
    parser.add_argument("--passkey-prompts", type=int, default=50)
    parser.add_argument("--depth-range", type=float, nargs=2, default=[0.1, 0.9], metavar=("LOW", "HIGH"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ppl-windows", type=int, default=16, help="strided windows (0: no perplexity)")
    parser.add_argument("--ppl-max-length", type=int, default=512)
    parser.add_argument("--ppl-stride", type=int, default=256)
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS,
                        help="passkey protocols of our rows (kvpress rows are query-agnostic)")
    parser.add_argument("--presses", nargs="+", default=list(PRESSES), choices=PRESSES)
    parser.add_argument("--no-kvpress", action="store_true",
                        help="measure only our rows (kvpress rows already in --out are still merged)")
    parser.add_argument("--kvpress-venv", type=Path, default=KVPRESS_VENV)
    parser.add_argument("--table-only", action="store_true", help="re-merge the rows that are there (none: a warning, nothing written)")
    args = parser.parse_args(argv)
    if problem := settings_problem(args):
        setting_error(parser, problem)
    return args


def settings_problem(args: argparse.Namespace) -> str | None:
    """The first bad setting as one line (checked before anything loads), or None."""
    if problem := model_problem(args.model):
        return problem
    if problem := missing_file_problem("--classification", args.classification, CLASSIFICATION_HINT):
        return problem
    if any(not 0 < target < 1 for target in args.targets):
        return f"--targets {args.targets}: KV reductions must lie in (0, 1), e.g. 0.25 0.43 0.5"
    if any(length < MIN_PASSKEY_LENGTH for length in args.passkey_lens):
        return f"--passkey-lens {args.passkey_lens}: each must be >= {MIN_PASSKEY_LENGTH} tokens"
    if args.passkey_prompts < 1:
        return f"--passkey-prompts {args.passkey_prompts}: need at least 1"
    low, high = args.depth_range
    if not 0 <= low <= high <= 1:
        return f"--depth-range {low} {high}: need 0 <= LOW <= HIGH <= 1"
    if args.ppl_windows < 0 or not 0 < args.ppl_stride < args.ppl_max_length:
        return (f"--ppl-windows {args.ppl_windows} --ppl-stride {args.ppl_stride} --ppl-max-length "
                f"{args.ppl_max_length}: need windows >= 0 and 0 < stride < max length")
    if args.ppl_windows and not args.text.is_file():
        return f"--text {args.text}: no such file (WikiText-2 test; or --ppl-windows 0 for no perplexity)"
    if args.threads < 1:
        return f"--threads {args.threads}: need at least 1"
    if problem := execution_problem(args):
        return problem
    base = HeadClassification.load(args.classification)
    try:
        for k in args.groups or []:
            with_cheapest_windows(base, k)
        if args.groups is None:
            with_cheapest_windows(base, 0)
    except ValueError as error:
        return f"--classification {args.classification}: {error}"
    return None


def settings_digest(args: argparse.Namespace, prompts_digest: str, base: HeadClassification) -> str:
    """What every row depends on besides its unit: model, window geometry, labels' scores, the prompts."""
    scores = base.scores.get(base.parameters.get("window_score", "window_cost"))
    payload = [args.model, args.sinks, args.window, prompts_digest, scores, base.heads_labelled("dead")]
    if getattr(args, "dtype", "float32") != "float32":  # float32 rows keep the digest they had before --dtype
        payload.append(args.dtype)
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def compressed_lengths(prompt_file: dict[str, list[dict]], ppl_context: int) -> dict[tuple[str, str], int]:
    """Mean tokens of the prefill a method compresses, per (task, protocol)."""
    lengths = {}
    for task, records in prompt_file.items():
        if task == PERPLEXITY_TASK:
            lengths[(task, QUERY_AGNOSTIC)] = ppl_context
            continue
        context = [len(r["context_ids"]) for r in records]
        whole = [len(r["context_ids"]) + len(r["question_ids"]) for r in records]
        lengths[(task, QUERY_AGNOSTIC)] = round(sum(context) / len(context))
        lengths[(task, "question_aware")] = round(sum(whole) / len(whole))
    return lengths


def nominal_fraction(unit: Unit, targets: dict[int, HeadClassification], length: int, sinks: int,
                     window: int) -> float:
    """``f(k, T)`` of the unit's target at its compressed context (1 for the full model)."""
    return 1.0 if unit.groups is None else kv_fraction(targets[unit.groups], length, sinks, window)


def kvpress_jobs(units: list[Unit], digest: str, lengths: dict, targets: dict, args: argparse.Namespace) -> list[dict]:
    jobs = []
    for unit in units:
        fraction = nominal_fraction(unit, targets, lengths[(unit.task, unit.protocol)], args.sinks, args.window)
        jobs.append({"key": unit.key(digest), "press": unit.method, "compression_ratio": 1 - fraction,
                     "task": unit.task, "protocol": unit.protocol, "groups": unit.groups, "method": unit.method,
                     "kv_fraction": fraction})
    return jobs


def judge_kvpress_row(row: dict, prompt_file: dict[str, list[dict]], tokenizer) -> dict:
    """kvpress passkey rows carry the greedy token ids; judge them as our rows are judged."""
    if "new_tokens" not in row:
        return row
    records = prompt_file[row["task"]]
    correct = [answer_has_key(tokenizer, tokens, record["answer"])
               for tokens, record in zip(row["new_tokens"], records, strict=True)]
    judged = {key: value for key, value in row.items() if key != "new_tokens"}
    return {**judged, "passkey_accuracy": sum(correct) / len(correct), "passkey_prompts": len(correct)}


def measure_our_unit(model, tokenizer, unit: Unit, targets: dict, args: argparse.Namespace, passkey: dict,
                     text: torch.Tensor | None, settings: BenchmarkSettings, ppl_context_ids: torch.Tensor | None) -> dict:
    """One of our rows: :func:`~kvcompress.evaluation.benchmark.measure_quality` on one task and protocol,
    budgets matched per context (``f(k, T)``), plus the KV held after a perplexity context's prefill."""
    classification = targets.get(unit.groups)

    def make_method(length: int):
        fraction = 1.0 if classification is None else kv_fraction(classification, length, args.sinks, args.window)
        return build_method(unit.method, MethodSettings(classification, args.sinks, args.window, length, fraction))

    if unit.task == PERPLEXITY_TASK:
        row = measure_quality(model, tokenizer, make_method, settings, text, [], unit.protocol)
        with make_method(ppl_context_ids.shape[1]).apply(model) as handle:
            row["context_kv_bytes"] = prefill_context(model, ppl_context_ids, handle.new_cache())
        row["context_tokens"] = ppl_context_ids.shape[1]
        return row
    row = measure_quality(model, tokenizer, make_method, settings, None, passkey[unit.task], unit.protocol)
    row["context_tokens"] = row["passkey_compressed_tokens"]
    row["context_kv_bytes"] = row.get("passkey_context_kv_bytes")
    return row


def start_kvpress(args: argparse.Namespace, out: Path, jobs: list[dict], device: torch.device) -> subprocess.Popen | None:
    """Build the kvpress venv if needed and start its rows in the background (log: ``kvpress.log``); the
    subprocess inherits this process's niceness (run the bench under ``nice`` to lower both)."""
    if not jobs:
        return None
    python = build_venv(args.kvpress_venv)
    (out / "kvpress_jobs.json").write_text(json.dumps(jobs, indent=1))
    command = [str(python), str(KVPRESS_SCRIPT), "--prompts", str(out / "prompts.jsonl"),
               "--jobs", str(out / "kvpress_jobs.json"), "--out", str(out / "rows_kvpress.jsonl"),
               "--model", args.model, "--threads", str(args.threads), "--device", str(device), "--dtype", args.dtype]
    print("kvpress rows in the background:", " ".join(command), f"(log: {out / 'kvpress.log'})", flush=True)
    return subprocess.Popen(command, stdout=(out / "kvpress.log").open("a"), stderr=subprocess.STDOUT)


def read_rows(path: Path, digest: str) -> list[dict]:
    """Rows of ``path`` measured with this run's settings and prompts (``settings`` digest)."""
    if not path.is_file():
        return []
    drop_incomplete_tail(path)
    return [row for row in read_jsonl(path)[0] if row.get("settings") == digest]


def nothing_to_merge(out: Path) -> str | None:
    """Why ``--table-only`` has nothing to merge in ``out`` (no rows, or no prompt file they were measured
    on), or None."""
    if not any((out / name).is_file() for name in ROW_FILES):
        return f"no {' / '.join(ROW_FILES)} in {out}"
    if not (out / PROMPT_FILE).is_file():
        return f"no {PROMPT_FILE} in {out} (the prompts its rows were measured on)"
    return None


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    execution = apply_execution_flags(args)
    out = args.out or Path(f"results/query_agnostic_{model_slug(args.model)}")
    if args.table_only and (problem := nothing_to_merge(out)):
        print(f"warning: --table-only: {problem}: nothing to merge; {out} is left alone", file=sys.stderr)
        return
    out.mkdir(parents=True, exist_ok=True)
    base = HeadClassification.load(args.classification)
    model, tokenizer = load_model_and_tokenizer(args.model, execution.dtype, execution.device)
    base.check_model(model)
    started = time.perf_counter()

    passkey = {passkey_task(length): make_passkey_prompts(tokenizer, length, args.passkey_prompts, args.seed,
                                                          tuple(args.depth_range))
               for length in args.passkey_lens}
    ppl_context = args.ppl_max_length - args.ppl_stride
    text = None
    windows: list[dict] = []
    if args.ppl_windows:
        text = load_token_stream(args.text, tokenizer, args.ppl_stride * args.ppl_windows + args.ppl_max_length + 1)
        windows = perplexity_windows(text, args.ppl_max_length, args.ppl_stride, args.ppl_windows)
    prompt_path = out / PROMPT_FILE  # --table-only reads the prompts its rows were measured on
    prompts_digest = file_digest(prompt_path) if args.table_only else write_prompt_file(prompt_path, passkey, windows)
    prompt_file = read_prompt_file(prompt_path)
    digest = settings_digest(args, prompts_digest, base)
    lengths = compressed_lengths(prompt_file, ppl_context)

    longest = lengths[(passkey_task(max(args.passkey_lens)), QUERY_AGNOSTIC)]
    groups = args.groups or [groups_for_reduction(base, target, longest, args.sinks, args.window)
                             for target in args.targets]
    groups = list(dict.fromkeys(groups))
    targets = {k: with_cheapest_windows(base, k) for k in groups}
    print("windowed KV groups per target:", {k: f"-{100 * (1 - kv_fraction(c, longest, args.sinks, args.window)):.1f}% "
                                             f"at {longest} tokens" for k, c in targets.items()}, flush=True)
    ours, theirs = plan_units(groups, list(passkey), PERPLEXITY_TASK if windows else None, args.protocols,
                              args.presses, not args.no_kvpress)
    metadata = {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "groups": groups,
                "settings": digest, "prompts": str(prompt_path), "prompts_sha1": prompts_digest,
                "compressed_lengths": {f"{t}/{p}": n for (t, p), n in lengths.items()},
                "kvpress_versions": installed_versions(args.kvpress_venv) if is_built(args.kvpress_venv) else None,
                **execution.metadata(), "requested_device": args.device}

    def merged() -> str:
        rows = read_rows(out / "rows_ours.jsonl", digest)
        rows += [judge_kvpress_row(row, prompt_file, tokenizer)
                 for row in read_rows(out / "rows_kvpress.jsonl", digest)]
        table = save_merged(rows, list(passkey), PERPLEXITY_TASK if windows else None, metadata, out)
        return table or f"warning: no row in {out} was measured with these settings and prompts: its results are left alone"

    if args.table_only:
        print(merged())
        return
    done = {row["key"] for row in read_rows(out / "rows_ours.jsonl", digest)}
    done_theirs = {row["key"] for row in read_rows(out / "rows_kvpress.jsonl", digest)}
    jobs = [job for job in kvpress_jobs(theirs, digest, lengths, targets, args) if job["key"] not in done_theirs]
    for job in jobs:
        job["settings"] = digest
    kvpress_process = start_kvpress(args, out, jobs, execution.device)
    if kvpress_process is not None:
        metadata["kvpress_versions"] = installed_versions(args.kvpress_venv)
    settings = BenchmarkSettings(passkey[next(iter(passkey))][0].input_ids, ppl_max_length=args.ppl_max_length,
                                 ppl_stride=args.ppl_stride, ppl_max_windows=args.ppl_windows or None)
    ppl_context_ids = torch.tensor([windows[0]["context_ids"]]) if windows else None
    for unit in tqdm([unit for unit in ours if unit.key(digest) not in done], desc="our rows"):
        unit_start = time.perf_counter()
        row = measure_our_unit(model, tokenizer, unit, targets, args, passkey, text, settings, ppl_context_ids)
        length = lengths[(unit.task, unit.protocol)]
        row.update(key=unit.key(digest), settings=digest, side=OURS, method=unit.method, groups=unit.groups,
                   device=str(execution.device), dtype=execution.dtype_name,
                   task=unit.task, protocol=unit.protocol, seconds=round(time.perf_counter() - unit_start, 1),
                   kv_fraction=nominal_fraction(unit, targets, length, args.sinks, args.window))
        with JsonlAppender(out / "rows_ours.jsonl") as appender:
            appender.write(row)
        merged()
    if kvpress_process is not None:
        print("waiting for the kvpress rows", flush=True)
        if kvpress_process.wait() != 0:
            print(f"the kvpress rows stopped with status {kvpress_process.returncode}: see {out / 'kvpress.log'}")
    print(merged())
    print(f"done in {time.perf_counter() - started:.0f} s; results in {out}")


if __name__ == "__main__":
    main()
