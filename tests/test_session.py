"""The chat session keeps its KV cache across turns and answers exactly as a from-scratch run does."""

import re

import numpy as np
import pytest
import torch

from mmmmodal_hf import MMMModalChatSession

from tiny_parts import package_patches, random_clip, random_image

GENERATE = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False}
TURNS = [
    ("Look at these two.", [random_image(1), random_image(2)], []),
    ("Now listen.", [], [random_clip(3)]),
    ("One more of each?", [random_image(4)], [random_clip(5, seconds=1.4)]),
    ("Which was first?", [], []),
]


def from_scratch(model, processor, messages) -> tuple[list[int], int]:
    """Greedy reply ids to the whole conversation run anew, and its prompt length."""
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        output = model.generate(**inputs, **GENERATE)
    return output[0, inputs["input_ids"].shape[1] :].tolist(), inputs["input_ids"].shape[1]


def count_encoded(model) -> dict:
    """How many images and audio windows the towers really encode (forward hooks on the real towers)."""
    counts = {"images": 0, "windows": 0}
    model.model.vision_tower.register_forward_hook(
        lambda module, args, output: counts.__setitem__("images", counts["images"] + args[0].shape[0])
    )
    model.model.audio_tower.register_forward_hook(
        lambda module, args, output: counts.__setitem__("windows", counts["windows"] + args[0].shape[0])
    )
    return counts


@pytest.mark.parametrize("model_fixture", ["model", "indexed_model", "mixed_model"])
def test_four_turns_equal_from_scratch_and_encode_each_medium_once(model_fixture, session_processor, request):
    # With ordinal embeddings, a cached turn's media must keep counting after the cached ones.
    model = request.getfixturevalue(model_fixture)
    session = MMMModalChatSession(model, session_processor, system="Answer briefly.", **GENERATE)
    counts = count_encoded(model)
    for number, (text, images, clips) in enumerate(TURNS):
        before = dict(counts)
        session.send(text, images=images, audio=clips)
        assert counts["images"] - before["images"] == len(images)  # earlier media are never encoded again
        assert counts["windows"] - before["windows"] == sum(1 if c.shape[0] <= 16000 else 2 for c in clips)
        expected, prompt_length = from_scratch(model, session_processor, session.messages[:-1])
        assert session.last_reply_ids == expected, f"turn {number}"
        if number > 0:  # only the new turn (and at most the re-tokenized last reply) is prefilled
            assert session.last_prefill_tokens < prompt_length - 40
    assert len(session.messages) == 1 + 2 * len(TURNS)


def test_a_chat_session_leaves_no_hooks_or_patches(model, session_processor):
    session = MMMModalChatSession(model, session_processor, **GENERATE)
    session.send(*TURNS[0][:2])
    "".join(session.stream(TURNS[1][0], audio=TURNS[1][2]))
    assert package_patches(model) == []


def test_undo_and_reset_restore_equality(model, session_processor):
    session = MMMModalChatSession(model, session_processor, **GENERATE)
    for text, images, clips in TURNS[:3]:
        session.send(text, images=images, audio=clips)
    cached_after_two = None
    session.undo()
    assert len(session.messages) == 4
    cached_after_two = session.cached_tokens
    session.send("A different third turn", images=[random_image(9)])
    expected, _ = from_scratch(model, session_processor, session.messages[:-1])
    assert session.last_reply_ids == expected
    assert session.last_prefill_tokens < 60 and cached_after_two > 60  # the first two turns stayed cached

    session.reset()
    assert session.messages == [] and session.cached_tokens == 0
    first = session.send(*TURNS[0][:1], images=TURNS[0][1])
    fresh = MMMModalChatSession(model, session_processor, **GENERATE)
    assert fresh.send(*TURNS[0][:1], images=TURNS[0][1]) == first
    with pytest.raises(ValueError, match="no turn to undo"):
        fresh.undo(), fresh.undo()


def test_an_empty_reply_does_not_break_the_next_turn(model, session_processor):
    eos = session_processor.tokenizer.eos_token_id
    session = MMMModalChatSession(model, session_processor, **GENERATE)
    # A bias on </s> makes the model answer nothing at all, as a weak model may.
    assert (
        session.send("Say nothing.", images=[random_image(1)], min_new_tokens=0, sequence_bias={(eos,): 100.0}) == ""
    )
    assert session.last_reply_ids == [eos]
    reply = session.send("And now?", audio=[random_clip(2)])
    assert session.last_reply_ids == from_scratch(model, session_processor, session.messages[:-1])[0]
    assert session.messages[1] == {"role": "assistant", "content": ""} and session.messages[3]["content"] == reply


def test_streaming_pieces_make_the_reply(model, session_processor):
    session = MMMModalChatSession(model, session_processor, **GENERATE)
    pieces = []
    reply = session.send("Hello", images=[random_image(0)], on_text=pieces.append)
    assert "".join(pieces).strip() == reply and reply


