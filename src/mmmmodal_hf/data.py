"""Training data: read conversation rows, and encode one conversation into model inputs with labels.

Two row formats are read:

1. the published one: `{"conversations": [{"role", "content"}], "filename": [paths]}`, with
   `<image> </image>` / `<audio> </audio>` tags in the text and the files in tag order;
2. content blocks, as `apply_chat_template` takes them: `{"conversations" or "messages": [{"role",
   "content": [{"type": "text"|"image"|"audio"|"video", "text"|"path"|"url"|"base64"|...}]}]}`.

Relative paths are resolved against the data file's folder. Whether a file is an image or an
audio clip is decided by decoding it (`media_mmmmodal`), never by its extension.
"""

import bisect
import hashlib
import itertools
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from jinja2.exceptions import TemplateError
from torch.utils.data import Dataset, IterableDataset, Sampler
from transformers.trainer_pt_utils import get_length_grouped_indices

from .cli_errors import InputError
from .configuration_mmmmodal import MEDIA_INPUT_NAMES
from .media_mmmmodal import URL_PREFIXES, Video, moving_pictures, sample_times, video_duration
from .processing_mmmmodal import EncodedMedium, block_source, placeholder_kinds

logger = logging.getLogger(__name__)

DATA_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
# What `datasets`' `save_to_disk` writes beside a dataset's Arrow files, and into a `DatasetDict`'s folder.
SAVED_DATASET, SAVED_SPLITS = ("state.json", "dataset_info.json"), "dataset_dict.json"
HUB_DATASET_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?")  # `owner/name`, or `owner/name:split`
IGNORE_INDEX = -100
UNREADABLE = "_unreadable"  # the one field of a row read from a line that is no JSON object: why


class UnusableRow(ValueError):
    """A row that cannot be trained on; the message says why."""


@dataclass
class Conversation:
    """One row, normalised: messages with string or block content, and its media in order."""

    messages: list[dict]
    images: list = field(default_factory=list)
    audio: list = field(default_factory=list)
    row_id: str = "?"
    videos: list = field(default_factory=list)


def _resolve(path, base_dir: str | None):
    if isinstance(path, str) and base_dir and not path.startswith(URL_PREFIXES):
        candidate = Path(path)
        return str(candidate if candidate.is_absolute() else Path(base_dir) / candidate)
    return path


def _clean_block(block: dict) -> dict:
    return {key: value for key, value in block.items() if value is not None}


def conversation_from_row(row: dict, base_dir: str | None = None, row_id: str = "?") -> Conversation:
    """Normalise a row of either format; raises `UnusableRow` naming what is wrong."""
    if row.get(UNREADABLE):
        raise UnusableRow(f"row {row_id}: {row[UNREADABLE]}")
    messages = row.get("conversations") or row.get("messages")
    if not messages:
        raise UnusableRow(f"row {row_id}: no 'conversations' or 'messages'")
    normalised, images, audio, videos = [], [], [], []
    media = {"image": images, "audio": audio, "video": videos}
    filenames = list(row.get("filename") or [])
    tags_seen = 0
    for message in messages:
        role, content = message.get("role"), message.get("content")
        if isinstance(content, str):
            for kind in placeholder_kinds(content):
                if tags_seen >= len(filenames):
                    raise UnusableRow(
                        f"row {row_id}: the text holds more media tags than the {len(filenames)} files in 'filename'"
                    )
                media[kind].append(_resolve(filenames[tags_seen], base_dir))
                tags_seen += 1
            normalised.append({"role": role, "content": content})
        elif isinstance(content, list):
            blocks = [_clean_block(block) for block in content]
            for block in blocks:
                kind = block.get("type")
                if kind in media:
                    try:
                        media[kind].append(_resolve(block_source(block), base_dir))
                    except ValueError as error:  # a block without its medium
                        raise UnusableRow(f"row {row_id}: {error}") from None
            normalised.append({"role": role, "content": [_strip_media_value(b) for b in blocks]})
        else:
            raise UnusableRow(f"row {row_id}: message content must be a string or a list of blocks")
    if tags_seen != len(filenames) and filenames:
        raise UnusableRow(f"row {row_id}: {len(filenames)} files in 'filename' but {tags_seen} media tags in the text")
    for number, message in enumerate(normalised, start=1):
        # The template renders an empty answer (a chat model may give one); as training data it teaches nothing.
        if message["role"] == "assistant" and not text_of(message["content"]).strip():
            raise UnusableRow(f"row {row_id}: message {number} (assistant) is empty: no answer to train on or score")
    return Conversation(messages=normalised, images=images, audio=audio, row_id=row_id, videos=videos)


