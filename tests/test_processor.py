"""The processor's contract: placeholders, media layout, output names, padding, chat template."""

import numpy as np
import pytest
import torch
from transformers import SiglipImageProcessorPil, WhisperFeatureExtractor

from mmmmodal_hf import MMMModalProcessor
from mmmmodal_hf.processing_mmmmodal import EncodedMedium

from tiny_parts import AUDIO_SLOTS_PER_WINDOW, CLIP_SLOTS, IMAGE_SLOTS, random_clip, random_image


def media_spans(processor, ids):
    """(kind, number of slots) for each medium in a row of input ids, in order: the slots right after its opening tag."""
    spans, ids = [], [int(i) for i in ids]
    for position, token in enumerate(ids):
        for kind, start, slot in (
            ("image", processor.image_start_token_id, processor.image_token_id),
            ("audio", processor.audio_start_token_id, processor.audio_token_id),
        ):
            if token == start:
                count = 0
                while position + 1 + count < len(ids) and ids[position + 1 + count] == slot:
                    count += 1
                spans.append((kind, count))
    return spans


def test_adds_tags_and_slot_tokens_once(processor, tokenizer_folder):
    tokenizer = processor.tokenizer
    assert len(tokenizer) == 32006  # 32000 Mistral pieces + 4 tags + 2 slot tokens
    assert [tokenizer.convert_ids_to_tokens(i) for i in range(32000, 32006)] == [
        "<image>",
        "</image>",
        "<audio>",
        "</audio>",
        "<image_slot>",
        "<audio_slot>",
    ]
    # As in transformers' processors: `image_token` is what text holds, `image_token_id` what fills the model's slots.
    assert (processor.image_token, processor.audio_token) == ("<image>", "<audio>")
    assert (processor.image_token_id, processor.audio_token_id) == (32004, 32005)
    again = MMMModalProcessor(processor.image_processor, processor.feature_extractor, tokenizer)
    assert len(again.tokenizer) == 32006


@pytest.mark.parametrize("placeholder", ["<image>", "<image></image>", "<image> </image>", "<image>\n</image>"])
def test_each_image_placeholder_form_means_one_image(processor, placeholder):
    out = processor(text=f"Look: {placeholder} ok", images=[random_image(0)])
    assert media_spans(processor, out["input_ids"][0]) == [("image", IMAGE_SLOTS)]
    # The slots go right after the opening tag, and the text around them is tokenized as the tokenizer does
    # it alone: the published layout, for every form.
    slots = [processor.image_token_id] * IMAGE_SLOTS
    written = processor.tokenizer(f"Look: {placeholder} ok")["input_ids"]
    tag = written.index(processor.image_start_token_id)
    assert out["input_ids"][0] == written[: tag + 1] + slots + written[tag + 1 :]


@pytest.mark.parametrize("keyword", ["audio", "audios"])
def test_audio_and_audios_keywords(processor, keyword):
    out = processor(text="<audio> </audio> and <audio>", **{keyword: [random_clip(0), random_clip(1)]})
    assert media_spans(processor, out["input_ids"][0]) == [("audio", CLIP_SLOTS)] * 2
    assert out["input_features"].shape == (2, 80, 100)
    assert out["input_features_mask"].shape == (2, 100)


def test_a_list_of_samples_is_one_clip_as_transformers_reads_audio(processor):
    """transformers (`make_list_of_audio`) reads a list of floats as one clip's samples (JSON gives them so)."""
    clips = [random_clip(0), random_clip(1)]
    expected = processor(text=["<audio> a", "<audio> b"], audio=clips, sampling_rate=16000)
    for audio in ([clip.tolist() for clip in clips], [[clips[0].tolist()], [clips[1].tolist()]]):
        inputs = processor(text=["<audio> a", "<audio> b"], audio=audio, sampling_rate=16000)
        assert inputs["input_ids"] == expected["input_ids"]
        assert np.array_equal(inputs["input_features"], expected["input_features"])
    alone = processor(text="<audio> a", audio=clips[0].tolist(), sampling_rate=16000)
    assert alone["input_ids"] == expected["input_ids"][:1]


