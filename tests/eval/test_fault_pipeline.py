"""Faults around the answering loop: two loaders on one answers file, a full disk, a merge killed midway.

Marked slow (``make test-slow``): the concurrent-loader and killed-merge cases start fresh interpreters.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llava.eval import model_vqa_loader, run_loop
from llava.eval.answers_lock import lock_path
from llava.eval.chunking import chunk_answers_path
from llava.eval.run_record import read_run_record
from tests.eval.helpers import make_image, read_lines, write_lines
from tests.eval.test_fault_injection import ENV, without_timing
from tests.eval.test_scripts import ROOT

pytestmark = pytest.mark.slow


def question_set(tmp_path: Path, count: int) -> tuple[Path, Path]:
    images = tmp_path / "images"
    questions = []
    for index in range(count):
        make_image(images / f"{index}.png", (40 + index % 7, 50), (20 * (index % 12), 100, 30))
        questions.append({"question_id": index, "image": f"{index}.png", "text": f"what is {index}?"})
    return write_lines(tmp_path / "q.jsonl", questions), images


def loader_argv(question_file: Path, images: Path, answers: Path, *flags: str) -> list[str]:
    return ["--question-file", str(question_file), "--image-folder", str(images), "--answers-file", str(answers),
            "--model-path", "tiny-random-llava", *flags]


def test_a_second_loader_on_the_same_answers_file_stops_at_once(tmp_path):
    question_file, images = question_set(tmp_path, 24)
    answers = tmp_path / "answers.jsonl"
    first = subprocess.Popen(
        [sys.executable, "-m", "llava.eval.model_vqa_loader",
         *loader_argv(question_file, images, answers, "--max_new_tokens", "24", "--pruning_method", "fastv",
                      "--visual_token_num", "64")],
        cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    while not (lock_path(answers).is_file() and lock_path(answers).read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, "the first loader ended before the second started; make it slower"
    started = time.monotonic()
    second = subprocess.run(
        [sys.executable, "-m", "llava.eval.model_vqa_loader",
         *loader_argv(question_file, images, answers, "--max_new_tokens", "24", "--pruning_method", "random",
                      "--visual_token_num", "64")],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300,
    )
    second_seconds = time.monotonic() - started
    first_err = first.communicate(timeout=600)[1]
    assert first.returncode == 0, first_err
    assert second.returncode == 2, second.stderr
    assert f"is being written by pid {first.pid} on host" in second.stderr and "pruning_method fastv" in second.stderr
    assert "Traceback" not in second.stderr and len(second.stderr.strip().splitlines()) == 1
    records = read_lines(answers)
    assert sorted(r["question_id"] for r in records) == list(range(24))
    assert {r["metadata"]["pruning_method"] for r in records} == {"fastv"}
    assert read_run_record(answers)["pruning_method"] == "fastv"
    print(f"second loader refused in {second_seconds:.1f} s (start-up included) while the first ran")


class DiskFullAfter:
    """A size-limited answers file: the ``allowed``-th write and later ones put half a line on disk, then fail
    with ENOSPC, as a full disk does."""

    def __init__(self, real_write, allowed: int) -> None:
        self.real_write, self.allowed, self.calls = real_write, allowed, 0

    def __call__(self, appender, record: dict) -> None:
        self.calls += 1
        if self.calls <= self.allowed:
            return self.real_write(appender, record)
        line = json.dumps(record, ensure_ascii=False) + "\n"
        appender._handle.write(line[: len(line) // 2])
        appender._handle.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("allowed", [0, 1, 3])
def test_disk_full_keeps_whole_lines_and_a_resume_finishes(tmp_path, capsys, monkeypatch, allowed):
    question_file, images = question_set(tmp_path, 5)
    reference, answers = tmp_path / "reference.jsonl", tmp_path / "answers.jsonl"
    flags = ("--max_new_tokens", "4", "--pruning_method", "fastv", "--visual_token_num", "64")
    assert model_vqa_loader.main(loader_argv(question_file, images, reference, *flags)) == 0
    capsys.readouterr()
    full = DiskFullAfter(run_loop.JsonlAppender.write, allowed)
    monkeypatch.setattr(run_loop.JsonlAppender, "write", lambda appender, record: full(appender, record))
    assert model_vqa_loader.main(loader_argv(question_file, images, answers, *flags)) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "re-run to resume" in err and "Traceback" not in err
    text = answers.read_text()
    assert text == "" or text.endswith("\n")
    assert len(read_lines(answers)) == allowed  # whole lines only, every one parses
    monkeypatch.undo()
    assert model_vqa_loader.main(loader_argv(question_file, images, answers, *flags)) == 0
    assert without_timing(read_lines(answers)) == without_timing(read_lines(reference))


def test_merge_killed_at_random_points_never_changes_inputs_and_leaves_no_partial_output(tmp_path):
    folder = tmp_path / "chunks"
    per_chunk = 60_000
    for index in range(2):
        write_lines(chunk_answers_path(folder, 2, index), [
            {"question_id": index * per_chunk + n, "prompt": f"question {n} " + "x" * 60, "text": "yes", "metadata": {}}
            for n in range(per_chunk)
        ])
    inputs = {path: path.read_bytes() for path in folder.iterdir()}
    output = folder / "merge.jsonl"
    command = [sys.executable, "-m", "llava.eval.chunking", "--answers-dir", str(folder), "--num-chunks", "2",
               "--output", str(output)]
    started = time.monotonic()
    subprocess.run(command, cwd=ROOT, env=ENV, check=True, stdout=subprocess.DEVNULL)
    span = time.monotonic() - started
    expected = output.read_bytes()
    rng = random.Random(3)
    outcomes = {"absent": 0, "whole": 0}
    for _ in range(8):
        output.unlink(missing_ok=True)
        process = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, start_new_session=True)
        try:
            process.wait(timeout=rng.uniform(0.3, 1.0) * span)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        assert {path: path.read_bytes() for path in inputs} == inputs
        if output.exists():
            assert output.read_bytes() == expected
            outcomes["whole"] += 1
        else:
            outcomes["absent"] += 1
    assert outcomes["absent"] >= 1, outcomes  # some kills landed before the rename
    subprocess.run(command, cwd=ROOT, env=ENV, check=True, stdout=subprocess.DEVNULL)
    assert output.read_bytes() == expected
    leftovers = [path.name for path in folder.iterdir() if path.name.endswith(".tmp")]
    assert leftovers == []  # the finished merge renamed the one temporary name away
    print(f"merge: 8 kills over a {span:.1f} s merge: {outcomes}")