def text_of(content) -> str:
    return (
        content if isinstance(content, str) else "".join(b.get("text", "") for b in content if b.get("type") == "text")
    )


def _strip_media_value(block: dict) -> dict:
    # The template only needs the block's type; media travel separately, in order.
    return {"type": block["type"]} if block.get("type") in ("image", "audio", "video") else block


@dataclass
class EncodeStats:
    """Counters the training loop logs: what was skipped or shortened, and how full blocks were."""

    rows: int = 0
    skipped: int = 0
    truncated: int = 0
    real_tokens: int = 0
    positions: int = 0

    def as_logs(self) -> dict:
        padding = 1.0 - self.real_tokens / self.positions if self.positions else 0.0
        return {
            "data/rows": self.rows,
            "data/skipped_rows": self.skipped,
            "data/truncated_rows": self.truncated,
            "data/padding_fraction": round(padding, 4),
        }


def encode_conversation(
    processor,
    conversation: Conversation,
    block_size: int | None = None,
    train_on: str = "answers",
    stats: EncodeStats | None = None,
    video_kwargs: dict | None = None,
) -> dict:
    """Token ids, labels and media features for one conversation, unpadded, through the processor's
    `apply_chat_template` (its `return_assistant_tokens_mask` marks the answers). `video_kwargs` (the processor's
    `num_frames` or `fps`, `max_frames`, `load_audio_from_video`, `pool_frames`) say how videos are read.

    Labels are the answers only (`train_on="answers"`) or every text token (`"all"`, as the paper
    did); feature slots, tags (for answers) and anything else get -100. A conversation longer than
    `block_size` loses whole trailing turns (never part of a media span), measured with its media's
    slots alone; if even its first exchange is too long, it raises `UnusableRow`. Each medium is
    decoded once.
    """
    if train_on not in ("answers", "all"):
        raise ValueError(f"train_on must be 'answers' or 'all'; got {train_on!r}")
    row_id = conversation.row_id
    video_kwargs = video_kwargs or {}
    try:
        images, audio = processor.load_media(conversation.images, conversation.audio)
        videos = processor.load_videos(conversation.videos, **video_kwargs)
    except ValueError as error:
        raise UnusableRow(f"row {row_id}: {error}") from error
    messages = messages_with_media(conversation, images, audio, videos)
    encoded = _encode(processor, messages, train_on, row_id, video_kwargs)
    if block_size is None or len(encoded["input_ids"]) <= block_size:
        return encoded
    counts = processor._get_num_multimodal_tokens(
        image_sizes=[image.size for image in images], audio_lengths=[len(clip) for clip in audio]
    )
    measured = messages_with_media(
        conversation,
        *([EncodedMedium(slots) for slots in counts[f"num_{kind}_tokens"]] for kind in ("image", "audio")),
        [_measured_video(processor, video, bool(video_kwargs.get("pool_frames"))) for video in videos],
    )
    kept, length = len(messages), len(encoded["input_ids"])
    while length > block_size:
        kept = _last_exchange_start(measured[:kept])
        if not any(m["role"] == "assistant" for m in measured[:kept]):
            raise UnusableRow(f"row {row_id}: {length} tokens even with one exchange; block_size is {block_size}")
        length = len(_apply_template(processor, measured[:kept], False, row_id, video_kwargs)["input_ids"][0])
    if stats is not None:
        stats.truncated += 1
    return _encode(processor, messages[:kept], train_on, row_id, video_kwargs)


