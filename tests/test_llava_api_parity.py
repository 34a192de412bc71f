"""A LLaVA-1.5 user's code runs unchanged: LLaVA's names, prompts, preprocessing, stopping and commands.

The prompt strings below are transcribed by hand from LLaVA's ``llava/conversation.py`` (haotian-liu/LLaVA);
the padding reference is LLaVA's ``expand2square`` + ``image_processor.preprocess`` written out again here.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from llava import constants
from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import (
    SeparatorStyle,
    build_question_prompt,
    conv_templates,
    default_conversation,
    get_conversation,
    infer_conv_mode,
)
from llava.eval import run_llava
from llava.eval.inference import GenerationSettings, answer_batch, load_model_bundle, prompt_tokens
from llava.mm_utils import KeywordsStoppingCriteria, process_images, tokenizer_image_token
from llava.model.builder import planned_method
from llava.model.tiny import build_tiny_image_processor, build_tiny_llava_config, build_tiny_tokenizer
from llava.serve import cli as serve_cli

SHAPES_MODEL = Path(__file__).resolve().parents[1] / "playground" / "models" / "shapes-llava"

USER_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
HUMAN_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
MMTAG_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant is able to understand "
    "the visual content that the user provides, and assist the user with a variety of tasks using natural "
    "language.The visual content will be provided with the following format: <Image>visual content</Image>."
)
LLAMA_2_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe."
    "  Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content."
    " Please ensure that your responses are socially unbiased and positive in nature.\n\nIf a question does not make"
    " any sense, or is not factually coherent, explain why instead of answering something not correct. If you don't"
    " know the answer to a question, please don't share false information."
)
LLAVA_LLAMA_2_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language."
)
Q1, A1, Q2 = "<image>\nWhat is in the image?", "A red circle.", "What colour is it?"

TWO_TURN_PROMPTS = {
    "vicuna_v1": f"{USER_SYSTEM} USER: {Q1} ASSISTANT: {A1}</s>USER: {Q2} ASSISTANT:",
    "llava_v1": f"{HUMAN_SYSTEM} USER: {Q1} ASSISTANT: {A1}</s>USER: {Q2} ASSISTANT:",
    "llava_v0": f"{HUMAN_SYSTEM}###Human: {Q1}###Assistant: {A1}###Human: {Q2}###Assistant:",
    "llama_2": f"[INST] <<SYS>>\n{LLAMA_2_SYSTEM}\n<</SYS>>\n\n{Q1} [/INST] {A1} </s><s>[INST] {Q2} [/INST]",
    "llava_llama_2": f"[INST] <<SYS>>\n{LLAVA_LLAMA_2_SYSTEM}\n<</SYS>>\n\n{Q1} [/INST] {A1} </s><s>[INST] {Q2} [/INST]",
    "mistral_instruct": f"[INST] {Q1} [/INST] {A1} </s>[INST] {Q2} [/INST]",
    "chatml_direct": (
        f"<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n{Q1}<|im_end|>"
        f"<|im_start|>assistant\n{A1}<|im_end|><|im_start|>user\n{Q2}<|im_end|><|im_start|>assistant\n"
    ),
    "mpt": (
        "<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. The assistant gives helpful"
        f" and honest answers.<|im_end|><|im_start|>user\n{Q1}<|im_end|><|im_start|>assistant\n{A1}<|im_end|>"
        f"<|im_start|>user\n{Q2}<|im_end|><|im_start|>assistant\n"
    ),
    "v1_mmtag": f"{MMTAG_SYSTEM} USER: {Q1} ASSISTANT: {A1}</s>USER: {Q2} ASSISTANT:",
    "v0_mmtag": f"{MMTAG_SYSTEM}###Human: {Q1}###Assistant: {A1}###Human: {Q2}###Assistant:",
}
ALIASES = {"v1": "vicuna_v1", "mistral_direct": "chatml_direct", "v0_plain": "plain", "v0": "default"}
VICUNA_V0_PROMPT_SHA256 = "013a8232b6e183e4295eb07495268a45ae1c94d6a3693f350113d647f5978d06"
"""``default`` (Vicuna v0 with its worked example, 2 turns of ours after it): sha256 of LLaVA's own output."""


