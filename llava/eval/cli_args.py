"""Command-line flags shared by the ``model_vqa*`` entry points (LLaVA's flags plus pruning flags)."""

from __future__ import annotations

import argparse
import json
from typing import Any

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
    pruning.add_argument("--debug-mode", "--debug_mode", type=str2bool, default=False)
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