def _measured_video(processor, video: Video, pooled: bool) -> Video:
    """A decoded video whose frames are measured by their slots alone (where the image processor's size is fixed);
    its soundtrack stays as it is."""
    slots = _resized_image_slots(processor, pooled)
    if slots is None:
        return video
    return Video([EncodedMedium(slots)] * len(video.frames), video.times, video.duration, video.soundtrack,
                 video.sampling_rate)  # fmt: skip


def _last_exchange_start(messages) -> int:
    """Where the trailing user+assistant turns begin."""
    cut = len(messages) - 1
    while cut > 0 and messages[cut]["role"] != "user":
        cut -= 1
    return cut


def messages_with_media(conversation: Conversation, images, audio, videos=None) -> list[dict]:
    """The conversation's messages with its media (sources, decoded media or `EncodedMedium`s) in their blocks, as
    the processor's `apply_chat_template` takes them (videos: the conversation's sources unless given). A message
    whose text holds its media's tags (a published row) keeps that text; its media follow it as blocks marked
    "in_text", which the template does not render."""
    media = {
        "image": iter(images),
        "audio": iter(audio),
        "video": iter(conversation.videos if videos is None else videos),
    }
    messages = []
    for message in conversation.messages:
        content = message["content"]
        if isinstance(content, str) and placeholder_kinds(content):
            in_text = [{"type": kind, kind: next(media[kind]), "in_text": True} for kind in placeholder_kinds(content)]
            content = [{"type": "text", "text": content}, *in_text]
        elif not isinstance(content, str):
            content = [{**b, b["type"]: next(media[b["type"]])} if b["type"] in media else b for b in content]
        messages.append({**message, "content": content})
    return messages


def _apply_template(processor, messages, answers_mask: bool, row_id, video_kwargs: dict):
    try:
        return processor.apply_chat_template(
            messages,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=answers_mask,
            processor_kwargs={
                "padding": False,
                "sampling_rate": processor.feature_extractor.sampling_rate,
                **video_kwargs,
            },
        )
    except (TemplateError, ValueError) as error:  # the template's checks (roles, empty turns), or the media's
        raise UnusableRow(f"row {row_id}: {error}") from error


def approximate_length(processor, conversation: Conversation, video_kwargs: dict | None = None) -> int:
    """About how many tokens `conversation` encodes to, from its text and media counts, no media decoded.

    Length-grouped batching needs every row's length before training; measuring it by encoding
    would decode every image and clip up front. Images count the slots of the image processor's
    fixed output size (SigLIP's `size`), clips one Whisper window each (a longer clip has more, a
    trimmed one fewer), video files what their headers say (`video_from_header`).
    """
    video_kwargs = video_kwargs or {}
    image = EncodedMedium(_resized_image_slots(processor) or 0)
    clip = EncodedMedium(processor.audio_slots_per_window)
    videos = [video_from_header(processor, source, video_kwargs) or source for source in conversation.videos]
    messages = messages_with_media(
        conversation, [image] * len(conversation.images), [clip] * len(conversation.audio), videos
    )
    return len(_apply_template(processor, messages, False, conversation.row_id, video_kwargs)["input_ids"][0])


def _resized_image_slots(processor, pooled: bool = False) -> int | None:
    """The slots of an image at the image processor's fixed output size (SigLIP's `size`); None without one."""
    size = getattr(processor.image_processor, "size", None) or {}
    return processor.num_image_slots(size["height"], size["width"], pooled) if "height" in size else None


