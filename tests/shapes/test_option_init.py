"""The written option circuit: option words attend to their letters, the answer position to the option
whose word is the answer, and the LM head then prefers that option's letter."""

from __future__ import annotations

import torch

from llava.conversation import build_question_prompt
from llava.shapes.scene import COLOURS
from llava.train.lookup_init import COLOUR, code_dims
from llava.train.option_init import option_dims
from tests.shapes.circuit_models import option_circuit_model

QUESTION = ("what colour is the shape in cell b4 ?\nA. red\nB. blue\nC. green\nD. yellow\n"
            "Answer with the option's letter from the given choices directly.")


def model_with_circuit():
    model, tokenizer = option_circuit_model()
    prompt = build_question_prompt(QUESTION, "vicuna_v1", False).replace("<image>", "")
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    return model, tokenizer, ids


def test_option_words_attend_to_their_letters_and_other_tokens_to_bos():
    model, tokenizer, ids = model_with_circuit()
    with torch.no_grad():
        attention = model.model.language_model(input_ids=ids, output_attentions=True).attentions[1][0, 1]
    tokens = tokenizer.convert_ids_to_tokens(ids[0])
    for position, token in enumerate(tokens):
        row = attention[position]
        if token in ("red", "blue", "green", "yellow"):
            assert tokens[position - 2] in "ABCD" and row[position - 2] > 0.7, (token, float(row[position - 2]))
        elif token in ("what", "b4", ":"):
            assert row[0] > 0.9  # BOS: no letter is bound to a word that is no option


def test_the_answer_position_picks_the_option_whose_word_it_read():
    model, tokenizer, ids = model_with_circuit()
    lm = model.model.language_model
    _, retrieved = code_dims(lm.config.hidden_size)
    tokens = tokenizer.convert_ids_to_tokens(ids[0])
    for answer, letter in (("blue", "B"), ("yellow", "D")):
        def read_answer(module, args, kwargs, answer=answer):  # what the lookup would have read: a small object
            hidden = (args[0] if args else kwargs["hidden_states"]).clone()
            hidden[0, -1, retrieved[COLOUR + list(COLOURS).index(answer)]] += 0.3
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        handle = lm.layers[5].register_forward_pre_hook(read_answer, with_kwargs=True)
        with torch.no_grad():
            out = model(input_ids=ids, output_attentions=True)
        handle.remove()
        choice = out.attentions[5][0, 0, -1]
        assert tokens[int(choice.argmax())] == answer and choice.max() > 0.5
        assert tokenizer.convert_ids_to_tokens([int(out.logits[0, -1].argmax())]) == [letter]


def test_option_dims_stay_clear_of_the_lookup_codes():
    dims = option_dims(64)
    used = [d for block in dims.values() for d in block]
    query, retrieved = code_dims(64)
    assert len(set(used)) == len(used) and not set(used) & (set(query) | set(retrieved))
