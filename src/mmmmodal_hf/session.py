"""A multi-turn chat that keeps its KV cache: each turn encodes only its own media and prefills only its own tokens.

`generate` on the whole conversation re-encodes every earlier image and clip and re-prefills the
history at every turn. `MMMModalChatSession` keeps the cache and the token ids it holds; a new
turn renders the whole conversation with the chat template (so the tokens are exactly those of a
from-scratch run), keeps the longest cached prefix, and feeds the rest with the new media only.
Greedy replies are therefore the same as re-running the conversation from scratch.
"""

import os
import threading
from itertools import groupby

import torch
from jinja2.exceptions import TemplateError
from transformers import DynamicCache, TextIteratorStreamer

from .media_mmmmodal import sample_times
from .modeling_mmmmodal import CACHE_NAME
from .processing_mmmmodal import VIDEO_OPTIONS, EncodedMedium, media_list, placeholder_kinds


def _slot_runs(ids: list[int], slot_token_id: int) -> list[int]:
    """The slots of each medium in `ids`, in order: a medium's slots are one run of its slot token."""
    return [len(list(run)) for token, run in groupby(ids) if token == slot_token_id]


def _user_message(text: str, images: list, audio: list, videos: list = ()) -> dict:
    blocks = [*(_block("image", image) for image in images), *(_block("audio", clip) for clip in audio),
              *(_block("video", video) for video in videos)]  # fmt: skip
    return {"role": "user", "content": [*blocks, {"type": "text", "text": text}]}


def _block(kind: str, item) -> dict:
    """A content block that keeps a file's path (so a saved conversation is a training row) or the object itself."""
    return (
        {"type": kind, "path": os.fspath(item)} if isinstance(item, (str, os.PathLike)) else {"type": kind, kind: item}
    )