def video_from_header(processor, source, video_kwargs: dict) -> Video | None:
    """A video file as the processor lays it out, read from its header alone: its duration gives the frame times
    (`video_kwargs`' `num_frames` or `fps`, `max_frames`), each frame an `EncodedMedium` of the image processor's
    size (pooled where `pool_frames` says), and a soundtrack it has is silence of its length. None where there is
    no local file whose header PyAV reads (a URL, frames given, no PyAV, not a video): that video is decoded."""
    if not isinstance(source, (str, os.PathLike)) or str(source).startswith(URL_PREFIXES):
        return None
    try:
        import av
    except ImportError:
        return None
    try:
        with av.open(str(source)) as container:
            stream = moving_pictures(container)[0]  # as the loader picks it: an album's picture is none
            duration = video_duration(container, stream)
            has_soundtrack = bool(container.streams.audio)
    except (OSError, IndexError, av.FFmpegError):
        return None
    if (frame_slots := _resized_image_slots(processor, bool(video_kwargs.get("pool_frames")))) is None:
        return None
    times = sample_times(duration, video_kwargs.get("num_frames"), video_kwargs.get("fps"),
                         video_kwargs.get("max_frames"))  # fmt: skip
    rate = processor.feature_extractor.sampling_rate
    sound = has_soundtrack and video_kwargs.get("load_audio_from_video", True)
    return Video(
        [EncodedMedium(frame_slots)] * len(times),
        times,
        duration,
        np.zeros(max(1, round(duration * rate)), np.float32) if sound else None,
        rate,
    )


def _encode(processor, messages, train_on, row_id, video_kwargs: dict) -> dict:
    encoded = _apply_template(processor, messages, train_on == "answers", row_id, video_kwargs)
    input_ids = np.asarray(encoded["input_ids"][0], dtype=np.int64)
    keep = (
        np.asarray(encoded["assistant_masks"][0], dtype=bool)
        if train_on == "answers"
        else np.ones(len(input_ids), bool)
    )
    keep &= (input_ids != processor.image_token_id) & (input_ids != processor.audio_token_id)
    result = {
        "input_ids": input_ids,
        "labels": np.where(keep, input_ids, IGNORE_INDEX),
    }
    for key in (*MEDIA_INPUT_NAMES["image"], *MEDIA_INPUT_NAMES["audio"], "pooled_images"):
        if key in encoded:
            result[key] = encoded[key]
    return result


def answer_token_ids(rows, tokenizer) -> list[int]:
    """The tokens of every answer in `rows` (raw rows, either format), each answer tokenized on its own, and EOS.

    Nearly the tokens the answers' labels hold: within the chat template an answer's first token
    can differ. For `grow_head_from_targets`, which starts these head rows apart and adds any other
    target's row when it first appears.
    """
    answers = [
        text_of(message.get("content") or "")
        for row in rows
        for message in (row.get("conversations") or row.get("messages") or [])
        if message.get("role") == "assistant"
    ]
    ids = {token for answer in tokenizer(answers, add_special_tokens=False)["input_ids"] for token in answer}
    return sorted(ids | {tokenizer.eos_token_id})


def data_files(path: str | Path) -> list[Path]:
    """The data at `path`: a file; a folder's JSONL/JSON/Parquet files and the datasets `save_to_disk` wrote in it
    (their own JSON files are not rows); or a Hub dataset repo (`owner/name`, where no such local path is), downloaded
    whole into the Hub cache so its rows' relative paths find its media, and read as a folder. Where a folder's file
    names hold several splits as `datasets` reads them (`train.jsonl`, `data/test-00000-of-00001.parquet`), one is
    named after a colon (`data/chat:train`): splits are for different uses. A `DatasetDict` is refused for that too."""
    name, colon, split = str(path).rpartition(":")
    if not colon or Path(path).exists():
        name, split = str(path), ""
    folder, what = Path(name), name
    if not folder.exists() and HUB_DATASET_ID.fullmatch(str(path)):
        folder, what = _hub_snapshot(name), f"the Hub dataset {name}"
    if folder.is_dir():
        return _one_split(folder, _folder_files(folder), what, name, split)
    if split:
        raise InputError(f"{name} is a file: it has no splits to name")
    if not folder.exists():
        raise FileNotFoundError(f"no data at {folder}")
    if folder.suffix not in DATA_SUFFIXES:
        raise ValueError(f"{folder}: data files must be .jsonl, .json or .parquet")
    return [folder]