def two_turn_prompt(conv_mode: str, first: object = Q1) -> str:
    conversation = conv_templates[conv_mode].copy()
    for role, message in zip(itertools.cycle(conversation.roles), (first, A1, Q2, None)):
        conversation.append_message(role, message)
    return conversation.get_prompt()


@pytest.mark.parametrize("conv_mode", sorted(TWO_TURN_PROMPTS))
def test_two_turn_prompt_is_llavas(conv_mode: str) -> None:
    assert two_turn_prompt(conv_mode) == TWO_TURN_PROMPTS[conv_mode]


def test_every_llava_template_name_exists_and_aliases_share_a_template() -> None:
    assert set(conv_templates) == set(TWO_TURN_PROMPTS) | set(ALIASES) | {"plain", "default"}
    for alias, name in ALIASES.items():
        assert conv_templates[alias] is conv_templates[name]
    assert default_conversation is conv_templates["vicuna_v1"]


def test_plain_and_vicuna_v0_prompts() -> None:
    conversation = get_conversation("plain")
    conversation.append_message(conversation.roles[0], Q1)
    conversation.append_message(conversation.roles[1], None)
    assert conversation.get_prompt() == f"{Q1}\n"
    prompt = two_turn_prompt("default")
    assert prompt.startswith(f"{HUMAN_SYSTEM}###Human: What are the key differences between renewable and non-renewable")
    assert prompt.endswith(f"economic and social instability.\n###Human: {Q1}###Assistant: {A1}###Human: {Q2}###Assistant:")
    assert hashlib.sha256(prompt.encode()).hexdigest() == VICUNA_V0_PROMPT_SHA256


def test_web_demo_tuple_messages_move_the_image_first_or_to_mmtag_turns() -> None:
    image = Image.new("RGB", (4, 4))
    demo_turn = ("What is in the image?\n<image>", image, "Default")
    assert two_turn_prompt("llava_v1", demo_turn) == TWO_TURN_PROMPTS["llava_v1"]
    assert two_turn_prompt("v1_mmtag", demo_turn) == (
        f"{MMTAG_SYSTEM} USER: <Image><image></Image> ASSISTANT: Received.</s>USER: What is in the image? "
        f"ASSISTANT: {A1}</s>USER: {Q2} ASSISTANT:"
    )


def test_conversation_api_as_llava_scripts_use_it() -> None:
    assert [style.name for style in SeparatorStyle] == ["SINGLE", "TWO", "MPT", "PLAIN", "LLAMA_2"]
    template = conv_templates["llava_v1"]
    assert template.sep_style == SeparatorStyle.TWO and (template.sep, template.sep2) == (" ", "</s>")
    conversation = template.copy()
    conversation.append_message(conversation.roles[0], Q1)
    conversation.append_message(conversation.roles[1], None)
    conversation.messages[-1][-1] = A1  # LLaVA's CLI stores the reply this way
    assert conversation.get_prompt().endswith(f"ASSISTANT: {A1}</s>")
    assert conversation.dict()["messages"] == [["USER", Q1], ["ASSISTANT", A1]]
    assert template.messages == () and template.copy().messages == []
    with pytest.raises(TypeError, match="copy"):
        template.append_message("USER", "x")
    with pytest.raises(ValueError, match="user"):
        get_conversation("llama_2").get_prompt()


def test_constants_are_llavas() -> None:
    assert (constants.IMAGE_TOKEN_INDEX, constants.IGNORE_INDEX, constants.DEFAULT_IMAGE_TOKEN) == (-200, -100, "<image>")
    assert (constants.DEFAULT_IMAGE_PATCH_TOKEN, constants.DEFAULT_IM_START_TOKEN, constants.DEFAULT_IM_END_TOKEN) == (
        "<im_patch>", "<im_start>", "<im_end>")
    assert constants.IMAGE_PLACEHOLDER == "<image-placeholder>"


