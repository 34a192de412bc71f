"""Bad inputs to the evaluation pipeline (loaders, chunk merge, scorers, summarize), each with its class of
outcome: a one-line error before any heavy work, handled (logged to ``answers.errors.jsonl`` and skipped,
the run goes on), or correct. Every case also checks that an earlier run's result files did not change.

The loaders run in-process with the tiny random model (``tiny-random-llava``, 2 new tokens).
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llava.eval import chunking, model_vqa, model_vqa_loader, model_vqa_mmbench, model_vqa_science, run_loop, summarize
from llava.eval.answers_lock import answers_file_lock
from llava.eval.chunking import chunk_answers_path
from llava.eval.jsonl_io import errors_path_for
from llava.eval.run_record import run_record_path
from llava.eval.scorers import gqa, mmbench, mme, pope, scienceqa, textvqa
from llava.mm_utils import open_rgb_image
from tests.eval.benchmark_layout import build_eval_dir
from tests.eval.helpers import answer, make_image, read_lines, write_lines

FAST = ["--model-path", "tiny-random-llava", "--max_new_tokens", "2"]
MAX_ERROR_LINES = 2


# ----------------------------------------------------------------------------------------------- harness
@pytest.fixture(autouse=True)
def earlier_results(tmp_path: Path) -> Iterator[None]:
    """An earlier run's answers, run record, errors log and result record: no case may change them."""
    folder = tmp_path / "earlier"
    answers = write_lines(folder / "answers.jsonl", [answer(1, "yes", "q?"), answer(2, "no", "q2?")])
    run_record_path(answers).write_text(json.dumps({"pruning_method": "fastv", "visual_token_num": 64}))
    write_lines(errors_path_for(answers), [{"question_id": 3, "stage": "image", "error": "x"}])
    (folder / "pope.json").write_text(json.dumps({"benchmark": "pope", "score": 80.0, "config": None}))
    before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    yield
    after = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    assert after == before, "an earlier result file changed"


@pytest.fixture
def no_model(monkeypatch) -> None:
    """Error cases must stop before the model loads."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded for an input that should have been refused")

    monkeypatch.setattr(run_loop, "bundle_from_args", refuse)


def call(main: Callable[[list[str]], int], argv: list[str], capsys) -> tuple[int, str]:
    """Run a command-line ``main`` in-process; its exit code (argparse's SystemExit included) and stderr."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    """A non-zero exit and a short error on stderr naming the problem; never a traceback."""
    assert code not in (0, None), err
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if "it/s]" not in line and "q/s]" not in line]
    assert 1 <= len(lines) <= MAX_ERROR_LINES, err
    assert "error" in err, err
    for needle in needles:
        assert needle in err, (needle, err)


def assert_handled(code: int, err: str, answers: Path, logged: int, answered: int) -> list[dict]:
    """The run went on: ``answered`` answers written, ``logged`` problems in the errors log, exit 1."""
    assert code == 1, err
    assert "Traceback" not in err, err
    assert len(read_lines(answers)) == answered
    problems = read_lines(errors_path_for(answers))
    assert len(problems) == logged, problems
    return problems


@pytest.fixture
def bench(tmp_path: Path) -> dict[str, Path]:
    images = tmp_path / "images"
    make_image(images / "a.png", (40, 30), (200, 40, 40))
    make_image(images / "b.png", (30, 40), (40, 200, 40))
    make_image(tmp_path / "outside.png", (30, 30), (40, 40, 200))
    return {"root": tmp_path, "images": images, "answers": tmp_path / "run" / "answers.jsonl"}


def good_question(question_id=1, image="a.png") -> dict:
    return {"question_id": question_id, "image": image, "text": f"what is in picture {question_id}?"}


def run_vqa(bench: dict[str, Path], lines: list[str] | list[dict], capsys, *flags: str, main=model_vqa_loader.main):
    """Write a question file (dicts as JSON lines, strings as raw lines) and answer it; (code, stderr)."""
    question_file = bench["root"] / "q.jsonl"
    raw = [line if isinstance(line, str) else json.dumps(line) for line in lines]
    question_file.write_bytes(b"".join((line.encode("utf-8", "surrogateescape") + b"\n") for line in raw))
    argv = ["--question-file", str(question_file), "--image-folder", str(bench["images"]),
            "--answers-file", str(bench["answers"]), *FAST, *flags]
    return call(main, argv, capsys)


