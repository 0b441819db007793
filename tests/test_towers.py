"""Towers end at their feature layer: same features as the full towers, fewer weights, old checkpoints still load."""

import logging

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import SiglipVisionModel
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from mmmmodal_hf import MMMModalForConditionalGeneration
from mmmmodal_hf.tower_memo import RememberedTowers

from tiny_parts import random_clip, random_image, tiny_audio_config, tiny_config, tiny_model, tiny_vision_config


def full_towers_like(model):
    """Full SigLIP vision model and Whisper encoder (3 layers each, with final norms and head) sharing the model's weights."""
    torch.manual_seed(1)
    vision = SiglipVisionModel(model.config.vision_config).eval()
    audio = WhisperEncoder(model.config.audio_config).eval()
    vision.load_state_dict(model.model.vision_tower.state_dict(), strict=False)
    audio.load_state_dict(model.model.audio_tower.state_dict(), strict=False)
    return vision, audio


@pytest.mark.parametrize("vision_layer, audio_layer", [(-2, -2), (-1, -1), (1, 2), (0, 0), (-4, -3)])
def test_trimmed_towers_equal_the_full_towers_feature_layer(session_processor, vision_layer, audio_layer):
    config = tiny_config(
        session_processor,
        vision_config=tiny_vision_config(num_hidden_layers=3),
        audio_config=tiny_audio_config(encoder_layers=3),
        vision_feature_layer=vision_layer,
        audio_feature_layer=audio_layer,
    )
    torch.manual_seed(0)
    model = MMMModalForConditionalGeneration(config).eval()
    vision, audio = full_towers_like(model)
    inputs = session_processor(
        text="<image> <audio>", images=random_image(0), audio=random_clip(1), return_tensors="pt"
    )
    with torch.no_grad():
        full_image = vision(inputs["pixel_values"], output_hidden_states=True).hidden_states[vision_layer]
        full_audio = audio(inputs["input_features"], output_hidden_states=True).hidden_states[audio_layer]
        image = model.get_image_features(inputs["pixel_values"])
        assert torch.equal(image.last_hidden_state, full_image)
        assert torch.equal(image.pooler_output, model.model.image_projector(full_image))
        expected_audio = model.model.audio_projector(full_audio).reshape(-1, config.text_config.hidden_size)
        assert torch.equal(model.get_audio_features(inputs["input_features"]).pooler_output, expected_audio)
    # Only the layers up to the feature layer exist.
    assert len(model.model.vision_tower.encoder.layers) == (vision_layer % 4)
    assert len(model.model.audio_tower.layers) == (audio_layer % 4)


def test_published_layer_drops_last_layer_norm_and_head(session_processor, tmp_path):
    config = tiny_config(session_processor)  # feature layers -2 of 2-layer towers: one layer each
    model = MMMModalForConditionalGeneration(config)
    model.save_pretrained(tmp_path)
    keys = set(load_file(tmp_path / "model.safetensors"))
    vision_keys = {k for k in keys if k.startswith("model.vision_tower.")}
    audio_keys = {k for k in keys if k.startswith("model.audio_tower.")}
    assert vision_keys and audio_keys
    assert not any(".layers.1." in k or "post_layernorm" in k or ".head." in k for k in vision_keys)
    assert not any(".layers.1." in k or "audio_tower.layer_norm" in k for k in audio_keys)
    full_vision, full_audio = full_towers_like(model)
    saved = sum(p.numel() for p in model.model.vision_tower.parameters()) + sum(
        p.numel() for p in model.model.audio_tower.parameters()
    )
    full = sum(p.numel() for p in full_vision.parameters()) + sum(p.numel() for p in full_audio.parameters())
    assert saved < 0.7 * full


def test_checkpoint_with_full_towers_loads_with_a_notice(session_processor, tmp_path, caplog):
    """A folder saved before trimming (full towers) loads; the extra tensors are dropped and named once."""
    torch.manual_seed(0)
    model = MMMModalForConditionalGeneration(tiny_config(session_processor)).eval()
    model.save_pretrained(tmp_path)
    full_vision, full_audio = full_towers_like(model)
    tensors = load_file(tmp_path / "model.safetensors")
    for prefix, tower in (("model.vision_tower.", full_vision), ("model.audio_tower.", full_audio)):
        tensors.update(
            {prefix + k: v.contiguous() for k, v in tower.state_dict().items() if prefix + k not in tensors}
        )
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})

    with caplog.at_level(logging.WARNING):
        reloaded = MMMModalForConditionalGeneration.from_pretrained(tmp_path).eval()
    notices = [r.getMessage() for r in caplog.records if "never reach the features" in r.getMessage()]
    assert len(notices) == 1
    assert notices[0].endswith(
        "model.audio_tower.layer_norm, model.audio_tower.layers.1, model.vision_tower.encoder.layers.1, "
        "model.vision_tower.head, model.vision_tower.post_layernorm. Save the model again to store it without them."
    )
    assert not any("UNEXPECTED" in r.getMessage() for r in caplog.records)
    inputs = session_processor(
        text="<image> <audio> hi", images=random_image(0), audio=random_clip(1), return_tensors="pt"
    )
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, model(**inputs).logits)


