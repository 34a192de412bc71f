"""Answer normalisation and reply parsing: hand-made cases with known results."""

import pytest

from llava.eval.answer_normalization import (
    normalize_short_answer,
    normalize_vqa_answer,
    parse_option_letter,
    parse_pope_answer,
    parse_yes_no,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Yes.", "yes"),
        ("yes", "yes"),
        ("Two dogs.", "2 dogs"),
        ("ten", "10"),
        ("A cat!", "cat"),
        ("  The   End \n", "end"),
        ("dont know", "don't know"),
        ("couldnt've", "couldn't've"),
        ("its", "its"),
        ("1,000", "1000"),
        ("3.5", "3.5"),
        ("t-shirt", "t shirt"),
        ("12:30", "12:30"),
        ("", ""),
    ],
)
def test_normalize_vqa_answer(raw: str, expected: str) -> None:
    assert normalize_vqa_answer(raw) == expected


def test_normalize_short_answer_drops_case_space_and_final_period() -> None:
    assert normalize_short_answer("  Left. ") == "left"
    assert normalize_short_answer("3.5") == "3.5"


@pytest.mark.parametrize(
    ("reply", "expected"),
    [("", "yes"), ("Yes, there is.", "yes"), ("No.", "no"), ("There is not a dog.", "no"), ("Yes. No", "yes")],
)
def test_parse_pope_answer_follows_llava(reply: str, expected: str) -> None:
    assert parse_pope_answer(reply) == expected


@pytest.mark.parametrize(("reply", "expected"), [("Yes", "yes"), ("no, it isn't", "no"), ("Maybe", None), ("", None)])
def test_parse_yes_no(reply: str, expected: str | None) -> None:
    assert parse_yes_no(reply) == expected


@pytest.mark.parametrize(
    ("reply", "letters", "expected"),
    [
        ("B", "ABCD", "B"),
        ("B.", "ABCD", "B"),
        ("(C) a dog", "ABCD", "C"),
        ("A: first", "AB", "A"),
        ("The answer is D.", "ABCD", "D"),
        ("A cat", "AB", None),
        ("E", "ABCD", None),
        ("", "AB", None),
    ],
)
def test_parse_option_letter(reply: str, letters: str, expected: str | None) -> None:
    assert parse_option_letter(reply, letters) == expected
