"""The model's contract: cache, batching, text-only parity, bf16, and the published layout."""

import copy
from contextlib import nullcontext

import pytest
import torch
from transformers import LlamaForCausalLM, MistralConfig

from mmmmodal_hf import MMMModalConfig, MMMModalForConditionalGeneration
from mmmmodal_hf.modeling_mmmmodal import CACHE_NAME

from tiny_parts import CLIP_SLOTS, DEVICES, IMAGE_SLOTS, random_clip, random_image, two_turn_chat


def test_forward_fills_every_slot_once(model, session_processor):
    inputs = session_processor.apply_chat_template(
        two_turn_chat(), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert inputs["pixel_values"].shape[0] == 2 and inputs["input_features"].shape[0] == 2
    ids = inputs["input_ids"][0]
    assert int((ids == model.config.image_token_id).sum()) == 2 * IMAGE_SLOTS
    assert int((ids == model.config.audio_token_id).sum()) == 2 * CLIP_SLOTS
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits.shape == (1, ids.shape[0], model.config.text_config.vocab_size)
    assert out.image_hidden_states.shape == (2, IMAGE_SLOTS, model.config.text_config.hidden_size)
    assert out.audio_hidden_states.shape == (2 * CLIP_SLOTS, model.config.text_config.hidden_size)
    # Media change the logits: the slots really carry the features.
    other = dict(inputs, pixel_values=torch.flip(inputs["pixel_values"], dims=[0]))
    with torch.no_grad():
        assert not torch.allclose(model(**other).logits[0, -1], out.logits[0, -1])


def test_labels_give_a_loss(model, session_processor):
    inputs = session_processor(
        text=["<image> </image> Apa ini? Kucing."], images=[[random_image(0)]], return_tensors="pt"
    )
    labels = inputs["input_ids"].clone()
    labels[labels == model.config.image_token_id] = -100
    out = model(**inputs, labels=labels)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.model.image_projector.linear_1.weight.grad is not None
    model.zero_grad()


@pytest.mark.parametrize("model_fixture", ["model", "mixed_model"])  # mixed_model: the demo's
def test_greedy_generate_with_cache_equals_full_forward_each_step(model_fixture, session_processor, request):
    # With the previous token mixed in, each cached step is given the token before it.
    model = request.getfixturevalue(model_fixture)
    inputs = session_processor.apply_chat_template(
        two_turn_chat(), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    steps = 8
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=steps, do_sample=False, min_new_tokens=steps)
        ids = inputs["input_ids"]
        for _ in range(steps):
            logits = model(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                pixel_values=inputs["pixel_values"],
                input_features=inputs["input_features"],
                input_features_mask=inputs["input_features_mask"],
                use_cache=False,
            ).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + steps
    assert torch.equal(generated, ids)


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_kv_cache_is_taken_under_either_name(model, session_processor, name):
    """transformers 5.24 renamed `past_key_values` to `cache`: callers written for either side decode alike (the old
    name warns where the new one exists, as transformers' own models warn)."""
    old_name = name == "past_key_values" and CACHE_NAME == "cache"
    inputs = session_processor.apply_chat_template(
        two_turn_chat(), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        prefill = model(**inputs, use_cache=True)
        cache = getattr(prefill, CACHE_NAME)
        token = prefill.logits[:, -1:].argmax(-1)
        ids = torch.cat([inputs["input_ids"], token], dim=1)
        with pytest.warns(FutureWarning, match="`past_key_values` is deprecated") if old_name else nullcontext():
            step = model(input_ids=token, attention_mask=torch.ones_like(ids), use_cache=True, **{name: cache})
        media = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
        full = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, **media)
    assert getattr(step, CACHE_NAME).get_seq_length() == ids.shape[1]
    torch.testing.assert_close(step.logits[:, -1], full.logits[:, -1], rtol=1e-4, atol=1e-4)


def test_kv_cache_given_twice_is_refused(model, session_processor):
    inputs = session_processor.apply_chat_template(
        two_turn_chat(), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        first = getattr(model(**inputs, use_cache=True), CACHE_NAME)
        second = getattr(model(**inputs, use_cache=True), CACHE_NAME)
        with pytest.raises(ValueError, match="Pass the KV cache once"):
            model(input_ids=inputs["input_ids"][:, -1:], cache=first, past_key_values=second)


def test_encoders_run_only_at_prefill(model, session_processor):
    inputs = session_processor.apply_chat_template(
        two_turn_chat(), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    calls = {"vision": 0, "audio": 0}
    hooks = [
        model.model.vision_tower.register_forward_hook(lambda *_: calls.__setitem__("vision", calls["vision"] + 1)),
        model.model.audio_tower.register_forward_hook(lambda *_: calls.__setitem__("audio", calls["audio"] + 1)),
    ]
    try:
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == {"vision": 1, "audio": 1}


@pytest.mark.parametrize("model_fixture", ["model", "mixed_model"])
@pytest.mark.parametrize("device", DEVICES)
def test_left_padded_batch_matches_each_sample_alone(model_fixture, session_processor, device, request):
    model = request.getfixturevalue(model_fixture)
    model = copy.deepcopy(model).to(device) if device != "cpu" else model
    # Media counts differ per sample: (images, clips) = (0, 0), (1, 2), (3, 0), (0, 2).
    samples = [
        ("[INST] Hello, how are you today? [/INST]", [], []),
        (
            "[INST] <image> </image> <audio> </audio> <audio> </audio> Describe. [/INST]",
            [random_image(10)],
            [random_clip(11), random_clip(12, seconds=1.4)],
        ),
        (
            "[INST] <image><image> and <image></image> which is red? [/INST]",
            [random_image(13), random_image(14), random_image(15)],
            [],
        ),
        ("[INST] <audio> </audio> then <audio> [/INST]", [], [random_clip(16), random_clip(17)]),
    ]
    batch = session_processor(
        text=[s[0] for s in samples],
        images=[s[1] for s in samples],
        audio=[s[2] for s in samples],
        return_tensors="pt",
    ).to(device)
    assert batch["attention_mask"][:, 0].tolist().count(0) >= 1, "expected left padding in the batch"
    with torch.no_grad():
        batch_logits = model(**batch).logits[:, -1]
        batch_generated = model.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    new_tokens = batch_generated[:, batch["input_ids"].shape[1] :]
    for index, (text, images, clips) in enumerate(samples):
        alone = session_processor(text=text, images=images or None, audio=clips or None, return_tensors="pt")
        alone = alone.to(device)
        with torch.no_grad():
            alone_logits = model(**alone).logits[0, -1]
            alone_generated = model.generate(**alone, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        torch.testing.assert_close(batch_logits[index], alone_logits, atol=1e-4, rtol=1e-4)
        assert torch.equal(new_tokens[index], alone_generated[0, alone["input_ids"].shape[1] :]), f"sample {index}"


def test_text_only_logits_equal_the_bare_language_model(model, session_processor):
    language_model = LlamaForCausalLM(model.config.text_config).eval()
    language_model.model.load_state_dict(model.model.language_model.state_dict())
    language_model.lm_head.load_state_dict(model.lm_head.state_dict())
    inputs = session_processor(text="[INST] Selamat pagi! Apa khabar? [/INST]", return_tensors="pt")
    assert set(inputs) == {"input_ids", "attention_mask"}
    with torch.no_grad():
        ours = model(**inputs).logits
        bare = language_model(**inputs).logits
        ours_generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        bare_generated = language_model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert torch.equal(ours, bare)
    assert torch.equal(ours_generated, bare_generated)


def test_only_images_or_only_audio(model, session_processor):
    with torch.no_grad():
        only_image = session_processor(text="<image> What?", images=random_image(5), return_tensors="pt")
        assert "input_features" not in only_image
        assert torch.isfinite(model(**only_image).logits).all()
        only_audio = session_processor(text="<audio> What?", audio=random_clip(6), return_tensors="pt")
        assert "pixel_values" not in only_audio
        assert torch.isfinite(model(**only_audio).logits).all()


def test_slot_feature_mismatch_is_a_clear_error(model, session_processor):
    inputs = session_processor(
        text="<image> <image> two", images=[random_image(1), random_image(2)], return_tensors="pt"
    )
    with pytest.raises(ValueError, match=r"32 image slot tokens .* produced 16 features"):
        model(**dict(inputs, pixel_values=inputs["pixel_values"][:1]))


def test_a_frame_mask_of_other_windows_than_the_features_is_a_clear_error(model, session_processor):
    """As transformers' pipelines collate two conversations of two clips each: their `pad_collate_fn` keeps each
    conversation's first window of `input_features` and every row of `input_features_mask`. Found: an IndexError
    ("The shape of the mask [4, 16] at index 0 does not match the shape of the indexed tensor [2, 16, 64]")."""
    inputs = session_processor(text="<audio> <audio> dua", audio=[random_clip(1), random_clip(2)], return_tensors="pt")
    with pytest.raises(ValueError, match=r"^input_features holds 1 windows, input_features_mask 2 rows$"):
        model(**dict(inputs, input_features=inputs["input_features"][:1]))


def test_a_config_without_the_processors_token_ids_is_named(model, session_processor):
    """A config built in code with other slot ids than its processor's fails with the fix in its message."""
    config = model.config.__class__(**{**model.config.to_dict(), "image_token_id": 5})
    inputs = session_processor(text="<image> one", images=[random_image(1)], return_tensors="pt")
    with pytest.raises(ValueError, match=r"0 image slot tokens \(id 5\).*\*\*processor\.special_token_ids"):
        MMMModalForConditionalGeneration(config)(**inputs)


def test_bf16_forward_and_generate(model, session_processor):
    bf16 = MMMModalForConditionalGeneration(model.config).to(torch.bfloat16).eval()
    bf16.load_state_dict(model.state_dict())
    inputs = session_processor.apply_chat_template(
        two_turn_chat(), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        out = bf16(**inputs)
        generated = bf16.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits.float()).all()
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 4


def test_no_text_tower_or_decoder_weights(model):
    names = list(model.state_dict())
    assert any(name.startswith("model.vision_tower.") for name in names)
    assert any(name.startswith("model.audio_tower.") for name in names)
    assert not [n for n in names if "text_model" in n or "decoder" in n or "encoder.embed_tokens" in n]


@pytest.mark.parametrize(
    "text_config, hidden, audio_params, image_params",
    [
        ({"model_type": "llama"}, 2048, 67_112_960, 5_771_264),  # TinyLlama 1.1B (the default shapes)
        (
            MistralConfig(
                hidden_size=4096,
                intermediate_size=14336,
                num_hidden_layers=32,
                num_key_value_heads=8,
                vocab_size=32006,
            ),
            4096,
            142_614_528,
            19_931_136,
        ),
    ],
    ids=["tinyllama", "mistral"],
)
def test_published_projector_sizes(text_config, hidden, audio_params, image_params):
    config = MMMModalConfig(text_config=text_config if not isinstance(text_config, dict) else None)
    with torch.device("meta"):
        model = MMMModalForConditionalGeneration(config)
    assert model.config.text_config.hidden_size == hidden
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    # Conv1d(768 -> H, kernel 40) + Linear(H -> H); Linear(768 -> H) + Linear(H -> H), with biases.
    assert count(model.model.audio_projector) == 768 * hidden * 40 + hidden + hidden * hidden + hidden == audio_params
    assert count(model.model.image_projector) == 768 * hidden + hidden + hidden * hidden + hidden == image_params
    # The published projectors: about 67M / 143M (audio) and 5.8M / 20M (image).
    assert round(audio_params / 1e6) in (67, 143) and round(image_params / 1e6, 1) in (5.8, 19.9)