# ------------------------------------------------------------------------------ loader: bad settings
@pytest.mark.outcome("error")
@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--top_p", "2.0"], "--top_p must be in (0, 1]"),
        (["--top_p", "0"], "--top_p must be in (0, 1]"),
        (["--temperature", "-1"], "--temperature must be a number >= 0"),
        (["--temperature", "nan"], "--temperature must be a number >= 0"),
        (["--num_beams", "0"], "--num-beams must be >= 1"),
        (["--max_new_tokens", "0"], "--max-new-tokens must be >= 1"),
        (["--max_new_tokens", "abc"], "invalid int value"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--torch-dtype", "float13"], "torch_dtype 'float13' is unknown; valid: float32"),
        (["--retain-ratio", "1.5"], "retain_ratio must lie in (0, 1], got 1.5"),
        (["--retain-ratio", "nan"], "retain_ratio must lie in (0, 1], got nan"),
        (["--retain-ratio", "0.5", "--visual_token_num", "64"], "give the budget once"),
        (["--conv-mode", "nope"], "--conv-mode 'nope' is unknown"),
        (["--num-chunks", "0"], "--num-chunks must be >= 1"),
        (["--num-chunks", "2", "--chunk-idx", "3"], "--chunk-idx must be in [0, 1]"),
        (["--visual_token_num", "-5"], "--visual_token_num must be >= 1"),
        (["--pruning_method", "nosuch"], "--pruning_method 'nosuch' is unknown; valid:"),
        (["--model-path", "./no/such/model"], "no such folder"),
        (["--debug-mode", "maybe"], "expected True or False"),
        (["--method-param", "noequals"], "expected KEY=VALUE"),
        (["--image-folder", "/no/such/folder"], "--image-folder /no/such/folder: no such folder"),
    ],
)
def test_bad_setting_is_one_line_before_the_model(bench, capsys, no_model, flags, needle):
    code, err = run_vqa(bench, [good_question()], capsys, *flags)
    assert_one_line_error(code, err, needle)
    assert not bench["answers"].exists()


@pytest.mark.outcome("error")
def test_missing_question_file(bench, capsys, no_model):
    code, err = call(model_vqa_loader.main, ["--question-file", str(bench["root"] / "none.jsonl"), "--answers-file",
                                             str(bench["answers"]), *FAST], capsys)
    assert_one_line_error(code, err, "none.jsonl: no such file")


# ------------------------------------------------------------------------- loader: whole-file refusals
@pytest.mark.outcome("error")
@pytest.mark.parametrize(
    ("lines", "needle"),
    [
        ([good_question(1), good_question(1)], "question 2 repeats question 1 (question_id 1, same prompt)"),
        ([{**good_question(1), "question_id": None}, {**good_question(2), "question_id": None}], "null question_id"),
        ([{**good_question(1), "question_id": None}], "null question_id"),
        ([], "holds no questions"),
        (["{not json", "[1, 2]"], "no usable question"),
        (["\udce9t\udce9"], "no usable question"),
        ([{"question_id": 1, "image": "", "text": "q?"}], "field 'image' is empty"),
        ([{"question_id": 1, "image": "../outside.png", "text": "q?"}], "outside --image-folder"),
    ],
    ids=["duplicate-id", "two-null-ids", "null-id", "empty-file", "only-bad-json", "only-latin1", "only-empty-image",
         "only-outside-image"],
)
def test_unusable_question_file_is_refused_before_the_model(bench, capsys, no_model, lines, needle):
    code, err = run_vqa(bench, lines, capsys)
    assert_one_line_error(code, err, needle)
    assert not bench["answers"].exists()


@pytest.mark.outcome("error")
def test_model_vqa_refuses_duplicate_ids_too(bench, capsys, no_model):
    code, err = run_vqa(bench, [good_question(5), good_question(5)], capsys, main=model_vqa.main)
    assert_one_line_error(code, err, "repeats question 1")


@pytest.mark.outcome("error")
def test_images_named_without_image_folder(bench, capsys, no_model):
    question_file = write_lines(bench["root"] / "q.jsonl", [good_question()])
    code, err = call(model_vqa_loader.main, ["--question-file", str(question_file), "--answers-file",
                                             str(bench["answers"]), *FAST], capsys)
    assert_one_line_error(code, err, "pass --image-folder")


