"""Every kind of broken or odd input users send: a clear error naming sample and item, or the right result.

Each bad medium is placed second, in the second sample of a two-sample batch, so the error must
name `Sample 2, image 2` (or `audio 2`), counted from 1; with `skip_bad_samples=True` the first sample comes out
exactly as it does alone.
"""

import io
import struct
import zlib

import numpy as np
import pytest
import soundfile
import torch
from jinja2.exceptions import TemplateError
from PIL import Image

from mmmmodal_hf import MMMModalForConditionalGeneration

from tiny_parts import IMAGE_SLOTS, random_clip, random_image, tiny_config, tiny_text_config

# -- files ------------------------------------------------------------------------------------------


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` 1-bit pixels and holds almost no data: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


def wav_bytes(samples: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def exif_rotated_jpeg() -> bytes:
    """40x20 pixels stored, with EXIF orientation 6: a phone photo that must come out 20x40."""
    image = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (16, 16), colour) for colour in ("red", "blue", "green")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def saved(image: Image.Image, format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


GOOD_PNG = png_bytes(random_image(0))
GOOD_WAV = wav_bytes(random_clip(0))

BAD_IMAGES = {
    "corrupt bytes": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "not a readable image|corrupt"),
    "truncated bytes": (GOOD_PNG[: len(GOOD_PNG) // 2], "corrupt or truncated"),
    "decompression bomb (Pillow's limit)": (png_header_only(100_000, 100_000), "decompression bomb"),
    "decompression bomb (our limit)": (png_header_only(9_000, 9_000), r"81,000,000 pixels .* decompression bomb"),
    "not an image at all": (GOOD_WAV, "not a readable image"),
}

ODD_IMAGES = {
    # name: (bytes, expected RGB size, expected colour of pixel (0, 0) within tolerance)
    "CMYK JPEG": (saved(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"), (8, 8), (255, 0, 0)),
    "16-bit PNG": (saved(Image.fromarray(np.full((8, 8), 65535, np.uint16)), "PNG"), (8, 8), (255, 255, 255)),
    "1-bit PNG": (saved(Image.new("1", (8, 8), 1), "PNG"), (8, 8), (255, 255, 255)),
    "animated GIF (first frame)": (animated_gif(), (16, 16), (255, 0, 0)),
    "EXIF-rotated JPEG (upright)": (exif_rotated_jpeg(), (20, 40), (255, 0, 0)),
}

BAD_AUDIO = {
    "truncated WAV": (GOOD_WAV[: len(GOOD_WAV) // 2], "truncated"),
    "zero-length WAV": (wav_bytes(np.zeros(0, np.float32)), r"empty \(0 samples\)"),
    "NaN samples": (wav_bytes(np.array([0.1, np.nan, 0.2] * 100, np.float32), subtype="FLOAT"), "NaN or infinite"),
    "infinite samples": (wav_bytes(np.array([0.1, np.inf] * 100, np.float32), subtype="FLOAT"), "NaN or infinite"),
    "unsupported container (MP4)": (b"\x00\x00\x00\x18ftypmp42" + bytes(200), "not a readable audio file"),
    "an image behind an audio placeholder": (GOOD_PNG, "not a readable audio file"),
}


def with_bad_second_item(kind: str, bad) -> dict:
    """Two samples; the bad item is the second of the second sample."""
    if kind == "image":
        return {"text": ["<image> one", "<image> <image> two"], "images": [[GOOD_PNG], [GOOD_PNG, bad]]}
    return {"text": ["<audio> one", "<audio> <audio> two"], "audio": [[GOOD_WAV], [GOOD_WAV, bad]]}


# -- broken media: clear errors, and skipping keeps the rest ----------------------------------------


@pytest.mark.parametrize(
    "case",
    [("image", n, *v) for n, v in BAD_IMAGES.items()] + [("audio", n, *v) for n, v in BAD_AUDIO.items()],
    ids=lambda case: case[1],
)
def test_broken_media_error_names_sample_and_item_and_can_be_skipped(processor, case):
    kind, _, bad, message = case
    inputs = with_bad_second_item(kind, bad)
    with pytest.raises(ValueError, match=rf"Sample 2, {kind} 2 \(<\d+ bytes>\): .*({message})"):
        processor(**inputs)

    kept = processor(**inputs, skip_bad_samples=True, return_tensors="pt")
    alone = processor(**{key: value[:1] for key, value in inputs.items()}, return_tensors="pt")
    assert kept.kept_samples == [0]
    assert [s["sample"] for s in kept.skipped_samples] == [1]
    assert kept.skipped_samples[0]["error"].startswith(f"Sample 2, {kind} 2")
    assert set(kept) == set(alone)
    for key in alone:
        assert torch.equal(kept[key], alone[key]), key


@pytest.mark.parametrize("name", list(ODD_IMAGES))
def test_odd_images_load_right(processor, name):
    data, size, colour = ODD_IMAGES[name]
    from mmmmodal_hf import load_image

    image = load_image(data)
    assert image.mode == "RGB" and image.size == size
    assert np.allclose(image.getpixel((0, 0)), colour, atol=40), image.getpixel((0, 0))
    out = processor(text="<image>", images=data, return_tensors="pt")
    assert int((out["input_ids"] == processor.image_token_id).sum()) == IMAGE_SLOTS


def test_eight_channels_and_one_sample_audio(processor):
    eight = np.stack([random_clip(c, seconds=0.5) for c in range(8)], axis=1)
    out = processor(text="<audio> <audio>", audio=[wav_bytes(eight), wav_bytes(np.array([0.3], np.float32))])
    # 0.5 s -> 50 mel frames -> 25 encoder frames -> 9 slots; one sample -> 1 mel frame -> 1 slot
    assert int((np.asarray(out["input_ids"]) == processor.audio_token_id).sum()) == 9 + 1


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000, 96000])
def test_every_common_sampling_rate_resamples_to_the_same_length(processor, rate):
    clip = random_clip(rate, seconds=0.5, rate=rate)
    out = processor(text="<audio>", audio=wav_bytes(clip, rate=rate), return_tensors="pt")
    assert out["input_features_mask"].sum().item() == 50
    assert int((out["input_ids"] == processor.audio_token_id).sum()) == 9


# -- text and conversation errors ----------------------------------------------------------------------


def test_placeholder_and_media_count_mismatches(processor):
    with pytest.raises(ValueError, match=r"Sample 2 has 2 <image> placeholder\(s\) but 1 image\(s\) were given"):
        processor(text=["<image>", "<image> <image>"], images=[[GOOD_PNG], [GOOD_PNG]])
    with pytest.raises(ValueError, match=r"Sample 1 has 0 <audio> placeholder\(s\) but 1 audio\(s\) were given"):
        processor(text=["no audio here", "<audio>"], audio=[[GOOD_WAV], [GOOD_WAV]])
    with pytest.raises(ValueError, match=r"3 image\(s\) were given but the text holds only 2 <image>"):
        processor(text=["<image>", "<image>"], images=[GOOD_PNG] * 3)
    kept = processor(text=["<image>", "<image> <image>"], images=[[GOOD_PNG], [GOOD_PNG]], skip_bad_samples=True)
    assert kept.kept_samples == [0] and "2 <image> placeholder(s)" in kept.skipped_samples[0]["error"]


def test_empty_text_and_every_sample_bad(processor):
    with pytest.raises(ValueError, match="Sample 2: the text is empty"):
        processor(text=["fine", "  "])
    with pytest.raises(ValueError, match="Every sample of the batch is unusable"):
        processor(text=["", " "], skip_bad_samples=True)
    # Text that is no string is said to be so, before the media are matched to placeholders it cannot hold.
    for text, said in ((b"<image> hi", "MMMModalProcessor needs `text` (a string or a list of them) with one "
                        "<image>/<audio> placeholder per medium; got bytes."),
                       ([["<image> hi"]], "Sample 1: text must be a string; got list.")):  # fmt: skip
        with pytest.raises(ValueError) as refused:
            processor(text=text, images=[GOOD_PNG])
        assert str(refused.value) == said


@pytest.mark.parametrize(
    "messages, message",
    [
        (
            [
                {"role": "user", "content": "Look"},
                {"role": "assistant", "content": [{"type": "image", "image": GOOD_PNG}]},
            ],
            r"Message 2 \(assistant\) holds an image or audio",
        ),
        (
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "It is <audio> here"}],
            r"Message 2 \(assistant\) holds an image or audio",
        ),
        ([{"role": "narrator", "content": "hi"}], "Unknown role 'narrator'"),
        (
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": ""}],
            r"Message 2 \(user\) is empty",
        ),
        ([{"role": "user", "content": []}], r"Message 1 \(user\) is empty"),
        (  # the template kept the system message's text alone: its image went to the processor with no place
            [{"role": "system", "content": [{"type": "image", "image": GOOD_PNG}]}, {"role": "user", "content": "hi"}],
            r"Message 1 \(system\) holds an image, audio or video; media belong in user turns",
        ),
        (  # its tag would take the image's slots, the image's own tag left bare (vLLM: the wrong place, no error)
            [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Is <image> here?"}, {"type": "image", "image": GOOD_PNG}],
                }
            ],
            r"Message 1 \(user\) holds the tag <image> in its text; give each medium as an image, audio or video block",
        ),
        (
            [{"role": "user", "content": [{"type": "text", "text": "a </audio>"}]}],
            r"Message 1 \(user\) holds the tag </audio> in its text",
        ),
        (
            [{"role": "user", "content": "hi <image_slot>"}],
            r"Message 1 \(user\) holds <image_slot> tokens, which the processor writes",
        ),
    ],
    ids=[
        "media block in an answer",
        "placeholder in an answer",
        "unknown role",
        "empty text",
        "no blocks",
        "media in the system message",
        "a tag in a text block",
        "a closing tag in a text block",
        "a slot token",
    ],
)
def test_chat_errors(processor, messages, message):
    with pytest.raises(TemplateError, match=message):
        processor.apply_chat_template(messages, tokenize=True)


@pytest.mark.parametrize("tokenize", [True, False])
def test_a_conversation_of_the_wrong_shape_is_named(processor, tokenize):
    """What transformers would stop on with a bare KeyError, IndexError or TypeError, named by message and block."""
    shapes = {
        "A conversation must be a non-empty list of messages; got [].": [],
        "A conversation must be a non-empty list of messages; got {'role': 'user', 'content': 'hi'}.": {
            "role": "user", "content": "hi"},
        "Message 2: must be a dict with a 'role' and a 'content'; got {'content': 'hi'}.": [
            {"role": "system", "content": "Be brief."}, {"content": "hi"}],
        "Message 1: 'content' must be a string or a list of content blocks; got dict.": [
            {"role": "user", "content": {"type": "text", "text": "hi"}}],
        "Message 1: block 2 needs a 'type' (text, image, audio or video); got {'text': 'hi'}.": [
            {"role": "user", "content": [{"type": "image", "image": GOOD_PNG}, {"text": "hi"}]}],
    }  # fmt: skip
    for said, messages in shapes.items():
        with pytest.raises(ValueError) as refused:
            processor.apply_chat_template(messages, tokenize=tokenize)
        assert str(refused.value) == said
    batch = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": [{"text": "hi"}]}]]
    with pytest.raises(ValueError, match=r"^Conversation 2, message 1: block 1 needs a 'type'"):
        processor.apply_chat_template(batch, tokenize=tokenize)


def test_conversation_longer_than_the_context_fails_before_any_compute(session_processor):
    config = tiny_config(
        session_processor, text_config=tiny_text_config(len(session_processor.tokenizer), max_position_embeddings=48)
    )
    model = MMMModalForConditionalGeneration(config).eval()
    encoder_calls = []
    model.model.vision_tower.register_forward_hook(lambda *args: encoder_calls.append(1))
    inputs = session_processor(
        text=["<image> short", "<image> <image> <image> longer"],
        images=[[random_image(1)], [random_image(2), random_image(3), random_image(4)]],
        return_tensors="pt",
    )
    too_long = int(inputs["attention_mask"][1].sum())
    with pytest.raises(
        ValueError, match=rf"context of 48 positions \(sample 2: {too_long} positions, {too_long - 48} too"
    ):
        model(**inputs)
    assert encoder_calls == []  # refused before the vision tower ran
    with torch.no_grad():
        model(**session_processor(text="<image> short", images=random_image(1), return_tensors="pt"))
    assert encoder_calls == [1]


def test_truncation_that_cuts_into_media_is_named(processor):
    """The tokenizer's truncation would leave fewer slots than the model gets features (its error came later, in the
    model, naming no sample); text-only samples and media that fit truncate as the tokenizer does."""
    texts = ["[INST] <image> What is it? [/INST]", "[INST] A long question, " + "and more, " * 20 + "[/INST]"]
    images = [[GOOD_PNG], []]
    whole = processor(text=texts, images=images)
    slots = whole["input_ids"][0].count(processor.image_token_id)
    before = processor(text=texts[0], images=[GOOD_PNG])["input_ids"][0].index(processor.image_token_id)
    with pytest.raises(ValueError) as refused:
        processor(text=texts, images=images, truncation=True, max_length=slots)
    assert str(refused.value) == (
        f"Sample 1: truncation cut into its media ({slots - before} of its {slots} image slots are left); give a larger "
        "`max_length`, or leave `truncation` off."
    )
    fits = processor(text=texts, images=images, truncation=True, max_length=slots + 12)
    assert [len(ids) for ids in fits["input_ids"]] == [slots + 12] * 2 and fits["input_ids"][0].count(
        processor.image_token_id
    ) == slots
