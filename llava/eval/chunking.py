"""Splitting a question list into chunks for multi-GPU runs, and merging the chunks' answer files.

``python -m llava.eval.chunking --answers-dir DIR --num-chunks N --output merge.jsonl`` merges
``DIR/{N}_{i}.jsonl`` (the names the per-dataset scripts give each chunk) in chunk order, dropping
duplicate answers, and concatenates the chunks' ``*.errors.jsonl`` files next to the output. The chunk
files are only read: a chunk that ends in a torn line (a killed loader) or is still being written is an
error, and the output files are written whole (temporary file, then rename) or not at all.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from llava.eval.answers_lock import is_locked
from llava.eval.jsonl_io import (
    AnswerKey,
    InputFileError,
    answer_key,
    errors_path_for,
    exit_code_on_input_error,
    read_answers,
    read_jsonl,
    torn_tail,
    write_jsonl_atomic,
)
from llava.eval.run_record import merged_run_record, write_run_record
from toolkit_common.cli import setting_error

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
    """Concatenate chunk answer files in order, keeping the first answer per key; returns the count. Two
    different answers to one question in a chunk (runs mixed in one file) are an error.

    A missing chunk file is an error (a chunk that crashed must not go unnoticed), and so are chunks that
    ran different settings (their run records); the output gets the shared run record. Error logs of the
    chunks are concatenated into the output's ``*.errors.jsonl`` (removed when there are none).
    """
    _check_chunks_finished(chunk_paths, output_path)
    merged: dict[AnswerKey, dict] = {}
    error_records: list[dict] = []
    for chunk_path in chunk_paths:
        for record in read_answers(chunk_path, allow_repeats=True):
            merged.setdefault(answer_key(record), record)
        chunk_errors_path = errors_path_for(chunk_path)
        if chunk_errors_path.is_file():
            error_records.extend(read_jsonl(chunk_errors_path)[0])
    run = merged_run_record([Path(path) for path in chunk_paths])
    output_errors_path = errors_path_for(output_path)
    if error_records:
        write_jsonl_atomic(output_errors_path, error_records)
    if run is not None:
        write_run_record(output_path, run)
    write_jsonl_atomic(output_path, merged.values())  # last: a merge file means the merge finished
    if not error_records:
        output_errors_path.unlink(missing_ok=True)
    return len(merged)


def _check_chunks_finished(chunk_paths: Sequence[str | Path], output_path: str | Path) -> None:
    """Refuse a merge into one of its chunks, of missing chunks, chunks a loader still writes, or chunks ending in a torn line."""
    if any(Path(path).resolve() == Path(output_path).resolve() for path in chunk_paths):
        raise InputFileError(f"--output {output_path} is one of the chunk files: name another file (inputs are never changed)")
    missing = [str(path) for path in chunk_paths if not Path(path).is_file()]
    if missing:
        raise InputFileError("missing chunk answer file(s): " + ", ".join(missing))
    for path in chunk_paths:
        holder = is_locked(path)
        if holder is not None:
            raise InputFileError(f"{path} is still being written by {holder}: merge when that run has ended")
        torn = torn_tail(path)
        if torn:
            raise InputFileError(
                f"{path} ends in a partial line ({torn} bytes, an interrupted write): re-run that chunk's loader "
                "(it resumes) and merge again; nothing was merged or changed"
            )


@exit_code_on_input_error
def main(argv: Sequence[str] | None = None) -> int:
    """Command line: merge the chunk answer files of one run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers-dir", required=True, help="folder holding {N}_{i}.jsonl chunk files")
    parser.add_argument("--num-chunks", type=int, required=True)
    parser.add_argument("--output", required=True, help="merged answers file")
    args = parser.parse_args(argv)
    if args.num_chunks < 1:
        setting_error(parser, f"--num-chunks must be >= 1, got {args.num_chunks}")
    chunk_paths = [chunk_answers_path(args.answers_dir, args.num_chunks, i) for i in range(args.num_chunks)]
    count = merge_answer_files(chunk_paths, args.output)
    print(f"merged {count} answers from {args.num_chunks} chunk(s) into {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
