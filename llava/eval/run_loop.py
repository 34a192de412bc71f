"""The answering loop shared by the ``model_vqa*`` entry points: resume, batching, error records, progress.

Answers are appended to the answers file one flushed line at a time; a re-run skips every answer
already there (a partial last line left by a killed run is cut off first). A sample whose image or
generation fails is reported on stderr and in ``<answers>.errors.jsonl`` (rewritten by each run: failed
samples are retried), and the run goes on; so is a question whose fields cannot work (its ``problem``,
found before the model loads). The answers file is locked for the run (``answers_lock``); a write that
fails (disk full) leaves only whole lines and stops the run with one line.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import traceback
import uuid
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image
from tqdm import tqdm

from llava.eval.answers_lock import AnswersFileBusyError, answers_file_lock
from llava.eval.cli_args import run_config_metadata, run_identity
from llava.eval.inference import GenerationSettings, ModelBundle, answer_batch, bundle_from_args
from llava.eval.jsonl_io import (
    AnswerKey,
    JsonlAppender,
    LineError,
    answer_key,
    completed_keys,
    drop_incomplete_tail,
    errors_path_for,
)
from llava.eval.question_checks import check_unique_ids, image_problem, text_problem
from llava.eval.run_record import RunMismatchError, claim_answers_file, run_record_path
from llava.mm_utils import get_model_name_from_path, open_rgb_image

Item = TypeVar("Item")
ANSWER_ID_NAMESPACE = uuid.UUID("6f1c1a52-0d7e-4d55-9a43-3c1f4d8b2a10")


@dataclass
class EvalSample:
    """One question to answer: its id, question text, a lazy image loader (None = text only), extra fields,
    and why it cannot be asked (``problem``; such a sample is logged and skipped before the model loads)."""

    question_id: Any
    prompt: str
    load_image: Callable[[], Image.Image] | None
    extra_fields: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None

    @property
    def key(self) -> AnswerKey:
        """The resume/merge identity its answer will have."""
        return answer_key({"question_id": self.question_id, "prompt": self.prompt, **self.extra_fields})


@dataclass
class RunSummary:
    """Counts of one run."""

    answered: int = 0
    skipped: int = 0
    failed: int = 0


class AnswersWriteError(RuntimeError):
    """The answers file could not be written (disk full, ...); it keeps only whole lines."""


def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image as RGB, faithfully in every mode (a truncated, corrupt or
    unsupported file fails here)."""
    return open_rgb_image(path)


def folder_sample(
    question_id: Any, prompt: Any, image_folder: str | Path, image: Any, allow_outside: bool = False
) -> EvalSample:
    """A sample whose image (if it names one) is ``image_folder / image``, opened when answered; a prompt
    that is not text or an image field that cannot work (see ``question_checks``) is its ``problem``."""
    problem = text_problem("text", prompt) or image_problem(image_folder, image, allow_outside)
    load_image = None
    if image is not None and problem is None:
        load_image = functools.partial(open_image, Path(image_folder) / image)
    return EvalSample(question_id=question_id, prompt=str(prompt), load_image=load_image, problem=problem)


def check_sample_ids(samples: Sequence[EvalSample], source: str | Path) -> None:
    """Refuse null ids and questions asked twice in a question file (all of it, before chunking)."""
    check_unique_ids([sample.question_id for sample in samples], [sample.key for sample in samples], str(source))


def answer_record(sample: EvalSample, text: str, model_id: str, metadata: dict[str, Any]) -> dict[str, Any]:
    """An answers-file line in LLaVA's format; ``answer_id`` is a deterministic UUID of its content."""
    identity = json.dumps([model_id, list(sample.key), text], ensure_ascii=False)
    return {
        "question_id": sample.question_id,
        "prompt": sample.prompt,
        "text": text,
        **sample.extra_fields,
        "answer_id": uuid.uuid5(ANSWER_ID_NAMESPACE, identity).hex,
        "model_id": model_id,
        "metadata": metadata,
    }


def consecutive_batches(items: Iterable[Item], batch_size: int, key: Callable[[Item], Hashable]) -> Iterator[list[Item]]:
    """Consecutive batches of at most ``batch_size`` items with equal ``key`` (in order; ``items`` is read
    lazily, so only one batch is held at a time)."""
    batch: list[Item] = []
    for item in items:
        if batch and (len(batch) == batch_size or key(batch[0]) != key(item)):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def batches_by_image_presence(samples: Sequence[EvalSample], batch_size: int) -> Iterator[list[EvalSample]]:
    """Consecutive batches of at most ``batch_size`` samples that all have an image or all have none."""
    return consecutive_batches(samples, batch_size, lambda sample: sample.load_image is None)


