"""Splitting a question list into chunks for multi-GPU runs, and merging the chunks' answer files.

``python -m llava.eval.chunking --answers-dir DIR --num-chunks N --output merge.jsonl`` merges
``DIR/{N}_{i}.jsonl`` (the names the per-dataset scripts give each chunk) in chunk order, dropping
duplicate answers, and concatenates the chunks' ``*.errors.jsonl`` files next to the output.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from llava.eval.jsonl_io import (
    AnswerKey,
    InputFileError,
    answer_key,
    drop_incomplete_tail,
    errors_path_for,
    exit_code_on_input_error,
    read_answers,
    read_jsonl,
    write_jsonl,
)
from llava.eval.run_record import merged_run_record, write_run_record

Item = TypeVar("Item")


def get_chunk(items: Sequence[Item], num_chunks: int, chunk_idx: int) -> list[Item]:
    """The ``chunk_idx``-th of ``num_chunks`` contiguous, near-equal slices (sizes differ by at most 1)."""
    if num_chunks < 1:
        raise ValueError(f"num_chunks must be >= 1, got {num_chunks}")
    if not 0 <= chunk_idx < num_chunks:
        raise ValueError(f"chunk_idx must be in [0, {num_chunks}), got {chunk_idx}")
    base_size, remainder = divmod(len(items), num_chunks)
    start = chunk_idx * base_size + min(chunk_idx, remainder)
    size = base_size + (1 if chunk_idx < remainder else 0)
    return list(items[start : start + size])


def chunk_answers_path(answers_dir: str | Path, num_chunks: int, chunk_idx: int) -> Path:
    """Where the per-dataset scripts write chunk ``chunk_idx`` of ``num_chunks``."""
    return Path(answers_dir) / f"{num_chunks}_{chunk_idx}.jsonl"


def merge_answer_files(chunk_paths: Sequence[str | Path], output_path: str | Path) -> int:
    """Concatenate chunk answer files in order, keeping the first answer per key; returns the count.

    A missing chunk file is an error (a chunk that crashed must not go unnoticed), and so are chunks that
    ran different settings (their run records); the output gets the shared run record. Error logs of the
    chunks are concatenated into the output's ``*.errors.jsonl`` (removed when there are none).
    """
    missing = [str(path) for path in chunk_paths if not Path(path).is_file()]
    if missing:
        raise InputFileError("missing chunk answer file(s): " + ", ".join(missing))
    merged: dict[AnswerKey, dict] = {}
    error_records: list[dict] = []
    for chunk_path in chunk_paths:
        drop_incomplete_tail(chunk_path)
        for record in read_answers(chunk_path):
            merged.setdefault(answer_key(record), record)
        chunk_errors_path = errors_path_for(chunk_path)
        if chunk_errors_path.is_file():
            error_records.extend(read_jsonl(chunk_errors_path)[0])
    run = merged_run_record([Path(path) for path in chunk_paths])
    write_jsonl(output_path, merged.values())
    if run is not None:
        write_run_record(output_path, run)
    output_errors_path = errors_path_for(output_path)
    if error_records:
        write_jsonl(output_errors_path, error_records)
    else:
        output_errors_path.unlink(missing_ok=True)
    return len(merged)


@exit_code_on_input_error
def main(argv: Sequence[str] | None = None) -> int:
    """Command line: merge the chunk answer files of one run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers-dir", required=True, help="folder holding {N}_{i}.jsonl chunk files")
    parser.add_argument("--num-chunks", type=int, required=True)
    parser.add_argument("--output", required=True, help="merged answers file")
    args = parser.parse_args(argv)
    chunk_paths = [chunk_answers_path(args.answers_dir, args.num_chunks, i) for i in range(args.num_chunks)]
    count = merge_answer_files(chunk_paths, args.output)
    print(f"merged {count} answers from {args.num_chunks} chunk(s) into {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
