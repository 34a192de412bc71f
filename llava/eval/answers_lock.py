"""One writer per answers file: an exclusive, non-blocking ``flock`` on ``<answers>.lock`` for the run.

A second loader on the same answers file (two terminals, a re-launched job) stops at once with one line
naming the holder (pid, host, method, budget, start time), which the holder writes into the lock file.
The lock goes with the holder's process (a killed run never leaves a stale lock); the file stays, empty.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llava.eval.jsonl_io import InputFileError

LOCK_SUFFIX = ".lock"


class AnswersFileBusyError(InputFileError):
    """Another process holds the answers file's lock."""


def lock_path(answers_file: str | Path) -> Path:
    """The sidecar lock file of an answers file (``a.jsonl`` -> ``a.jsonl.lock``)."""
    answers_file = Path(answers_file)
    return answers_file.with_name(answers_file.name + LOCK_SUFFIX)


def holder_record(settings: dict[str, Any]) -> dict[str, Any]:
    """What a holder writes into the lock file: this process, this host, the start time and ``settings``."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), **settings}


def describe_holder(raw: str) -> str:
    """One line naming the holder from the lock file's text (a holder that has not written it yet: unknown)."""
    try:
        holder = json.loads(raw)
    except json.JSONDecodeError:
        return "another process (its details are not written yet)"
    if not isinstance(holder, dict):
        return "another process"
    details = ", ".join(f"{key} {value}" for key, value in holder.items() if key not in ("pid", "host"))
    return f"pid {holder.get('pid')} on host {holder.get('host')} ({details})"


@contextmanager
def answers_file_lock(answers_file: str | Path, settings: dict[str, Any]) -> Iterator[None]:
    """Hold the answers file's lock for the block; ``AnswersFileBusyError`` at once if another holds it."""
    path = lock_path(answers_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = describe_holder(path.read_text(encoding="utf-8", errors="replace"))
            raise AnswersFileBusyError(
                f"{answers_file} is being written by {holder}: wait for that run to end, or use another --answers-file"
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(holder_record(settings)).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(descriptor, 0)
    finally:
        os.close(descriptor)


def is_locked(answers_file: str | Path) -> str | None:
    """The holder of an answers file's lock (one line), or None when nobody writes it. Never creates files."""
    path = lock_path(answers_file)
    if not path.is_file():
        return None
    descriptor = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return describe_holder(path.read_text(encoding="utf-8", errors="replace"))
    finally:
        os.close(descriptor)
    return None
