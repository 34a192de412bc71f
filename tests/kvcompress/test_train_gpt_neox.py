"""The GPT-NeoX trainer (tiny settings on a synthetic text) and the shipped checkpoint's architecture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GPTNeoXForCausalLM

from kvcompress.models.loading import load_model_and_tokenizer, model_problem
from kvcompress.models.wikitext_neox import SHIPPED_NEOX
from kvcompress.train_gpt_neox import main as train_main
from kvcompress.train_gpt_neox import training_batch

TINY = ["--vocab-size", "300", "--hidden-size", "32", "--heads", "4", "--layers", "2", "--seq-len", "32",
        "--batch-size", "2", "--eval-every", "2", "--checkpoint-every", "1", "--threads", "1"]


@pytest.fixture
def text(tmp_path) -> Path:
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", "from", "home", "."]
    lines = [" ".join(words[(i * 7 + j) % len(words)] for j in range(12)) + "\n" for i in range(300)]
    path = tmp_path / "valid.txt"
    path.write_text("".join(lines), encoding="utf-8")
    return path


def test_batches_depend_only_on_seed_and_step():
    tokens = torch.arange(1000)
    assert torch.equal(training_batch(tokens, 5, 3, 16, 0), training_batch(tokens, 5, 3, 16, 0))
    assert not torch.equal(training_batch(tokens, 5, 3, 16, 0), training_batch(tokens, 6, 3, 16, 0))
    batch = training_batch(tokens, 0, 4, 16, 0)
    assert batch.shape == (4, 16) and bool((batch[:, 1:] - batch[:, :-1] == 1).all())  # contiguous windows


def test_an_interrupted_run_resumes_as_an_uninterrupted_one(tmp_path, text, monkeypatch):
    common = ["--train-text", str(text), "--test-text", str(tmp_path / "absent.txt"), "--steps", "4", *TINY]
    assert train_main(["--output-dir", str(tmp_path / "whole"), *common]) == 0

    def interrupted(tokens, step, *args):
        if step == 2:
            raise KeyboardInterrupt
        return training_batch(tokens, step, *args)

    monkeypatch.setattr("kvcompress.train_gpt_neox.training_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_main(["--output-dir", str(tmp_path / "split"), *common])
    monkeypatch.undo()
    assert train_main(["--output-dir", str(tmp_path / "split"), "--resume", *common]) == 0
    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["model"]
    split = torch.load(tmp_path / "split" / "last.pt", weights_only=True)["model"]
    for name, tensor in whole.items():
        torch.testing.assert_close(split[name], tensor, msg=name)
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "train_log.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]
    runs = (tmp_path / "split" / "runs.jsonl").read_text().splitlines()
    assert [json.loads(run)["resume"] for run in runs] == [False, True]


def test_export_writes_a_pythia_style_model_that_loads_with_auto_classes(tmp_path, text):
    target = tmp_path / "export"
    assert train_main(["--output-dir", str(tmp_path / "run"), "--steps", "2", "--train-text", str(text),
                       "--test-text", str(text), *TINY, "--export", str(target)]) == 0
    model = AutoModelForCausalLM.from_pretrained(target)
    tokenizer = AutoTokenizer.from_pretrained(target)
    assert isinstance(model, GPTNeoXForCausalLM)
    assert model.config.use_parallel_residual and model.config.rope_parameters["partial_rotary_factor"] == 0.25
    assert not model.config.tie_word_embeddings
    assert tokenizer.decode(tokenizer("the cat sat .").input_ids) == "the cat sat ."
    record = json.loads((target / "training_record.json").read_text())
    assert record["test_perplexity"]["tokens"] > 0 and (target / "training_curves.png").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--hidden-size", "30", "--heads", "4"], "must be a multiple of --heads"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--train-text", "nowhere.txt"], "--train-text nowhere.txt: no such file"),
        (["--resume", "--overwrite"], "exclude each other"),
        (["--no-train"], "does nothing"),
    ],
)
def test_bad_settings_stop_before_any_work(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as stopped:
        train_main(["--output-dir", str(tmp_path), *argv])
    assert stopped.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(not (SHIPPED_NEOX / "config.json").is_file(), reason="no shipped GPT-NeoX in this checkout")
def test_shipped_neox_has_pythias_architecture_within_the_size_budget():
    assert model_problem("neox-wikitext") is None
    model, tokenizer = load_model_and_tokenizer("neox-wikitext")
    config = model.config
    assert (config.num_hidden_layers, config.num_attention_heads) == (6, 8)
    assert config.use_parallel_residual and config.rope_parameters["partial_rotary_factor"] == 0.25
    weights = load_file(SHIPPED_NEOX / "model.safetensors")
    assert weights["gpt_neox.layers.0.attention.query_key_value.weight"].shape == (3 * config.hidden_size, config.hidden_size)
    size = sum(path.stat().st_size for path in SHIPPED_NEOX.iterdir() if path.is_file())
    assert size <= 30 * 2**20
    ids = tokenizer(" The game 's story takes place in the city of", return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    assert float(loss) < 6.0  # well under a uniform guess over 4096 tokens (8.3 nats)
