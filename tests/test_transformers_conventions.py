"""What transformers' common model and processor suites expect of every model in the library, held here in the
package's own tests: tuples where `return_dict=False`, the tensor-parallel plan, the context a RoPE-scaled language
model really has, the feature getters' outputs, slot counts asked with a per-call size."""

import pytest
import torch

from tiny_parts import random_clip, random_image


@pytest.fixture(scope="module")
def inputs(session_processor):
    return session_processor(
        text="[INST] <image> </image> <audio> </audio> Apa ini? [/INST]",
        images=[random_image(1)],
        audio=[random_clip(2, seconds=2.5)],
        return_tensors="pt",
    )


def test_tuples_come_back_where_return_dict_is_false(model, inputs):
    """Found by transformers' common model suite: `return_dict=False` (or the config's) crashed in `forward`."""
    with torch.no_grad():
        as_output = model(**inputs)
        as_tuple = model(**inputs, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], as_output.logits)
    model.config.return_dict = False
    try:
        with torch.no_grad():
            assert torch.equal(model(**inputs)[0], as_output.logits)
    finally:
        model.config.return_dict = True


def test_the_tensor_parallel_plan_covers_the_tied_head(model):
    """The input embedding is sharded by the language model's plan; the head tied to it is gathered, as Llama's."""
    assert type(model)._tp_plan == {"lm_head": "colwise_gather_output"}


def test_configured_rope_scaling_widens_the_context_guard(session_processor):
    """A 64-position LM with dynamic NTK scaling x4 takes 100 positions (refused before); 300 is still refused."""
    from tiny_parts import tiny_model, tiny_text_config

    text_config = tiny_text_config(len(session_processor.tokenizer), max_position_embeddings=64)
    model = tiny_model(session_processor, text_config=text_config)
    ids = torch.randint(5, 100, (1, 100))
    with pytest.raises(ValueError, match="context of 64 positions"):
        model(input_ids=ids)
    model.config.text_config.rope_parameters = {"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0}
    with torch.no_grad():
        assert model(input_ids=ids).logits.shape[1] == 100
    with pytest.raises(ValueError, match="context of 256 positions"):
        model(input_ids=torch.randint(5, 100, (1, 300)))


def test_slot_counts_follow_a_per_call_image_size(session_processor):
    """vLLM reserves slots with `_get_num_multimodal_tokens`: a per-call size must count as the call writes it."""
    size = {"height": 64, "width": 64}
    written = session_processor(
        text="<image>", images=[random_image(0)], images_kwargs={"size": size}, return_tensors="pt"
    )["input_ids"]
    slots = int((written == session_processor.image_token_id).sum())
    assert slots == 64
    for kwargs in ({"images_kwargs": {"size": size}}, {"size": size}):
        assert session_processor._get_num_multimodal_tokens(image_sizes=[(30, 40)], **kwargs).num_image_tokens == [64]
    assert session_processor._get_num_multimodal_tokens(image_sizes=[(30, 40)]).num_image_tokens == [16]


def test_nested_flat_and_saved_keywords_reach_the_sub_processors(session_processor, tokenizer_folder):
    """Found by the common suite: nested `text_kwargs` and flat image-processor keywords were dropped, and the
    tokenizer's saved defaults never merged; they are merged as every transformers processor merges them."""
    text = "[INST] <image> </image> Apa ini? [/INST]"
    call = dict(text=text, images=[random_image(1)], return_tensors="pt")
    plain = session_processor(**call)
    nested = session_processor(**call, text_kwargs={"max_length": 76, "padding": "max_length"})
    assert nested["input_ids"].shape[-1] == 76 and plain["input_ids"].shape[-1] < 76
    assert nested["input_ids"][0, -plain["input_ids"].shape[-1] :].tolist() == plain["input_ids"][0].tolist()  # left
    flat = session_processor(**call, do_rescale=True, rescale_factor=-1.0)
    assert plain["pixel_values"].min() >= -1.0 and flat["pixel_values"].mean() < -100.0  # -x, not x/255, normalised
    with pytest.raises(ValueError, match="passed two times"):
        session_processor(**call, text_kwargs={"padding": "do_not_pad"}, padding="max_length")
    from transformers import AutoTokenizer

    from mmmmodal_hf import MMMModalProcessor

    saved = AutoTokenizer.from_pretrained(tokenizer_folder, max_length=70, padding="max_length", padding_side="right")
    processor = MMMModalProcessor(session_processor.image_processor, session_processor.feature_extractor, saved)
    padded = processor(**call)["input_ids"]
    assert padded.shape[-1] == 70  # the tokenizer's saved padding and length
    assert padded[0, -1] != processor.tokenizer.pad_token_id  # but left: the processor pads for generation


def test_the_feature_getters_answer_return_dict_and_the_towers_outputs(model, inputs):
    """Found by the common suite: the getters ignored `return_dict`, `output_hidden_states` and `output_attentions`.
    (Attention weights come from eager attention, as in every transformers model.)"""
    import copy

    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    inner = eager.model
    for getter, args, layers in (
        (inner.get_image_features, (inputs["pixel_values"],), inner.vision_tower.config.num_hidden_layers),
        (inner.get_audio_features, (inputs["input_features"], inputs["input_features_mask"]), inner.audio_tower.config.encoder_layers),
    ):  # fmt: skip
        with torch.no_grad():
            plain = getter(*args)
            full = getter(*args, output_hidden_states=True, output_attentions=True)
            as_tuple = getter(*args, return_dict=False)
        assert plain.hidden_states is None and plain.attentions is None
        assert len(full.hidden_states) == layers + 1 and len(full.attentions) == layers
        assert torch.equal(full.hidden_states[-1], plain.last_hidden_state)
        assert torch.equal(full.pooler_output, plain.pooler_output)
        assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[1], plain.pooler_output)


def test_weights_missing_from_a_checkpoint_are_initialised_as_the_towers_would(model, tmp_path):
    """Found by the common suite: a converted checkpoint missing a tower key got N(0, 0.02) noise for Whisper's
    sinusoidal position table and another scheme than SigLIP's for its layers (transformers skipped the towers' own
    initialisation for a model it took for custom code)."""
    import math

    from safetensors.torch import load_file, save_file
    from transformers.models.whisper.modeling_whisper import sinusoids

    from mmmmodal_hf import MMMModalForConditionalGeneration

    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    positions, fc1 = "model.audio_tower.embed_positions.weight", "model.vision_tower.encoder.layers.0.mlp.fc1.weight"
    del weights[positions], weights[fc1]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = MMMModalForConditionalGeneration.from_pretrained(tmp_path)
    table = loaded.get_parameter(positions)
    torch.testing.assert_close(table, sinusoids(*table.shape))
    weight = loaded.get_parameter(fc1)
    bound = math.sqrt(6 / sum(weight.shape))  # SigLIP's MLPs: Xavier-uniform
    assert weight.abs().max() <= bound and weight.std() > bound / 2, (weight.std(), bound)
    # Everything the checkpoint held is as it was saved.
    state = loaded.state_dict()
    assert all(torch.equal(state[name], value) for name, value in weights.items())
