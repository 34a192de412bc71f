"""Answer MMBench / MMBench-CN (TSV with base64 images and options A-E) in LLaVA's answer format.

The prompt is ``hint\\nquestion\\nA. opt\\nB. opt ...`` (hint when present). ``--all-rounds`` asks each
question once per option with the options rotated (circular evaluation); answers carry ``round_idx``,
``options`` (in the order shown) and ``option_char`` (the letters shown). ``--single-pred-prompt``
appends LLaVA's answer-with-the-letter instruction (Chinese with ``--lang cn``).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from pathlib import Path

from llava.eval.chunking import get_chunk
from llava.eval.cli_args import build_parser, parse_eval_args
from llava.eval.jsonl_io import LineError, exit_code_on_input_error
from llava.eval.mmbench_data import OPTION_COLUMNS, decode_base64_image, is_blank, read_mmbench_tsv, row_options
from llava.eval.run_loop import EvalSample, check_sample_ids, run_entry_point

SINGLE_PREDICTION_PROMPTS = {
    "en": "Answer with the option's letter from the given choices directly.",
    "cn": "请直接回答选项字母。",
}


def mmbench_question_text(row: dict[str, str], options: Sequence[str]) -> str:
    """Hint (if any), question, then one ``X. option`` line per option."""
    lines = [] if is_blank(row.get("hint")) else [row["hint"]]
    lines.append(row["question"])
    lines.extend(f"{letter}. {option}" for letter, option in zip(OPTION_COLUMNS, options, strict=False))
    return "\n".join(lines)


def load_mmbench_samples(
    question_file: str | Path,
    all_rounds: bool,
    single_pred_prompt: str | None,
    num_chunks: int = 1,
    chunk_idx: int = 0,
) -> tuple[list[EvalSample], list[LineError]]:
    """This chunk's samples (one per row and round) and the TSV's unusable rows; a question asked twice
    (same index and prompt) is an ``InputFileError``."""
    rows, line_errors = read_mmbench_tsv(question_file)
    row_samples = [_row_samples(row, all_rounds, single_pred_prompt) for row in rows]
    check_sample_ids([sample for samples in row_samples for sample in samples], question_file)
    chunk = get_chunk(row_samples, num_chunks, chunk_idx)
    return [sample for samples in chunk for sample in samples], line_errors


def _row_samples(row: dict[str, str], all_rounds: bool, single_pred_prompt: str | None) -> list[EvalSample]:
    """The samples of one TSV row: one, or one per option rotation with ``all_rounds``."""
    options = row_options(row)
    load_image = functools.partial(decode_base64_image, row["image"])
    samples = []
    for round_idx in range(len(options) if all_rounds else 1):
        shown = options[round_idx:] + options[:round_idx]
        question = mmbench_question_text(row, shown)
        if single_pred_prompt:
            question = f"{question}\n{single_pred_prompt}"
        extra = {"round_idx": round_idx, "options": shown, "option_char": list(OPTION_COLUMNS[: len(shown)])}
        samples.append(EvalSample(int(row["index"]), question, load_image, extra))
    return samples


@exit_code_on_input_error
def main(argv: Sequence[str] | None = None) -> int:
    """Command line: answer an MMBench TSV."""
    parser = build_parser(__doc__.splitlines()[0])
    parser.add_argument("--all-rounds", "--all_rounds", action="store_true")
    parser.add_argument("--single-pred-prompt", "--single_pred_prompt", action="store_true")
    parser.add_argument("--lang", choices=sorted(SINGLE_PREDICTION_PROMPTS), default="en")
    args = parse_eval_args(parser, argv)
    instruction = SINGLE_PREDICTION_PROMPTS[args.lang] if args.single_pred_prompt else None
    samples, line_errors = load_mmbench_samples(
        args.question_file, args.all_rounds, instruction, args.num_chunks, args.chunk_idx
    )
    return run_entry_point(args, samples, line_errors)


if __name__ == "__main__":
    sys.exit(main())
