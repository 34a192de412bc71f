"""Command-line flags shared by the ``model_vqa*`` entry points (LLaVA's flags plus pruning flags)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from llava.conversation import conv_templates
from llava.eval.run_record import file_digest, model_fingerprint
from llava.model.placement import plan_placement
from llava.pruning.budget import budget_problem
from toolkit_common.cli import setting_error

DEFAULT_MODEL_PATH = "llava-hf/llava-1.5-7b-hf"
DYNAMIC_SELECTION_METHOD = "ablation_a"

FASTV_FIELD_HELP = {
    "fast_v_sys_length": "tokens before the image (default: found from the image tokens); needs --fast-v-image-token-length",
    "fast_v_image_token_length": "image tokens (576 for LLaVA-1.5)",
    "fast_v_attention_rank": "R, image tokens kept (same as --method-param keep=R)",
    "fast_v_agg_layer": "K, the first layer that runs on the pruned sequence (default 2)",
    "fast_v_token_selection_method": "avg_all_heads (FastV) | max_head | weighted_combination",
    "fast_v_weighted_alpha": "alpha of weighted_combination, in [0, 1]",
}


def _fastv_fields() -> dict[str, type]:
    """FastV's config fields (``PruningLlamaConfig.fast_v_*``) and their value types: the flags
    ``--fast-v-*`` set exactly these, which ``PARAMETER_ALIASES`` / the engine fields then map."""
    from llava.model.language_model.pruning_config import PruningLlamaConfig

    kinds = {"int | None": int, "float | None": float, "str | None": str}
    fields = {name: kinds[kind] for name, kind in PruningLlamaConfig.__annotations__.items() if name.startswith("fast_v_")}
    if set(fields) != set(FASTV_FIELD_HELP):
        raise RuntimeError(f"FASTV_FIELD_HELP is out of date with PruningLlamaConfig's fields {sorted(fields)}")
    return fields


FASTV_FIELDS = _fastv_fields()


def methods_help() -> str:
    """``--help`` epilog: every registered method with its parameters and defaults, and the strategies."""
    from llava.pruning.head_selection import HEAD_STRATEGIES
    from llava.pruning.registry import REGISTERED_METHODS
    from llava.pruning.selection import TOKEN_SELECTION_STRATEGIES

    lines = ["pruning methods (--pruning_method NAME; parameters by --method-param KEY=VALUE):"]
    for name in sorted(REGISTERED_METHODS):
        method = REGISTERED_METHODS[name]
        params = ", ".join(f"{f.name}={f.default!r}" if f.default is not dataclasses.MISSING else f.name
                           for f in dataclasses.fields(method) if f.init)
        lines.append(f"  {name}: {params}")
    lines.append(f"token selection (fastv token_selection_method): {', '.join(TOKEN_SELECTION_STRATEGIES)}")
    lines.append(f"head strategies (--head-strategy): {', '.join(HEAD_STRATEGIES)}")
    lines.append("--visual_token_num N plans any method for N equivalent tokens (FLOPs-matched to keeping N from layer 0)")
    return "\n".join(lines)


def str2bool(value: str) -> bool:
    """Parse ``True/False/1/0/yes/no`` (LLaVA-fork style ``--debug-mode True``)."""
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "y"):
        return True
    if lowered in ("false", "0", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def parse_device_map(text: str) -> str | dict[str, Any]:
    """``--device-map``: a strategy name (``auto``) or a JSON object of module name -> device."""
    if not text.lstrip().startswith("{"):
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"--device-map {text!r} is not JSON ({error.msg})") from error
    return value


def placement_args(args: argparse.Namespace) -> dict[str, Any]:
    """The loading keywords of ``load_pretrained_model`` from the shared flags (``llava.model.placement``)."""
    return {
        "device": args.device,
        "torch_dtype": args.torch_dtype,
        "device_map": getattr(args, "device_map", None),
        "attn_implementation": getattr(args, "attn_implementation", None),
        "use_flash_attn": getattr(args, "use_flash_attn", False),
        "load_8bit": getattr(args, "load_8bit", False),
        "load_4bit": getattr(args, "load_4bit", False),
    }


def parse_method_param(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as JSON when it parses (numbers, lists, true/false), else as text."""
    key, separator, raw_value = text.partition("=")
    if not separator or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(raw_value)
    except json.JSONDecodeError:
        return key, raw_value


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (``prog: error: ...``), without the long usage block."""

    def error(self, message: str) -> NoReturn:
        setting_error(self, f"{message} (see --help)")


QUESTION_FILE_DEFAULTS = {
    "question_file": None, "answers_file": None, "image_folder": "", "num_chunks": 1, "chunk_idx": 0,
    "overwrite": False, "allow_outside_images": False,
}
"""The data flags' values for a parser without them (one conversation: ``run_llava``, ``serve.cli``)."""