@pytest.mark.outcome("error")
def test_resume_with_another_question_file_of_the_same_name_is_refused(bench, capsys):
    assert run_vqa(bench, [good_question(1)], capsys)[0] == 0
    before = bench["answers"].read_bytes()
    code, err = run_vqa(bench, [good_question(7), good_question(8)], capsys)
    assert_one_line_error(code, err, "question_file_sha256", "--overwrite")
    assert bench["answers"].read_bytes() == before


@pytest.mark.outcome("error")
def test_resume_with_other_settings_is_refused(bench, capsys):
    assert run_vqa(bench, [good_question(1)], capsys)[0] == 0
    before = bench["answers"].read_bytes()
    code, err = run_vqa(bench, [good_question(1)], capsys, "--pruning_method", "fastv", "--visual_token_num", "64")
    assert_one_line_error(code, err, "pruning_method: None -> 'fastv'")
    assert bench["answers"].read_bytes() == before


@pytest.mark.outcome("error")
def test_a_second_writer_stops_at_once_naming_the_holder(bench, capsys, no_model):
    with answers_file_lock(bench["answers"], {"pruning_method": "random", "visual_token_num": 64}):
        code, err = run_vqa(bench, [good_question(1)], capsys, "--pruning_method", "fastv")
    assert_one_line_error(code, err, "is being written by pid", "pruning_method random")
    assert not bench["answers"].exists()


# ------------------------------------------------------------------ loader: bad lines logged and skipped
@pytest.mark.outcome("handled")
@pytest.mark.parametrize(
    ("bad", "stage", "needle"),
    [
        ({"question_id": 9, "image": 7, "text": "q?"}, "question", "field 'image' must be a file name"),
        ({"question_id": 9, "image": "", "text": "q?"}, "question", "field 'image' is empty"),
        ({"question_id": 9, "image": ["a.png"], "text": "q?"}, "question", "got list"),
        ({"question_id": 9, "image": "a.png", "text": 5}, "question", "field 'text' must be text"),
        ({"question_id": 9, "image": "../outside.png", "text": "q?"}, "question", "outside --image-folder"),
        ({"question_id": 9, "image": "ABSOLUTE", "text": "q?"}, "question", "outside --image-folder"),
        ({"question_id": 9, "image": "missing.png", "text": "q?"}, "image", "No such file"),
        ({"question_id": 9, "image": ".", "text": "q?"}, "question", "outside --image-folder"),
        ('{"question_id": 9, "te', "question_file", "invalid JSON"),
        ('{"question_id": 9, "image": "a.png", "text": "caf\udce9?"}', "question_file", "not UTF-8 text (byte 0xe9"),
        ({"question_id": 9, "image": "a.png"}, "question_file", "missing field(s): text"),
        ("[1, 2, 3]", "question_file", "expected a JSON object, got list"),
    ],
    ids=["image-int", "image-empty", "image-list", "text-int", "image-dotdot", "image-absolute", "image-missing",
         "image-is-folder", "torn-json", "latin1-byte", "no-text", "json-array"],
)
def test_bad_line_is_logged_and_skipped(bench, capsys, bad, stage, needle):
    if isinstance(bad, dict) and bad.get("image") == "ABSOLUTE":
        bad = {**bad, "image": str(bench["root"] / "outside.png")}
    code, err = run_vqa(bench, [good_question(1), bad, good_question(2, "b.png")], capsys)
    problems = assert_handled(code, err, bench["answers"], logged=1, answered=2)
    assert problems[0]["stage"] == stage and needle in problems[0]["error"], problems


@pytest.mark.outcome("handled")
@pytest.mark.parametrize("kind", ["garbage", "truncated", "float-out-of-range"])
def test_broken_image_is_logged_and_skipped(bench, capsys, kind):
    path = bench["images"] / "broken.tif"
    if kind == "garbage":
        path.write_bytes(b"not an image at all")
    elif kind == "truncated":
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, format="PNG")
        path.write_bytes(buffer.getvalue()[:60])
    else:
        Image.fromarray(np.full((8, 8), 5000.0, dtype=np.float32), mode="F").save(path)
    code, err = run_vqa(bench, [good_question(1), good_question(2, "broken.tif")], capsys)
    problems = assert_handled(code, err, bench["answers"], logged=1, answered=1)
    assert problems[0]["stage"] == "image" and problems[0]["question_id"] == 2