def test_a_4d_array_is_a_batch_of_images_as_transformers_reads_images(processor):
    arrays = np.stack([np.asarray(random_image(seed)) for seed in range(3)])
    texts = ["<image> <image> a", "<image> b"]
    expected = processor(text=texts, images=[[arrays[0], arrays[1]], [arrays[2]]])
    for images in (
        arrays,
        torch.from_numpy(arrays),
        [arrays[:2], arrays[2:]],
        [torch.from_numpy(arrays[:2]), [arrays[2]]],
    ):
        inputs = processor(text=texts, images=images)
        assert inputs["input_ids"] == expected["input_ids"]
        assert np.array_equal(inputs["pixel_values"], expected["pixel_values"])


def test_media_per_sample_or_flat_give_the_same_batch(processor):
    texts = ["<image> <audio> first", "second <image><image>", "third"]
    images = [random_image(1), random_image(2), random_image(3)]
    clips = [random_clip(4)]
    nested = processor(
        text=texts, images=[[images[0]], images[1:], []], audio=[[clips[0]], [], []], return_tensors="pt"
    )
    flat = processor(text=texts, images=images, audio=clips, return_tensors="pt")
    assert set(nested) == {"input_ids", "attention_mask", "pixel_values", "input_features", "input_features_mask"}
    for key in nested:
        assert torch.equal(nested[key], flat[key]), key
    spans = [
        media_spans(processor, row[mask.bool()]) for row, mask in zip(nested["input_ids"], nested["attention_mask"])
    ]
    assert spans == [[("image", IMAGE_SLOTS), ("audio", CLIP_SLOTS)], [("image", IMAGE_SLOTS)] * 2, []]


def test_batches_pad_on_the_left_by_default_and_right_on_request(processor):
    left = processor(text=["short", "a much longer sentence here"], return_tensors="pt")
    assert left["attention_mask"][0, 0] == 0 and left["attention_mask"][0, -1] == 1
    assert left["input_ids"][0, 0] == processor.tokenizer.pad_token_id
    right = processor(text=["short", "a much longer sentence here"], padding_side="right", return_tensors="pt")
    assert right["attention_mask"][0, 0] == 1 and right["attention_mask"][0, -1] == 0


def test_return_attention_mask_false_leaves_the_mask_out(processor):
    """The tokenizer's own keyword, as LLaVA's processor passes it on. Found: a KeyError, the processor reading the
    mask it had not asked for (the video fit check counts each sample's tokens by it)."""
    frames = [np.full((24, 32, 3), 200, np.uint8)] * 2
    given = {"text": ["<image> Apa?", "<video> <audio> Dan ini pula?"], "images": [random_image(1)],
             "videos": [frames], "audio": [random_clip(2)], "num_frames": 2}  # fmt: skip
    expected = processor(**given, return_tensors="pt")
    inputs = processor(**given, return_tensors="pt", return_attention_mask=False)
    assert "attention_mask" not in inputs and torch.equal(inputs["input_ids"], expected["input_ids"])
    assert torch.equal(inputs["pixel_values"], expected["pixel_values"])


def test_slots_follow_the_opening_tag_and_text_survives(processor):
    out = processor(text="Apa warna <image> </image> ini?", images=random_image(0))
    ids = out["input_ids"][0]
    assert ids[0] == processor.tokenizer.bos_token_id
    start = ids.index(processor.image_start_token_id)
    assert ids[start + 1 : start + 1 + IMAGE_SLOTS] == [processor.image_token_id] * IMAGE_SLOTS
    # As published: `<image>`, slots, the lone `▁` the space between the tags is, `</image>`.
    after = processor.tokenizer.convert_ids_to_tokens(ids[start + 1 + IMAGE_SLOTS : start + 3 + IMAGE_SLOTS])
    assert after == ["▁", "</image>"]
    assert processor.decode(ids, skip_special_tokens=True) == "Apa warna   ini?"  # the text, tags left out
    assert processor.batch_decode([ids], skip_special_tokens=True) == ["Apa warna   ini?"]


