"""Text->vision attention for the residual: q.k rows == eager attention weights; key reweighting; question rows."""

import torch

from llava.pruning.learned.text_attention import question_rows, text_to_vision_attention
from llava.pruning.scoring import decoder_attention_rows, reweight_keys
from tests.conftest import pruned_lm

SPAN_START, SPAN_END, SEQ_LEN = 3, 15, 24


@torch.no_grad()
def test_attention_from_qk_equals_mean_of_eager_weights_over_heads_and_text_rows(stock_lm_eager):
    ids = torch.randint(5, 120, (2, SEQ_LEN), generator=torch.Generator().manual_seed(0))
    query_index = torch.tensor([SEQ_LEN - 1, SEQ_LEN - 4])
    out = stock_lm_eager(input_ids=ids, output_attentions=True, output_hidden_states=True)
    model = pruned_lm(stock_lm_eager).model
    span = torch.tensor([[SPAN_START, SPAN_END]] * 2)
    span_index = span[:, :1] + torch.arange(SPAN_END - SPAN_START)
    rows, row_weights = question_rows(span[:, 1], query_index)
    for layer in (1, 3):
        hidden = out.hidden_states[layer]  # input of `layer`
        cos, sin = model.rotary_emb(hidden, torch.arange(SEQ_LEN)[None])
        probs = decoder_attention_rows(
            model.layers[layer],
            hidden,
            (cos.expand(2, -1, -1), sin.expand(2, -1, -1)),
            torch.ones(2, SEQ_LEN, dtype=torch.bool),
            rows,
            torch.ones(2, SEQ_LEN),
        )
        ours = text_to_vision_attention(probs, row_weights, span_index)
        eager = out.attentions[layer]  # [B, H, N, N]
        for b in range(2):
            expected = eager[b, :, SPAN_END : int(query_index[b]) + 1, SPAN_START:SPAN_END].mean(dim=(0, 1))
            torch.testing.assert_close(ours[b], expected, atol=1e-6, rtol=1e-5)


def test_question_rows_pad_with_zero_weight():
    rows, weights = question_rows(torch.tensor([5, 5]), torch.tensor([8, 6]))
    assert rows.tolist() == [[5, 6, 7, 8], [5, 6, 6, 6]]
    assert torch.allclose(weights, torch.tensor([[0.25] * 4, [0.5, 0.5, 0.0, 0.0]]))


def test_text_to_vision_attention_is_the_weighted_mean():
    probs = torch.rand(1, 2, 2, 6).softmax(-1)
    got = text_to_vision_attention(probs, torch.tensor([[0.75, 0.25]]), torch.tensor([[1, 2, 4]]))
    expected = (0.75 * probs[0, :, 0] + 0.25 * probs[0, :, 1]).mean(0)[[1, 2, 4]]
    torch.testing.assert_close(got[0], expected)


def test_reweighting_keys_is_softmax_with_log_weights_and_removes_zero_weight_keys():
    logits = torch.randn(2, 3, 4, 7)
    weights = torch.rand(2, 7)
    weights[:, 2] = 0.0
    got = reweight_keys(logits.softmax(-1), weights)
    torch.testing.assert_close(got, (logits + weights.log()[:, None, None]).softmax(-1))
    kept = [0, 1, 3, 4, 5, 6]
    removed = (logits[..., kept] + weights[:, kept].log()[:, None, None]).softmax(-1)
    torch.testing.assert_close(got[..., kept], removed)
