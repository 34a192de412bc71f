"""Answer normalisation and answer parsing shared by the scorers (pure functions).

``normalize_vqa_answer`` is the standard VQA/TextVQA/VizWiz answer normalisation: lower case,
punctuation stripped (commas inside numbers dropped, periods kept only before a digit), number
words written as digits, articles dropped and apostrophe-less contractions restored.
"""

from __future__ import annotations

import itertools
import re

_VQA_PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
# Canonical contractions; every spelling with some apostrophes left out maps back to them. Those
# whose apostrophe-less spelling is an English word (its, well, were, ill, shell, ...) are left out.
_CANONICAL_CONTRACTIONS_TEXT = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't "
    "haven't he'd he'd've he's how'd how'll how's i'd've i'm i've isn't it'd it'd've it'll let's "
    "ma'am mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't shan't "
    "she'd've she's should've shouldn't shouldn't've somebody'd somebody'd've somebody'll "
    "somebody's someone'd someone'd've someone'll someone's something'd something'd've "
    "something'll that's there'd there'd've there're there's they'd they'd've they'll they're "
    "they've 'twas wasn't we'd've we've weren't what'll what're what's what've when's where'd "
    "where's where've who'd who'd've who'll who's who've why'll why're why's won't would've "
    "wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've"
)
_CANONICAL_CONTRACTIONS = tuple(_CANONICAL_CONTRACTIONS_TEXT.split())


def _contraction_spellings(canonical: str) -> list[str]:
    """Spellings of a contraction with at least one of its apostrophes missing."""
    pieces = canonical.split("'")
    spellings = []
    for kept in itertools.product(("", "'"), repeat=len(pieces) - 1):
        if all(kept):
            continue
        spelling = pieces[0] + "".join(mark + piece for mark, piece in zip(kept, pieces[1:], strict=True))
        spellings.append(spelling)
    return spellings


_CONTRACTIONS = {
    spelling: canonical
    for canonical in _CANONICAL_CONTRACTIONS
    for spelling in _contraction_spellings(canonical)
}


def _strip_punctuation(text: str) -> str:
    """Drop VQA punctuation next to spaces or text ends; punctuation inside a word becomes a space."""
    text = re.sub(r"(?<=\d),(?=\d)", "", text)
    text = re.sub(r"\.(?!\d)", "", text)
    characters = list(text)
    for index, character in enumerate(characters):
        if character not in _VQA_PUNCTUATION:
            continue
        before = text[index - 1] if index > 0 else " "
        after = text[index + 1] if index + 1 < len(text) else " "
        inside_word = not before.isspace() and not after.isspace()
        characters[index] = " " if inside_word else ""
    return "".join(characters)


def normalize_vqa_answer(answer: str) -> str:
    """The standard VQA answer normalisation ("Two dogs." -> "2 dogs", "dont" -> "don't")."""
    text = " ".join(answer.replace("\n", " ").replace("\t", " ").lower().split())
    words = []
    for word in _strip_punctuation(text).split():
        word = _NUMBER_WORDS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_short_answer(answer: str) -> str:
    """GQA-style exact-match normalisation: trailing periods dropped, lower case, spaces trimmed."""
    return answer.strip().rstrip(".").strip().lower()


def first_word(text: str) -> str:
    """The first word of a reply, lower case, with surrounding punctuation removed ("" if none)."""
    words = re.findall(r"[a-z0-9']+", text.lower())
    return words[0] if words else ""


def parse_yes_no(text: str) -> str | None:
    """``"yes"``/``"no"`` when a reply starts with that word (MME's parsing), otherwise None."""
    word = first_word(text)
    return word if word in ("yes", "no") else None


def parse_pope_answer(text: str) -> str:
    """POPE's parsing (LLaVA convention): ``"no"`` if the first sentence has the word no/not, else ``"yes"``.

    An empty reply therefore counts as ``"yes"``, exactly as in LLaVA's scorer, so published numbers
    stay comparable.
    """
    first_sentence = text.split(".")[0]
    words = set(re.findall(r"[a-z']+", first_sentence.lower()))
    return "no" if words & {"no", "not"} else "yes"


def parse_option_letter(text: str, option_letters: str) -> str | None:
    """The option letter a multiple-choice reply picks, or None when it picks none.

    Accepted forms: ``"B"``, ``"B."``, ``"B) ..."``, ``"(B) ..."``, ``"B: ..."`` and
    ``"... the answer is B"``; only letters in ``option_letters`` count ("A cat" picks nothing).
    """
    reply = text.strip()
    leading = re.match(r"^\(?([A-Z])(?:[.):]|$)", reply)
    if leading and leading.group(1) in option_letters:
        return leading.group(1)
    stated = re.search(r"answer is:?\s*\(?([A-Z])\b", reply, flags=re.IGNORECASE)
    if stated and stated.group(1).upper() in option_letters:
        return stated.group(1).upper()
    return None