@pytest.mark.parametrize(("model_name", "conv_mode"), [
    ("llava-v1.5-7b", "llava_v1"), ("llava-v1.6-mistral-7b", "mistral_instruct"), ("llava-v1.6-34b", "chatml_direct"),
    ("llava-llama-2-13b-chat-lightning-preview", "llava_llama_2"), ("llava-mpt-7b", "mpt"),
    ("llava-1.5-7b-hf", "llava_v1"), ("shapes-llava", "vicuna_v1"),
])
def test_conv_mode_inferred_from_model_name(model_name: str, conv_mode: str) -> None:
    assert infer_conv_mode(model_name) == conv_mode


# --- images: pad to square exactly as LLaVA-1.5 ---------------------------------------------------------------


def llava_expand2square(image: Image.Image, background: tuple[int, ...]) -> Image.Image:
    """LLaVA's ``expand2square``, written out again: the short side centred on a square canvas."""
    width, height = image.size
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), background)
    canvas.paste(image, (0, (width - height) // 2) if width >= height else ((height - width) // 2, 0))
    return canvas


def llava_pixels(images: list[Image.Image], processor) -> torch.Tensor:
    background = tuple(int(x * 255) for x in processor.image_mean)
    return torch.stack([processor.preprocess(llava_expand2square(image, background), return_tensors="pt")["pixel_values"][0]
                        for image in images])


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)) for shape in ((180, 300, 3), (300, 140, 3))]


@pytest.fixture(scope="module")
def bundle():
    return load_model_bundle("tiny-random-llava", device="cpu")


def test_process_images_with_model_config_pads_like_llava(images) -> None:
    processor = build_tiny_image_processor()
    config = build_tiny_llava_config()
    assert not hasattr(config, "image_aspect_ratio")  # llava-hf configs: the documented default, pad
    reference = llava_pixels(images, processor)
    torch.testing.assert_close(process_images(images, processor, config), reference, rtol=0, atol=0)
    config.image_aspect_ratio = "pad"
    torch.testing.assert_close(process_images(images, processor, config), reference, rtol=0, atol=0)
    config.image_aspect_ratio = "square"  # any other value: no padding (the processor crops)
    assert not torch.allclose(process_images(images, processor, config), reference)
    config.image_aspect_ratio = "anyres"
    with pytest.raises(ValueError, match="anyres"):
        process_images(images, processor, config)


def test_eval_pipeline_pixels_are_process_images_pixels(bundle, images, monkeypatch) -> None:
    seen = {}

    def fake_generate(input_ids, **kwargs):
        seen["pixels"] = kwargs["pixel_values"]
        return torch.cat([input_ids, torch.full((len(input_ids), 1), 2)], dim=1)

    monkeypatch.setattr(bundle.model, "generate", fake_generate)
    answer_batch(bundle, GenerationSettings(max_new_tokens=1), ["q", "q"], images)
    reference = llava_pixels(images, bundle.image_processor)
    torch.testing.assert_close(seen["pixels"], reference, rtol=0, atol=0)
    torch.testing.assert_close(process_images(images, bundle.image_processor, bundle.model.config), reference, rtol=0, atol=0)


def test_mm_use_im_start_end_wraps_the_image_in_every_prompt_builder(bundle, monkeypatch) -> None:
    assert build_question_prompt("q", "llava_v1", True, mm_use_im_start_end=True) == (
        f"{HUMAN_SYSTEM} USER: <im_start><image><im_end>\nq ASSISTANT:")
    assert run_llava.query_with_images("q", 1, mm_use_im_start_end=True) == "<im_start><image><im_end>\nq"
    settings = GenerationSettings()
    plain = bundle.tokenizer.decode(prompt_tokens(bundle, settings, "q", True))
    monkeypatch.setattr(bundle.model.config, "mm_use_im_start_end", True, raising=False)
    wrapped = bundle.tokenizer.decode(prompt_tokens(bundle, settings, "q", True))
    assert "<im_start>" not in plain
    assert wrapped == plain.replace("USER: <image>", "USER: <im_start><image>").replace("<image>\nq", "<image><im_end>\nq")


