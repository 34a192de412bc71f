"""Command-line flags shared by the ``model_vqa*`` entry points (LLaVA's flags plus pruning flags)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llava.conversation import conv_templates
from toolkit_common.cli import setting_error

DEFAULT_MODEL_PATH = "llava-hf/llava-1.5-7b-hf"
DYNAMIC_SELECTION_METHOD = "ablation_a"


def str2bool(value: str) -> bool:
    """Parse ``True/False/1/0/yes/no`` (LLaVA-fork style ``--debug-mode True``)."""
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "y"):
        return True
    if lowered in ("false", "0", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def parse_method_param(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as JSON when it parses (numbers, lists, true/false), else as text."""
    key, separator, raw_value = text.partition("=")
    if not separator or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(raw_value)
    except json.JSONDecodeError:
        return key, raw_value


def build_parser(description: str) -> argparse.ArgumentParser:
    """Parser with model, data, generation and pruning flags; both ``-`` and ``_`` spellings work."""
    parser = argparse.ArgumentParser(description=description)
    model = parser.add_argument_group("model")
    model.add_argument("--model-path", "--model_path", default=DEFAULT_MODEL_PATH)
    model.add_argument("--model-base", "--model_base", default=None)
    model.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    model.add_argument(
        "--torch-dtype", "--torch_dtype", default=None, help="default: float16 on cuda, float32 on cpu"
    )
    data = parser.add_argument_group("data")
    data.add_argument("--image-folder", "--image_folder", default="")
    data.add_argument("--question-file", "--question_file", required=True)
    data.add_argument("--answers-file", "--answers_file", required=True)
    data.add_argument("--num-chunks", "--num_chunks", type=int, default=1)
    data.add_argument("--chunk-idx", "--chunk_idx", type=int, default=0)
    data.add_argument(
        "--overwrite", action="store_true", help="start the answers file again (default: resume it, same settings only)"
    )
    generation = parser.add_argument_group("generation")
    generation.add_argument("--conv-mode", "--conv_mode", default="vicuna_v1")
    generation.add_argument("--image-aspect-ratio", "--image_aspect_ratio", default="pad")
    generation.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    generation.add_argument("--top_p", "--top-p", type=float, default=None)
    generation.add_argument("--num_beams", "--num-beams", type=int, default=1)
    generation.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=128)
    generation.add_argument("--batch-size", "--batch_size", type=int, default=1)
    pruning = parser.add_argument_group("pruning")
    pruning.add_argument("--pruning_method", "--pruning-method", default=None, help="registry name")
    pruning.add_argument("--visual_token_num", "--visual-token-num", type=int, default=None, help="budget")
    pruning.add_argument("--H", type=int, default=None, help="number of selected heads (fine-head methods)")
    pruning.add_argument("--head-strategy", "--head_strategy", default=None)
    pruning.add_argument(
        "--enable-dynamic-selection",
        "--enable_dynamic_selection",
        action="store_true",
        help=f"choose head strategy and count per sample (runs method {DYNAMIC_SELECTION_METHOD!r})",
    )
    pruning.add_argument(
        "--debug-mode", "--debug_mode", type=str2bool, default=False, help="log per-sample choices to stderr"
    )
    pruning.add_argument("--fast-v-agg-layer", "--fast_v_agg_layer", type=int, default=None)
    pruning.add_argument("--fast-v-token-selection-method", "--fast_v_token_selection_method", default=None)
    pruning.add_argument("--fast-v-weighted-alpha", "--fast_v_weighted_alpha", type=float, default=None)
    pruning.add_argument(
        "--method-param",
        "--method_param",
        type=parse_method_param,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other method parameter (repeatable), e.g. --method-param layer_list=[2,8,16,24]",
    )
    return parser


def pruning_method(args: argparse.Namespace) -> str | None:
    """The registry method to run: the dynamic selector when asked for, else ``--pruning_method``."""
    return DYNAMIC_SELECTION_METHOD if args.enable_dynamic_selection else args.pruning_method


