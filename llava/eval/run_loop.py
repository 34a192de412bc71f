"""The answering loop shared by the ``model_vqa*`` entry points: resume, batching, error records, progress.

Answers are appended to the answers file one flushed line at a time; a re-run skips every answer
already there (a partial last line left by a killed run is cut off first). A sample whose image or
generation fails is reported on stderr and in ``<answers>.errors.jsonl`` (rewritten by each run: failed
samples are retried), and the run goes on.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

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
from llava.eval.run_record import RunMismatchError, claim_answers_file, run_record_path
from llava.mm_utils import get_model_name_from_path

ANSWER_ID_NAMESPACE = uuid.UUID("6f1c1a52-0d7e-4d55-9a43-3c1f4d8b2a10")


@dataclass
class EvalSample:
    """One question to answer: its id, question text, a lazy image loader (None = text only), extra fields."""

    question_id: Any
    prompt: str
    load_image: Callable[[], Image.Image] | None
    extra_fields: dict[str, Any] = field(default_factory=dict)

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


def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image as RGB (a truncated or corrupt file fails here)."""
    with Image.open(path) as image:
        return image.convert("RGB")


def folder_sample(question_id: Any, prompt: str, image_folder: str | Path, image: str | None) -> EvalSample:
    """A sample whose image (if it names one) is ``image_folder / image``, opened when answered."""
    load_image = functools.partial(open_image, Path(image_folder) / image) if image else None
    return EvalSample(question_id=question_id, prompt=prompt, load_image=load_image)


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


def batches_by_image_presence(samples: Sequence[EvalSample], batch_size: int) -> Iterator[list[EvalSample]]:
    """Consecutive batches of at most ``batch_size`` samples that all have an image or all have none."""
    batch: list[EvalSample] = []
    for sample in samples:
        kind_changes = bool(batch) and (batch[0].load_image is None) != (sample.load_image is None)
        if len(batch) == batch_size or kind_changes:
            yield batch
            batch = []
        batch.append(sample)
    if batch:
        yield batch


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
    with JsonlAppender(answers_file) as writer, tqdm(total=len(pending), unit="q", dynamic_ncols=True) as bar:
        for batch in batches_by_image_presence(pending, batch_size):
            ready, images = batch, None
            if batch[0].load_image is not None:
                ready, images = _load_images(batch, errors)
            answered = _answer_or_split(bundle, settings, ready, images, errors) if ready else []
            for sample, text, cost in answered:
                writer.write(answer_record(sample, text, model_id, {**config_metadata, **cost}))
            summary.answered += len(answered)
            bar.update(len(batch))
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


def run_entry_point(
    args: argparse.Namespace,
    samples: Sequence[EvalSample],
    line_errors: Sequence[LineError],
    image_folder_needed: bool = False,
) -> int:
    """Shared tail of the entry points: check the run, load the model, answer, report; the exit code.

    0: every question of this chunk is answered. 1: some failed (answers kept; a re-run retries them).
    2: a setting or input that cannot work (nothing loaded, nothing answered). ``image_folder_needed``: the
    questions name image files, so ``--image-folder`` must be given.
    """
    if not samples and not line_errors:
        print(f"error: {args.question_file} holds no questions (for chunk {args.chunk_idx} of {args.num_chunks})", file=sys.stderr)
        return 2
    if not samples:
        print(f"error: no usable question in {args.question_file} ({len(line_errors)} bad line(s), first: {line_errors[0]})", file=sys.stderr)
        return 2
    if image_folder_needed and not args.image_folder:
        print("error: the questions name images: pass --image-folder (the folder that holds them)", file=sys.stderr)
        return 2
    _configure_debug_logging(args.debug_mode)
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
    if all(sample.key in already_answered for sample in samples):
        print(f"all {len(samples)} question(s) already answered in {args.answers_file}", file=sys.stderr)
        return 0
    try:
        bundle = bundle_from_args(args)
    except ValueError as exc:  # unknown method, bad parameter: the message lists what is valid
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a hub id that is not cached (offline) or does not exist
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: cannot load model {args.model_path!r}: {first_line}", file=sys.stderr)
        return 2
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
    print(
        f"answered {summary.answered}, skipped {summary.skipped} already answered, "
        f"{summary.failed} error(s){f' (see {errors.path})' if summary.failed else ''}",
        file=sys.stderr,
    )
    if summary.failed:
        print(f"error: {summary.failed} question(s) failed; re-run to retry them", file=sys.stderr)
        return 1
    return 0
