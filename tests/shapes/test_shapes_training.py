"""The shapes VLM's training losses: the hop attention mass equals what the model's own attention gives."""

from __future__ import annotations

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from llava.shapes.model import build_processor, shapes_llava_config
from llava.shapes.scene import cell_patches
from llava.shapes.training_data import (
    BOS_COUNT_WEIGHT,
    DialogueSettings,
    dialogue_batch,
    hop_cells,
    key_word_ids,
    key_word_positions,
    patch_mask,
)
from llava.train.train_shapes_vlm import HOP_HEADS, answer_accuracy, hop_losses
from llava.train.train_shapes_vlm import main as train_main


def small_shapes_vlm(processor, layers: int = 5) -> LlavaForConditionalGeneration:
    tokenizer = processor.tokenizer
    config = shapes_llava_config(len(tokenizer), tokenizer.convert_tokens_to_ids("<image>"))
    config.text_config.num_hidden_layers = layers
    config.vision_config.num_hidden_layers = 2
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(config).eval()


def test_hop_cells_and_patch_masks():
    assert hop_cells("right_of", ((1, 2), (1, 3))) == (((1, 2),), ((1, 3),))
    assert hop_cells("count", ((0, 0), (4, 5))) == (((0, 0), (4, 5)), ((0, 0), (4, 5)))
    mask = patch_mask(((2, 3),))
    assert mask.sum() == 16 and mask[cell_patches(2, 3)].all()


def test_hop_losses_are_the_models_own_attention_on_each_hops_targets():
    processor = build_processor()
    model = small_shapes_vlm(processor, layers=6)
    model.set_attn_implementation("eager")
    settings = DialogueSettings(multiple_choice_share=0.7, kind_weights=(("count", 2.0), ("right_of", 1.0), ("exists", 1.0)))
    batch = dialogue_batch(3, 3, 0, processor.tokenizer, model.config.image_token_id, settings)
    with torch.no_grad():
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, pixel_values=batch.pixel_values,
                    output_hidden_states=True, output_attentions=True)
        results = hop_losses(model, out.hidden_states, batch, HOP_HEADS)
    assert set(results) == set(HOP_HEADS)  # this batch has every kind of hop
    for name, spec in HOP_HEADS.items():
        targets = batch.hops[name]
        rows = [out.attentions[spec.layer][b, spec.head, targets.query[b, k]] for b, k in targets.used.nonzero().tolist()]
        weights = targets.weights[targets.used]
        masses = torch.stack([row[w > 0].sum() for row, w in zip(rows, weights, strict=True)])
        torch.testing.assert_close(results[name][1], masses.mean(), atol=1e-5, rtol=1e-4)
        if spec.distribution:
            expected = torch.stack([-(w / w.sum() * torch.log(row + 1e-6)).sum() for row, w in zip(rows, weights, strict=True)])
        else:
            expected = -torch.log(masses + 1e-6)
        torch.testing.assert_close(results[name][0], expected.mean(), atol=1e-4, rtol=1e-4)
    hits = answer_accuracy(out.logits, batch)
    assert sum(len(v) for v in hits.values()) == int((batch.answer_index >= 0).sum())


def test_hop_targets_name_what_each_answer_reads():
    tokenizer = build_processor().tokenizer
    settings = DialogueSettings(multiple_choice_share=1.0, kind_weights=(("count", 1.0),), turns=(2, 2))
    batch = dialogue_batch(0, 2, 0, tokenizer, tokenizer.convert_tokens_to_ids("<image>"), settings)
    ids = batch.input_ids[0].tolist()
    words = lambda positions: tokenizer.convert_ids_to_tokens([ids[p] for p in positions])
    letters = batch.hops["letters"]
    for k in letters.used[0].nonzero().flatten().tolist():  # option word -> its letter, two tokens back
        target = int(letters.weights[0, k].nonzero())
        assert target == int(letters.query[0, k]) - 2 and words([target])[0] in "ABCD"
    start = int(batch.image_start[0])
    for turn, index in enumerate(batch.answer_index[0].tolist()):
        option = batch.hops["option"].weights[0, turn].nonzero().flatten().tolist()
        assert len(option) == 1 and words([option[0] - 2]) == words([index])  # the right option's word
        objects = batch.hops["objects"].weights[0, turn]
        targets = objects.nonzero().flatten().tolist()
        assert targets[0] == 0 and all(start <= t < start + 576 for t in targets[1:])  # BOS, then centre patches
        torch.testing.assert_close(objects.sum(), torch.tensor(1.0))
        counted = int(words(option)[0])
        assert len(targets) - 1 == counted
        torch.testing.assert_close(objects[0], torch.tensor(BOS_COUNT_WEIGHT / (counted + BOS_COUNT_WEIGHT)))