class ErrorLog:
    """Reports failed samples on stderr and appends them to the ``*.errors.jsonl`` file."""

    def __init__(self, answers_file: str | Path) -> None:
        self.path = errors_path_for(answers_file)
        self.count = 0

    def record(self, stage: str, error: str, **identity: Any) -> None:
        """Log one failure (``identity``: question_id/prompt, or the input line number)."""
        self.count += 1
        tqdm.write(f"[{stage}] {identity}: {error}", file=sys.stderr)
        with JsonlAppender(self.path) as writer:
            writer.write({**identity, "stage": stage, "error": error})

    def record_sample(self, stage: str, exc: BaseException, sample: EvalSample) -> None:
        """Log a sample that failed with ``exc``."""
        message = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        self.record(stage, message, question_id=sample.question_id, prompt=sample.prompt)


def _load_images(batch: list[EvalSample], errors: ErrorLog) -> tuple[list[EvalSample], list[Image.Image]]:
    """Samples whose image loaded, with their images; the others are logged."""
    loaded: list[EvalSample] = []
    images: list[Image.Image] = []
    for sample in batch:
        try:
            images.append(sample.load_image())
            loaded.append(sample)
        except Exception as exc:  # a broken image must not stop the run
            errors.record_sample("image", exc, sample)
    return loaded, images


def _answer_or_split(
    bundle: ModelBundle,
    settings: GenerationSettings,
    batch: list[EvalSample],
    images: list[Image.Image] | None,
    errors: ErrorLog,
) -> list[tuple[EvalSample, str, dict[str, Any]]]:
    """Answer a batch; if it fails, answer its samples one by one so only the broken one is lost."""
    try:
        texts, costs = answer_batch(bundle, settings, [sample.prompt for sample in batch], images)
        return list(zip(batch, texts, costs, strict=True))
    except Exception as exc:  # a broken sample must not stop the run
        if len(batch) == 1:
            errors.record_sample("generate", exc, batch[0])
            return []
    results = []
    for index, sample in enumerate(batch):
        single_image = None if images is None else [images[index]]
        results.extend(_answer_or_split(bundle, settings, [sample], single_image, errors))
    return results


def run_samples(
    samples: Sequence[EvalSample],
    bundle: ModelBundle,
    settings: GenerationSettings,
    answers_file: str | Path,
    model_id: str,
    config_metadata: dict[str, Any],
    batch_size: int = 1,
    errors: ErrorLog | None = None,
) -> RunSummary:
    """Answer every sample not yet in ``answers_file``, appending answers in sample order."""
    errors = errors or ErrorLog(answers_file)
    done = completed_keys(answers_file)
    pending = [sample for sample in samples if sample.key not in done]
    summary = RunSummary(skipped=len(samples) - len(pending))
    try:
        with JsonlAppender(answers_file) as writer, tqdm(total=len(pending), unit="q", dynamic_ncols=True) as bar:
            for batch in batches_by_image_presence(pending, batch_size):
                ready, images = batch, None
                if batch[0].load_image is not None:
                    ready, images = _load_images(batch, errors)
                answered = _answer_or_split(bundle, settings, ready, images, errors) if ready else []
                for sample, text, cost in answered:
                    if cost.get("truncated_question_tokens"):
                        tqdm.write(f"warning: question_id {sample.question_id!r}: question cut by "
                                   f"{cost['truncated_question_tokens']} tokens to fit the model's context", file=sys.stderr)
                    writer.write(answer_record(sample, text, model_id, {**config_metadata, **cost}))
                    summary.answered += 1
                bar.update(len(batch))
    except OSError as exc:  # disk full, quota, I/O error: keep whole lines only, say so, stop
        drop_incomplete_tail(answers_file)
        raise AnswersWriteError(
            f"cannot write {answers_file} ({exc.strerror or exc}); it keeps {summary.answered} new whole "
            "answer(s): free space and re-run to resume"
        ) from exc
    summary.failed = errors.count
    return summary


def _start_answers_file(args: argparse.Namespace) -> tuple[set[AnswerKey], int]:
    """Overwrite or resume the answers file (same settings only); the keys already answered and the bytes
    of a partial last line that was cut."""
    answers = Path(args.answers_file)
    if args.overwrite:
        for path in (answers, errors_path_for(answers), run_record_path(answers)):
            path.unlink(missing_ok=True)
    cut = drop_incomplete_tail(answers)
    done = completed_keys(answers)
    claim_answers_file(answers, run_identity(args), has_answers=bool(done))
    return done, cut


