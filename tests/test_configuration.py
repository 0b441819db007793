"""The configuration: sub-configs as objects or dicts, any causal LM, and a lossless round trip."""

import pytest
import torch
from transformers import Qwen2Config, SiglipVisionConfig, WhisperConfig

from mmmmodal_hf import MMMModalConfig, MMMModalForConditionalGeneration

from tiny_parts import tiny_audio_config, tiny_text_config, tiny_vision_config


def test_defaults_are_the_published_tinyllama_variant():
    config = MMMModalConfig()
    assert isinstance(config.vision_config, SiglipVisionConfig) and config.vision_config.image_size == 384
    assert isinstance(config.audio_config, WhisperConfig) and config.audio_config.d_model == 768
    assert config.text_config.model_type == "llama" and config.text_config.hidden_size == 2048
    assert (config.vision_feature_layer, config.audio_feature_layer) == (-2, -2)
    assert (config.audio_conv_kernel, config.audio_conv_stride) == (40, 3)
    assert (config.image_start_token_id, config.image_end_token_id) == (32000, 32001)
    assert (config.audio_start_token_id, config.audio_end_token_id) == (32002, 32003)


def test_sub_configs_as_dicts_equal_sub_configs_as_objects():
    as_objects = MMMModalConfig(
        vision_config=tiny_vision_config(),
        audio_config=tiny_audio_config(),
        text_config=tiny_text_config(100),
        audio_conv_kernel=4,
    )
    as_dicts = MMMModalConfig(
        vision_config=tiny_vision_config().to_dict(),
        audio_config=tiny_audio_config().to_dict(),
        text_config=tiny_text_config(100).to_dict(),
        audio_conv_kernel=4,
    )
    assert as_objects.to_dict() == as_dicts.to_dict()


def tiny_qwen2_config() -> Qwen2Config:
    """A causal LM other than Llama, with tied input and output embeddings."""
    return Qwen2Config(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=300,
        tie_word_embeddings=True,
    )


def test_round_trip_through_save_and_load(tmp_path):
    config = MMMModalConfig(
        vision_config=tiny_vision_config(),
        audio_config=tiny_audio_config(),
        text_config=tiny_qwen2_config(),
        audio_conv_kernel=4,
        vision_feature_layer=-1,
        image_token_id=298,
        audio_token_id=299,
    )
    config.save_pretrained(tmp_path)
    loaded = MMMModalConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.text_config.model_type == "qwen2" and loaded.tie_word_embeddings


def test_any_causal_lm_works_and_tied_heads_stay_tied():
    config = MMMModalConfig(
        vision_config=tiny_vision_config(),
        audio_config=tiny_audio_config(),
        text_config=tiny_qwen2_config(),
        audio_conv_kernel=4,
        image_token_id=298,
        audio_token_id=299,
    )
    model = MMMModalForConditionalGeneration(config)
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    ids = torch.tensor([[5, 298, 7]])
    pixels = torch.randn(1, 3, 32, 32)
    # 16 image slots are needed, so a 3-token input with one slot must fail loudly, not silently.
    with pytest.raises(ValueError, match="1 image slot tokens"):
        model(input_ids=ids, pixel_values=pixels)
    ids = torch.tensor([[5] + [298] * 16 + [7]])
    assert model(input_ids=ids, pixel_values=pixels).logits.shape == (1, 18, 300)


def test_impossible_layers_and_kernels_are_refused():
    with pytest.raises(ValueError, match="vision_feature_layer=-5 does not exist in an encoder of 2 layers"):
        MMMModalConfig(
            vision_config=tiny_vision_config(),
            audio_config=tiny_audio_config(),
            audio_conv_kernel=4,
            vision_feature_layer=-5,
        )
    with pytest.raises(ValueError, match=r"kernel \(60\) is longer than the 50 frames"):
        MMMModalConfig(vision_config=tiny_vision_config(), audio_config=tiny_audio_config(), audio_conv_kernel=60)