def build_parser(description: str, question_files: bool = True) -> argparse.ArgumentParser:
    """Parser with model, data, generation and pruning flags; both ``-`` and ``_`` spellings work.
    ``question_files=False``: without the data flags (question and answers files, chunks), for one conversation."""
    parser = OneLineErrorParser(
        description=description, epilog=methods_help(), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model-path", "--model_path", default=DEFAULT_MODEL_PATH,
        help="a llava-hf checkpoint (llava-hf/llava-1.5-7b-hf, -13b-hf), an original LLaVA one (liuhaotian/llava-v1.5-7b,"
        " -13b; converted on load), or a local folder such as playground/models/shapes-llava",
    )
    model.add_argument("--model-base", "--model_base", default=None)
    model.add_argument("--device", default=None, help="auto (default: cuda when available, else mps, else cpu), cpu, cuda[:N], mps")
    model.add_argument(
        "--torch-dtype", "--torch_dtype", default=None, help="float16 | bfloat16 | float32 (default: float16 on cuda / mps, float32 on cpu)"
    )
    model.add_argument(
        "--device-map", "--device_map", type=parse_device_map, default=None,
        help="spread the model over devices: auto | balanced | sequential | a JSON dict of module -> device",
    )
    model.add_argument(
        "--attn-implementation", "--attn_implementation", default=None, help="sdpa (default) | eager | flash_attention_2 | ..."
    )
    model.add_argument("--use-flash-attn", "--use_flash_attn", action="store_true", help="flash_attention_2 (LLaVA's flag)")
    model.add_argument("--load-8bit", "--load_8bit", action="store_true", help="8-bit weights (bitsandbytes, the quant extra)")
    model.add_argument("--load-4bit", "--load_4bit", action="store_true", help="4-bit NF4 weights (bitsandbytes, the quant extra)")
    if question_files:
        add_question_file_flags(parser)
    else:
        parser.set_defaults(**QUESTION_FILE_DEFAULTS)
    add_generation_and_pruning_flags(parser)
    return parser


def add_question_file_flags(parser: argparse.ArgumentParser) -> None:
    """The loaders' data flags: question and answers files, image folder, chunks, resume."""
    data = parser.add_argument_group("data")
    data.add_argument("--image-folder", "--image_folder", default="")
    data.add_argument("--question-file", "--question_file", required=True)
    data.add_argument("--answers-file", "--answers_file", required=True)
    data.add_argument("--num-chunks", "--num_chunks", type=int, default=1)
    data.add_argument("--chunk-idx", "--chunk_idx", type=int, default=0)
    data.add_argument(
        "--overwrite", action="store_true", help="start the answers file again (default: resume it, same settings only)"
    )
    data.add_argument(
        "--allow-outside-images", "--allow_outside_images", action="store_true",
        help="open image paths that leave --image-folder ('../x', '/abs/x'); default: such a question is logged and skipped",
    )