def _configure_debug_logging(enabled: bool) -> None:
    """``--debug-mode``: the package's DEBUG log lines (per-sample choices) go to stderr."""
    if enabled:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        package = logging.getLogger("llava")
        package.addHandler(handler)
        package.setLevel(logging.DEBUG)


def _input_problem(
    args: argparse.Namespace, samples: Sequence[EvalSample], line_errors: Sequence[LineError], image_folder_needed: bool
) -> str | None:
    """Why this chunk cannot run at all (no question, none usable, no image folder), or None."""
    usable = [sample for sample in samples if sample.problem is None]
    if not samples and not line_errors:
        return f"{args.question_file} holds no questions (for chunk {args.chunk_idx} of {args.num_chunks})"
    if not usable:
        first = f"question_id {samples[0].question_id!r}: {samples[0].problem}" if samples else str(line_errors[0])
        bad = len(samples) + len(line_errors)
        return f"no usable question in {args.question_file} ({bad} unusable, first: {first})"
    if image_folder_needed and not args.image_folder:
        return "the questions name images: pass --image-folder (the folder that holds them)"
    return None


def lock_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What the answers file's lock says about this run (beside pid, host and start time)."""
    config = run_config_metadata(args)
    return {"pruning_method": config["pruning_method"], "visual_token_num": config["visual_token_num"],
            "question_file": args.question_file}


def run_entry_point(
    args: argparse.Namespace,
    samples: Sequence[EvalSample],
    line_errors: Sequence[LineError],
    image_folder_needed: bool = False,
) -> int:
    """Shared tail of the entry points: check the run, lock its answers file, load the model, answer,
    report; the exit code.

    0: every question of this chunk is answered. 1: some failed (answers kept; a re-run retries them).
    2: a setting or input that cannot work, or another run holds the answers file (nothing loaded, nothing
    answered). ``image_folder_needed``: the questions name image files, so ``--image-folder`` must be given.
    """
    problem = _input_problem(args, samples, line_errors, image_folder_needed)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    _configure_debug_logging(args.debug_mode)
    try:
        with answers_file_lock(args.answers_file, lock_settings(args)):
            return _run_locked(args, samples, line_errors)
    except AnswersFileBusyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run_locked(args: argparse.Namespace, samples: Sequence[EvalSample], line_errors: Sequence[LineError]) -> int:
    """``run_entry_point`` once the answers file is this run's alone."""
    try:
        already_answered, cut = _start_answers_file(args)
    except RunMismatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if cut:
        print(f"cut a partial last line ({cut} bytes, an interrupted write) from {args.answers_file}", file=sys.stderr)
    errors = ErrorLog(args.answers_file)
    errors.path.unlink(missing_ok=True)  # failed samples are retried, so the log describes this run only
    if args.chunk_idx == 0:
        for problem in line_errors:
            errors.record("question_file", problem.message, file=problem.path, line=problem.line_number)
    for sample in samples:
        if sample.problem is not None:
            errors.record("question", sample.problem, question_id=sample.question_id, prompt=sample.prompt)
    samples = [sample for sample in samples if sample.problem is None]
    if all(sample.key in already_answered for sample in samples):
        print(f"all {len(samples)} usable question(s) already answered in {args.answers_file}", file=sys.stderr)
        return 1 if errors.count else 0
    try:
        bundle = bundle_from_args(args)
    except (ValueError, OSError) as exc:
        if not already_answered:  # nothing ran under the record this run just wrote
            run_record_path(args.answers_file).unlink(missing_ok=True)
        if isinstance(exc, ValueError):  # unknown method, bad parameter: the message lists what is valid
            print(f"error: {exc}", file=sys.stderr)
        else:  # a hub id that is not cached (offline) or does not exist
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"error: cannot load model {args.model_path!r}: {first_line}", file=sys.stderr)
        return 2
    try:
        summary = run_samples(
            samples,
            bundle,
            GenerationSettings.from_args(args),
            args.answers_file,
            get_model_name_from_path(args.model_path),
            run_config_metadata(args),
            args.batch_size,
            errors,
        )
    except AnswersWriteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"answered {summary.answered}, skipped {summary.skipped} already answered, "
        f"{summary.failed} error(s){f' (see {errors.path})' if summary.failed else ''}",
        file=sys.stderr,
    )
    if summary.failed:
        print(f"error: {summary.failed} question(s) failed; re-run to retry them", file=sys.stderr)
        return 1
    return 0
