"""LLaVA's conversation templates: ``SeparatorStyle``, ``Conversation`` and ``conv_templates``.

The API is LLaVA's (``conv_templates[name].copy()``, ``append_message``, ``get_prompt``, ``roles``,
``sep_style``, ``sep`` / ``sep2``, ``messages[-1][-1] = reply``), and every template LLaVA ships is here
under LLaVA's names, with its prompt text byte for byte: ``vicuna_v1`` (LLaVA-1.5's evaluation default,
alias ``v1``), ``llava_v1``, ``llava_llama_2``, ``llama_2``, ``mistral_instruct``, ``chatml_direct``
(alias ``mistral_direct``), ``mpt``, ``plain`` (alias ``v0_plain``), ``llava_v0``, ``v0_mmtag``,
``v1_mmtag``, ``default`` / ``v0`` (Vicuna v0 with its worked example). A vicuna_v1 prompt looks like
``"{system} USER: <image>\\n{question} ASSISTANT:"``.

Not ported: the Gradio demo's helpers (``get_images``, ``to_gradio_chatbot``). Differences: a finished
turn whose separator is ``None`` (``plain``'s ``sep2``) ends with nothing where LLaVA raises
``TypeError``; a LLaMA-2 transcript that starts with an open or assistant turn is a ``ValueError``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum, auto
from typing import Any

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN


class SeparatorStyle(Enum):
    """How a template joins its turns (LLaVA's names)."""

    SINGLE = auto()  # "{role}: {text}{sep}" after every turn
    TWO = auto()  # as SINGLE, but user turns end with sep and assistant turns with sep2
    MPT = auto()  # "{role}{text}{sep}" (ChatML: the role carries its own markers)
    PLAIN = auto()  # the texts alone, each followed by sep / sep2 (pretraining captions)
    LLAMA_2 = auto()  # "[INST] ... [/INST] reply sep2", the system prompt inside the first [INST]


Message = Any
"""A turn's content: text, ``None`` (an open turn for the model to write), or LLaVA's web-demo tuple
``(text, PIL image, image process mode)``, of which only the text enters the prompt."""


def _text(message: Message) -> str:
    """The text of a turn (the first item of LLaVA's ``(text, image, mode)`` tuple)."""
    return message[0] if isinstance(message, tuple) else message


@dataclass
class Conversation:
    """A transcript in one template. Fields and their order are LLaVA's.

    ``messages`` holds ``[role, message]`` pairs; the templates keep an immutable tuple, so
    ``append_message`` needs a ``copy()`` first, as in LLaVA. ``offset`` is how many leading messages are
    a worked example (``default``'s Vicuna v0); they are part of the prompt.
    """

    system: str
    roles: tuple[str, str]
    messages: Sequence[list[Message]] = ()
    offset: int = 0
    sep_style: SeparatorStyle = SeparatorStyle.SINGLE
    sep: str = "###"
    sep2: str | None = None
    version: str = "Unknown"
    skip_next: bool = False

    def append_message(self, role: str, message: Message) -> None:
        """Add one turn; ``message=None`` leaves the turn open for generation."""
        if not isinstance(self.messages, list):
            raise TypeError("this is a shared template: call .copy() (or get_conversation) before append_message")
        self.messages.append([role, message])

    def get_prompt(self) -> str:
        """The transcript as one prompt string, in this template's separator style."""
        renderer = _RENDERERS.get(self.sep_style)
        if renderer is None:
            raise ValueError(f"Invalid style: {self.sep_style}")
        return renderer(self, self._prompt_messages())

    def copy(self) -> Conversation:
        """A new conversation with this template and a copy of its turns (``skip_next`` reset, as in LLaVA)."""
        return dataclasses.replace(self, messages=[[role, message] for role, message in self.messages], skip_next=False)

    def dict(self) -> dict[str, Any]:
        """LLaVA's JSON-able summary (system, roles, messages as text, offset, separators)."""
        return {
            "system": self.system,
            "roles": self.roles,
            "messages": [[role, _text(message) if isinstance(message, tuple) else message] for role, message in self.messages],
            "offset": self.offset,
            "sep": self.sep,
            "sep2": self.sep2,
        }

    def _prompt_messages(self) -> list[tuple[str, Message]]:
        """The turns as the prompt shows them: when the first one is a web-demo tuple, its ``<image>`` is moved
        to the front (``<image>\\n{text}``), or for ``*mmtag`` versions given its own two turns before it."""
        messages = [(role, message) for role, message in self.messages]
        if not messages or not isinstance(messages[0][1], tuple):
            return messages
        role, first = messages[0]
        text = _text(first).replace(DEFAULT_IMAGE_TOKEN, "").strip()
        if "mmtag" in self.version:
            image_turns = [(self.roles[0], "<Image><image></Image>"), (self.roles[1], "Received.")]
            return [*image_turns, (role, text), *messages[1:]]
        return [(role, f"{DEFAULT_IMAGE_TOKEN}\n{text}"), *messages[1:]]


def _separators(conversation: Conversation) -> tuple[str, str]:
    """(after user turns, after assistant turns); a missing ``sep2`` ends turns with nothing."""
    return conversation.sep, conversation.sep2 or ""


def _render_single(conversation: Conversation, messages: list[tuple[str, Message]]) -> str:
    parts = [conversation.system, conversation.sep]
    for role, message in messages:
        parts.append(f"{role}: {_text(message)}{conversation.sep}" if message else f"{role}:")
    return "".join(parts)


def _render_two(conversation: Conversation, messages: list[tuple[str, Message]]) -> str:
    separators = _separators(conversation)
    parts = [conversation.system, separators[0]]
    for index, (role, message) in enumerate(messages):
        parts.append(f"{role}: {_text(message)}{separators[index % 2]}" if message else f"{role}:")
    return "".join(parts)


def _render_mpt(conversation: Conversation, messages: list[tuple[str, Message]]) -> str:
    parts = [conversation.system, conversation.sep]
    for role, message in messages:
        parts.append(f"{role}{_text(message)}{conversation.sep}" if message else role)
    return "".join(parts)


def _render_plain(conversation: Conversation, messages: list[tuple[str, Message]]) -> str:
    separators = _separators(conversation)
    parts = [conversation.system]
    for index, (_, message) in enumerate(messages):
        if message:
            parts.append(f"{_text(message)}{separators[index % 2]}")
    return "".join(parts)


def _render_llama_2(conversation: Conversation, messages: list[tuple[str, Message]]) -> str:
    if not messages or not messages[0][1]:
        raise ValueError("a LLaMA-2 style transcript must start with a user message")
    if messages[0][0] != conversation.roles[0]:
        raise ValueError(f"a LLaMA-2 style transcript must start with the user role {conversation.roles[0]!r}")
    system = f"<<SYS>>\n{conversation.system}\n<</SYS>>\n\n" if conversation.system else ""
    parts = []
    for index, (_, message) in enumerate(messages):
        if not message:
            continue
        text = _text(message)
        if index == 0:
            text = system + text
        if index % 2 == 0:
            parts.append(f"{conversation.sep}[INST] {text} [/INST]")
        else:
            parts.append(f" {text} {conversation.sep2 or ''}")
    return "".join(parts).removeprefix(conversation.sep)


_RENDERERS: dict[SeparatorStyle, Callable[[Conversation, list[tuple[str, Message]]], str]] = {
    SeparatorStyle.SINGLE: _render_single,
    SeparatorStyle.TWO: _render_two,
    SeparatorStyle.MPT: _render_mpt,
    SeparatorStyle.PLAIN: _render_plain,
    SeparatorStyle.LLAMA_2: _render_llama_2,
}

# The templates: text is LLaVA's (haotian-liu/LLaVA llava/conversation.py), byte for byte.

_HUMAN_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
_USER_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_MMTAG_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant is able to understand the visual content that the user provides, and assist the user with a "
    "variety of tasks using natural language.The visual content will be provided with the following format: "
    "<Image>visual content</Image>."
)
_LLAMA_2_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe.  "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature.\n\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering "
    "something not correct. If you don't know the answer to a question, please don't share false information."
)
_VICUNA_V0_EXAMPLE = (
    ("Human", "What are the key differences between renewable and non-renewable energy sources?"),
    (
        "Assistant",
        "Renewable energy sources are those that can be replenished naturally in a relatively "
        "short amount of time, such as solar, wind, hydro, geothermal, and biomass. "
        "Non-renewable energy sources, on the other hand, are finite and will eventually be "
        "depleted, such as coal, oil, and natural gas. Here are some key differences between "
        "renewable and non-renewable energy sources:\n"
        "1. Availability: Renewable energy sources are virtually inexhaustible, while non-renewable "
        "energy sources are finite and will eventually run out.\n"
        "2. Environmental impact: Renewable energy sources have a much lower environmental impact "
        "than non-renewable sources, which can lead to air and water pollution, greenhouse gas emissions, "
        "and other negative effects.\n"
        "3. Cost: Renewable energy sources can be more expensive to initially set up, but they typically "
        "have lower operational costs than non-renewable sources.\n"
        "4. Reliability: Renewable energy sources are often more reliable and can be used in more remote "
        "locations than non-renewable sources.\n"
        "5. Flexibility: Renewable energy sources are often more flexible and can be adapted to different "
        "situations and needs, while non-renewable sources are more rigid and inflexible.\n"
        "6. Sustainability: Renewable energy sources are more sustainable over the long term, while "
        "non-renewable sources are not, and their depletion can lead to economic and social instability.\n",
    ),
)
_CHATML_ROLES = ("<|im_start|>user\n", "<|im_start|>assistant\n")