def test_key_words_are_the_question_words_before_its_question_mark():
    tokenizer = build_processor().tokenizer
    ids = tokenizer("what colour is the shape in cell b4 ?\nA. red\nB. blue", add_special_tokens=False).input_ids
    positions = key_word_positions(ids, 0, len(ids), key_word_ids(tokenizer), tokenizer.convert_tokens_to_ids("?"))
    assert tokenizer.convert_ids_to_tokens([ids[i] for i in positions]) == ["b4"]


@pytest.mark.parametrize(
    ("setup", "argv", "message"),
    [
        ("tower.pt", [], "pass --resume to continue them or --overwrite"),
        (None, ["--stages", "vlm"], "run the tower stage first"),
        (None, ["--vlm-steps", "0"], "--vlm-steps must be >= 1"),
        (None, ["--resume", "--overwrite"], "exclude each other"),
        (None, ["--stages", "vlm", "--continue-from", "nowhere"], "has no training_record.json"),
        (None, ["--continue-from", "nowhere"], "--continue-from trains the vlm stage only"),
    ],
)
def test_training_settings_are_checked_before_any_work(tmp_path, capsys, setup, argv, message):
    if setup:
        (tmp_path / setup).write_bytes(b"")
    with pytest.raises(SystemExit) as stopped:
        train_main(["--output-dir", str(tmp_path), *argv])
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_an_export_trains_further_with_continue_from(tmp_path):
    """Train 2 + 2 steps, export, continue 2 VLM steps from the export: the record counts 4 VLM steps and
    both runs, the log continues at step 2, and the continued weights differ from the exported ones."""
    import json

    from safetensors.torch import load_file

    tiny = ["--tower-batch", "2", "--vlm-batch", "2", "--threads", "1", "--no-lookup-init"]
    first, second = tmp_path / "export1", tmp_path / "export2"
    assert train_main(["--output-dir", str(tmp_path / "a"), "--tower-steps", "2", "--vlm-steps", "2", *tiny,
                       "--export", str(first)]) == 0
    assert json.loads((first / "training_record.json").read_text())["vlm_steps"] == 2
    assert train_main(["--output-dir", str(tmp_path / "b"), "--stages", "vlm", "--vlm-steps", "2",
                       "--attention-weight", "0", "--continue-from", str(first), *tiny, "--export", str(second)]) == 0
    record = json.loads((second / "training_record.json").read_text())
    assert train_main(["--output-dir", str(tmp_path / "b"), "--stages", "--export", str(tmp_path / "export3")]) == 0
    assert json.loads((tmp_path / "export3" / "training_record.json").read_text()) == record  # a separate export call
    assert record["tower_steps"] == 2 and record["vlm_steps"] == 4 and len(record["runs"]) == 2
    assert record["runs"][1]["continue_from"] == str(first)
    steps = [json.loads(line)["step"] for line in (second / "training_logs" / "vlm_log.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]
    before, after = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert torch.equal(before["vision_tower.embeddings.patch_embedding.weight"],
                       after["vision_tower.embeddings.patch_embedding.weight"])  # frozen
    assert not torch.equal(before["multi_modal_projector.linear_1.weight"], after["multi_modal_projector.linear_1.weight"])


def test_a_tower_stage_started_from_an_export_counts_its_steps(tmp_path):
    import json

    tiny = ["--tower-batch", "2", "--vlm-batch", "2", "--threads", "1", "--no-lookup-init", "--tower-steps", "2",
            "--vlm-steps", "1"]
    first, second = tmp_path / "export1", tmp_path / "export2"
    assert train_main(["--output-dir", str(tmp_path / "a"), *tiny, "--export", str(first)]) == 0
    assert train_main(["--output-dir", str(tmp_path / "b"), *tiny, "--tower-from", str(first), "--export", str(second)]) == 0
    record = json.loads((second / "training_record.json").read_text())
    assert record["tower_steps"] == 4 and record["tower_started_from"]["tower_steps"] == 2
    assert record["runs"][0]["tower_from"] == str(first)