@pytest.mark.outcome("handled")
def test_question_longer_than_the_context_is_an_error_logged_and_skipped(bench, capsys):
    long_question = {"question_id": 2, "image": "a.png", "text": "word " * 5000}
    code, err = run_vqa(bench, [good_question(1), long_question], capsys)
    problems = assert_handled(code, err, bench["answers"], logged=1, answered=1)
    assert "exceeds the model's context of 4096 tokens" in problems[0]["error"]
    assert "--truncate-long-prompts" in problems[0]["error"]


# ----------------------------------------------------------------------------------- loader: correct
@pytest.mark.outcome("correct")
def test_long_question_truncated_on_request_with_a_warning(bench, capsys):
    long_question = {"question_id": 2, "image": "a.png", "text": "word " * 5000}
    code, err = run_vqa(bench, [long_question], capsys, "--truncate-long-prompts")
    assert code == 0, err
    assert "question cut by" in err
    (record,) = read_lines(bench["answers"])
    assert record["metadata"]["truncated_question_tokens"] > 0


@pytest.mark.outcome("correct")
def test_outside_image_allowed_on_request(bench, capsys):
    code, err = run_vqa(bench, [{"question_id": 1, "image": "../outside.png", "text": "q?"}], capsys,
                        "--allow-outside-images")
    assert code == 0, err
    assert len(read_lines(bench["answers"])) == 1


@pytest.mark.outcome("correct")
@pytest.mark.parametrize("image", [None, "missing-field"])
def test_text_only_question_is_answered_text_only(bench, capsys, image):
    question = {"question_id": 1, "text": "say hi"} if image == "missing-field" else {"question_id": 1, "image": None,
                                                                                      "text": "say hi"}
    code, err = run_vqa(bench, [question], capsys)
    assert code == 0, err
    assert read_lines(bench["answers"])[0]["metadata"]["equivalent_tokens"] == 0


@pytest.mark.outcome("correct")
def test_shared_id_with_different_prompts_is_two_questions(bench, capsys):
    lines = [{"question_id": "artwork/1.png", "image": "a.png", "text": "Is it art?"},
             {"question_id": "artwork/1.png", "image": "a.png", "text": "Is it a dog?"}]
    code, err = run_vqa(bench, lines, capsys)
    assert code == 0, err
    assert [r["prompt"] for r in read_lines(bench["answers"])] == ["Is it art?", "Is it a dog?"]


@pytest.mark.outcome("correct")
def test_16_bit_greyscale_png_is_answered_from_its_real_pixels(bench, capsys):
    ramp = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 64).astype(np.uint16)
    Image.fromarray(ramp).save(bench["images"] / "g16.png")
    code, err = run_vqa(bench, [good_question(1, "g16.png")], capsys)
    assert code == 0, err
    decoded = np.asarray(open_rgb_image(bench["images"] / "g16.png"))[..., 0].astype(int)
    assert np.abs(decoded - np.rint(ramp / 257.0)).max() <= 1 and (decoded < 250).mean() > 0.9  # not white


def _palette(path: Path, transparent: bool) -> tuple[int, int, int]:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 10, 120, 230] + [0, 0, 0] * 254)
    if transparent:
        image.save(path, transparency=1)
        return (255, 255, 255)
    image.save(path)
    return (10, 120, 230)


def _save_mode(path: Path, mode: str) -> tuple[int, int, int]:
    """Save a one-colour image in ``mode`` and return the RGB a faithful decode shows."""
    if mode in ("P", "P+transparency"):
        return _palette(path, mode != "P")
    if mode == "RGBA":
        Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(path)
        return (255, 255, 255)
    if mode == "LA":
        Image.new("LA", (8, 8), (100, 255)).save(path)
        return (100, 100, 100)
    if mode == "CMYK":
        Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path)
        return (255, 0, 0)
    if mode == "I":
        Image.fromarray(np.full((8, 8), 65535 // 2, dtype=np.int32), mode="I").save(path)
        return (128, 128, 128)
    if mode == "F":
        Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32), mode="F").save(path)
        return (128, 128, 128)
    if mode == "1":
        Image.new("1", (8, 8), 1).save(path)
        return (255, 255, 255)
    raise ValueError(mode)