conv_vicuna_v0 = Conversation(
    system=_HUMAN_SYSTEM, roles=("Human", "Assistant"), messages=_VICUNA_V0_EXAMPLE, offset=2,
    sep_style=SeparatorStyle.SINGLE, sep="###",
)
conv_vicuna_v1 = Conversation(
    system=_USER_SYSTEM, roles=("USER", "ASSISTANT"), version="v1", sep_style=SeparatorStyle.TWO, sep=" ", sep2="</s>",
)
conv_llama_2 = Conversation(
    system=_LLAMA_2_SYSTEM, roles=("USER", "ASSISTANT"), version="llama_v2", sep_style=SeparatorStyle.LLAMA_2,
    sep="<s>", sep2="</s>",
)
conv_llava_llama_2 = Conversation(
    system="You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language.",
    roles=("USER", "ASSISTANT"), version="llama_v2", sep_style=SeparatorStyle.LLAMA_2, sep="<s>", sep2="</s>",
)
conv_mpt = Conversation(
    system="<|im_start|>system\n"
    "A conversation between a user and an LLM-based AI assistant. The assistant gives helpful and honest answers.",
    roles=_CHATML_ROLES, version="mpt", sep_style=SeparatorStyle.MPT, sep="<|im_end|>",
)
conv_llava_plain = Conversation(system="", roles=("", ""), sep_style=SeparatorStyle.PLAIN, sep="\n")
conv_llava_v0 = Conversation(system=_HUMAN_SYSTEM, roles=("Human", "Assistant"), sep_style=SeparatorStyle.SINGLE, sep="###")
conv_llava_v0_mmtag = Conversation(
    system=_MMTAG_SYSTEM, roles=("Human", "Assistant"), sep_style=SeparatorStyle.SINGLE, sep="###", version="v0_mmtag",
)
conv_llava_v1 = Conversation(
    system=_HUMAN_SYSTEM, roles=("USER", "ASSISTANT"), version="v1", sep_style=SeparatorStyle.TWO, sep=" ", sep2="</s>",
)
conv_llava_v1_mmtag = Conversation(
    system=_MMTAG_SYSTEM, roles=("USER", "ASSISTANT"), sep_style=SeparatorStyle.TWO, sep=" ", sep2="</s>",
    version="v1_mmtag",
)
conv_mistral_instruct = Conversation(
    system="", roles=("USER", "ASSISTANT"), version="llama_v2", sep_style=SeparatorStyle.LLAMA_2, sep="", sep2="</s>",
)
conv_chatml_direct = Conversation(
    system="<|im_start|>system\nAnswer the questions.", roles=_CHATML_ROLES, version="mpt",
    sep_style=SeparatorStyle.MPT, sep="<|im_end|>",
)

