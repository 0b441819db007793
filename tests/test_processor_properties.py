"""Property-based: any interleaving of text, images and clips gives a valid batch or a documented error.

Valid means the model accepts it (its slot check passes: one slot per feature it produces), the
slot counts follow the documented rules, and the attention mask marks exactly each row's tokens.
"""

import io
import re

import numpy as np
import soundfile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mmmmodal_hf.configuration_mmmmodal import num_real_audio_slots

from tiny_parts import AUDIO_SLOTS_PER_WINDOW, IMAGE_SLOTS

TEXT_PIECES = ["hello", "Apa ini?", "ñ 漢字 🎧", " ", "", "<image_slot>", "</audio>", "</image>"]
DOCUMENTED = re.compile(r"^(Sample \d+|Every sample of the batch is unusable)")

images = st.builds(
    lambda width, height, mode, seed: ("image", width, height, mode, seed),
    st.integers(1, 70),
    st.integers(1, 70),
    st.sampled_from(["RGB", "L", "RGBA", "P", "1", "I;16", "CMYK"]),
    st.integers(0, 2**16),
)
clips = st.builds(
    lambda samples, rate, channels, poison: ("audio", samples, rate, channels, poison),
    st.one_of(st.just(0), st.just(1), st.integers(2, 40_000)),
    st.sampled_from([8000, 16000, 22050, 44100, 48000]),
    st.integers(1, 3),
    st.sampled_from([None] * 8 + ["nan"]),
)
texts = st.builds(lambda piece: ("text", piece), st.sampled_from(TEXT_PIECES))
samples = st.lists(st.one_of(texts, texts, images, clips), min_size=1, max_size=5)


def render_image(width, height, mode, seed) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    image = (
        image.convert(mode)
        if mode != "I;16"
        else Image.fromarray(rng.integers(0, 65535, (height, width), dtype=np.uint16))
    )
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF" if mode == "CMYK" else "PNG")
    return buffer.getvalue()


def render_clip(samples, rate, channels, poison) -> bytes:
    rng = np.random.default_rng(samples)
    waveform = (0.1 * rng.standard_normal((samples, channels))).astype(np.float32)
    if poison == "nan" and samples:
        waveform[samples // 2] = np.nan
    buffer = io.BytesIO()
    soundfile.write(buffer, waveform, rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def render_text(sample) -> str:
    return "".join(piece[1] if piece[0] == "text" else f" <{piece[0]}> " for piece in sample)


def expected_problem(sample) -> bool:
    """What the documentation says must be refused in this sample."""
    text = render_text(sample)
    unpaired = re.sub(r"<(image|audio)>(\s*</\1>)?", "", text)  # `<audio> </audio>` is one placeholder
    bad_text = not text.strip() or "<image_slot>" in text or "</audio>" in unpaired or "</image>" in unpaired
    bad_clip = any(piece[0] == "audio" and (piece[1] == 0 or piece[4] == "nan") for piece in sample)
    return bad_text or bad_clip


def expected_audio_slots(clip, processor) -> int:
    samples, rate = clip[1], clip[2]
    resampled = max(1, int(samples * 16000 / rate + 0.5))  # soxr rounds half up; at least one sample
    windows = max(1, -(-resampled // 16000))
    slots = 0
    for window in range(windows):
        real = min(16000, resampled - window * 16000)
        slots += num_real_audio_slots(max(1, -(-real // 160)), AUDIO_SLOTS_PER_WINDOW, 3)
    return slots


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(samples, min_size=1, max_size=3), skip=st.booleans())
def test_any_interleaving_gives_a_valid_batch_or_a_documented_error(session_processor, model, batch, skip):
    processor = session_processor
    text, media_images, media_audio = [], [], []
    for sample in batch:
        text.append(render_text(sample))
        media_images.append([render_image(*piece[1:]) for piece in sample if piece[0] == "image"])
        media_audio.append([render_clip(*piece[1:]) for piece in sample if piece[0] == "audio"])
    problems = [expected_problem(sample) for sample in batch]
    try:
        inputs = processor(
            text=text, images=media_images, audio=media_audio, return_tensors="pt", skip_bad_samples=skip
        )
    except ValueError as error:
        assert any(problems), f"unexpected error: {error}"
        assert DOCUMENTED.match(str(error)), str(error)
        return
    kept = inputs.kept_samples if skip else list(range(len(batch)))
    assert kept == [index for index, bad in enumerate(problems) if not bad]

    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    for row, index in enumerate(kept):
        sample = batch[index]
        image_count = sum(piece[0] == "image" for piece in sample)
        audio_slots = sum(expected_audio_slots(piece, processor) for piece in sample if piece[0] == "audio")
        assert int((ids[row] == processor.image_token_id).sum()) == image_count * IMAGE_SLOTS
        assert int((ids[row] == processor.audio_token_id).sum()) == audio_slots
        # Left padding: the mask is zeros then ones, and the ones cover exactly this row alone.
        alone = processor(text=text[index], images=media_images[index], audio=media_audio[index])
        length = len(alone["input_ids"][0])
        assert mask[row].tolist() == [0] * (ids.shape[1] - length) + [1] * length
        assert ids[row, -length:].tolist() == alone["input_ids"][0]
    with torch.no_grad():
        out = model(**inputs)  # the model's own check: one slot per feature it produced
    if "input_features" in inputs:
        assert out.audio_hidden_states.shape[0] == int((ids == processor.audio_token_id).sum())
