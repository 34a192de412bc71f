"""Answer ScienceQA in LLaVA's format (a JSON list of ``{id, image?, conversations}``).

The question is the first human turn with its ``<image>`` placeholder removed; questions without an
image are answered from text alone and unpruned. ``--single-pred-prompt`` appends LLaVA's
"Answer with the option's letter from the given choices directly." (as LLaVA's sqa.sh does).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.eval.chunking import get_chunk
from llava.eval.cli_args import build_parser, parse_eval_args
from llava.eval.jsonl_io import InputFileError, LineError, exit_code_on_input_error, read_json
from llava.eval.question_checks import text_problem
from llava.eval.run_loop import EvalSample, check_sample_ids, folder_sample, run_entry_point

SINGLE_PREDICTION_PROMPT = "Answer with the option's letter from the given choices directly."


def science_question_text(entry: dict, single_pred_prompt: bool) -> str:
    """The question of one ScienceQA entry, without the image placeholder."""
    text = entry["conversations"][0]["value"].replace(DEFAULT_IMAGE_TOKEN, "").strip()
    return f"{text}\n{SINGLE_PREDICTION_PROMPT}" if single_pred_prompt else text


def _entry_problem(entry: object) -> str | None:
    """Why a question-file entry is unusable, or None."""
    if not isinstance(entry, dict):
        return f"expected a JSON object, got {type(entry).__name__}"
    if "id" not in entry:
        return "missing field: id"
    conversations = entry.get("conversations")
    if not isinstance(conversations, list) or not conversations or not isinstance(conversations[0], dict):
        return "missing conversations[0].value"
    if "value" not in conversations[0]:
        return "missing conversations[0].value"
    return text_problem("conversations[0].value", conversations[0]["value"])


def load_science_samples(
    question_file: str | Path,
    image_folder: str | Path,
    single_pred_prompt: bool,
    num_chunks: int = 1,
    chunk_idx: int = 0,
    allow_outside_images: bool = False,
) -> tuple[list[EvalSample], list[LineError]]:
    """This chunk's samples from a ScienceQA question file; bad entries are reported by entry number, null
    or repeated ids are an ``InputFileError``."""
    entries = read_json(question_file)
    if not isinstance(entries, list):
        raise InputFileError(f"{question_file}: expected a JSON list of questions")
    usable, line_errors = [], []
    for number, entry in enumerate(entries, start=1):
        problem = _entry_problem(entry)
        if problem is None:
            usable.append(entry)
        else:
            line_errors.append(LineError(str(question_file), number, f"entry {number}: {problem}"))
    samples = [
        folder_sample(entry["id"], science_question_text(entry, single_pred_prompt), image_folder, entry.get("image"),
                      allow_outside_images)
        for entry in usable
    ]
    check_sample_ids(samples, question_file)
    return get_chunk(samples, num_chunks, chunk_idx), line_errors


@exit_code_on_input_error
def main(argv: Sequence[str] | None = None) -> int:
    """Command line: answer a ScienceQA question file."""
    parser = build_parser(__doc__.splitlines()[0])
    parser.add_argument("--single-pred-prompt", "--single_pred_prompt", action="store_true")
    args = parse_eval_args(parser, argv)
    samples, line_errors = load_science_samples(
        args.question_file, args.image_folder, args.single_pred_prompt, args.num_chunks, args.chunk_idx,
        args.allow_outside_images,
    )
    return run_entry_point(args, samples, line_errors, any(s.load_image is not None for s in samples))


if __name__ == "__main__":
    sys.exit(main())
