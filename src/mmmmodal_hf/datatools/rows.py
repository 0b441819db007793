"""Rows in the published format (`conversations` + `filename`), read from either format and written as JSONL or Parquet."""

import json
import logging
import os
from pathlib import Path

from ..cli_errors import InputError
from ..data import Conversation
from ..processing_mmmmodal import MEDIA_PLACEHOLDERS, placeholder_kinds


def media_kind(conversation: Conversation) -> str:
    """text, image, audio, video or mixed: which media the row holds."""
    media = {"image": conversation.images, "audio": conversation.audio, "video": conversation.videos}
    held = [kind for kind, items in media.items() if items]
    return "text" if not held else held[0] if len(held) == 1 else "mixed"


def media_in_order(conversation: Conversation) -> list[tuple[str, object]]:
    """(kind, item) for every medium of the conversation, in the order its tags appear."""
    media = {"image": iter(conversation.images), "audio": iter(conversation.audio), "video": iter(conversation.videos)}
    order = []
    for message in conversation.messages:
        content = message["content"]
        kinds = (
            placeholder_kinds(content)
            if isinstance(content, str)
            else [block["type"] for block in content if block.get("type") in media]
        )
        order += [(kind, next(media[kind])) for kind in kinds]
    return order


def to_published(conversation: Conversation, relative_to: Path | None = None) -> dict:
    """The published row: text messages with `<image> </image>` / `<audio> </audio>` tags, files in tag order.

    File paths are written relative to `relative_to` (the output file's folder) when given.
    """
    messages = []
    for message in conversation.messages:
        content = message["content"]
        if not isinstance(content, str):
            parts = [MEDIA_PLACEHOLDERS.get(block["type"], block.get("text", "")) for block in content]
            content = "\n".join(parts)
        messages.append({"role": message["role"], "content": content})
    files = []
    for _, item in media_in_order(conversation):
        path = os.fspath(item)
        if relative_to is not None and os.path.isabs(path):
            path = os.path.relpath(path, relative_to)
        files.append(path)
    return {"conversations": messages, "filename": files}


def check_output(path: str | Path) -> Path:
    """The data tools' `--output`, refused before any work unless `write_rows` can write it."""
    if Path(path).suffix not in (".jsonl", ".parquet"):
        raise InputError(f"--output {path}: write a .jsonl or .parquet file")
    return Path(path)


def write_rows(rows, path: str | Path) -> Path:
    """Write dict rows as JSONL (`.jsonl`) or Parquet (`.parquet`); rows may be any iterable. The file appears
    whole or not at all: JSONL rows written before a failure (an LLM that stops answering) stay in `PATH.partial`."""
    path = check_output(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        if path.suffix == ".jsonl":
            with open(partial, "w", encoding="utf-8") as handle:
                for row in rows:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(list(rows)), partial)
    except BaseException:
        if partial.exists() and partial.stat().st_size:
            logging.getLogger(__name__).warning("stopped: the rows written so far are in %s", partial)
        else:
            partial.unlink(missing_ok=True)
        raise
    partial.replace(path)
    return path