def _folder_files(folder: Path) -> list[Path]:
    """A folder's data: its data files and the datasets `save_to_disk` wrote in it (the folder itself, if it is one)."""
    entries = sorted(folder.rglob("*"))  # the folder is walked once
    for splits_file in (entry for entry in entries if entry.name == SAVED_SPLITS):
        splits = sorted(json.loads(splits_file.read_text())["splits"])
        example = splits_file.parent / ("train" if "train" in splits else splits[0])
        raise InputError(
            f"{splits_file.parent} is a DatasetDict that `save_to_disk` wrote, with the splits "
            f"{', '.join(splits)}: give one split's folder, such as {example}"
        )
    if _saved_by_datasets(folder):
        return [folder]
    saved = {e.parent for e in entries if e.name == SAVED_DATASET[0] and _saved_by_datasets(e.parent)}
    files = [e for e in entries if e in saved or (e.suffix in DATA_SUFFIXES and e.parent not in saved)]
    if not files:
        raise FileNotFoundError(f"no .jsonl, .json or .parquet files (or datasets saved to disk) in {folder}")
    return files


def _one_split(folder: Path, files: list[Path], what: str, name: str, split: str) -> list[Path]:
    """`files`, or those of the split named where their names hold splits; of several, one must be named."""
    candidates = {  # each data file's path in the folder (a saved dataset's, its Arrow files'), and its entry
        path.relative_to(folder).as_posix(): entry
        for entry in files
        for path in (sorted(entry.glob("*.arrow")) if entry.is_dir() else [entry])
    }
    splits = _splits_by_name(candidates)
    if (not split and len(splits) <= 1) or split in splits:
        return splits[split] if split else files  # one split or none: every file, as a folder is read
    raise InputError(f"{what} has the splits {', '.join(splits)}" + (f", not {split!r}" if split else "") +
                     f": give one, such as {name}:{'train' if 'train' in splits else [*splits][0]}")  # fmt: skip


def _splits_by_name(candidates: dict[str, Path]) -> dict[str, list[Path]]:
    """Each split's entries, found in their paths as `datasets` finds a folder's splits (`data/{split}-00000-of-00001.
    parquet` of any name, else train/validation/test in a file or folder name), with its patterns; they are matched
    here against the data files alone, where `datasets` globs the whole folder once per pattern (15 s for 20,000 media
    files)."""
    from datasets.data_files import ALL_DEFAULT_PATTERNS, ALL_SPLIT_PATTERNS
    from fsspec.utils import glob_translate

    for template in ALL_SPLIT_PATTERNS:  # a split of any name, as `push_to_hub` writes them
        before, after = template.split("{split}")
        pattern = re.compile(re.escape(before) + r"(?P<split>[^/]+?)" + glob_translate(after))
        found = {}
        for path, entry in candidates.items():
            if match := pattern.match(path):
                found.setdefault(match["split"], []).append(entry)
        if found:
            return {key: list(dict.fromkeys(entries)) for key, entries in found.items()}
    for patterns_by_split in ALL_DEFAULT_PATTERNS:
        found = {}
        for key, patterns in patterns_by_split.items():
            matches = [re.compile(glob_translate(pattern)).match for pattern in patterns]
            if entries := [entry for path, entry in candidates.items() if any(match(path) for match in matches)]:
                found[str(key)] = list(dict.fromkeys(entries))
        if found:
            return found
    return {}