@pytest.mark.outcome("correct")
@pytest.mark.parametrize("mode", ["P", "P+transparency", "RGBA", "LA", "CMYK", "I", "F", "1"])
def test_every_pillow_mode_decodes_to_what_it_shows(bench, mode):
    path = bench["images"] / f"m.{'tif' if mode in ('CMYK', 'I', 'F') else 'png'}"
    expected = _save_mode(path, mode)
    pixel = open_rgb_image(path).getpixel((3, 3))
    assert all(abs(a - b) <= 1 for a, b in zip(pixel, expected, strict=True)), (mode, pixel, expected)


# ----------------------------------------------------------------------------------- ScienceQA loader
def run_science(bench: dict[str, Path], content: str | bytes, capsys) -> tuple[int, str]:
    question_file = bench["root"] / "sqa.json"
    question_file.write_bytes(content if isinstance(content, bytes) else content.encode())
    return call(model_vqa_science.main, ["--question-file", str(question_file), "--image-folder", str(bench["images"]),
                                         "--answers-file", str(bench["answers"]), *FAST], capsys)


def sqa_entry(problem_id: str, value="Pick.\nA. x\nB. y", image: str | None = "a.png") -> dict:
    entry = {"id": problem_id, "conversations": [{"from": "human", "value": value}]}
    return {**entry, "image": image} if image else entry


@pytest.mark.outcome("handled")
@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        (sqa_entry("s9", value=3), "conversations[0].value' must be text"),
        ({"id": "s9"}, "missing conversations[0].value"),
        ({"id": "s9", "conversations": "hello"}, "missing conversations[0].value"),
        ("just a string", "expected a JSON object"),
        (sqa_entry("s9", image="../outside.png"), "outside --image-folder"),
        (sqa_entry("s9", image=7), "field 'image' must be a file name"),
    ],
    ids=["value-int", "no-conversations", "conversations-str", "entry-str", "image-outside", "image-int"],
)
def test_science_bad_entry_is_logged_and_skipped(bench, capsys, bad, needle):
    code, err = run_science(bench, json.dumps([sqa_entry("s1"), bad, sqa_entry("s2", image=None)]), capsys)
    problems = assert_handled(code, err, bench["answers"], logged=1, answered=2)
    assert needle in problems[0]["error"], problems


@pytest.mark.outcome("error")
@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (json.dumps({"s1": sqa_entry("s1")}), "expected a JSON list of questions"),
        ("[{", "invalid JSON"),
        (json.dumps([sqa_entry("s1"), sqa_entry("s1")]), "repeats question 1"),
        ('[{"id": "caf\xe9"}]'.encode("latin-1"), "not UTF-8 text (byte 0xe9"),
    ],
    ids=["object-not-list", "invalid-json", "duplicate-id", "latin1"],
)
def test_science_unusable_file_is_one_line(bench, capsys, no_model, content, needle):
    code, err = run_science(bench, content, capsys)
    assert_one_line_error(code, err, needle)
    assert not bench["answers"].exists()


# ------------------------------------------------------------------------------------- MMBench loader
def mmbench_tsv(path: Path, rows: list[str], header: str = "index\tquestion\thint\tA\tB\tanswer\tcategory\timage") -> Path:
    path.write_text(header + "\n" + "".join(row + "\n" for row in rows), encoding="utf-8")
    return path


def png_base64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), (20, 160, 90)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def run_mmbench(bench: dict[str, Path], tsv: Path, capsys) -> tuple[int, str]:
    return call(model_vqa_mmbench.main, ["--question-file", str(tsv), "--answers-file", str(bench["answers"]), *FAST],
                capsys)


