"""A chat request's media named as users count them (`message 2, image 1`), and the ones that cannot fit refused
before vLLM decodes anything.

vLLM decodes a data URL before any media connector sees it, so a corrupt one was answered `Non-base64 digit found`,
and a clip too long for the context `Input length (9614) exceeds model's maximum context length (1024).` after a
second of decoding, neither saying which item. `NamedMediaMiddleware`, an ASGI middleware (`mmmmodal serve` adds
it; `vllm serve ... --middleware mmmmodal_hf.serving.request_media.NamedMediaMiddleware` does the same), reads a
chat request first: inline media whose base64 does not decode, and clips whose header says they need more positions
than the context holds, get a 400 naming the message, the kind and the item, counted from 1. It leaves each item's
name in `MEDIA_NAMES` for the media connector (`vllm_media`), which names what it refuses later the same way.
"""

import base64
import binascii
import io
import json
import math
from contextvars import ContextVar

import soundfile

CHAT_PATH = "/chat/completions"
AUDIO_TAG_POSITIONS = 3  # `<audio>`, and after the slots `▁</audio>` (two pieces with the published tokenizers)

# The media of the request being served: each item's URL (an `input_audio` as the data URL vLLM makes of it) -> its
# name, `message 1, image 2`. Set for the duration of one request.
MEDIA_NAMES: ContextVar[dict[str, str] | None] = ContextVar("mmmmodal_media_names", default=None)


def request_media(messages) -> list[tuple[str, str, str]]:
    """(name, kind, url) of each image, audio and video part of OpenAI chat `messages`, in order; items counted per
    message and kind from 1, messages from 1, as the request lists them."""
    items = []
    for number, message in enumerate(messages if isinstance(messages, list) else [], start=1):
        content = message.get("content") if isinstance(message, dict) else None
        counts = {"image": 0, "audio": 0, "video": 0}
        for part in content if isinstance(content, list) else []:
            kind, url = _media_part(part)
            if kind is not None:
                counts[kind] += 1
                items.append((f"message {number}, {kind} {counts[kind]}", kind, url))
    return items


def _media_part(part) -> tuple[str | None, str | None]:
    if not isinstance(part, dict):
        return None, None
    kind = part.get("type")
    if kind in ("image_url", "audio_url", "video_url"):
        value = part.get(kind)
        url = value.get("url") if isinstance(value, dict) else value
        return kind.removesuffix("_url"), url if isinstance(url, str) else None
    if kind == "input_audio" and isinstance(part.get("input_audio"), dict):
        audio = part["input_audio"]
        return "audio", f"data:audio/{audio.get('format', '')};base64,{audio.get('data', '')}"  # as vLLM builds it
    return None, None


def inline_bytes(url: str | None) -> bytes | None:
    """The bytes of a base64 data URL (None for any other URL); ValueError where its base64 does not decode."""
    if not url or not url.startswith("data:"):
        return None
    header, _, data = url.partition(",")
    if not header.endswith(";base64"):
        return None
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None


def clip_positions(data: bytes, processor) -> tuple[float, int] | None:
    """(seconds, positions) a clip takes, read from its header without decoding it; None where the header cannot
    be read here (the connector's decoding then says what is wrong)."""
    try:
        info = soundfile.info(io.BytesIO(data))
    except RuntimeError:  # libsndfile's errors: a format it does not know, a header it cannot read
        return None
    if info.samplerate <= 0:
        return None
    seconds = info.frames / info.samplerate
    samples = math.ceil(seconds * processor.feature_extractor.sampling_rate)
    return seconds, processor.num_clip_slots(max(samples, 1)) + AUDIO_TAG_POSITIONS


def media_problem(items, processor, context: int | None) -> str | None:
    """The first item that cannot be used, named, with why; None where every one may go on to vLLM."""
    for name, kind, url in items:
        try:
            data = inline_bytes(url)
        except ValueError as error:
            return f"{name}: {error}"
        if kind != "audio" or data is None or context is None or not hasattr(processor, "num_clip_slots"):
            continue
        measured = clip_positions(data, processor)
        if measured is not None and measured[1] > context:
            seconds, positions = measured
            return (
                f"{name}: {seconds:,.0f} s of audio needs about {positions:,} positions, more than the "
                f"model's {context:,}"
            )
    return None


def _error_body(message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "BadRequestError", "param": None, "code": 400}}).encode()


class NamedMediaMiddleware:
    """ASGI middleware for vLLM's OpenAI server: names a chat request's media and refuses those that cannot fit."""

    def __init__(self, app):
        self.app = app
        self._processor = None

    def processor(self, app_state):
        """The served model's processor (loaded once, from the folder or Hub id vLLM serves)."""
        if self._processor is None:
            from transformers import AutoProcessor

            model_config = app_state.vllm_config.model_config
            self._processor = AutoProcessor.from_pretrained(model_config.model, trust_remote_code=True)
        return self._processor

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST" or not scope["path"].endswith(CHAT_PATH):
            return await self.app(scope, receive, send)
        body, messages = b"", []
        while True:  # the whole body, then handed on unchanged
            message = await receive()
            body += message.get("body", b"")
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        try:
            request = json.loads(body)
            messages = request.get("messages") if isinstance(request, dict) else None
        except (ValueError, UnicodeDecodeError):
            pass  # vLLM answers a body that is no JSON
        items = request_media(messages)
        if items:
            state = scope["app"].state
            context = state.vllm_config.model_config.max_model_len
            if problem := media_problem(items, self.processor(state), context):
                return await _respond(send, 400, _error_body(problem))
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        token = MEDIA_NAMES.set({url: name for name, _, url in reversed(items) if url})
        try:
            await self.app(scope, replay, send)
        finally:
            MEDIA_NAMES.reset(token)


async def _respond(send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


__all__ = ["MEDIA_NAMES", "NamedMediaMiddleware", "inline_bytes", "media_problem", "request_media"]
