"""Answer one query about one or more images: LLaVA's ``run_llava`` (``eval_model(args)`` and its command line).

``python -m llava.eval.run_llava --model-path llava-hf/llava-1.5-7b-hf --image-file view.jpg --query "What is
there?"`` prints the answer. LLaVA's flags (``--model-path --model-base --image-file --query --conv-mode --sep
--temperature --top_p --num_beams --max_new_tokens``, LLaVA's defaults: temperature 0.2, 512 new tokens, the
template inferred from the model name) plus the loaders' model and pruning flags (``--pruning_method``,
``--visual_token_num``, ``--method-param KEY=VALUE``, ``--device``, ``--torch-dtype``, ...; ``--help`` lists
them). ``--image-file`` takes several files (or http(s) URLs) joined by ``--sep`` (default ``,``). The query
may mark where each image goes with ``<image-placeholder>``; without it the images come first, one line
each. With a pruning method, a line on stderr reports what the prefill kept.

The pipeline is LLaVA's: ``process_images(images, image_processor, model.config)``,
``tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX)``, ``model.generate(input_ids, images=...)``.
``eval_model`` also takes LLaVA's hand-made ``args`` objects (only LLaVA's attributes set): every other flag
gets its default.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from llava.constants import IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates, get_conversation, image_token_text, infer_conv_mode, uses_im_start_end
from llava.eval.cli_args import QUESTION_FILE_DEFAULTS, build_parser, pruning_method, setting_problems
from llava.eval.inference import GenerationSettings, ModelBundle, bundle_from_args
from llava.mm_utils import get_model_name_from_path, open_rgb_image, process_images, tokenizer_image_token
from toolkit_common.cli import setting_error

LLAVA_CHAT_DEFAULTS = {"conv_mode": None, "temperature": 0.2, "max_new_tokens": 512, "image_aspect_ratio": None}
"""LLaVA's defaults for ``run_llava`` / ``serve.cli`` (the loaders default to greedy, 128 tokens, vicuna_v1);
``image_aspect_ratio=None`` leaves the choice to the model config (``process_images``)."""

def chat_parser(description: str) -> argparse.ArgumentParser:
    """The loaders' parser (``llava.eval.cli_args.build_parser``) for one image conversation: question-file
    flags left out, ``--image-file`` added, LLaVA's chat defaults."""
    parser = build_parser(description, question_files=False)
    parser.add_argument(
        "--image-file", "--image_file", required=True, help="an image file or http(s) URL (run_llava: several, joined by --sep)"
    )
    parser.set_defaults(**LLAVA_CHAT_DEFAULTS)
    return parser


def build_run_parser() -> argparse.ArgumentParser:
    """``run_llava``'s flags: the chat flags plus ``--query`` and ``--sep``."""
    parser = chat_parser(__doc__.splitlines()[0])
    parser.add_argument("--query", required=True, help=f"the question; {IMAGE_PLACEHOLDER} marks where an image goes")
    parser.add_argument("--sep", default=",", help="separator of the files in --image-file (default ',')")
    return parser