@pytest.mark.outcome("handled")
@pytest.mark.parametrize(
    ("bad_row", "stage", "needle"),
    [
        ("2\tShape?\tnan\tsquare\tcircle\tA\tshape\t@@@not-base64@@@", "image", "image cell is not base64"),
        ("2\tShape?\tnan\tsquare\tcircle\tA\tshape\t" + base64.b64encode(b"text, no image").decode(), "image",
         "cannot decode image"),
        ("two\tShape?\tnan\tsquare\tcircle\tA\tshape\tIMG", "question_file", "index 'two' is not an integer"),
        ("2\t\tnan\tsquare\tcircle\tA\tshape\tIMG", "question_file", "empty cell(s): question"),
    ],
    ids=["not-base64", "base64-not-image", "index-not-int", "no-question"],
)
def test_mmbench_bad_row_is_logged_and_skipped(bench, capsys, bad_row, stage, needle):
    image = png_base64()
    tsv = mmbench_tsv(bench["root"] / "mmb.tsv", [f"1\tColour?\tnan\tgreen\tred\tA\tcolour\t{image}",
                                                  bad_row.replace("IMG", image)])
    code, err = run_mmbench(bench, tsv, capsys)
    problems = assert_handled(code, err, bench["answers"], logged=1, answered=1)
    assert problems[0]["stage"] == stage and needle in problems[0]["error"], problems


@pytest.mark.outcome("error")
@pytest.mark.parametrize("case", ["missing-column", "duplicate-row", "latin1"])
def test_mmbench_unusable_file_is_one_line(bench, capsys, no_model, case):
    image = png_base64()
    row = f"1\tColour?\tnan\tgreen\tred\tA\tcolour\t{image}"
    tsv = bench["root"] / "mmb.tsv"
    if case == "missing-column":
        mmbench_tsv(tsv, ["1\tColour?\tgreen"], header="index\tquestion\tA")
        needle = "missing column(s) image, B"
    elif case == "duplicate-row":
        mmbench_tsv(tsv, [row, row])
        needle = "repeats question 1"
    else:
        tsv.write_bytes(("index\tquestion\tA\tB\timage\n1\tcaf\xe9\tx\ty\t" + image + "\n").encode("latin-1"))
        needle = "not UTF-8 text"
    code, err = run_mmbench(bench, tsv, capsys)
    assert_one_line_error(code, err, needle)


# ------------------------------------------------------------------------------------ chunk merge
def merge(folder: Path, num_chunks: int, capsys) -> tuple[int, str]:
    return call(chunking.main, ["--answers-dir", str(folder), "--num-chunks", str(num_chunks), "--output",
                                str(folder / "merge.jsonl")], capsys)


def chunk_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir() if path.suffix == ".jsonl" and path.name != "merge.jsonl"}


@pytest.mark.outcome("correct")
def test_merge_keeps_a_whole_last_record_without_newline_and_leaves_the_input(tmp_path, capsys):
    tmp_path = tmp_path / "chunks"
    tmp_path.mkdir()
    lines = "".join(json.dumps(answer(i, f"t{i}")) + "\n" for i in range(4)).rstrip("\n")
    chunk_answers_path(tmp_path, 1, 0).write_text(lines)
    before = chunk_bytes(tmp_path)
    code, err = merge(tmp_path, 1, capsys)
    assert code == 0, err
    assert [r["question_id"] for r in read_lines(tmp_path / "merge.jsonl")] == [0, 1, 2, 3]
    assert chunk_bytes(tmp_path) == before


@pytest.mark.outcome("correct")
def test_merge_drops_an_identical_repeat(tmp_path, capsys):
    tmp_path = tmp_path / "chunks"
    write_lines(chunk_answers_path(tmp_path, 1, 0), [answer(1, "a"), answer(1, "a"), answer(2, "b")])
    code, err = merge(tmp_path, 1, capsys)
    assert code == 0, err
    assert len(read_lines(tmp_path / "merge.jsonl")) == 2


@pytest.mark.outcome("error")
@pytest.mark.parametrize("case", ["torn-tail", "missing-chunk", "conflicting-duplicate", "bad-middle-line",
                                  "being-written", "output-is-a-chunk", "zero-chunks", "latin1"])
