"""Chat about one image in the terminal: LLaVA's ``python -m llava.serve.cli``.

``python -m llava.serve.cli --model-path llava-hf/llava-1.5-7b-hf --image-file view.jpg`` reads one user turn
per line from stdin and streams each reply; an empty line or end of input ends the chat (``exit...``).
LLaVA's flags (``--model-path --model-base --image-file --conv-mode --temperature --max-new-tokens --load-8bit
--load-4bit --device --debug``; LLaVA's defaults: temperature 0.2, 512 new tokens, the template inferred from the
model name) plus the loaders' flags (``--pruning-method``, ``--visual_token_num``, ``--method-param KEY=VALUE``,
``--torch-dtype``, ``--device-map``, ...; ``--help`` lists them). Every turn re-reads the whole conversation
with the image, pruned as configured. ``--debug`` writes each turn's prompt and reply, and the pruning record,
to stderr as JSON lines.

Differences from LLaVA: a reply enters the transcript without its special tokens and stop string (LLaVA
kept ``</s>``, so its next prompt held it twice); generation also stops at the template's stop string
(``KeywordsStoppingCriteria``), as LLaVA's earlier CLI did.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import TextStreamer

from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import Conversation, SeparatorStyle, get_conversation, question_with_image, uses_im_start_end
from llava.eval.inference import GenerationSettings, ModelBundle
from llava.eval.run_llava import chat_parser, image_tensor, load_image, parsed_and_loaded
from llava.mm_utils import KeywordsStoppingCriteria, get_model_name_from_path, tokenizer_image_token


def build_cli_parser() -> argparse.ArgumentParser:
    """The chat flags (``llava.eval.run_llava.chat_parser``) plus ``--debug``."""
    parser = chat_parser(__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="write each turn's prompt and reply to stderr (JSON lines)")
    return parser


def stop_string(conversation: Conversation) -> str:
    """The text that ends a reply in this template (LLaVA's rule: ``sep2`` for TWO, else ``sep``)."""
    return (conversation.sep2 if conversation.sep_style == SeparatorStyle.TWO else conversation.sep) or ""


def display_roles(conversation: Conversation, model_path: str) -> tuple[str, str]:
    """The role names shown at the prompts (``user`` / ``assistant`` for MPT models, as in LLaVA)."""
    if "mpt" in get_model_name_from_path(model_path).lower():
        return ("user", "assistant")
    return conversation.roles


def reply_text(bundle: ModelBundle, output_ids: torch.Tensor, stop: str) -> str:
    """The generated reply as the transcript keeps it: no special tokens, no trailing stop string."""
    text = bundle.tokenizer.decode(output_ids[0], skip_special_tokens=True).strip()
    return text.removesuffix(stop).strip() if stop else text


def chat(
    bundle: ModelBundle,
    args: argparse.Namespace,
    read_line: Callable[[str], str] = input,
    write: Callable[[str], Any] | None = None,
) -> Conversation:
    """Run the conversation until an empty turn or end of input; returns the transcript. ``read_line`` shows
    a prompt and returns one line (``input``); ``write`` prints (default: ``sys.stdout.write``)."""
    write = write or sys.stdout.write
    conversation = get_conversation(args.conv_mode)
    roles = display_roles(conversation, args.model_path)
    image = load_image(args.image_file)
    pixels = image_tensor(bundle, [image], args.image_aspect_ratio)
    settings = GenerationSettings.from_args(args)
    stop = stop_string(conversation)
    image_pending = True  # the image goes with the first user turn (a template may hold example turns)
    while True:
        try:
            text = read_line(f"{roles[0]}: ")
        except EOFError:
            text = ""
        if not text:
            write("exit...\n")
            return conversation
        write(f"{roles[1]}: ")
        sys.stdout.flush()
        if image_pending:
            text, image_pending = question_with_image(text, uses_im_start_end(bundle.model.config)), False
        conversation.append_message(conversation.roles[0], text)
        conversation.append_message(conversation.roles[1], None)
        prompt = conversation.get_prompt()
        input_ids = tokenizer_image_token(prompt, bundle.tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")[None].to(bundle.device)
        stopping = [KeywordsStoppingCriteria([stop], bundle.tokenizer, input_ids)] if stop else None
        with torch.inference_mode():
            output_ids = bundle.model.generate(
                input_ids,
                images=pixels,
                image_sizes=[image.size],
                streamer=TextStreamer(bundle.tokenizer, skip_prompt=True, skip_special_tokens=True),
                stopping_criteria=stopping,
                use_cache=True,
                **settings.generate_kwargs(),
            )
        conversation.messages[-1][-1] = reply_text(bundle, output_ids, stop)
        if args.debug:
            record = getattr(bundle.model, "pruning_record", None)
            print(json.dumps({"prompt": prompt, "outputs": conversation.messages[-1][-1], "pruning": record}), file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: chat about ``--image-file``; bad flags stop before loading (exit 2, one line)."""
    args, bundle = parsed_and_loaded(build_cli_parser(), argv)
    chat(bundle, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