def test_long_audio_is_chunked_into_consecutive_windows(processor):
    clip = random_clip(0, seconds=2.5)  # 1 s windows: 3 windows
    out = processor(text="<audio>", audio=clip, return_tensors="pt")
    assert out["input_features"].shape[0] == 3
    # Two full windows, then 0.5 s: 50 mel frames -> 25 encoder frames -> ceil(25 / 3) = 9 slots.
    assert media_spans(processor, out["input_ids"][0].tolist()) == [("audio", 2 * AUDIO_SLOTS_PER_WINDOW + 9)]
    # The last window is half real audio: its mask says so.
    assert out["input_features_mask"][2].sum() == 50 and out["input_features_mask"][0].sum() == 100


def test_long_audio_policies(processor, tokenizer_folder):
    clip = random_clip(0, seconds=2.5)
    truncating = MMMModalProcessor(
        processor.image_processor,
        processor.feature_extractor,
        processor.tokenizer,
        patch_size=8,
        audio_conv_kernel=4,
        audio_conv_stride=3,
        long_audio="truncate",
    )
    assert truncating(text="<audio>", audio=clip)["input_features"].shape[0] == 1
    strict = MMMModalProcessor(
        processor.image_processor,
        processor.feature_extractor,
        processor.tokenizer,
        patch_size=8,
        audio_conv_kernel=4,
        audio_conv_stride=3,
        long_audio="error",
    )
    with pytest.raises(ValueError, match=r"Sample 1, audio 1 .* lasts 2.5 s"):
        strict(text="<audio>", audio=clip)
    with pytest.raises(ValueError, match="long_audio must be one of"):
        MMMModalProcessor(
            processor.image_processor, processor.feature_extractor, processor.tokenizer, long_audio="cut"
        )


def test_published_sizes_give_576_and_487_slots(processor):
    full = MMMModalProcessor(
        SiglipImageProcessorPil(size={"height": 384, "width": 384}),
        WhisperFeatureExtractor(feature_size=80, chunk_length=30),
        processor.tokenizer,
    )
    assert (full.patch_size, full.audio_conv_kernel, full.audio_conv_stride) == (16, 40, 3)
    out = full(
        text="<image> </image><audio> </audio>",
        images=random_image(0, size=(500, 300)),
        audio=random_clip(1, seconds=30.0),
    )
    assert out["pixel_values"].shape == (1, 3, 384, 384)
    assert out["input_features"].shape == (1, 80, 3000)
    assert media_spans(full, out["input_ids"][0]) == [("image", 576), ("audio", 487)]


def test_chat_template_is_mistral_instruct_with_optional_system(processor):
    chat = [
        {"role": "system", "content": "Jawab dalam Bahasa Melayu."},
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Beza?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Warna."}]},
        {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Dan ini?"}]},
    ]
    prompt = processor.apply_chat_template(chat, add_generation_prompt=True)
    assert prompt == (
        "<s>[INST] Jawab dalam Bahasa Melayu.\n\n<image> </image>\n<image> </image>\nBeza? [/INST]Warna.</s>"
        "[INST] <audio> </audio>\nDan ini? [/INST]"
    )
    plain = processor.apply_chat_template([{"role": "user", "content": "Hai"}], add_generation_prompt=True)
    assert plain == "<s>[INST] Hai [/INST]"


def test_chat_template_tokenizes_media_from_every_turn(processor, tmp_path):
    random_image(0).save(tmp_path / "a.png")
    chat = [
        {
            "role": "user",
            "content": [
                {"type": "image", "path": str(tmp_path / "a.png")},
                {"type": "audio", "audio": random_clip(1)},
                {"type": "text", "text": "?"},
            ],
        },
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "image", "image": random_image(2)}, {"type": "text", "text": "?"}]},
    ]
    out = processor.apply_chat_template(
        chat, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert out["pixel_values"].shape[0] == 2 and out["input_features"].shape[0] == 1
    assert media_spans(processor, out["input_ids"][0].tolist()) == [
        ("image", IMAGE_SLOTS),
        ("audio", CLIP_SLOTS),
        ("image", IMAGE_SLOTS),
    ]
    assert (out["input_ids"][0] == processor.tokenizer.bos_token_id).sum() == 1, "BOS must not be doubled"


def test_published_text_with_in_text_media_blocks_and_encoded_media(processor):
    """Tags written in the text (the published rows) with their media as blocks marked in_text: the template renders
    the text alone, the processor fills the tags in order; an EncodedMedium gets its slots and no features."""
    text = "<image> </image> <audio> </audio> Apa ini?"
    image, clip = random_image(3), random_clip(4)
    chat = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": text},
                {"type": "image", "image": image, "in_text": True},
                {"type": "audio", "audio": clip, "in_text": True},
            ],
        }
    ]
    assert processor.apply_chat_template(chat) == processor.apply_chat_template([{"role": "user", "content": text}])
    out = processor.apply_chat_template(chat, tokenize=True, return_dict=True, return_tensors="np")
    direct = processor(text=processor.apply_chat_template(chat), images=[image], audio=[clip], return_tensors="np")
    assert out["input_ids"].tolist() == direct["input_ids"].tolist()
    np.testing.assert_array_equal(out["pixel_values"], direct["pixel_values"])
    np.testing.assert_array_equal(out["input_features"], direct["input_features"])
    chat[0]["content"][1]["image"] = EncodedMedium(IMAGE_SLOTS)
    encoded = processor.apply_chat_template(chat, tokenize=True, return_dict=True, return_tensors="np")
    assert encoded["input_ids"].tolist() == direct["input_ids"].tolist() and "pixel_values" not in encoded
    assert encoded["input_features"].shape == direct["input_features"].shape