def test_merge_refuses_and_changes_nothing(tmp_path, capsys, case):
    tmp_path = tmp_path / "chunks"
    first, second = chunk_answers_path(tmp_path, 2, 0), chunk_answers_path(tmp_path, 2, 1)
    write_lines(first, [answer(1, "a"), answer(2, "b")])
    write_lines(second, [answer(3, "c")])
    output, num_chunks, needle = tmp_path / "merge.jsonl", 2, ""
    if case == "torn-tail":
        with second.open("a") as handle:
            handle.write('{"question_id": 4, "te')
        needle = "ends in a partial line (22 bytes"
    elif case == "missing-chunk":
        second.unlink()
        needle = "missing chunk answer file(s)"
    elif case == "conflicting-duplicate":
        write_lines(first, [answer(1, "a"), answer(1, "other")])
        needle = "answer the same question"
    elif case == "bad-middle-line":
        first.write_text(json.dumps(answer(1, "a")) + "\n{oops\n" + json.dumps(answer(2, "b")) + "\n")
        needle = "invalid JSON"
    elif case == "latin1":
        first.write_bytes(b'{"question_id": 1, "text": "caf\xe9"}\n')
        needle = "not UTF-8 text"
    elif case == "output-is-a-chunk":
        output = second
        needle = "is one of the chunk files"
    elif case == "zero-chunks":
        num_chunks, needle = 0, "--num-chunks must be >= 1"
    before = chunk_bytes(tmp_path)
    argv = ["--answers-dir", str(tmp_path), "--num-chunks", str(num_chunks), "--output", str(output)]
    if case == "being-written":
        with answers_file_lock(second, {"pruning_method": "fastv"}):
            code, err = call(chunking.main, argv, capsys)
        needle = "still being written by pid"
    else:
        code, err = call(chunking.main, argv, capsys)
    assert_one_line_error(code, err, needle)
    assert chunk_bytes(tmp_path) == before
    assert not (tmp_path / "merge.jsonl").exists()


# ------------------------------------------------------------------------------------------ scorers
@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    return build_eval_dir(tmp_path_factory.mktemp("layout"))


def scorer_call(name: str, layout: Path, answers: Path, capsys) -> tuple[int, str]:
    argv = {
        "pope": (pope.main, ["--question-file", str(layout / "pope" / "llava_pope_test.jsonl"), "--annotation-dir",
                             str(layout / "pope" / "coco")]),
        "gqa": (gqa.main, ["--questions", str(layout / "gqa" / "data" / "testdev_balanced_questions.json")]),
        "sqa": (scienceqa.main, ["--base-dir", str(layout / "scienceqa")]),
        "textvqa": (textvqa.main, ["--annotation-file", str(layout / "textvqa" / "TextVQA_0.5.1_val.json")]),
        "mme": (mme.main, ["--gt-dir", str(layout / "MME" / "MME_Benchmark_release_version")]),
        "mmbench": (mmbench.main, ["--annotation-file", str(layout / "mmbench" / "mmbench_dev_20230712.tsv"),
                                   "--upload-file", str(answers.parent / "upload.tsv")]),
    }
    main, flags = argv[name]
    return call(main, [*flags, "--result-file", str(answers), "--result-json", str(answers.parent / "result.json")],
                capsys)


DUPLICATED_ANSWERS = {
    "pope": [answer(1, "yes", "a"), answer(2, "no", "b"), answer(1, "no", "a again")],
    "gqa": [answer("g1", "yes"), answer("g2", "red"), answer("g1", "no", "other prompt")],
    "sqa": [answer("s1", "A"), answer("s2", "B"), answer("s1", "B", "other")],
    "textvqa": [answer("a", "nike", "what brand?\nReference OCR token: nike\nAnswer briefly."),
                answer("a", "adidas", "what brand?\nReference OCR token: nike\nAnswer briefly.")],
    "mme": [answer("artwork/10.png", "Yes", "Is it art?"), answer("artwork/10.png", "No", "Is it art?\nAnswer.")],
    "mmbench": [answer(1, "A", "q", round_idx=0, options=["green", "red"]),
                answer(1, "B", "q2", round_idx=0, options=["green", "red"])],
}


@pytest.mark.outcome("error")
@pytest.mark.parametrize("benchmark", sorted(DUPLICATED_ANSWERS))
def test_scorer_refuses_two_answers_to_one_question(layout, tmp_path, capsys, benchmark):
    answers = write_lines(tmp_path / "s" / "merge.jsonl", DUPLICATED_ANSWERS[benchmark])
    code, err = scorer_call(benchmark, layout, answers, capsys)
    assert_one_line_error(code, err, "answer the same question")
    assert not (tmp_path / "s" / "result.json").exists()


@pytest.mark.outcome("error")
def test_mmbench_scorer_refuses_a_non_integer_index(layout, tmp_path, capsys):
    answers = write_lines(tmp_path / "s" / "merge.jsonl", [answer("one", "A", "q", options=["green", "red"])])
    code, err = scorer_call("mmbench", layout, answers, capsys)
    assert_one_line_error(code, err, "MMBench answers need integer ids")


