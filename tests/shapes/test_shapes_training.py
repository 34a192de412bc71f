"""The shapes VLM's training losses: the hop attention mass equals what the model's own attention gives."""

from __future__ import annotations

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from llava.shapes.model import build_processor, shapes_llava_config
from llava.shapes.scene import cell_patches
from llava.shapes.training_data import (
    DialogueSettings,
    dialogue_batch,
    hop_cells,
    key_word_ids,
    key_word_positions,
    patch_mask,
)
from llava.train.train_shapes_vlm import answer_accuracy, hop_attention_mass
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


def test_hop_attention_mass_is_the_models_own_attention_on_the_answer_patches():
    processor = build_processor()
    model = small_shapes_vlm(processor)
    model.set_attn_implementation("eager")
    batch = dialogue_batch(3, 2, 0, processor.tokenizer, model.config.image_token_id, DialogueSettings())
    with torch.no_grad():
        out = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            pixel_values=batch.pixel_values,
            output_hidden_states=True,
            output_attentions=True,
        )
        mass, used = hop_attention_mass(model, out.hidden_states, batch, (1, 2, 4), head=1)
    for hop, layer in enumerate((1, 2, 4)):
        for b in range(2):
            for q, index in enumerate(batch.answer_index[b].tolist()):
                if index < 0:
                    assert not used[hop, b, q]
                    continue
                row = out.attentions[layer][b, 1, index - 1]
                expected = row[batch.hop_targets[b, q, hop]].sum()
                torch.testing.assert_close(mass[hop, b, q], expected, atol=1e-5, rtol=1e-4)
    assert used[0].any() and used[1].any()
    hits = answer_accuracy(out.logits, batch)
    assert sum(len(v) for v in hits.values()) == int((batch.answer_index >= 0).sum())
    start = int(batch.image_start[0])
    assert batch.hop_targets[0, 0, 1].sum() >= 16 and batch.hop_targets[0, 0, 1, start : start + 576].sum() == batch.hop_targets[0, 0, 1].sum()


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