# --- stopping ------------------------------------------------------------------------------------------------


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def test_keywords_stopping_criteria_counts_generated_tokens_only() -> None:
    tokenizer = build_tiny_tokenizer()
    prompt = torch.tensor([ids_of(tokenizer, "USER: hi ##")])
    criterion = KeywordsStoppingCriteria(["###"], tokenizer, prompt)
    with_reply = lambda reply_ids: torch.cat([prompt, torch.tensor([reply_ids])], dim=1)
    assert not criterion(with_reply(ids_of(tokenizer, "#")), None).item()  # "###" straddles the prompt's end
    assert criterion(with_reply(ids_of(tokenizer, "A cat###")), None).tolist() == [True]
    assert criterion.call_for_batch(with_reply(ids_of(tokenizer, "A cat###x")), None)  # text anywhere in the tail
    assert not criterion.call_for_batch(with_reply(ids_of(tokenizer, "A cat")), None)
    eos = KeywordsStoppingCriteria(["</s>"], tokenizer, prompt)  # a special token: found by its id
    assert eos(with_reply([*ids_of(tokenizer, "ok"), tokenizer.eos_token_id]), None).item()
    batch = torch.cat([with_reply(ids_of(tokenizer, "a###")), with_reply(ids_of(tokenizer, "abcd"))])
    assert KeywordsStoppingCriteria(["###"], tokenizer, prompt)(batch, None).tolist() == [True, False]
    with pytest.raises(ValueError):
        KeywordsStoppingCriteria([""], tokenizer, prompt)


def test_keywords_stopping_criteria_stops_llava_style_generate(bundle, images) -> None:
    tokenizer, model = bundle.tokenizer, bundle.model
    prompt = build_question_prompt("What is it?", "vicuna_v1", True)
    input_ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")[None]
    pixels = process_images(images[:1], bundle.image_processor, model.config)
    generate = lambda keyword: model.generate(
        input_ids, images=pixels, max_new_tokens=5, do_sample=False,
        stopping_criteria=[KeywordsStoppingCriteria([keyword], tokenizer, input_ids)])[0]
    # the prompt ends with "ASSISTANT:": the image tokens the model expands must not make its ":" count as generated
    free = generate(":")
    assert len(free) == 5 and ":" not in tokenizer.decode(free)
    keyword = tokenizer.decode(free[1:3])
    stop_at = next(k for k in range(1, 6) if keyword in tokenizer.decode(free[:k]))
    assert stop_at < 5 and generate(keyword).tolist() == free[:stop_at].tolist()


# --- run_llava ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wide_image(tmp_path_factory, images) -> Path:
    path = tmp_path_factory.mktemp("images") / "wide.png"
    images[0].save(path)
    return path


def eval_pipeline_answer(bundle, image: Image.Image, question: str, method=None) -> str:
    settings = GenerationSettings(conv_mode="vicuna_v1", max_new_tokens=4)
    with bundle.model.pruning(method):
        return answer_batch(bundle, settings, [question], [image])[0][0]


def test_run_llava_eval_model_with_llavas_args_object(bundle, images, wide_image, capsys) -> None:
    args = type("Args", (), {
        "model_path": "tiny-random-llava", "model_base": None, "model_name": "tiny-random-llava",
        "query": "What is it?", "conv_mode": None, "image_file": str(wide_image), "sep": ",",
        "temperature": 0, "top_p": None, "num_beams": 1, "max_new_tokens": 4,
    })()
    output = run_llava.eval_model(args)
    assert capsys.readouterr().out == f"{output}\n"
    assert output == eval_pipeline_answer(bundle, images[0], "What is it?")


def test_run_llava_main_prunes_with_the_loaders_flags(bundle, images, wide_image, capsys) -> None:
    argv = ["--model-path", "tiny-random-llava", "--image-file", str(wide_image), "--query", "What is it?",
            "--conv-mode", "vicuna_v1", "--temperature", "0", "--max_new_tokens", "4",
            "--pruning_method", "fastv", "--visual_token_num", "64", "--method-param", "token_selection_method=max_head"]
    assert run_llava.main(argv) == 0
    out, err = capsys.readouterr()
    record = json.loads(err.split("pruning: ", 1)[1].splitlines()[0])
    assert record["method"] == "fastv" and record["equivalent_tokens"] == pytest.approx(64, abs=1)
    text_config = bundle.model.config.text_config
    method = planned_method("fastv", text_config, 576, 64, {"token_selection_method": "max_head"})
    assert out == eval_pipeline_answer(bundle, images[0], "What is it?", method) + "\n"