def _hub_snapshot(repo_id: str) -> Path:
    """The Hub dataset repo `repo_id`, downloaded whole into the Hub cache (offline: as cached)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, repo_type="dataset"))
    except HFValidationError:  # a path such as `runs/chat..jsonl` that cannot be a repo id either
        raise FileNotFoundError(f"no data at {repo_id}") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"no data at {repo_id}: no such file or folder here, and no dataset {repo_id} on the "
                                "Hub (a private or gated one needs `hf auth login`)") from None  # fmt: skip
    except LocalEntryNotFoundError:
        raise FileNotFoundError(f"no data at {repo_id}: no such file or folder here, and the Hub dataset {repo_id} "
                                "is neither reachable (offline?) nor in the Hub cache") from None  # fmt: skip


def _saved_by_datasets(folder: Path) -> bool:
    return all((folder / name).is_file() for name in SAVED_DATASET)


def _json_error(error: json.JSONDecodeError) -> str:
    return f"not valid JSON ({error.msg}: column {error.colno})"


def _read_json_lines(file: Path) -> tuple[list[int], list[str]] | None:
    """The line number and the row of each non-blank line of a JSON Lines file, a line that is no JSON object
    replaced by a row saying why; None when every line is one and none is blank (the file reads as it is)."""
    numbers, rows, as_is = [], [], True
    with open(file, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                as_is = False  # pyarrow skips blank lines: row k would no longer be line k
                continue
            line = line.rstrip("\r\n")
            try:
                row = json.loads(line)
                problem = None if isinstance(row, dict) else f"a JSON {type(row).__name__}, not an object"
            except json.JSONDecodeError as error:
                problem = _json_error(error)
            numbers.append(number)
            rows.append(line if problem is None else json.dumps({UNREADABLE: problem}))
            as_is = as_is and problem is None
    return None if as_is else (numbers, rows)


def _json_form(file: Path) -> tuple[str, dict | None]:
    """ "lines" for a .jsonl file or a .json file that holds JSON Lines, "row" with the row for a .json document that
    is one conversation (as `mmmmodal chat`'s `/save` writes it), else "document"; a .json document that does not
    parse is refused whole, naming where (its rows cannot be told apart)."""
    if file.suffix == ".jsonl":
        return "lines", None
    text = file.read_text(encoding="utf-8", errors="replace")
    try:
        document = json.loads(text)
        one_row = isinstance(document, dict) and bool({"messages", "conversations"} & set(document))
        return ("row", document) if one_row else ("document", None)
    except json.JSONDecodeError as error:
        first = text.lstrip().split("\n", 1)[0]
        try:
            return ("lines" if isinstance(json.loads(first), dict) else "document"), None
        except json.JSONDecodeError:
            raise InputError(
                f"{file}: not valid JSON ({error.msg}: line {error.lineno} column {error.colno})"
            ) from None


def _readable_copy(file: Path, rows: list[str]) -> Path:
    """`rows` written once per version of `file` beside `datasets`' cache, for `datasets` to read in its place."""
    import datasets

    stat = file.stat()
    key = hashlib.sha256(f"{file.resolve()}:{stat.st_mtime_ns}:{stat.st_size}".encode()).hexdigest()[:24]
    copy = Path(datasets.config.HF_DATASETS_CACHE) / "mmmmodal_readable_rows" / f"{key}.jsonl"
    if not copy.exists():
        copy.parent.mkdir(parents=True, exist_ok=True)
        partial = copy.with_suffix(f".{os.getpid()}.partial")
        partial.write_text("".join(row + "\n" for row in rows), encoding="utf-8")
        partial.replace(copy)
    return copy


def load_rows(path: str | Path, streaming: bool = False):
    """Raw rows with `_base_dir` and `_row_id` (`file:line`, counted from 1) columns added, read with `datasets` one
    file at a time: a file's dataset; of several files, `ChainedRows` (read whole) or an `IterableDataset` whose
    shards are the files (streamed). A JSON Lines line that does not parse becomes a row holding only why
    (`_unreadable`): every reader skips it as an unusable row named by file and line, and the rows around it are
    read."""
    import datasets

    parts = []
    for file in data_files(path):
        if file.is_dir():  # a dataset `save_to_disk` wrote; its rows are numbered as a file's lines are
            part, numbers = datasets.load_from_disk(str(file)), None
            part = part.to_iterable_dataset() if streaming else part
        else:
            form, row = _json_form(file) if DATA_SUFFIXES[file.suffix] == "json" else ("parquet", None)
            lines = _read_json_lines(file) if form == "lines" else None
            if form == "row":  # one line for `datasets`, which reads an indented document of mixed shapes as no table
                lines = [1], [json.dumps(row)]
            if form == "lines" and (not lines[0] if lines else file.stat().st_size == 0):
                logger.warning("skipping %s: it holds no rows", file)  # `datasets` cannot read an empty JSON Lines
                continue
            source = file if lines is None else _readable_copy(file, lines[1])
            part = datasets.load_dataset(
                DATA_SUFFIXES[file.suffix], data_files=str(source), split="train", streaming=streaming
            )
            numbers = None if lines is None else lines[0]
        part = part.map(
            lambda row, index, base=str(file.parent), name=file.name, numbers=numbers: {
                "_base_dir": base,
                "_row_id": f"{name}:{index + 1 if numbers is None else numbers[index]}",
            },
            with_indices=True,
        )
        parts.append(part)
    if not parts:
        raise InputError(f"no rows in {path}")
    if len(parts) == 1:
        return parts[0]
    # Files are not joined into one table (`concatenate_datasets`): a column that pyarrow types as text in one file
    # and as lists in another (a message's `content`, as text or as content blocks) would not join.
    if streaming:
        return datasets.IterableDataset.from_generator(_rows_of, gen_kwargs={"parts": parts})
    return ChainedRows(parts)


def _rows_of(parts: list):
    """The rows of each streamed file in turn (the files are the shards of `load_rows`'s streamed dataset), read with
    `iter`: iterated plainly inside a DataLoader worker, a file's own dataset would split itself among the workers
    again, and every worker but the first would get none of its rows."""
    for part in parts:
        for batch in part.iter(batch_size=1):
            yield {column: values[0] for column, values in batch.items()}


class ChainedRows(Sequence):
    """The rows of several files read whole, file after file, each file its own memory-mapped table."""

    def __init__(self, parts: list):
        self.parts, self.ends = parts, list(itertools.accumulate(len(part) for part in parts))

    def __len__(self) -> int:
        return self.ends[-1]

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"row {index} of {len(self)} rows")
        index %= len(self)
        part = bisect.bisect_right(self.ends, index)
        return self.parts[part][index - (self.ends[part - 1] if part else 0)]

    def __iter__(self):
        for part in self.parts:
            yield from part


