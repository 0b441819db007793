"""How `mmmmodal serve` names a chat request's media and refuses those that cannot fit, before vLLM decodes them
(`serving/request_media.py`; the server itself is driven in test_vllm_server.py, in the vLLM job)."""

import base64
import io

import numpy as np
import pytest
import soundfile

from mmmmodal_hf.serving.request_media import inline_bytes, media_problem, request_media


def wav(seconds: float, rate: int = 16000) -> str:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(int(seconds * rate), dtype=np.float32), rate, format="WAV")
    return base64.b64encode(buffer.getvalue()).decode()


def part(kind: str, value: str) -> dict:
    if kind == "input_audio":
        return {"type": "input_audio", "input_audio": {"data": value, "format": "wav"}}
    return {"type": kind, kind: {"url": value}}


def test_media_are_counted_per_message_and_kind_from_1():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [part("image_url", "http://x/a.png"), {"type": "text", "text": "?"},
                                     part("input_audio", "AAAA"), part("image_url", "http://x/b.png")]},
        {"role": "assistant", "content": "Two."},
        {"role": "user", "content": [part("audio_url", "http://x/c.wav")]},
    ]  # fmt: skip
    assert [(name, kind) for name, kind, _ in request_media(messages)] == [
        ("message 2, image 1", "image"),
        ("message 2, audio 1", "audio"),
        ("message 2, image 2", "image"),
        ("message 4, audio 1", "audio"),
    ]
    assert request_media(messages)[1][2] == "data:audio/wav;base64,AAAA"  # the data URL vLLM makes of it
    assert request_media(None) == [] and request_media([{"role": "user", "content": "text"}]) == []


def test_base64_that_does_not_decode_is_named():
    assert inline_bytes("data:image/png;base64,aGk=") == b"hi"
    assert inline_bytes("http://x/a.png") is None
    with pytest.raises(ValueError, match="not valid base64"):
        inline_bytes("data:image/png;base64,iVBOR*")
    items = request_media([{"role": "user", "content": [part("image_url", "data:image/png;base64,#")]}])
    assert media_problem(items, None, 1024) == "message 1, image 1: not valid base64"


def test_a_clip_longer_than_the_context_is_named_with_what_it_needs(session_processor):
    """Read from the WAV header, before anything is decoded; the slot arithmetic is the processor's."""
    window = session_processor.feature_extractor.chunk_length
    short, long = wav(window), wav(30 * window)
    messages = [{"role": "user", "content": [part("input_audio", short), part("input_audio", long)]}]
    positions = session_processor.num_clip_slots(30 * window * 16000) + 3
    assert media_problem(request_media(messages), session_processor, positions) is None
    assert media_problem(request_media(messages), session_processor, positions - 1) == (
        f"message 1, audio 2: {30 * window:,} s of audio needs about {positions:,} positions, "
        f"more than the model's {positions - 1:,}"
    )