default_conversation = conv_vicuna_v1

conv_templates: dict[str, Conversation] = {
    "default": conv_vicuna_v0,
    "v0": conv_vicuna_v0,
    "v1": conv_vicuna_v1,
    "vicuna_v1": conv_vicuna_v1,
    "llama_2": conv_llama_2,
    "mistral_instruct": conv_mistral_instruct,
    "chatml_direct": conv_chatml_direct,
    "mistral_direct": conv_chatml_direct,
    "plain": conv_llava_plain,
    "v0_plain": conv_llava_plain,
    "llava_v0": conv_llava_v0,
    "v0_mmtag": conv_llava_v0_mmtag,
    "llava_v1": conv_llava_v1,
    "v1_mmtag": conv_llava_v1_mmtag,
    "llava_llama_2": conv_llava_llama_2,
    "mpt": conv_mpt,
}

DEFAULT_CONV_MODE = "vicuna_v1"
"""This toolkit's default template (LLaVA-1.5's evaluation scripts use it)."""


def get_conversation(conv_mode: str) -> Conversation:
    """A fresh copy of the named template; an unknown name raises ValueError listing valid ones."""
    if conv_mode not in conv_templates:
        raise ValueError(f"unknown conv mode {conv_mode!r}; valid: {', '.join(sorted(conv_templates))}")
    return conv_templates[conv_mode].copy()


