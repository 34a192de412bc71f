"""Answer a LLaVA question file (``{question_id, image, text}`` per line) with a (pruned) LLaVA.

``python -m llava.eval.model_vqa_loader --question-file q.jsonl --image-folder imgs --answers-file a.jsonl
[--pruning_method fastv --visual_token_num 128 ...]``; ``--help`` lists every flag. A question without
an ``image`` field is answered from text alone, unpruned. Image paths must stay inside ``--image-folder``
(``--allow-outside-images`` lifts this).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from llava.eval.chunking import get_chunk
from llava.eval.cli_args import build_parser, parse_eval_args
from llava.eval.jsonl_io import LineError, exit_code_on_input_error, read_jsonl
from llava.eval.run_loop import EvalSample, check_sample_ids, folder_sample, run_entry_point


def load_vqa_samples(
    question_file: str | Path,
    image_folder: str | Path,
    num_chunks: int = 1,
    chunk_idx: int = 0,
    allow_outside_images: bool = False,
) -> tuple[list[EvalSample], list[LineError]]:
    """This chunk's samples from a question JSONL, and the file's unusable lines; null or repeated ids in
    the file are an ``InputFileError``."""
    questions, line_errors = read_jsonl(question_file, required_fields=("question_id", "text"))
    samples = [
        folder_sample(question["question_id"], question["text"], image_folder, question.get("image"), allow_outside_images)
        for question in questions
    ]
    check_sample_ids(samples, question_file)
    return get_chunk(samples, num_chunks, chunk_idx), line_errors


@exit_code_on_input_error
def main(argv: Sequence[str] | None = None) -> int:
    """Command line: answer a question JSONL."""
    args = parse_eval_args(build_parser(__doc__.splitlines()[0]), argv)
    samples, line_errors = load_vqa_samples(
        args.question_file, args.image_folder, args.num_chunks, args.chunk_idx, args.allow_outside_images
    )
    return run_entry_point(args, samples, line_errors, any(s.load_image is not None for s in samples))


if __name__ == "__main__":
    sys.exit(main())