def row_conversation(row: dict, index: int) -> Conversation:
    """Row `index` of `load_rows` (or any dataset of rows) as a `Conversation`: paths resolved against
    its file's folder, errors naming it by file and line (`_base_dir`, `_row_id`) or else by index."""
    return conversation_from_row(row, row.get("_base_dir"), row.get("_row_id", str(index)))


def conversations_from_dataset(rows):
    """Rows of `load_rows` (or any dataset of rows) as `Conversation`s."""
    for index, row in enumerate(rows):
        yield row_conversation(row, index)


class _RowEncoder:
    """Shared by both datasets: encode a raw row, or count and log why it cannot be used."""

    def __init__(self, processor, block_size: int | None, train_on: str, stats: EncodeStats | None, video_kwargs):
        self.processor, self.block_size, self.train_on = processor, block_size, train_on
        self.stats = stats if stats is not None else EncodeStats()
        self.video_kwargs = video_kwargs or {}
        self.first_problem: str | None = None  # why the first unusable row was skipped

    def encode_row(self, row: dict, index: int) -> dict | None:
        try:
            conversation = row_conversation(row, index)
            encoded = encode_conversation(
                self.processor, conversation, self.block_size, self.train_on, self.stats, self.video_kwargs
            )
        except UnusableRow as error:
            self.stats.skipped += 1
            self.first_problem = self.first_problem or str(error)
            logger.warning("skipping %s", error)
            return None
        self.stats.rows += 1
        return encoded