def test_run_llava_refuses_bad_settings_before_loading(wide_image, capsys) -> None:
    base = ["--model-path", "tiny-random-llava", "--query", "q"]
    cases = [
        (["--image-file", f"{wide_image},{wide_image}", "--query", "a <image-placeholder> b"], "2 image"),
        (["--image-file", "missing.png"], "missing.png: no such file"),
        (["--image-file", f"{wide_image},{wide_image}", "--pruning_method", "fastv"], "one image per prompt"),
        (["--image-file", str(wide_image), "--pruning_method", "nope"], "--pruning_method 'nope' is unknown"),
        (["--image-file", str(wide_image), "--conv-mode", "chatml"], "--conv-mode 'chatml' is unknown"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit) as stop:
            run_llava.main(base + extra)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_run_llava_images_and_placeholders() -> None:
    args = run_llava.with_defaults(type("Args", (), {"image_file": "a.png;b.png", "sep": ";"})(), run_llava.build_run_parser())
    assert run_llava.image_parser(args) == ["a.png", "b.png"]
    assert run_llava.query_with_images("q", 2) == "<image>\n<image>\nq"
    assert run_llava.query_with_images("see <image-placeholder> here", 1) == "see <image> here"


@pytest.mark.skipif(not SHAPES_MODEL.is_dir(), reason="the shipped shapes VLM is not here")
def test_run_llava_answers_the_shipped_shapes_vlm(tmp_path, capsys) -> None:
    from llava.shapes.benchmarks import scene_questions
    from llava.shapes.scene import render
    from llava.shapes.vocabulary import SHORT_ANSWER_PROMPT

    scene, question = next((scene, q) for _, scene, q in scene_questions("gqa", 24, 0) if q.kind == "colour_at")
    render(scene).save(tmp_path / "scene.png")  # 336 x 336: padding changes nothing, the prompt and model do
    run_llava.main(["--model-path", str(SHAPES_MODEL), "--image-file", str(tmp_path / "scene.png"),
                    "--query", f"{question.text}\n{SHORT_ANSWER_PROMPT}", "--temperature", "0", "--max_new_tokens", "3"])
    assert capsys.readouterr().out == f"{question.answer}\n"


# --- serve.cli ------------------------------------------------------------------------------------------------


def test_serve_cli_chats_over_stdin_until_eof(wide_image, monkeypatch, capsys) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("What is it?\nAnd now?\n"))
    argv = ["--model-path", "tiny-random-llava", "--image-file", str(wide_image), "--temperature", "0",
            "--max-new-tokens", "2", "--debug", "--pruning-method", "fastv", "--visual_token_num", "64"]
    assert serve_cli.main(argv) == 0
    out, err = capsys.readouterr()
    turns = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert len(turns) == 2 and all(turn["pruning"]["method"] == "fastv" for turn in turns)
    first, second = (turn["outputs"] for turn in turns)
    assert turns[0]["prompt"] == f"{USER_SYSTEM} USER: <image>\nWhat is it? ASSISTANT:"
    assert turns[1]["prompt"] == f"{USER_SYSTEM} USER: <image>\nWhat is it? ASSISTANT: {first}</s>USER: And now? ASSISTANT:"
    assert out.startswith("USER: ASSISTANT: ") and out.endswith("USER: exit...\n")
    assert out.count("USER: ASSISTANT: ") == 2 and first in out and second in out


def test_serve_cli_stops_at_an_empty_line_and_wires_quantisation_flags(wide_image, monkeypatch, capsys) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("\nnever read\n"))
    assert serve_cli.main(["--model-path", "tiny-random-llava", "--image-file", str(wide_image)]) == 0
    assert capsys.readouterr().out == "USER: exit...\n"
    with pytest.raises(SystemExit) as stop:
        serve_cli.main(["--model-path", "tiny-random-llava", "--image-file", str(wide_image), "--load-8bit"])
    assert stop.value.code == 2 and "load_8bit" in capsys.readouterr().err
