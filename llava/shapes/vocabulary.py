"""Word-level tokenizer of the shapes VLM, built with ``tokenizers`` from the texts it must cover.

The vocabulary is every word and punctuation mark of the vicuna_v1 / llava_v1 prompts, LLaVA's answer
instructions, the question templates and their answers; anything else maps to ``<unk>``. Words are
split on whitespace and punctuation (``human's`` -> ``human ' s``), lower case is kept as is.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from llava.conversation import conv_templates
from llava.shapes.questions import MAX_COUNT, PLURALS, cell_name
from llava.shapes.scene import COLOURS, GRID, SHAPES
from llava.tokenization import SPECIAL_TOKENS, llava_fast_tokenizer

SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
OPTION_PROMPT = "Answer with the option's letter from the given choices directly."


def corpus() -> list[str]:
    """Texts whose words make the vocabulary."""
    templates = {conv_templates[mode].system for mode in ("vicuna_v1", "llava_v1")}  # the templates its data uses
    words = [
        *templates,
        "USER: ASSISTANT:",
        SHORT_ANSWER_PROMPT,
        OPTION_PROMPT,
        "what colour is the shape in cell ? what shape is in right of the",
        " ".join(cell_name(row, col) for row in range(GRID) for col in range(GRID)),
        "how many are there ? which colour is most common ? is there a yes no",
        "A. B. C. D. A B C D",
        " ".join(COLOURS),
        " ".join(SHAPES),
        " ".join(PLURALS.values()),
        " ".join(str(n) for n in range(max(GRID, MAX_COUNT) + 1)),
        "shapes",
    ]
    return words


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The word-level tokenizer (left padding, ``<s>`` prepended, specials ``<unk> <s> </s> <pad> <image>``)."""
    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies punctuation
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=1)
    backend.train_from_iterator(corpus(), trainer=trainer)
    from tokenizers.processors import TemplateProcessing

    backend.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", backend.token_to_id("<s>"))])
    return llava_fast_tokenizer(backend, model_max_length=1024)