def test_chat_template_batch_of_conversations(processor):
    chats = [
        [{"role": "user", "content": [{"type": "image", "image": random_image(0)}, {"type": "text", "text": "a"}]}],
        [
            {
                "role": "user",
                "content": [
                    {"type": "audio", "audio": random_clip(1)},
                    {"type": "audio", "audio": random_clip(2)},
                    {"type": "text", "text": "b"},
                ],
            }
        ],
    ]
    out = processor.apply_chat_template(
        chats, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert out["input_ids"].shape[0] == 2
    rows = [row[mask.bool()].tolist() for row, mask in zip(out["input_ids"], out["attention_mask"])]
    assert [media_spans(processor, row) for row in rows] == [[("image", IMAGE_SLOTS)], [("audio", CLIP_SLOTS)] * 2]


def test_chat_template_takes_every_source_form_and_leaves_the_conversation_as_it_was(processor, tmp_path):
    """Paths, URLs' local twin (`url` holding a path), base64 (plain and as a data URL) all reach `__call__`,
    which loads them itself; the user's messages are not changed, and a block without a source is named."""
    import base64
    import copy
    import io

    import soundfile

    random_image(0).save(tmp_path / "a.png")
    png = io.BytesIO()
    random_image(1).save(png, format="PNG")
    soundfile.write(tmp_path / "c.wav", random_clip(2), 16000)
    encoded = base64.b64encode(png.getvalue()).decode()
    chat = [
        {
            "role": "user",
            "content": [
                {"type": "image", "url": str(tmp_path / "a.png")},
                {"type": "image", "base64": encoded},
                {"type": "image", "base64": "data:image/png;base64," + encoded},
                {"type": "audio", "path": str(tmp_path / "c.wav")},
                {"type": "audio", "base64": base64.b64encode((tmp_path / "c.wav").read_bytes()).decode()},
                {"type": "text", "text": "?"},
            ],
        }
    ]
    given = copy.deepcopy(chat)
    out = processor.apply_chat_template(chat, tokenize=True, return_dict=True, return_tensors="pt")
    assert chat == given
    assert out["pixel_values"].shape[0] == 3 and out["input_features"].shape[0] == 2
    assert torch.equal(out["pixel_values"][1], out["pixel_values"][2])
    assert torch.equal(out["input_features"][0], out["input_features"][1])
    with pytest.raises(ValueError, match=r"An audio block needs one of 'audio', 'path', 'url' or 'base64'"):
        processor.apply_chat_template([{"role": "user", "content": [{"type": "audio"}]}], tokenize=True)


def test_assistant_mask_covers_only_answers(processor):
    chat = [
        {"role": "user", "content": [{"type": "image", "image": random_image(0)}, {"type": "text", "text": "Apa?"}]},
        {"role": "assistant", "content": "Bulatan merah."},
        {"role": "user", "content": "Lagi?"},
        {"role": "assistant", "content": "Tiada."},
    ]
    out = processor.apply_chat_template(chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"][0], out["assistant_masks"][0]
    answer = processor.tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assert answer.replace(" ", "") == "Bulatanmerah.</s>Tiada.</s>"
    assert not any(m for i, m in zip(ids, mask) if i in (processor.image_token_id, processor.image_start_token_id))


def test_template_rejects_unknown_roles(processor):
    with pytest.raises(Exception, match="Unknown role 'tool'"):
        processor.apply_chat_template([{"role": "tool", "content": "x"}])


def test_numpy_outputs_without_return_tensors(processor):
    out = processor(text=["<image>", "x"], images=[[random_image(0)], []])
    assert isinstance(out["input_ids"], list) and isinstance(out["pixel_values"], np.ndarray)


@pytest.mark.parametrize("long_audio", ["chunk", "truncate"])
def test_slot_counts_asked_before_processing_are_the_slots_written(tokenizer_folder, long_audio):
    """`_get_num_multimodal_tokens`, which serving engines ask before they process a medium, agrees with `__call__`."""
    from tiny_parts import tiny_processor

    processor = tiny_processor(tokenizer_folder)
    processor.long_audio = long_audio
    for seconds in (0.005, 0.6, 1.0, 1.0001, 2.5):
        clip = random_clip(0, seconds)
        written = media_spans(processor, processor(text="<audio>", audio=clip)["input_ids"][0])[0][1]
        assert processor._get_num_multimodal_tokens(audio_lengths=[len(clip)]).num_audio_tokens == [written], seconds
    counts = processor._get_num_multimodal_tokens(image_sizes=[(30, 40), (500, 20)])
    assert counts.num_image_tokens == [IMAGE_SLOTS, IMAGE_SLOTS] and counts.num_image_patches == [1, 1]


def test_replacement_offsets_name_each_placeholder_and_what_it_became(processor):
    text = "Lihat <image> </image> dan dengar <audio>"
    out = processor(text=text, images=random_image(0), audio=random_clip(0), return_text_replacement_offsets=True)
    image, audio = out["text_replacement_offsets"][0]
    assert (image["type"], image["text"], text[slice(*image["span"])]) == ("image", "<image>", "<image>")
    assert image["replacement"] == "<image>" + "<image_slot>" * IMAGE_SLOTS
    assert audio["replacement"] == "<audio>" + "<audio_slot>" * CLIP_SLOTS
    for entry in (image, audio):
        assert entry["new_span"][1] - entry["new_span"][0] == len(entry["replacement"])


def test_mm_token_type_ids_mark_each_slot_by_its_medium_when_asked(processor):
    """transformers' `return_mm_token_type_ids`: 1 at an image's (or a video frame's) slots, 3 at audio's, 0 elsewhere,
    row by row as `input_ids` (it was taken and nothing came of it)."""
    texts, media = ["Lihat <image> dan dengar <audio>", "Hai"], {"images": [[random_image(0)], []]}
    out = processor(text=texts, audio=[[random_clip(0)], []], return_mm_token_type_ids=True, **media)
    ids, kinds = np.array(out["input_ids"]), np.array(out["mm_token_type_ids"])
    expected = np.where(ids == processor.image_token_id, 1, np.where(ids == processor.audio_token_id, 3, 0))
    assert kinds.shape == ids.shape and (kinds == expected).all()
    assert (kinds[0] == 1).sum() == IMAGE_SLOTS and (kinds[0] == 3).sum() == CLIP_SLOTS and not kinds[1].any()
    assert "mm_token_type_ids" not in processor(text=texts[1])


def test_the_template_writes_the_placeholders_the_processor_reads(processor):
    """The tag syntax is defined once (`MEDIA_PLACEHOLDERS`, `PLACEHOLDER_RE`); the Jinja template, which cannot
    import it, is held to it here."""
    from mmmmodal_hf.processing_mmmmodal import MEDIA_PLACEHOLDERS, placeholder_kinds

    blocks = [{"type": "image"}, {"type": "audio"}, {"type": "image"}, {"type": "text", "text": "Apa ini?"}]
    rendered = processor.apply_chat_template([{"role": "user", "content": blocks}], tokenize=False)
    assert placeholder_kinds(rendered) == ["image", "audio", "image"]
    assert rendered.count(MEDIA_PLACEHOLDERS["image"]) == 2 and rendered.count(MEDIA_PLACEHOLDERS["audio"]) == 1
