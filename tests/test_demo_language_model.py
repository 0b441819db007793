"""The demo LM's start: position-free RoPE pairs and the first layer's match heads."""

import pytest
import torch
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from mmmmodal_hf.demo.language_model import HEAD_DIM, position_free_dims, rope_parameters, start_match_heads
from mmmmodal_hf.demo.run import DemoSettings, build_model, build_processor

SETTINGS = DemoSettings(position_free_pairs=8, match_heads=1)


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory):
    processor, _ = build_processor(SETTINGS, tmp_path_factory.mktemp("demo"), [])
    return build_model(SETTINGS, processor), processor


def test_position_free_pairs_turn_a_thousand_times_slower_and_the_rest_as_at_base_100(demo_model):
    config = demo_model[0].config.text_config
    frequencies, _ = ROPE_INIT_FUNCTIONS[config.rope_parameters["rope_type"]](config)
    plain = 1.0 / 100.0 ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM)
    turning = HEAD_DIM // 2 - SETTINGS.position_free_pairs
    torch.testing.assert_close(frequencies[:turning], plain[:turning])
    torch.testing.assert_close(frequencies[turning:], plain[turning:] / 1000)
    assert rope_parameters(100.0, 0) == {"rope_type": "default", "rope_theta": 100.0}
    with pytest.raises(ValueError, match="position_free_pairs"):
        rope_parameters(100.0, HEAD_DIM // 2)


def test_match_head_keys_equal_its_queries_on_position_free_dims_only(demo_model):
    model, _ = demo_model
    attention = model.model.language_model.layers[0].self_attn
    free = torch.zeros(HEAD_DIM, dtype=torch.bool)
    free[position_free_dims(SETTINGS.position_free_pairs)] = True
    query, key = attention.q_proj.weight[:HEAD_DIM], attention.k_proj.weight[:HEAD_DIM]
    assert torch.equal(query, key) and query[free].abs().sum() > 0 and query[~free].abs().sum() == 0
    # The other heads keep their random start.
    assert not torch.equal(attention.q_proj.weight[HEAD_DIM:], attention.k_proj.weight[HEAD_DIM:])
    with pytest.raises(ValueError, match="position-free pairs"):
        start_match_heads(model.model.language_model, heads=1, position_free_pairs=0)


def test_match_head_finds_the_same_token_far_back_from_the_first_step(demo_model):
    model, processor = demo_model
    model.model.language_model.set_attn_implementation("eager")
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (1, 200), generator=generator)
    digit = processor.tokenizer("3", add_special_tokens=False)["input_ids"][-1]
    ids[0, 5] = ids[0, 190] = digit
    with torch.no_grad():
        attentions = model.model.language_model(input_ids=ids, output_attentions=True).attentions
    from_last_digit = attentions[0][0, :, 190, :190]  # layer 0, each head, earlier positions only
    assert from_last_digit[0].argmax() == 5  # the match head, 185 tokens back
    assert from_last_digit[0, 5] > 20 * from_last_digit[0].mean()  # 63x; the random heads 0.7-3.3x