def add_generation_and_pruning_flags(parser: argparse.ArgumentParser) -> None:
    """Prompt template, decoding, batching and pruning flags (FastV's own spellings among them)."""
    generation = parser.add_argument_group("generation")
    generation.add_argument("--conv-mode", "--conv_mode", default="vicuna_v1")
    generation.add_argument("--image-aspect-ratio", "--image_aspect_ratio", default="pad")
    generation.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    generation.add_argument("--top_p", "--top-p", type=float, default=None)
    generation.add_argument("--num_beams", "--num-beams", type=int, default=1)
    generation.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=128)
    generation.add_argument("--batch-size", "--batch_size", type=int, default=1)
    generation.add_argument(
        "--record-kept-patches", "--record_kept_patches", action="store_true",
        help="write each pruned answer's kept image tokens per stage into its metadata (kept_stages: overlays, evidence recall)",
    )
    generation.add_argument(
        "--truncate-long-prompts", "--truncate_long_prompts", action="store_true",
        help="cut the end of a question whose prompt + --max-new-tokens exceeds the model's context (with a warning);"
        " default: such a question is an error, logged and skipped",
    )
    pruning = parser.add_argument_group("pruning")
    pruning.add_argument("--pruning_method", "--pruning-method", default=None, help="registry name")
    pruning.add_argument("--visual_token_num", "--visual-token-num", type=int, default=None, help="budget in equivalent tokens")
    pruning.add_argument(
        "--retain-ratio", "--retain_ratio", type=float, default=None,
        help="budget as a share of each image's tokens, in (0, 1] (for any family; LLaVA-NeXT's token count varies)",
    )
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
    fastv = parser.add_argument_group("FastV's own flags (Chen et al. 2024; same configuration as --pruning_method fastv)")
    fastv.add_argument("--use-fast-v", "--use_fast_v", type=str2bool, default=False, help="True: run FastV")
    fastv.add_argument(
        "--fast-v-inplace", "--fast_v_inplace", type=str2bool, default=None,
        help="accepted for FastV's scripts: the engine always removes the pruned tokens (FastV's inplace mode; "
             "its masked mode gives the same answers, at full cost)",
    )
    for field, kind in FASTV_FIELDS.items():
        flag = field.replace("_", "-")
        fastv.add_argument(f"--{flag}", f"--{field}", type=kind, default=None, help=FASTV_FIELD_HELP[field])
    pruning.add_argument(
        "--method-param",
        "--method_param",
        type=parse_method_param,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other method parameter (repeatable), e.g. --method-param layer_list=[2,8,16,24]",
    )


def pruning_method(args: argparse.Namespace) -> str | None:
    """The registry method to run: the dynamic selector when asked for, FastV for ``--use-fast-v True``,
    else ``--pruning_method``."""
    from llava.pruning.registry import use_fast_v_method  # the registry imports every method

    if args.enable_dynamic_selection:
        return DYNAMIC_SELECTION_METHOD
    return use_fast_v_method() if args.use_fast_v and args.pruning_method is None else args.pruning_method


def pruning_params(args: argparse.Namespace) -> dict[str, Any]:
    """Method parameters for ``load_pretrained_model`` from the flags that were given (``--H`` -> heads)."""
    named = {
        "visual_token_num": args.visual_token_num,
        "retain_ratio": args.retain_ratio,
        "heads": args.H,
        "head_strategy": args.head_strategy,
        "debug_mode": args.debug_mode or None,
        **{field: getattr(args, field) for field in FASTV_FIELDS},
    }
    params = {name: value for name, value in named.items() if value is not None}
    params.update(dict(args.method_param))
    return params