class ConversationDataset(_RowEncoder, Dataset):
    """Map-style dataset of encoded conversations for `Trainer`.

    An unusable row (missing file, tag/file mismatch, too long) is skipped with a warning naming
    it, and the next usable row is served in its place, so every batch stays full.

    `cache_rows=True` keeps every encoded row in memory after its first use, so later epochs skip
    decoding, resizing, feature extraction and templating. It is for data sets that fit in memory
    and are seen several times (the demo's); with dataloader workers it needs
    `dataloader_persistent_workers`, as each worker holds its own cache.
    """

    def __init__(
        self,
        rows,
        processor,
        block_size=None,
        train_on="answers",
        stats: EncodeStats | None = None,
        cache_rows: bool = False,
        video_kwargs: dict | None = None,
    ):
        super().__init__(processor, block_size, train_on, stats, video_kwargs)
        self.rows = rows
        self._bad: set[int] = set()
        self._cache: dict[int, dict] | None = {} if cache_rows else None
        self._lengths: list[int] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def lengths(self) -> list[int]:
        """Every row's `approximate_length`, measured once; 0 for a row whose messages the chat template or
        the placeholder count refuses (a missing file is found only when the row is served)."""
        if self._lengths is None:
            self._lengths = []
            for index, row in enumerate(self.rows):
                try:
                    conversation = row_conversation(row, index)
                    self._lengths.append(approximate_length(self.processor, conversation, self.video_kwargs))
                except UnusableRow:
                    self._lengths.append(0)  # skipped when served, as `__getitem__` says
        return self._lengths

    def __getitem__(self, index: int) -> dict:
        # IndexError past the end: `for row in dataset` (and Trainer's length-grouped sampler) stop on it.
        if not -len(self.rows) <= index < len(self.rows):
            raise IndexError(f"row {index} of a data set of {len(self.rows)} rows")
        index %= len(self.rows)
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        for offset in range(len(self.rows)):
            candidate = (index + offset) % len(self.rows)
            if candidate in self._bad:
                continue
            encoded = self.encode_row(self.rows[candidate], candidate)
            if encoded is not None:
                if self._cache is not None:
                    self._cache[index] = encoded
                return encoded
            self._bad.add(candidate)
        raise InputError(
            f"none of the {len(self.rows)} rows can be used (the first refused: {self.first_problem}); every row is "
            "named in the warnings above"
        )


class StreamingConversationDataset(_RowEncoder, IterableDataset):
    """Iterable counterpart of `ConversationDataset` for `load_rows(..., streaming=True)`."""

    def __init__(self, rows, processor, block_size=None, train_on="answers", stats: EncodeStats | None = None,
                 video_kwargs: dict | None = None):  # fmt: skip
        super().__init__(processor, block_size, train_on, stats, video_kwargs)
        self.rows = rows

    def __iter__(self):
        for index, row in enumerate(self.rows):
            encoded = self.encode_row(row, index)
            if encoded is not None:
                yield encoded


class LengthGroupedBatchSampler(Sampler):
    """Indices in batches of rows of similar length, the batches in random order.

    Padding a batch to its longest row wastes a third of the compute on the demo's data. Trainer's
    `LengthGroupedSampler` sorts each group of 50 batches from longest to shortest, so training
    sweeps from long rows to short ones every 50 steps (a demo run through it lost its colour
    answers: docs/demo-experiments.md). Here each group is sorted the same way and cut into batches, and
    the batches of all groups are shuffled. The last, partial batch stays last, so every other
    batch keeps its rows. Draws from torch's global generator, which `Trainer` seeds.
    """

    def __init__(self, lengths: list[int], batch_size: int):
        self.lengths, self.batch_size = list(lengths), batch_size

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        indices = get_length_grouped_indices(self.lengths, self.batch_size)
        full = len(indices) // self.batch_size * self.batch_size
        batches = [indices[start : start + self.batch_size] for start in range(0, full, self.batch_size)]
        for batch in torch.randperm(len(batches)).tolist():
            yield from batches[batch]
        yield from indices[full:]