def _plain_text(text, what: str) -> str:
    """A turn's text or the system message: a string without media tags, which the processor would count as media
    more than were given (a turn's media go in `images=`, `audio=`, `videos=`)."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a string; got {type(text).__name__}.")
    if kinds := placeholder_kinds(text):
        raise ValueError(f"{what} holds the tag <{kinds[0]}>: give media as images=, audio= or videos= and "
                         "the session places them before a turn's text.")  # fmt: skip
    return text


def _checked(video_options: dict) -> dict:
    """`video_options` refused at once, not at the first video, where a name is not one the processor reads (a
    typo would leave its default in place without a word) or a frame count or rate is not a positive number."""
    if unknown := sorted(set(video_options) - set(VIDEO_OPTIONS)):
        raise ValueError(f"video_options takes {', '.join(VIDEO_OPTIONS)}; got {', '.join(map(repr, unknown))}")
    sample_times(0.0, *(video_options.get(key) for key in ("num_frames", "fps", "max_frames")))
    return video_options


class MMMModalChatSession:
    """Chat with an MMMModal model turn by turn, keeping the KV cache between turns.

    >>> session = MMMModalChatSession(model, processor, max_new_tokens=64)
    >>> session.send("What is in these?", images=["cat.png", "dog.png"])
    >>> session.send("And this sound?", audio="bark.wav")   # earlier images are not encoded again
    >>> session.send("What happens here?", videos="walk.mp4")  # its frames, each with its soundtrack piece
    >>> session.undo()                                       # cache cropped back to before that turn

    `send` returns the reply; `on_text` receives it piece by piece as it is generated. `video_options` (the
    processor's `num_frames`, `fps`, `max_frames`, `load_audio_from_video`, `pool_frames`) say how videos are read.
    Context policy: a turn whose prompt plus `max_new_tokens` exceeds the language model's context
    raises `ValueError` before anything runs, and the conversation is left as it was (`undo` or
    `reset` make room).
    """

    def __init__(
        self, model, processor, system: str | None = None, context_length: int | None = None,
        video_options: dict | None = None, **generate_kwargs,
    ):  # fmt: skip
        self.model, self.processor, self.video_options = model, processor, _checked(video_options or {})
        self.system = None if system is None else _plain_text(system, "The system message")
        self.context_length = context_length or getattr(model.config.text_config, "max_position_embeddings", None)
        self.generate_kwargs = {"max_new_tokens": 256, "do_sample": False, **generate_kwargs}
        self.reset()

    # -- state ------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the conversation and the cache."""
        self.messages: list[dict] = [{"role": "system", "content": self.system}] if self.system else []
        self._image_slots: list[int] = []
        self._audio_slots: list[int] = []
        self._video_pieces: list[list[bool]] = []  # per video, per frame: whether a soundtrack piece follows it
        self._cache = DynamicCache(config=self.model.config.get_text_config())
        self._cached_ids: list[int] = []
        self._turn_starts: list[tuple[int, ...]] = []  # messages, images, clips, cached tokens, videos
        self.last_prefill_tokens = 0  # positions the last turn fed through the model before its first new token
        self.last_reply_ids: list[int] = []

    @property
    def cached_tokens(self) -> int:
        return len(self._cached_ids)

    def undo(self) -> None:
        """Drop the last exchange; the cache is cropped back to where that turn began."""
        if not self._turn_starts:
            raise ValueError("There is no turn to undo.")
        messages, images, clips, cached, videos = self._turn_starts.pop()
        self.messages, self._video_pieces = self.messages[:messages], self._video_pieces[:videos]
        self._image_slots, self._audio_slots = self._image_slots[:images], self._audio_slots[:clips]
        self._crop(cached)

    def _crop(self, length: int) -> None:
        """Keep the first `length` cached positions."""
        surplus = self._cache.get_seq_length() - length
        if surplus > 0:
            self._cache.crop(-surplus)  # transformers 5: a negative count removes that many from the end
        self._cached_ids = self._cached_ids[:length]

    # -- a turn -----------------------------------------------------------------------------------

    def send(self, text: str, images=None, audio=None, on_text=None, videos=None, **generate_kwargs) -> str:
        """Add a user turn with its media, generate the reply (streamed to `on_text`), and return it."""
        if on_text is None:
            turn = self._start_turn(text, images, audio, videos, generate_kwargs)
            try:
                with torch.no_grad():
                    output = self.model.generate(**turn["inputs"])
            except BaseException:
                self._crop(turn["reused"])  # what the failed turn added to the cache goes; the conversation stays
                raise
            return self._finish_turn(turn, output)
        pieces = self.stream(text, images, audio, videos=videos, **generate_kwargs)
        try:
            for piece in pieces:
                on_text(piece)
        finally:
            pieces.close()  # `on_text` failed: the turn is dropped now, not when the generator is collected
        return self.messages[-1]["content"]

    def stream(self, text: str, images=None, audio=None, videos=None, **generate_kwargs):
        """`send`, piece by piece: yields the reply's text as it is generated; the turn joins the conversation when
        the reply is complete. A consumer that stops early drops the turn (the generation already started ends)."""
        turn = self._start_turn(text, images, audio, videos, generate_kwargs)
        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        result: dict = {}

        def run():  # generate's own loop feeds the streamer; the caller's thread reads it
            try:
                with torch.no_grad():
                    result["output"] = self.model.generate(**turn["inputs"], streamer=streamer)
            except BaseException as error:  # re-raised in the caller's thread, once the streamer has ended
                result["error"] = error
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        try:
            yield from streamer
        except GeneratorExit:  # the consumer stopped listening: the turn is dropped once its generation ends
            worker.join()
            self._crop(turn["reused"])
            raise
        worker.join()
        if "error" in result:
            self._crop(turn["reused"])
            raise result["error"]
        self._finish_turn(turn, result["output"])

    def _start_turn(self, text: str, images, audio, videos, generate_kwargs: dict) -> dict:
        """The turn's prompt ids and media, the cache cropped to what it shares with them; nothing else changes.
        Media are loaded first: a bad file raises here, before the conversation changes."""
        _plain_text(text, "The turn's text")
        images, audio, videos = (
            media_list(media, kind) for media, kind in ((images, "image"), (audio, "audio"), (videos, "video"))
        )  # as the processor reads them
        settings = {**self.generate_kwargs, **generate_kwargs}
        message = _user_message(text, images, audio, videos)  # kept with paths: a saved conversation is a training row
        loaded = self.processor.load_videos(videos, **self.video_options)  # errors name this turn's media
        decoded = _user_message(text, *self.processor.load_media(images, audio), loaded)
        # Earlier media are in the cache: the processor gives them their slots and takes this turn's decoded.
        inputs = self._encode([*self._history_as_encoded(), decoded])
        ids, layouts = inputs["input_ids"][0].tolist(), inputs.video_layouts  # earlier videos came as their pieces
        self._check_context(len(ids), settings.get("max_new_tokens", 0))

        reused = self._reusable_prefix(ids)
        if reused is None:  # the history itself changed under old media: start over from scratch
            self._crop(0)
            reused = 0
            inputs = self._encode([*self.messages, decoded])
        else:
            self._crop(reused)
        inputs = {key: value.to(self.model.device) for key, value in inputs.items()}
        inputs = {**inputs, CACHE_NAME: self._cache, **settings}
        start = (len(self.messages), len(self._image_slots), len(self._audio_slots), reused, len(self._video_pieces))
        image_slots = _slot_runs(ids, self.processor.image_token_id)[len(self._image_slots) :]
        audio_slots = _slot_runs(ids, self.processor.audio_token_id)[len(self._audio_slots) :]
        return {"message": message, "ids": ids, "reused": reused, "start": start, "inputs": inputs,
                "image_slots": image_slots, "audio_slots": audio_slots,
                "video_pieces": [[piece > 0 for _, piece in layout] for layout in layouts]}  # fmt: skip

    def _encode(self, messages: list[dict]):
        rate = {"sampling_rate": self.processor.feature_extractor.sampling_rate}  # of clips decoded by `load_media`
        pool = {"pool_frames": True} if self.video_options.get("pool_frames") else {}  # videos are decoded already
        try:
            return self.processor.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
                processor_kwargs={**rate, **pool},
            )  # fmt: skip
        except TemplateError as error:  # the template's refusals (a slot token in the text) are the turn's ValueError
            raise ValueError(str(error)) from None

    def _history_as_encoded(self) -> list[dict]:
        """The conversation so far, each medium replaced by its slots (`EncodedMedium`): the cache holds them. A video
        becomes the images and clips it was laid out as (its frames, each with its soundtrack piece)."""
        slots, videos = {"image": iter(self._image_slots), "audio": iter(self._audio_slots)}, iter(self._video_pieces)

        def encoded(block: dict) -> list[dict]:
            if block["type"] == "video":
                kinds = [kind for piece in next(videos) for kind in ("image", "audio") if kind == "image" or piece]
                return [encoded({"type": kind})[0] for kind in kinds]
            kind = block["type"]
            return [{**block, kind: EncodedMedium(next(slots[kind]))}] if kind in slots else [block]

        return [
            {**m, "content": [part for b in m["content"] for part in encoded(b)]}
            if isinstance(m["content"], list)
            else m
            for m in self.messages
        ]

    def _finish_turn(self, turn: dict, output: torch.Tensor) -> str:
        """The generated reply joins the conversation, with the turn's media and where it began (for `undo`)."""
        ids = turn["ids"]
        self.last_prefill_tokens = len(ids) - turn["reused"]
        self._cached_ids = output[0, : self._cache.get_seq_length()].tolist()
        self.last_reply_ids = output[0, len(ids) :].tolist()
        answer = self.processor.decode(self.last_reply_ids, skip_special_tokens=True).strip()
        self.messages += [turn["message"], {"role": "assistant", "content": answer}]
        self._image_slots += turn["image_slots"]
        self._audio_slots += turn["audio_slots"]
        self._video_pieces += turn["video_pieces"]
        self._turn_starts.append(turn["start"])
        return answer

    def _reusable_prefix(self, ids: list[int]) -> int | None:
        """How many cached tokens the new prompt starts with; None if old media would need re-encoding.

        Usually the whole cache: only the last reply can differ (a generated answer may re-tokenize
        differently), and what follows it holds no earlier media.
        """
        common = 0
        for cached, new in zip(self._cached_ids, ids):
            if cached != new:
                break
            common += 1
        common = min(common, len(ids) - 1)  # always feed at least one token
        kept = ids[:common]
        old_image, old_audio = sum(self._image_slots), sum(self._audio_slots)
        if (
            kept.count(self.processor.image_token_id) != old_image
            or kept.count(self.processor.audio_token_id) != old_audio
        ):
            return None
        return common

    def _check_context(self, prompt_tokens: int, max_new_tokens: int) -> None:
        if self.context_length is None or prompt_tokens + max_new_tokens <= self.context_length:
            return
        raise ValueError(
            f"This turn needs {prompt_tokens} prompt positions + {max_new_tokens} new tokens = "
            f"{prompt_tokens + max_new_tokens}, {prompt_tokens + max_new_tokens - self.context_length} more than the "
            f"model's context of {self.context_length}. Undo turns, reset, or ask for fewer new tokens."
        )


__all__ = ["MMMModalChatSession"]