def _count_tower_rows(model) -> dict[str, int]:
    """How many media rows each tower has run on, counted by forward hooks on the real towers."""
    rows = {"vision": 0, "audio": 0}
    # The towers' first layers: what runs when a tower really runs (a remembered medium never reaches them).
    for name, tower in (("vision", model.model.vision_tower.embeddings), ("audio", model.model.audio_tower.conv1)):
        tower.register_forward_hook(
            lambda module, args, output, name=name: rows.__setitem__(name, rows[name] + len(args[0]))
        )
    return rows


def remembered(model, towers, inputs):
    """The model's output with the towers' states as `MMMModalTrainer.compute_loss` adds them: remembered media skip
    the towers."""
    return model(**inputs, **towers.tower_states(inputs))


def test_remembered_tower_outputs_give_the_same_logits_and_run_each_medium_once(session_processor):
    model = tiny_model(session_processor).requires_grad_(False)
    rows = _count_tower_rows(model)
    both = session_processor(
        text="<image> <image> <audio>",
        images=[random_image(0), random_image(1)],
        audio=random_clip(2),
        return_tensors="pt",
    )
    with torch.no_grad():
        expected = model(**both).logits
        towers = RememberedTowers(model, max_media=8)
        memos = towers.memos
        rows.update(vision=0, audio=0)
        first = remembered(model, towers, both).logits
        assert rows == {"vision": 2, "audio": 1}
        second = remembered(model, towers, both).logits
        assert rows == {"vision": 2, "audio": 1}, "seen media must not reach the towers again"
        assert torch.allclose(first, expected, atol=1e-6) and torch.equal(first, second)
        # A new image beside a seen one: only the new one runs; the same image twice in a batch runs once.
        remembered(
            model,
            towers,
            session_processor(text="<image> <image>", images=[random_image(1), random_image(3)], return_tensors="pt"),
        )
        assert rows["vision"] == 3
        remembered(
            model,
            towers,
            session_processor(text="<image> <image>", images=[random_image(4), random_image(4)], return_tensors="pt"),
        )
        assert rows["vision"] == 4
        for memo in memos.values():  # forgotten: every medium runs again
            memo.outputs.clear()
        remembered(model, towers, both)
        assert rows == {"vision": 6, "audio": 2}


def test_remembered_tower_outputs_keep_the_most_recent_media(session_processor):
    model = tiny_model(session_processor).requires_grad_(False)
    rows = _count_tower_rows(model)
    towers = RememberedTowers(model, max_media=2)
    memos = towers.memos
    images = [session_processor(text="<image>", images=random_image(seed), return_tensors="pt") for seed in range(3)]
    with torch.no_grad():
        for inputs in images:
            remembered(model, towers, inputs)
        assert len(memos["vision"].outputs) == 2
        remembered(model, towers, images[2])  # kept: no new run
        assert rows["vision"] == 3
        remembered(model, towers, images[0])  # the oldest was dropped: it runs again
        assert rows["vision"] == 4


def test_towers_that_train_or_drop_out_are_not_remembered(session_processor):
    with pytest.raises(RuntimeError, match="the vision tower has trainable parameters"):
        RememberedTowers(tiny_model(session_processor), max_media=4)
    with pytest.raises(ValueError, match="the audio tower has dropout 0.1"):
        RememberedTowers(tiny_model(session_processor, audio_config=tiny_audio_config(dropout=0.1)), 4)
    model = tiny_model(session_processor).requires_grad_(False)
    with pytest.raises(ValueError, match="max_media must be at least 1"):
        RememberedTowers(model, max_media=0)
    towers = RememberedTowers(model, max_media=4)
    model.model.audio_tower.requires_grad_(True)  # unfrozen after the memo was made
    inputs = session_processor(text="<audio>", audio=random_clip(0), return_tensors="pt")
    with pytest.raises(RuntimeError, match="the audio tower has trainable parameters"):
        towers.tower_states(inputs)