def parser_defaults(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Every flag's default value, by ``dest``."""
    dests = [action.dest for action in parser._actions if action.dest not in (argparse.SUPPRESS, "help")]
    return {dest: parser.get_default(dest) for dest in [*dests, *QUESTION_FILE_DEFAULTS]}


def with_defaults(args: Any, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """``args`` (a Namespace, or LLaVA's ``type('Args', (), {...})()`` object) with every missing flag at its default."""
    values = parser_defaults(parser)
    values.update({name: getattr(args, name) for name in values if hasattr(args, name)})
    return argparse.Namespace(**values)


def image_parser(args: argparse.Namespace) -> list[str]:
    """The image files of ``--image-file``, split on ``--sep`` (LLaVA's name)."""
    sep = getattr(args, "sep", None)
    return args.image_file.split(sep) if sep else [args.image_file]


def is_url(image_file: str) -> bool:
    return image_file.startswith(("http://", "https://"))


def load_image(image_file: str) -> Image.Image:
    """An image file or http(s) URL, decoded as RGB (``llava.mm_utils.open_rgb_image``)."""
    if is_url(image_file):
        with urllib.request.urlopen(image_file, timeout=60) as response:  # http(s) only (is_url)
            return open_rgb_image(io.BytesIO(response.read()))
    return open_rgb_image(image_file)


def load_images(image_files: Sequence[str]) -> list[Image.Image]:
    """Every image of ``image_files`` (LLaVA's name)."""
    return [load_image(image_file) for image_file in image_files]


def resolve_conv_mode(args: argparse.Namespace) -> str:
    """``--conv-mode``, or the template inferred from the model name (``infer_conv_mode``); a given mode that
    differs from the inferred one is used, with LLaVA's warning (on stderr)."""
    inferred = infer_conv_mode(get_model_name_from_path(args.model_path))
    if args.conv_mode is None:
        return inferred
    if args.conv_mode != inferred and args.conv_mode in conv_templates:  # an unknown mode is a problem, not a warning
        print(
            f"[WARNING] the auto inferred conversation mode is {inferred}, while `--conv-mode` is {args.conv_mode}, "
            f"using {args.conv_mode}",
            file=sys.stderr,
        )
    return args.conv_mode


def image_file_problems(image_files: Sequence[str]) -> list[str]:
    """One line per local image file that does not exist."""
    return [f"--image-file {path}: no such file" for path in image_files if not is_url(path) and not Path(path).is_file()]


def chat_problems(args: argparse.Namespace, image_files: Sequence[str]) -> list[str]:
    """The loaders' checks of the shared flags and of the image files."""
    return setting_problems(args) + image_file_problems(image_files)


def query_with_images(query: str, num_images: int, mm_use_im_start_end: bool = False) -> str:
    """The user turn: each ``<image-placeholder>`` replaced by the image text (``<image>``, or
    ``<im_start><image><im_end>`` with ``mm_use_im_start_end``), else the image text first, one line per image.
    A query whose placeholders do not number the images is a ``ValueError``."""
    image_text = image_token_text(mm_use_im_start_end)
    placeholders = query.count(IMAGE_PLACEHOLDER)
    if placeholders == 0:
        return f"{image_text}\n" * num_images + query
    if placeholders != num_images:
        raise ValueError(f"--query has {placeholders} {IMAGE_PLACEHOLDER} but --image-file names {num_images} image(s)")
    return query.replace(IMAGE_PLACEHOLDER, image_text)


def prepare(args: Any, parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, list[str]]:
    """``args`` completed (defaults, template chosen) and every problem with them, before any model loads."""
    args = with_defaults(args, parser)
    args.conv_mode = resolve_conv_mode(args)
    image_files = image_parser(args)
    problems = chat_problems(args, image_files)
    if hasattr(args, "query"):
        try:
            query_with_images(args.query, len(image_files))
        except ValueError as error:
            problems.append(str(error))
    if len(image_files) > 1 and pruning_method(args) is not None:
        problems.append(f"--image-file names {len(image_files)} images: pruning methods take one image per prompt")
    return args, problems


def report_pruning(model: Any) -> None:
    """One stderr line of the last prefill's pruning record (nothing when unpruned)."""
    record = getattr(model, "pruning_record", None)
    if record:
        fields = ("method", "equivalent_tokens", "flops_ratio", "prefill_ms")
        print("pruning: " + json.dumps({field: record.get(field) for field in fields}), file=sys.stderr)


def image_tensor(bundle: ModelBundle, images: Sequence[Image.Image], image_aspect_ratio: str | None) -> torch.Tensor:
    """The images as the model's pixels (``process_images`` with the model config), on its device and dtype."""
    pixels = process_images(images, bundle.image_processor, bundle.model.config, image_aspect_ratio=image_aspect_ratio)
    return pixels.to(bundle.device, bundle.dtype)


def answer(bundle: ModelBundle, args: argparse.Namespace) -> str:
    """The model's answer to ``args.query`` about ``args.image_file`` (LLaVA's pipeline, batch 1)."""
    images = load_images(image_parser(args))
    conversation = get_conversation(args.conv_mode)
    conversation.append_message(conversation.roles[0], query_with_images(args.query, len(images), uses_im_start_end(bundle.model.config)))
    conversation.append_message(conversation.roles[1], None)
    input_ids = tokenizer_image_token(conversation.get_prompt(), bundle.tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
    settings = GenerationSettings.from_args(args)
    with torch.inference_mode():
        output_ids = bundle.model.generate(
            input_ids[None].to(bundle.device),
            images=image_tensor(bundle, images, args.image_aspect_ratio),
            image_sizes=[image.size for image in images],
            use_cache=True,
            **settings.generate_kwargs(),
        )
    return bundle.tokenizer.batch_decode(output_ids, skip_special_tokens=True)[0].strip()


def eval_model(args: Any) -> str:
    """LLaVA's ``eval_model``: load the model, answer the query, print the answer (also returned).
    Bad settings are a ``ValueError`` naming each problem."""
    args, problems = prepare(args, build_run_parser())
    if problems:
        raise ValueError("; ".join(problems))
    bundle = bundle_from_args(args)
    outputs = answer(bundle, args)
    print(outputs)
    report_pruning(bundle.model)
    return outputs


def parsed_and_loaded(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> tuple[argparse.Namespace, ModelBundle]:
    """The flags checked (bad ones stop before loading: exit 2, one line) and the model they name."""
    args, problems = prepare(parser.parse_args(argv), parser)
    if problems:
        setting_error(parser, "; ".join(problems))
    try:
        return args, bundle_from_args(args)
    except ValueError as error:  # the loader's one-line refusals (unsupported checkpoint, quantising a tiny model)
        setting_error(parser, str(error))


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print the answer to one query; bad flags stop before loading (exit 2, one line)."""
    args, bundle = parsed_and_loaded(build_run_parser(), argv)
    print(answer(bundle, args))
    report_pruning(bundle.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
