"""The demo's stand-in encoder pretraining: the towers learn the world's facts, and nothing else changes."""

import torch

from mmmmodal_hf.demo.encoders import pretrain_encoders
from mmmmodal_hf.demo.run import DemoSettings, build_model, build_processor


def _demo_model(tmp_path):
    settings = DemoSettings(output_dir=str(tmp_path), tokenizer="mistral")
    processor, _ = build_processor(settings, tmp_path, [])
    return build_model(settings, processor), processor


def test_pretraining_teaches_the_towers_and_touches_nothing_else(tmp_path):
    model, processor = _demo_model(tmp_path)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    trainable = {name: parameter.requires_grad for name, parameter in model.named_parameters()}
    untrained = pretrain_encoders(model, processor, vision_steps=0, audio_steps=0)
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())

    trained = pretrain_encoders(model, processor, vision_steps=150, audio_steps=80)
    vision, audio = (report.accuracy for report in trained)
    assert vision["colour"] >= 0.9 and audio["pitch"] >= 0.9 and audio["beeps"] >= 0.6, trained
    assert vision["colour"] > untrained[0].accuracy["colour"] + 0.3
    # Only tower weights moved; projectors, LM and head are as built, and what could train still can (and
    # Whisper's fixed sinusoidal positions still cannot).
    changed = {name for name, value in model.state_dict().items() if not torch.equal(before[name], value)}
    assert changed and all(name.startswith(("model.vision_tower.", "model.audio_tower.")) for name in changed)
    assert {name: parameter.requires_grad for name, parameter in model.named_parameters()} == trainable


def test_each_medium_tag_starts_as_its_digit_scaled_to_be_seen(tmp_path):
    model, processor = _demo_model(tmp_path)
    settings = DemoSettings()
    assert model.config.media_index_embeddings == settings.media_index_embeddings > 0
    embeddings = model.get_input_embeddings().weight
    # The questions say "image 2": tag 2 starts as the token "2", scaled past the projected slots' noise.
    two = processor.tokenizer.convert_tokens_to_ids("2")
    for projector in (model.model.image_projector, model.model.audio_projector):
        torch.testing.assert_close(projector.index_embedding.weight[1], embeddings[two] * settings.media_index_scale)
        assert projector.index_embedding.weight.norm(dim=-1).min() > 10 * embeddings.norm(dim=-1).mean()