def infer_conv_mode(model_name: str) -> str:
    """The template for a model name, by LLaVA's ``run_llava`` / ``serve.cli`` rules (llama-2, mistral,
    v1.6-34b, v1, mpt), then ``llava-1.5`` (llava-hf's names) -> ``llava_v1``. Where LLaVA falls back to
    ``llava_v0``, this returns ``vicuna_v1`` (``DEFAULT_CONV_MODE``): the models this toolkit runs
    (llava-hf, the shapes VLM, the tiny test model) are LLaVA-1.5-style."""
    name = model_name.lower()
    rules = (("llama-2", "llava_llama_2"), ("mistral", "mistral_instruct"), ("v1.6-34b", "chatml_direct"),
             ("v1", "llava_v1"), ("mpt", "mpt"), ("llava-1.5", "llava_v1"))
    return next((mode for key, mode in rules if key in name), DEFAULT_CONV_MODE)


def uses_im_start_end(config: Any) -> bool:
    """Whether a model config asks for the image wrapped in ``<im_start>``/``<im_end>`` (LLaVA's
    ``mm_use_im_start_end``; llava-hf configs lack the field, which means no)."""
    return bool(getattr(config, "mm_use_im_start_end", False))


def image_token_text(mm_use_im_start_end: bool = False) -> str:
    """The text that stands for one image: ``<image>``, or ``<im_start><image><im_end>``."""
    if mm_use_im_start_end:
        return DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN
    return DEFAULT_IMAGE_TOKEN


def question_with_image(question: str, mm_use_im_start_end: bool = False) -> str:
    """The first user turn of an image question, as LLaVA's loaders write it: image text, newline, question."""
    return f"{image_token_text(mm_use_im_start_end)}\n{question}"


def build_question_prompt(question: str, conv_mode: str, with_image: bool, mm_use_im_start_end: bool = False) -> str:
    """LLaVA-1.5's evaluation prompt: one user turn (image first) and an open assistant turn."""
    conversation = get_conversation(conv_mode)
    user_text = question_with_image(question, mm_use_im_start_end) if with_image else question
    conversation.append_message(conversation.roles[0], user_text)
    conversation.append_message(conversation.roles[1], None)
    return conversation.get_prompt()