def test_context_limit_is_an_error_that_changes_nothing(model, session_processor):
    session = MMMModalChatSession(model, session_processor, context_length=80, **GENERATE)
    session.send("Hi", images=[random_image(0)])
    messages, cached = list(session.messages), session.cached_tokens
    with pytest.raises(ValueError, match=r"more than the model's context of 80"):
        session.send("Too much", images=[random_image(1), random_image(2), random_image(3)])
    assert session.messages == messages and session.cached_tokens == cached
    session.send("Short")  # the session goes on


def test_bad_media_leave_the_session_unchanged(model, session_processor, tmp_path):
    session = MMMModalChatSession(model, session_processor, **GENERATE)
    session.send("Hi", images=[random_image(0)])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(ValueError, match="image 1"):
        session.send("And this?", images=[str(broken)])
    assert len(session.messages) == 2
    # Text that is no string, or that holds a tag (the processor would count one more medium than was given).
    for text, said in ((None, "The turn's text must be a string; got NoneType."),
                       ("Look <image> here", "The turn's text holds the tag <image>: give media as images=, audio= or "
                        "videos= and the session places them before a turn's text."),
                       # the template's refusal, a ValueError as the session's others (it was jinja's TemplateError)
                       ("Look <image_slot> here", "Message 3 (user) holds <image_slot> tokens, which the processor "
                        "writes; give each medium as its own block")):  # fmt: skip
        with pytest.raises(ValueError) as refused:
            session.send(text, images=[random_image(1)])
        assert str(refused.value) == said
    assert len(session.messages) == 2
    for system, said in ((7, "The system message must be a string; got int."),
                         ("Read <audio> first.", "The system message holds the tag <audio>")):  # fmt: skip
        with pytest.raises(ValueError, match=f"^{re.escape(said)}"):
            MMMModalChatSession(model, session_processor, system=system)


@pytest.mark.parametrize(
    "options, said",
    [({"frames": 4}, "video_options takes num_frames, fps, max_frames, load_audio_from_video, pool_frames, "
                     "do_sample_frames; got 'frames'"),
     ({"num_frames": 0}, "num_frames must be a positive whole number; got 0"),
     ({"fps": 2, "max_frames": -1}, "max_frames must be a positive whole number; got -1")],
)  # fmt: skip
def test_video_options_are_checked_when_the_session_is_made(model, session_processor, options, said):
    """Found: a misspelt option was ignored (8 frames, without a word), a zero refused only at the first video."""
    with pytest.raises(ValueError, match=f"^{re.escape(said)}$"):
        MMMModalChatSession(model, session_processor, video_options=options)
    assert (
        MMMModalChatSession(model, session_processor, video_options={"fps": 0.5, "pool_frames": True}).messages == []
    )


def test_a_stream_yields_the_reply_and_one_left_early_drops_the_turn(model, session_processor):
    """One streaming mechanism (the web page reads it): pieces as generated, the turn kept only once complete."""
    session = MMMModalChatSession(model, session_processor, max_new_tokens=6, min_new_tokens=6)
    pieces = list(session.stream("Apa ini?", images=[random_image(1)]))
    assert "".join(pieces).strip() == session.messages[-1]["content"] and len(session.messages) == 2
    cached, messages = session.cached_tokens, list(session.messages)
    stream = session.stream("Dan ini?", audio=[random_clip(2)])
    next(stream)
    stream.close()  # the reader went away mid-reply
    assert session.messages == messages  # the turn is dropped; the cache keeps only what the history shares
    assert session._cache.get_seq_length() == session.cached_tokens <= cached
    expected = MMMModalChatSession(model, session_processor, max_new_tokens=6, min_new_tokens=6)
    expected.send("Apa ini?", images=[random_image(1)])
    assert session.send("Dan ini?", audio=[random_clip(2)]) == expected.send("Dan ini?", audio=[random_clip(2)])


def test_a_turn_reads_its_media_as_the_processor_does(model, session_processor):
    """Found: the session split a clip given as a list of floats into one clip per value, and refused images given as
    one 4-D array; the processor (and transformers) read them as one clip and as a list of images."""
    clip, images = random_clip(2), [random_image(1), random_image(3)]
    expected = MMMModalChatSession(model, session_processor, **GENERATE)
    expected.send("Dengar dan lihat.", images=images, audio=[clip])
    session = MMMModalChatSession(model, session_processor, **GENERATE)
    session.send("Dengar dan lihat.", images=np.stack([np.asarray(image) for image in images]), audio=clip.tolist())
    assert session.last_reply_ids == expected.last_reply_ids
    assert [block["type"] for block in session.messages[0]["content"]] == ["image", "image", "audio", "text"]