def run_config_metadata(args: argparse.Namespace) -> dict[str, Any]:
    """The configuration fields every answer's ``metadata`` records (read back by the scorers)."""
    return {
        "pruning_method": pruning_method(args),
        "visual_token_num": args.visual_token_num,
        "retain_ratio": args.retain_ratio,
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
    from llava.pruning.registry import available_methods, use_fast_v_method  # the registry imports every method

    problems = []
    if args.conv_mode not in conv_templates:
        problems.append(f"--conv-mode {args.conv_mode!r} is unknown; valid: {', '.join(sorted(conv_templates))}")
    for flag, value in (("--batch-size", args.batch_size), ("--num-chunks", args.num_chunks),
                        ("--max-new-tokens", args.max_new_tokens), ("--num-beams", args.num_beams)):
        if value < 1:
            problems.append(f"{flag} must be >= 1, got {value}")
    if args.num_chunks >= 1 and not 0 <= args.chunk_idx < args.num_chunks:
        problems.append(f"--chunk-idx must be in [0, {args.num_chunks - 1}] for --num-chunks {args.num_chunks}, got {args.chunk_idx}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        problems.append(f"--temperature must be a number >= 0 (0 = greedy), got {args.temperature}")
    if args.top_p is not None and not (math.isfinite(args.top_p) and 0 < args.top_p <= 1):
        problems.append(f"--top_p must be in (0, 1], got {args.top_p}")
    try:
        plan_placement(**placement_args(args))
    except ValueError as error:
        problems.append(str(error))
    if problem := budget_problem(args.visual_token_num, args.retain_ratio):
        problems.append(problem)
    if args.visual_token_num is not None and args.visual_token_num < 1:
        problems.append(f"--visual_token_num must be >= 1, got {args.visual_token_num}")
    if args.question_file is not None and not Path(args.question_file).is_file():
        problems.append(f"--question-file {args.question_file}: no such file")
    if args.image_folder and not Path(args.image_folder).is_dir():
        problems.append(f"--image-folder {args.image_folder}: no such folder")
    if args.use_fast_v and args.pruning_method not in (None, use_fast_v_method()):
        problems.append(f"--use-fast-v True runs FastV, but --pruning_method {args.pruning_method!r} was given: pass one of them")
    method = pruning_method(args)
    if method is None and any(getattr(args, field) is not None for field in FASTV_FIELDS):
        given = [f"--{field.replace('_', '-')}" for field in FASTV_FIELDS if getattr(args, field) is not None]
        problems.append(f"{', '.join(given)} given without a method: add --use-fast-v True (or --pruning_method fastv)")
    if method is not None and method not in available_methods():
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


DEFAULT_ATTN_IMPLEMENTATION = "sdpa"  # what transformers loads without attn_implementation (torch >= 2.1)


def execution_identity(args: argparse.Namespace) -> dict[str, str]:
    """How the model computes, with the loader's defaults resolved: the device kind (``cuda``, ``cpu``, ``mps``;
    not its index, so chunks on several GPUs are one run), the dtype and the attention implementation. A
    resume with other values would mix answers of other numerics, so they are part of the run record."""
    placement = plan_placement(**placement_args(args))
    identity = {
        "device": placement.device.type,
        "dtype": str(placement.dtype).removeprefix("torch."),
        "attn_implementation": placement.attn_implementation or DEFAULT_ATTN_IMPLEMENTATION,
    }
    if placement.quantization is not None:
        identity["quantization"] = placement.quantization
    return identity


def run_identity(args: argparse.Namespace) -> dict[str, Any]:
    """Every setting an answer depends on: what the answers file's run record holds."""
    return {
        **run_config_metadata(args),
        **execution_identity(args),
        "model_path": args.model_path,
        "model_weights": model_fingerprint(args.model_path),
        "model_base": args.model_base,
        "method_params": pruning_params(args),
        "conv_mode": args.conv_mode,
        "image_aspect_ratio": args.image_aspect_ratio,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "num_beams": args.num_beams,
        "max_new_tokens": args.max_new_tokens,
        "truncate_long_prompts": args.truncate_long_prompts,
        "question_file": Path(args.question_file).name,
        "question_file_sha256": file_digest(args.question_file),
        "num_chunks": args.num_chunks,
        "chunk_idx": args.chunk_idx,
    }
