"""A chat model for lmms-eval (0.7): `lmms-eval --model mmmmodal --model_args pretrained=FOLDER --tasks ...` answers
lmms-eval's image and audio tasks with this package's processor and batched `generate`, the code of `mmmmodal eval`'s
transformers backend. lmms-eval finds it through the `lmms_eval.models` entry point (`manifest`); this module is
imported only by lmms-eval, which must be installed."""

import json
import logging
from dataclasses import replace

from lmms_eval.api.model import lmms
from lmms_eval.protocol import ChatMessages

from ..data import UnusableRow, conversation_from_row, messages_with_media
from ..media_mmmmodal import sample_times
from .run import EvalSettings, Unanswered, _load, answer_prompts

logger = logging.getLogger(__name__)


def manifest():
    """The entry point lmms-eval's model registry loads: `--model mmmmodal` is `MMMModal`, a chat model, and with
    `--force_simple` `MMMModalSimple`."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(
        model_id="mmmmodal", chat_class_path=f"{__name__}.MMMModal", simple_class_path=f"{__name__}.MMMModalSimple"
    )


class MMMModal(lmms):
    """lmms-eval's chat model interface over an MMMModal checkpoint (a folder or Hub id).

    `--model_args`: `pretrained` (required), `dtype` (float32), `device` (or lmms-eval's `--device`; cpu),
    `max_new_tokens` (256, where a task does not set it), `seed` (0), and how videos are read, as `mmmmodal eval`'s
    flags: `num_frames` (8) or `fps`, `pool_frames` (false). `--batch_size N` batches `generate`.
    Decoding follows the task's `generation_kwargs` (`max_new_tokens`, `temperature` > 0 or `do_sample`
    samples, `until` cuts the answer at its first stop string); by default greedy. A request that cannot be
    answered (a medium that cannot be read, a prompt over the context) is answered "" and logged
    with its task and document, and counted in `unanswered`.
    """

    is_simple = False

    def __init__(self, pretrained: str, device: str | None = None, dtype: str = "float32", batch_size=1,
                 max_new_tokens: int = 256, seed: int = 0, max_batch_size=None, num_frames=None, fps=None,
                 pool_frames=False, **unknown) -> None:  # fmt: skip
        super().__init__()
        if unknown:
            raise ValueError(f"mmmmodal: unknown --model_args {sorted(unknown)}; known: pretrained, device, dtype, "
                             "max_new_tokens, seed, num_frames, fps, pool_frames")  # fmt: skip
        numbers = {"batch_size": 16 if str(batch_size).startswith("auto") else batch_size,
                   "max_new_tokens": max_new_tokens, "seed": seed, "num_frames": num_frames}  # fmt: skip
        for name, value in numbers.items():  # lmms-eval hands --model_args over as text
            if value is not None and (not str(value).isdigit() or (name != "seed" and int(value) < 1)):
                raise ValueError(f"mmmmodal: --model_args {name} must be a whole number{' above 0' * (name != 'seed')}; "
                                 f"got {value!r}")  # fmt: skip
        self.settings = EvalSettings(model=pretrained, data=[], dtype=dtype, device=device or "cpu",
                                     video_options=_video_options(num_frames, fps, pool_frames) or None,
                                     **{name: int(numbers[name]) for name in ("batch_size", "max_new_tokens", "seed")})  # fmt: skip
        self.model, self.processor = _load(self.settings)
        self.unanswered: list[str] = []

    def generate_until(self, requests) -> list[str]:
        """Answers in the order of `requests`: requests with the same generation settings are batched together."""
        from tqdm.auto import tqdm

        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(json.dumps(self._generation(request), sort_keys=True, default=str), []).append(index)
        answers: list[str] = [""] * len(requests)
        with tqdm(total=len(requests), desc="mmmmodal", unit="request") as bar:
            for indices in groups.values():
                settings, until = self._settings(self._generation(requests[indices[0]]))
                for start in range(0, len(indices), settings.batch_size):
                    batch = indices[start : start + settings.batch_size]
                    for index, answer in zip(batch, self._answer([requests[i] for i in batch], settings)):
                        answers[index] = _cut(answer, until)
                        context = (requests[index].args[0], self._generation(requests[index]))
                        self.cache_hook.add_partial("generate_until", context, answers[index])
                    bar.update(len(batch))
        return answers

    def _generation(self, request) -> dict:
        """The task's generation settings in a request (lmms-eval's chat requests hold them third)."""
        return request.args[2]

    def _messages(self, request) -> list[dict]:
        """The request's conversation as content blocks: the task's `doc_to_messages`."""
        _, doc_to_messages, _, doc_id, task, split = request.args
        messages = ChatMessages(messages=doc_to_messages(self.task_dict[task][split][doc_id])).to_hf_messages()
        for message in messages:  # lmms-eval's chat interface names an audio that is not a path a "video"
            message["content"] = [_block(b["video"]) if _is_audio(b.get("video")) else b for b in message["content"]]
        return messages

    def _settings(self, generation: dict) -> tuple[EvalSettings, list[str]]:
        sample = bool(generation.get("do_sample")) or float(generation.get("temperature") or 0) > 0
        tokens = int(generation.get("max_new_tokens") or self.settings.max_new_tokens)
        until = generation.get("until") or []
        until = [until] if isinstance(until, str) else until
        return replace(self.settings, do_sample=sample, max_new_tokens=tokens), until

    def _answer(self, batch, settings: EvalSettings) -> list[str]:
        prompts, where, answers = [], [], [""] * len(batch)
        for position, request in enumerate(batch):
            try:
                prompts.append(self._decoded(self._messages(request), _name(request)))
                where.append(position)
            except (ValueError, UnusableRow) as error:
                self._unanswered(_name(request), str(error))
        for position, answer in zip(where, answer_prompts(self.model, self.processor, prompts, settings)):
            name = _name(batch[position])
            if isinstance(answer, Unanswered):
                self._unanswered(name, answer.reason)
            else:
                answers[position] = answer
        return answers

    def _decoded(self, messages: list[dict], name: str) -> list[dict]:
        """The messages with their media decoded as `mmmmodal eval` decodes a row's (videos as the model_args say; by
        default 8 frames with their soundtrack)."""
        conversation = conversation_from_row({"messages": messages}, row_id=name)
        images, audio = self.processor.load_media(conversation.images, conversation.audio)
        videos = self.processor.load_videos(conversation.videos, **(self.settings.video_options or {}))
        return messages_with_media(conversation, images, audio, videos)

    def _unanswered(self, name: str, reason: str) -> None:
        self.unanswered.append(f"{name}: {reason}")
        logger.warning("mmmmodal answers %s with nothing: %s", name, reason)

    def loglikelihood(self, requests):
        raise NotImplementedError("mmmmodal answers lmms-eval's generation tasks (generate_until); as in lmms-eval's "
                                  "other chat models, loglikelihood tasks are not supported")  # fmt: skip

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("mmmmodal does not take lmms-eval's multi-round tasks; `mmmmodal eval` scores every "
                                  "turn of multi-turn rows")  # fmt: skip


class MMMModalSimple(MMMModal):
    """lmms-eval's simple interface (`--force_simple`): the task's `doc_to_visual` media, then its prompt text. For
    audio tasks such as LibriSpeech, whose `doc_to_visual` gives datasets' audio dicts: lmms-eval's chat interface
    keeps only such a dict's `path`, which is often a bare file name."""

    is_simple = True

    def _generation(self, request) -> dict:
        return request.args[1]

    def _messages(self, request) -> list[dict]:
        context, _, doc_to_visual, doc_id, task, split = request.args
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
        return [{"role": "user", "content": [*map(_block, visuals), {"type": "text", "text": context}]}]


AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac")


def _is_audio(visual) -> bool:
    """A datasets audio dict or an audio file's path."""
    if isinstance(visual, dict):
        return any(visual.get(key) is not None for key in ("array", "bytes"))
    return isinstance(visual, str) and visual.lower().endswith(AUDIO_SUFFIXES)


def _block(visual) -> dict:
    """A task's medium as a content block: audio for datasets' audio dicts and audio files, a video where its file
    says so, else an image."""
    if _is_audio(visual):
        return {"type": "audio", "audio": visual}
    if isinstance(visual, str) and visual.lower().endswith((".mp4", ".webm", ".mkv", ".mov", ".avi")):
        return {"type": "video", "video": visual}
    return {"type": "image", "image": visual}


def _video_options(num_frames, fps, pool_frames) -> dict:
    """The processor's video keywords from `--model_args` text (`num_frames=16`, `fps=0.5`, `pool_frames=true`)."""
    try:
        rate = None if fps is None else float(fps)
    except ValueError:
        raise ValueError(f"mmmmodal: --model_args fps must be a positive number; got {fps!r}") from None
    try:  # the video loader's own rule: one of the two, a positive number
        sample_times(1.0, None if num_frames is None else int(num_frames), rate)
    except ValueError as error:
        raise ValueError(f"mmmmodal: --model_args {error}") from None
    pooled = {"true": True, "1": True, "false": False, "0": False}.get(str(pool_frames).lower())
    if pooled is None:
        raise ValueError(f"mmmmodal: --model_args pool_frames must be true or false; got {pool_frames!r}")
    options = {
        "num_frames": None if num_frames is None else int(num_frames),
        "fps": rate,
        "pool_frames": pooled or None,
    }
    return {key: value for key, value in options.items() if value is not None}


def _name(request) -> str:
    return f"task {request.args[-2]}, document {request.args[-3]}"


def _cut(answer: str, until: list[str]) -> str:
    """The answer up to the first of the task's stop strings, stripped as every answer is."""
    for stop in until:
        if stop and stop in answer:
            answer = answer[: answer.index(stop)]
    return answer.strip()


__all__ = ["MMMModal", "MMMModalSimple", "manifest"]
