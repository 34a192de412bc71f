"""The TokenMerger as a pre-LLM stage: M merged tokens replace the image's, trained against the frozen VLM."""

import torch

from llava.model.builder import load_pretrained_model
from llava.pruning.learned.checkpoint import read_checkpoint
from llava.train.pruner.config import train_config_from_dict
from llava.train.pruner.merger_training import CHECKPOINT, LOG, held_out_accuracy, train_merger
from tests.conftest import llava_prompt, pixel_values
from tests.train.conftest import write_merger_checkpoint


def tiny_config(steps: int) -> dict:
    return {"model_path": "tiny-random-llava", "model_overrides": {"num_hidden_layers": 2},
            "method_settings": {"pruning_layers": [1], "target_keep_ratio": [0.5]},
            "training": {"steps": steps, "batch_size": 2, "lr_pruner": 0.01, "checkpoint_every": 1, "dataset_size": 2}}


@torch.no_grad()
def test_the_llm_sees_m_tokens_carrying_the_merged_features(tmp_path):
    checkpoint = write_merger_checkpoint(tmp_path / "merger.pt", num_outputs=16)
    _, llava, _, _ = load_pretrained_model("tiny-random-llava", pruning_method="learned_merger", visual_token_num=16,
                                           merger_checkpoint=checkpoint)
    ids = llava_prompt(llava.config.image_token_id, 5, 7)
    out = llava(input_ids=ids, pixel_values=pixel_values(), use_cache=True)
    assert out.past_key_values.layers[0].keys.shape[2] == 5 + 16 + 7
    assert llava.pruning_record["equivalent_tokens"] == 16
    assert llava.language_model.pruning_state.pre_llm_features.shape[1] == 576  # reused by a no-cache continuation


def test_training_lowers_the_loss_and_resumes_exactly(tmp_path):
    straight = train_merger(train_config_from_dict(tiny_config(4)), 16, tmp_path / "a", show_progress=False)
    assert straight[-1]["loss_task"] < straight[0]["loss_task"]
    train_merger(train_config_from_dict(tiny_config(2)), 16, tmp_path / "b", show_progress=False)
    resumed = train_merger(train_config_from_dict(tiny_config(4)), 16, tmp_path / "b", show_progress=False)
    assert [m["step"] for m in resumed] == [2, 3] and resumed == straight[2:]
    assert len((tmp_path / "b" / LOG).read_text().splitlines()) == 4
    for name, tensor in read_checkpoint(tmp_path / "a" / CHECKPOINT)["merger"].items():
        assert torch.equal(read_checkpoint(tmp_path / "b" / CHECKPOINT)["merger"][name], tensor), name
    result = held_out_accuracy(train_config_from_dict(tiny_config(4)), tmp_path / "a" / CHECKPOINT, 2, 99)
    assert result["equivalent_tokens"] == 16 and 0 <= result["answer_accuracy"] <= 1
