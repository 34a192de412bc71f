"""`make demo` end to end on a random shapes VLM saved to disk: every step runs, the report's images
exist, and a second run reuses every answer and gives the same table."""

import re

import pytest

from llava import demo


def test_config_names_match_the_shell_scripts():
    assert demo.Config().name == "vanilla"
    assert demo.Config("fastv_fine_head", 64, 1, "sum").name == "fastv_fine_head_t64_h1_sum"
    assert demo.config_method(demo.Config("dynamic", 128)) == ("ablation_a", {"visual_token_num": 128})


def test_demo_writes_the_report_and_a_second_run_gives_the_same_table(random_shapes_vlm, tmp_path, capsys):
    argv = ["--model-path", str(random_shapes_vlm), "--eval-dir", str(tmp_path), "--per-benchmark", "6",
            "--tokens", "192", "--methods", "fastv", "learned", "--overlays", "1", "--batch-size", "6"]
    assert demo.main(argv) == 0
    assert "learned: no pruner shipped for learned_t192" in capsys.readouterr().out  # the random model ships none
    summary = tmp_path / "summary"
    table = (summary / "results.csv").read_text()
    assert {"vanilla", "fastv", "fastv_fine_head", "ablation_a"} <= {line.split(",")[0] for line in table.splitlines()[1:]}
    page = (summary / "index.html").read_text()
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