def pruning_params(args: argparse.Namespace) -> dict[str, Any]:
    """Method parameters for ``load_pretrained_model`` from the flags that were given (``--H`` -> heads)."""
    named = {
        "visual_token_num": args.visual_token_num,
        "heads": args.H,
        "head_strategy": args.head_strategy,
        "debug_mode": args.debug_mode or None,
        "fast_v_agg_layer": args.fast_v_agg_layer,
        "fast_v_token_selection_method": args.fast_v_token_selection_method,
        "fast_v_weighted_alpha": args.fast_v_weighted_alpha,
    }
    params = {name: value for name, value in named.items() if value is not None}
    params.update(dict(args.method_param))
    return params


def run_config_metadata(args: argparse.Namespace) -> dict[str, Any]:
    """The configuration fields every answer's ``metadata`` records (read back by the scorers)."""
    return {
        "pruning_method": pruning_method(args),
        "visual_token_num": args.visual_token_num,
        "H": args.H,
        "head_strategy": args.head_strategy,
        "dynamic_selection": bool(args.enable_dynamic_selection),
    }


HUB_ID_HINT = "a hub model id is ORG/NAME (e.g. llava-hf/llava-1.5-7b-hf); a local model is an existing folder"


def model_path_problem(model_path: str, tiny_models: Sequence[str] = ("tiny-random-llava", "tiny-random-llama")) -> str | None:
    """Why ``model_path`` cannot name a model (a local path that does not exist), or None."""
    if model_path in tiny_models or Path(model_path).expanduser().exists():
        return None
    looks_local = model_path.startswith((".", "/", "~")) or model_path.count("/") != 1 or model_path.endswith("/")
    if looks_local:
        return f"--model-path {model_path!r}: no such folder ({HUB_ID_HINT})"
    return None


def setting_problems(args: argparse.Namespace) -> list[str]:
    """Every shared flag that cannot work, as one line each (checked before any model loads)."""
    problems = []
    if args.conv_mode not in conv_templates:
        problems.append(f"--conv-mode {args.conv_mode!r} is unknown; valid: {', '.join(sorted(conv_templates))}")
    for flag, value in (("--batch-size", args.batch_size), ("--num-chunks", args.num_chunks),
                        ("--max-new-tokens", args.max_new_tokens), ("--num-beams", args.num_beams)):
        if value < 1:
            problems.append(f"{flag} must be >= 1, got {value}")
    if args.num_chunks >= 1 and not 0 <= args.chunk_idx < args.num_chunks:
        problems.append(f"--chunk-idx must be in [0, {args.num_chunks - 1}] for --num-chunks {args.num_chunks}, got {args.chunk_idx}")
    if args.temperature < 0:
        problems.append(f"--temperature must be >= 0, got {args.temperature}")
    if args.visual_token_num is not None and args.visual_token_num < 1:
        problems.append(f"--visual_token_num must be >= 1, got {args.visual_token_num}")
    if not Path(args.question_file).is_file():
        problems.append(f"--question-file {args.question_file}: no such file")
    if args.image_folder and not Path(args.image_folder).is_dir():
        problems.append(f"--image-folder {args.image_folder}: no such folder")
    method = pruning_method(args)
    if method is not None:
        from llava.pruning.registry import available_methods  # the registry imports every method

        if method not in available_methods():
            problems.append(f"--pruning_method {method!r} is unknown; valid: {', '.join(available_methods())}")
    model_problem = model_path_problem(args.model_path)
    if model_problem:
        problems.append(model_problem)
    return problems


def parse_eval_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse and check the shared flags; bad ones stop the run before any work (exit 2, one line)."""
    args = parser.parse_args(argv)
    problems = setting_problems(args)
    if problems:
        setting_error(parser, "; ".join(problems))
    return args


def run_identity(args: argparse.Namespace) -> dict[str, Any]:
    """Every setting an answer depends on: what the answers file's run record holds."""
    return {
        **run_config_metadata(args),
        "model_path": args.model_path,
        "model_base": args.model_base,
        "method_params": pruning_params(args),
        "conv_mode": args.conv_mode,
        "image_aspect_ratio": args.image_aspect_ratio,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "num_beams": args.num_beams,
        "max_new_tokens": args.max_new_tokens,
        "question_file": Path(args.question_file).name,
        "num_chunks": args.num_chunks,
        "chunk_idx": args.chunk_idx,
    }
