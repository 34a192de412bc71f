"""Conversation templates that turn a question into LLaVA-1.5's prompt text.

Only the templates LLaVA-1.5 evaluation uses are defined: ``vicuna_v1`` (the default) and
``llava_v1`` (same layout, LLaVA's original system sentence); ``v1`` is an alias of ``vicuna_v1``
as in LLaVA. A prompt looks like ``"{system} USER: <image>\\n{question} ASSISTANT:"``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from llava.constants import DEFAULT_IMAGE_TOKEN


@dataclass
class Conversation:
    """A chat transcript rendered in the "two separators" style of Vicuna v1.

    Each finished turn is ``"{role}: {message}"`` followed by ``sep`` after user turns and ``sep2``
    after assistant turns; a turn whose message is ``None`` renders as ``"{role}:"`` so the prompt
    ends where the model should start writing.
    """

    system: str
    roles: tuple[str, str]
    sep: str = " "
    sep2: str = "</s>"
    messages: list[tuple[str, str | None]] = field(default_factory=list)

    def append_message(self, role: str, message: str | None) -> None:
        """Add one turn; ``message=None`` leaves the turn open for generation."""
        self.messages.append((role, message))

    def get_prompt(self) -> str:
        """Render the transcript as one prompt string."""
        separators = (self.sep, self.sep2)
        rendered = self.system + self.sep
        for turn_index, (role, message) in enumerate(self.messages):
            if message is None:
                rendered += f"{role}:"
            else:
                rendered += f"{role}: {message}{separators[turn_index % 2]}"
        return rendered

    def copy(self) -> Conversation:
        """A fresh conversation with the same template and a copy of its turns."""
        return dataclasses.replace(self, messages=list(self.messages))


conv_vicuna_v1 = Conversation(
    system="A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    roles=("USER", "ASSISTANT"),
)

conv_llava_v1 = Conversation(
    system="A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    roles=("USER", "ASSISTANT"),
)

conv_templates: dict[str, Conversation] = {
    "vicuna_v1": conv_vicuna_v1,
    "v1": conv_vicuna_v1,
    "llava_v1": conv_llava_v1,
}

def get_conversation(conv_mode: str) -> Conversation:
    """A fresh copy of the named template; an unknown name raises ValueError listing valid ones."""
    if conv_mode not in conv_templates:
        raise ValueError(f"unknown conv mode {conv_mode!r}; valid: {', '.join(sorted(conv_templates))}")
    return conv_templates[conv_mode].copy()


def build_question_prompt(question: str, conv_mode: str, with_image: bool) -> str:
    """LLaVA-1.5's evaluation prompt: one user turn (image placeholder first) and an open assistant turn."""
    conversation = get_conversation(conv_mode)
    user_text = f"{DEFAULT_IMAGE_TOKEN}\n{question}" if with_image else question
    conversation.append_message(conversation.roles[0], user_text)
    conversation.append_message(conversation.roles[1], None)
    return conversation.get_prompt()
