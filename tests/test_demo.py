"""`make demo` end to end on a random shapes VLM saved to disk: every step runs, the report's images
exist, and a second run reuses every answer and gives the same table."""

import csv
import json
import re

import pytest

from llava import demo


def test_config_names_match_the_shell_scripts():
    assert demo.Config().name == "vanilla"
    assert demo.Config("fastv_fine_head", 64, 1, "sum").name == "fastv_fine_head_t64_h1_sum"
    assert demo.config_method(demo.Config("dynamic", 128)) == ("ablation_a", {"visual_token_num": 128})


def test_demo_writes_the_report_and_a_second_run_gives_the_same_table(random_shapes_vlm, tmp_path, capsys):
    argv = ["--model-path", str(random_shapes_vlm), "--eval-dir", str(tmp_path), "--questions", "6",
            "--tokens", "192", "--methods", "fastv", "random", "learned", "--random-seeds", "2", "--overlays", "1",
            "--batch-size", "6"]
    assert demo.main(argv) == 0
    assert "learned: no pruner shipped for learned_t192" in capsys.readouterr().out  # the random model ships none
    summary = tmp_path / "summary"
    table = (summary / "results.csv").read_text()
    assert {"vanilla", "fastv", "fastv_fine_head", "ablation_a"} <= {line.split(",")[0] for line in table.splitlines()[1:]}
    with (summary / "results.csv").open() as handle:
        rows = {(row["method"], row["params"], row["heads"]): row for row in csv.DictReader(handle)}
    fastv, vanilla = rows["fastv", "", ""], rows["vanilla", "", ""]
    for column in ("gqa", "pope", "pope_acc", "sqa", "sqa_first_letter", "relative"):  # every number with its interval
        low, high = float(fastv[f"{column}_lo"]), float(fastv[f"{column}_hi"])
        assert low <= float(fastv[column + ("_%" if column == "relative" else "")]) <= high
    assert float(vanilla["relative_lo"]) == float(vanilla["relative_hi"]) == 100.0  # paired with itself
    seeds = rows["random", "mean over 2 seeds", ""]  # seed 0 (the default) and seed=1
    assert seeds["seeds"] == "2" and float(seeds["relative_seed_min"]) <= float(seeds["relative_seed_max"])
    assert ("random", "seed=1", "") in rows
    assert fastv["evidence_layer"] == "2" and float(fastv["evidence_chance_%"]) == pytest.approx(100 * 64 / 576)  # (2 x 576 + 6 x 64) / 8 = 192
    assert fastv["evidence_stages"].startswith("L2 ") and not vanilla["evidence_recall_%"]  # vanilla prunes nothing
    answers = (tmp_path / "gqa/answers/llava_gqa_testdev_balanced/fastv_t192/merge.jsonl").read_text().splitlines()
    assert all(json.loads(line)["metadata"]["kept_stages"][0]["layer"] == 2 for line in answers)
    ranks = (summary / "ranks.md").read_text()
    assert "random (seed mean)" in ranks and "vs best (paired)" in ranks
    page = (summary / "index.html").read_text()
    assert "do not predict LLaVA-1.5-7B" in page and "Published LLaVA-1.5-7B numbers beside ours" in page
    assert "evidence_recall_%" in page and "Ranks per budget" in page and re.search(r"fastv_t192: evidence \d+/\d+", page)
    images = re.findall(r'<img src="([^"]+)"', page)
    assert any("fastv_t192" in image for image in images) and "accuracy_vs_tokens.png" in images
    assert all((summary / image).is_file() for image in images)
    capsys.readouterr()
    assert demo.main(argv) == 0
    assert "already answered" in capsys.readouterr().err
    without_timing = lambda text: [line.rsplit(",", 1)[0] for line in text.splitlines()]  # prefill_ms is last
    assert table.splitlines()[0].endswith("prefill_ms")
    assert without_timing((summary / "results.csv").read_text()) == without_timing(table)


def test_bad_settings_stop_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--model-path", str(tmp_path / "none")])
    assert exit_info.value.code == 2 and "no model at" in capsys.readouterr().err


def test_question_count_picks_its_own_eval_dir_and_a_dir_of_another_count_is_refused(random_shapes_vlm, tmp_path, capsys):
    args = demo.build_demo_parser().parse_args(["--questions", "30"])
    demo.resolve_counts(args)
    assert args.eval_dir == demo.DEFAULT_EVAL_DIR.with_name("shapes_q30") and args.seed_tokens == [64]
    args = demo.build_demo_parser().parse_args([])
    demo.resolve_counts(args)
    assert args.eval_dir == demo.DEFAULT_EVAL_DIR and args.questions == demo.DEFAULT_QUESTIONS

    (tmp_path / "gqa").mkdir()
    (tmp_path / "gqa" / "benchmark.json").write_text(json.dumps({"per_benchmark": 120, "seed": 0}))
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--model-path", str(random_shapes_vlm), "--eval-dir", str(tmp_path), "--questions", "6"])
    assert exit_info.value.code == 2 and "gqa (120 questions)" in capsys.readouterr().err
    assert not (tmp_path / "pope").exists()  # nothing written
