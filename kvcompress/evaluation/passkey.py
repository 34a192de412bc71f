"""Passkey retrieval: a 5-digit key hidden at a given depth of repetitive filler text.

Prompt = task sentence + filler (with ``The pass key is K. Remember it. K is the pass key.`` inserted
at ``depth`` of it) + ``What is the pass key? The pass key is``; the answer is `` K``. Accuracy is
the fraction of prompts whose greedy continuation contains ``K``.

Two protocols feed a prompt to a compressed cache (same token ids in both: one tokenization of the whole
prompt, cut at ``question_start``):

* question-aware: the whole prompt in one prefill, so a query-aware method (SnapKV) selects what to keep
  with the question in its observation window;
* query-agnostic (multi-turn chat, prefix caching; kvpress's protocol): the context (everything before
  ``QUESTION``) is prefilled and compressed first, then the question tokens are fed on that cache.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

TASK = ("There is an important piece of information hidden inside a lot of irrelevant text. Find it and "
        "memorize it. I will quiz you about the important information there.\n")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
QUESTION = "\nWhat is the pass key? The pass key is"


@dataclass(frozen=True)
class PasskeyPrompt:
    input_ids: torch.Tensor  # [1, N]
    answer_ids: torch.Tensor  # [1, A]: tokens of " K"
    passkey: str
    depth: float
    key_positions: tuple[tuple[int, ...], ...] = ()  # per occurrence of the key in the prompt: its digit tokens
    question_start: int | None = None  # first token of QUESTION (None: the prompt has no question part)

    @property
    def context_ids(self) -> torch.Tensor:
        """``[1, question_start]``: what the query-agnostic protocol prefills (and compresses) first."""
        return self.input_ids[:, : self._split()]

    @property
    def question_ids(self) -> torch.Tensor:
        """``[1, N - question_start]``: the question, fed on the compressed context's cache."""
        return self.input_ids[:, self._split():]

    def _split(self) -> int:
        if self.question_start is None:
            raise ValueError("this prompt has no question_start: make it with make_passkey_prompt")
        return self.question_start


def make_passkey_prompt(tokenizer: PreTrainedTokenizerBase, length: int, depth: float, passkey: str) -> PasskeyPrompt:
    """A prompt of about ``length`` tokens with the key at relative ``depth`` (0 = start, 1 = end) of the filler."""
    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False).input_ids

    needle = f"The pass key is {passkey}. Remember it. {passkey} is the pass key. "
    fixed = len(encode(TASK + needle + QUESTION))
    filler_ids = encode(FILLER)
    repeats = max(1, (length - fixed) // len(filler_ids))
    before = round(repeats * depth)
    text = TASK + FILLER * before + needle + FILLER * (repeats - before) + QUESTION
    ids = torch.tensor([encode(text)])
    return PasskeyPrompt(ids, torch.tensor([encode(" " + passkey)]), passkey, depth,
                         key_token_positions(tokenizer, text, passkey),
                         question_token_index(tokenizer, text, len(text) - len(QUESTION)))


def question_token_index(tokenizer: PreTrainedTokenizerBase, text: str, question_char: int) -> int:
    """Index of the first token of ``text``'s tokenization that holds a character at or after
    ``question_char`` (a token spanning the boundary, e.g. `` \n``, belongs to the question), so that
    ``ids[:i]`` + ``ids[i:]`` are the whole prompt's own ids (needs a fast tokenizer's offsets)."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True).offset_mapping
    return next((i for i, (_, end) in enumerate(offsets) if end > question_char), len(offsets))


def key_token_positions(tokenizer: PreTrainedTokenizerBase, text: str, passkey: str) -> tuple[tuple[int, ...], ...]:
    """Token positions covering each occurrence of ``passkey`` in ``text`` (needs a fast tokenizer's offsets)."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True).offset_mapping
    occurrences = []
    start = text.find(passkey)
    while start >= 0:
        end = start + len(passkey)
        occurrences.append(tuple(i for i, (a, b) in enumerate(offsets) if a < end and b > start))
        start = text.find(passkey, end)
    return tuple(occurrences)


def make_passkey_prompts(tokenizer: PreTrainedTokenizerBase, length: int, count: int, seed: int = 0,
                         depth_range: tuple[float, float] = (0.0, 1.0)) -> list[PasskeyPrompt]:
    """``count`` prompts with depths spread evenly over ``depth_range`` (both ends included) and random
    keys (seeded)."""
    rng = random.Random(seed)
    low, high = depth_range
    depths = [low + (high - low) * i / max(count - 1, 1) for i in range(count)]
    return [make_passkey_prompt(tokenizer, length, depth, str(rng.randint(10000, 99999))) for depth in depths]


def passkey_correct(generate: Callable[[torch.Tensor, int], torch.Tensor], tokenizer: PreTrainedTokenizerBase,
                    prompt: PasskeyPrompt) -> bool:
    """Run ``generate(input_ids, max_new_tokens) -> new token ids`` and check the key is in the text."""
    new_tokens = generate(prompt.input_ids, prompt.answer_ids.shape[1] + 1)
    return answer_has_key(tokenizer, new_tokens[0].tolist(), prompt.passkey)


def answer_has_key(tokenizer: PreTrainedTokenizerBase, new_tokens: list[int], passkey: str) -> bool:
    """Does the decoded greedy answer contain the key? (The check of every passkey row, ours or kvpress's.)"""
    return passkey in tokenizer.decode(new_tokens, skip_special_tokens=True)
