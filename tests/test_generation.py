"""`generate` as transformers' GenerationTesterMixin drives it (its module is not in transformers' sdist): greedy,
sampling, beam search, beam sampling, `num_return_sequences`, left padding, `inputs_embeds`, continuing from a cache
and assisted decoding, over prompts holding two images and a clip of three windows. Every copy that beam search or
`num_return_sequences` makes of a prompt sees that prompt's own images and clips, in order.

transformers repeats `pixel_values` and `input_features` row by row to make the copies (right for one medium per
prompt); here a prompt holds several images and a clip spans several windows, so the model repeats each prompt's
media as a group ([A, B] -> [A, B, A, B]).
"""

import pytest
import torch

from mmmmodal_hf.modeling_mmmmodal import CACHE_NAME

from tiny_parts import random_clip, random_image


@pytest.fixture(scope="module")
def prompts(session_processor):
    """Two prompts, left-padded: two images and a clip of three windows; one image and a clip of one window."""
    texts = [
        "[INST] <image> </image> <image> </image> <audio> </audio> Which is brighter? [/INST]",
        "[INST] <audio> </audio> <image> </image> Apa ini? [/INST]",
    ]
    images = [[random_image(1), random_image(2)], [random_image(3)]]
    audio = [[random_clip(4, seconds=2.5)], [random_clip(5)]]
    batch = session_processor(text=texts, images=images, audio=audio, return_tensors="pt")
    alone = [
        session_processor(text=[text], images=[image], audio=[clip], return_tensors="pt")
        for text, image, clip in zip(texts, images, audio)
    ]
    assert batch["pixel_values"].shape[0] == 3 and batch["input_features"].shape[0] == 4  # 3 + 1 windows
    return batch, alone


def last_logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits[:, -1]


@pytest.mark.parametrize(
    "settings",
    [
        {"num_beams": 2, "num_return_sequences": 2, "do_sample": False},
        {"num_beams": 3, "do_sample": True},
        {"num_return_sequences": 3, "do_sample": True},
    ],
    ids=["beam_search", "beam_sampling", "sampling_copies"],
)
def test_every_copy_of_a_prompt_sees_its_own_media(model, prompts, settings):
    batch, alone = prompts
    copies = max(settings.get("num_beams", 1), settings.get("num_return_sequences", 1))
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=2, output_logits=True, return_dict_in_generate=True, **settings)
    first_step = out.logits[0]  # the prefill's last position, one row per copy
    assert first_step.shape[0] == 2 * copies
    for prompt, inputs in enumerate(alone):
        expected = last_logits(model, inputs)[0]
        for copy in range(copies):
            torch.testing.assert_close(first_step[prompt * copies + copy], expected, atol=1e-4, rtol=1e-4)


def test_a_copy_answers_as_the_prompt_alone(model, prompts):
    """num_return_sequences with greedy-equivalent settings: each copy's tokens are the prompt's own greedy answer."""
    _, alone = prompts
    for inputs in alone:
        with torch.no_grad():
            single = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
            copies = model.generate(
                **inputs, max_new_tokens=5, min_new_tokens=5, do_sample=True, top_k=1, num_return_sequences=3
            )
        assert all(torch.equal(copy, single[0]) for copy in copies)


def greedy(model, inputs, **settings) -> torch.Tensor:
    """The new tokens of a greedy answer (8, none stopped early)."""
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False, **settings)
    return out[:, -8:]


def test_a_left_padded_batch_answers_as_each_prompt_alone(model, prompts):
    batch, alone = prompts
    together = greedy(model, batch)
    for row, inputs in enumerate(alone):
        assert together[row].tolist() == greedy(model, inputs)[0].tolist()


def test_generating_from_inputs_embeds_answers_as_from_input_ids(model, prompts):
    """The slots are found by their embedding when no ids are given, as in transformers' multimodal models."""
    _, alone = prompts
    inputs = alone[0]
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    media = {key: value for key, value in inputs.items() if key != "input_ids"}
    with torch.no_grad():
        from_embeds = model.generate(inputs_embeds=embeds, **media, max_new_tokens=8, min_new_tokens=8)
    assert from_embeds[0].tolist() == greedy(model, inputs)[0].tolist()


def test_continuing_from_a_cache_answers_as_from_scratch(model, prompts, session_processor):
    """A second turn reuses the first turn's KV cache (media and all): the answer is the one a fresh prefill gives."""
    _, alone = prompts
    inputs = alone[0]
    with torch.no_grad():
        first = model.generate(**inputs, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
        follow_up = session_processor.tokenizer(" [INST] Dan lagi? [/INST]", add_special_tokens=False)["input_ids"]
        ids = torch.cat([first.sequences, torch.tensor([follow_up])], dim=1)
        media = {key: value for key, value in inputs.items() if key not in ("input_ids", "attention_mask")}
        continued = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), **{CACHE_NAME: getattr(first, CACHE_NAME)}, **media,
            max_new_tokens=8, min_new_tokens=8, do_sample=False,
        )  # fmt: skip
        fresh = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), **media,
            max_new_tokens=8, min_new_tokens=8, do_sample=False,
        )  # fmt: skip
    assert continued[0, -8:].tolist() == fresh[0, -8:].tolist()


@pytest.mark.parametrize("assistance", [{"prompt_lookup_num_tokens": 3}, "assistant_model"])
def test_assisted_decoding_answers_as_greedy(model, prompts, assistance):
    """Assisted decoding proposes tokens and keeps those the model would have chosen: greedy's answer, exactly."""
    _, alone = prompts
    settings = {"assistant_model": model} if assistance == "assistant_model" else assistance
    for inputs in alone:
        assert greedy(model, inputs, **settings).tolist() == greedy(model, inputs).tolist()