@pytest.mark.outcome("error")
@pytest.mark.parametrize("case", ["missing-file", "invalid-line", "text-null", "latin1", "no-text-field",
                                  "duplicate-question-id"])
def test_pope_unusable_input_is_one_line(layout, tmp_path, capsys, case):
    answers = tmp_path / "s" / "merge.jsonl"
    answers.parent.mkdir()
    needle = {"missing-file": "file not found", "invalid-line": "invalid JSON", "text-null": "non-text 'text'",
              "latin1": "not UTF-8 text", "no-text-field": "missing field(s): text",
              "duplicate-question-id": "appears twice in the question file"}[case]
    if case == "invalid-line":
        answers.write_text(json.dumps(answer(1, "yes")) + "\n{\n")
    elif case == "text-null":
        write_lines(answers, [answer(1, None), answer(2, "no")])
    elif case == "latin1":
        answers.write_bytes(b'{"question_id": 1, "text": "n\xe9"}\n')
    elif case == "no-text-field":
        write_lines(answers, [{"question_id": 1}])
    elif case == "duplicate-question-id":
        write_lines(answers, [answer(1, "yes"), answer(2, "no")])
        questions = write_lines(tmp_path / "s" / "q.jsonl", [
            {"question_id": 1, "image": "a.png", "text": "x", "category": "random", "label": "yes"},
            {"question_id": 1, "image": "b.png", "text": "y", "category": "random", "label": "no"},
        ])
        code, err = call(pope.main, ["--question-file", str(questions), "--result-file", str(answers)], capsys)
        assert_one_line_error(code, err, needle)
        return
    code, err = scorer_call("pope", layout, answers, capsys)
    assert_one_line_error(code, err, needle)


@pytest.mark.outcome("correct")
def test_pope_scores_a_last_record_without_newline(layout, tmp_path, capsys):
    answers = tmp_path / "s" / "merge.jsonl"
    answers.parent.mkdir()
    answers.write_text(json.dumps(answer(1, "Yes")) + "\n" + json.dumps(answer(2, "No")))
    code, err = scorer_call("pope", layout, answers, capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "s" / "result.json").read_text())["score"] == pytest.approx(100.0)


# ---------------------------------------------------------------------------------------- summarize
@pytest.mark.outcome("error")
@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"{not json", "invalid JSON"),
        (b"[1, 2]", "got list"),
        (b'{"score": 1.0}', "no 'benchmark' name"),
        (b'{"benchmark": "pope", "score": "high"}', "'score' must be a number or null"),
        (b'{"benchmark": "pope", "score": 1.0, "coverage": 5}', "'coverage' must be an object"),
        (b'{"benchmark": "pope", "score": 1.0, "coverage": {"fraction": "all"}}', "'coverage.fraction' must be a number"),
        (b'{"benchmark": "pope", "score": 1.0, "cost": {"flops": "many"}}', "cost field(s) flops must be numbers"),
        (b'{"benchmark": "caf\xe9"}', "not UTF-8 text"),
    ],
    ids=["invalid-json", "list", "no-benchmark", "score-text", "coverage-int", "fraction-text", "cost-text", "latin1"],
)
def test_summarize_bad_record_is_one_line(tmp_path, capsys, content, needle):
    results = tmp_path / "results"
    (results / "fastv").mkdir(parents=True)
    (results / "fastv" / "pope.json").write_bytes(content)
    code, err = call(summarize.main, ["--results-dir", str(results), "--output-dir", str(tmp_path / "out"),
                                      "--no-plots"], capsys)
    assert_one_line_error(code, err, needle, "pope.json")
    assert not (tmp_path / "out" / "results.csv").exists()


@pytest.mark.outcome("error")
@pytest.mark.parametrize("case", ["missing-folder", "empty-folder"])
def test_summarize_without_records_is_one_line(tmp_path, capsys, case):
    results = tmp_path / "results"
    if case == "empty-folder":
        results.mkdir()
    code, err = call(summarize.main, ["--results-dir", str(results), "--output-dir", str(tmp_path / "out")], capsys)
    assert_one_line_error(code, err, "no such folder" if case == "missing-folder" else "no result records")
