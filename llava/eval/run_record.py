"""The configuration of one evaluation run, stored beside its answers file (``<answers>.run.json``).

The loader writes it before the first answer, so even a run that answered nothing says what it was: the
method and its parameters, the model (and a fingerprint of its weights), the prompt and decoding settings,
the question file's digest, and how the model computes (device kind, dtype, attention implementation;
``cli_args.execution_identity``). Resuming an answers file with other settings, a float32 file in bfloat16
included, is an error naming the differences in one line (``RunMismatchError``); the
chunk merger checks that every chunk ran the same configuration and writes the merged file's record;
the scorers key their result by it (``read_run_record``), never by the first answer.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from toolkit_common.jsonl import InputFileError

RUN_RECORD_SUFFIX = ".run.json"
CONFIG_KEYS = ("pruning_method", "visual_token_num", "H", "head_strategy", "dynamic_selection")
TABLE_COLUMN_PARAMS = ("visual_token_num", "heads", "head_strategy", "debug_mode")  # method params shown in their own columns


class RunMismatchError(InputFileError):
    """An answers file written with other settings than the ones asked for now."""


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
FINGERPRINT_SAMPLE = 1 << 20  # bytes read from each end of a weight file


def model_fingerprint(model_path: str | Path) -> str | None:
    """A short hash of a local model folder's weight files (the model's and any shipped beside it, such as
    learned pruners): name, size, and the first and last MiB of each, so answers of a retrained model at
    the same path are never taken for the old model's. ``None`` for a hub id (no local folder)."""
    folder = Path(model_path)
    if not folder.is_dir():
        return None
    digest = hashlib.sha1()
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with path.open("rb") as handle:
            digest.update(handle.read(FINGERPRINT_SAMPLE))
            handle.seek(max(0, size - FINGERPRINT_SAMPLE))
            digest.update(handle.read(FINGERPRINT_SAMPLE))
    return digest.hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (a question file: a resume with other questions under the same name is
    another run)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_record_path(answers_file: str | Path) -> Path:
    answers_file = Path(answers_file)
    return answers_file.with_name(answers_file.name.removesuffix(".jsonl") + RUN_RECORD_SUFFIX)


def read_run_record(answers_file: str | Path) -> dict[str, Any] | None:
    """The run record beside ``answers_file``, or None when there is none."""
    path = run_record_path(answers_file)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InputFileError(f"{path}: invalid JSON ({error.msg})") from error


def write_run_record(answers_file: str | Path, record: dict[str, Any]) -> None:
    path = run_record_path(answers_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    temporary.replace(path)


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every setting that differs."""
    keys = sorted(set(old) | set(new))
    return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in keys if old.get(key) != new.get(key)]


def claim_answers_file(answers_file: str | Path, record: dict[str, Any], has_answers: bool) -> None:
    """Record ``record`` as the run of ``answers_file``; an existing file of another run is an error.

    ``has_answers``: the answers file already holds answers (a resume). Such a file must carry a run
    record equal to ``record``.
    """
    existing = read_run_record(answers_file)
    if has_answers and existing is None:
        raise RunMismatchError(
            f"{answers_file} holds answers but no run record ({run_record_path(answers_file).name}), so its "
            "settings are unknown: use a new --answers-file, or --overwrite to start it again"
        )
    if existing is not None and has_answers and differences(existing, record):  # a setting added later reads as None
        raise RunMismatchError(
            f"{answers_file} was written with other settings ({'; '.join(differences(existing, record))}): "
            "use a new --answers-file, or --overwrite to start it again"
        )
    write_run_record(answers_file, record)


def merged_run_record(chunk_files: list[Path]) -> dict[str, Any] | None:
    """The one run record shared by every chunk (chunk fields left out); chunks that differ are an error."""
    records = [read_run_record(path) for path in chunk_files]
    if all(record is None for record in records):
        return None
    if any(record is None for record in records):
        missing = [str(path) for path, record in zip(chunk_files, records, strict=True) if record is None]
        raise InputFileError(f"chunk(s) without a run record: {', '.join(missing)}")
    shared = [{k: v for k, v in record.items() if k not in ("num_chunks", "chunk_idx")} for record in records]
    for path, record in zip(chunk_files[1:], shared[1:], strict=True):
        if record != shared[0]:
            raise RunMismatchError(
                f"{path} ran other settings than {chunk_files[0]}: {'; '.join(differences(shared[0], record))}"
            )
    return shared[0]


def result_config(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """The table key fields of a run record (None when the run recorded none): ``CONFIG_KEYS`` and, as
    ``other_params``, the method parameters no other key shows (e.g. a ``pruner_checkpoint``), or None."""
    if record is None:
        return None
    other = {k: v for k, v in (record.get("method_params") or {}).items() if k not in TABLE_COLUMN_PARAMS}
    return {**{key: record.get(key) for key in CONFIG_KEYS}, "other_params": other or None}
