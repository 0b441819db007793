"""`mmmmodal data validate`: check a dataset against a processor before training on it.

Every row is read the way training reads it: its tags are matched to its files in order, every
file is decoded (never judged by its extension) and must be of the kind its tag says, and the
row is tokenized with its feature slots to check its length against the block size. Problems are
reported by kind with row ids; a summary gives the mix of rows, media, turns and lengths.
"""

import argparse
import json
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..cli_errors import InputError, loading
from ..cli_help import command_parser, positive
from ..data import UnusableRow, conversation_from_row, encode_conversation, load_rows
from ..media_mmmmodal import URL_PREFIXES, load_audio, load_image, load_video
from .rows import media_in_order, media_kind

PROBLEM_KINDS = ("unusable row", "missing file", "wrong media kind", "unreadable media", "too long")


@dataclass
class ValidationReport:
    rows: int = 0
    kinds: Counter = field(default_factory=Counter)
    images_per_row: Counter = field(default_factory=Counter)
    audio_per_row: Counter = field(default_factory=Counter)
    videos_per_row: Counter = field(default_factory=Counter)
    video_seconds: list[float] = field(default_factory=list)
    videos_with_soundtrack: int = 0
    turns_per_row: Counter = field(default_factory=Counter)
    lengths: list[int] = field(default_factory=list)
    problems: dict[str, list[tuple[str, str]]] = field(default_factory=lambda: defaultdict(list))

    @property
    def ok(self) -> bool:
        return not any(self.problems.values())

    def length_percentiles(self) -> dict[str, int]:
        if not self.lengths:
            return {}
        values = np.percentile(self.lengths, [50, 90, 99, 100])
        return {name: int(v) for name, v in zip(("p50", "p90", "p99", "max"), values)}

    def as_dict(self) -> dict:
        return {
            "rows": self.rows,
            "kinds": dict(self.kinds),
            "images_per_row": dict(self.images_per_row),
            "audio_per_row": dict(self.audio_per_row),
            "videos_per_row": dict(self.videos_per_row),
            "video_seconds": self.video_seconds,
            "videos_with_soundtrack": self.videos_with_soundtrack,
            "turns_per_row": dict(self.turns_per_row),
            "length_percentiles": self.length_percentiles(),
            "problems": {kind: [list(item) for item in items] for kind, items in self.problems.items() if items},
            "ok": self.ok,
        }

    def summary(self, listed: int = 10) -> str:
        lines = [
            f"{self.rows} rows: "
            + ", ".join(
                f"{self.kinds[k]} {k}"
                for k in ("text", "image", "audio", "video", "mixed")
                if k != "video" or self.kinds[k]
            )  # fmt: skip
        ]
        lines.append("images per row: " + _counts(self.images_per_row))
        lines.append("audio per row:  " + _counts(self.audio_per_row))
        if self.video_seconds:
            seconds = np.percentile(self.video_seconds, [0, 50, 100])
            lines.append("videos per row: " + _counts(self.videos_per_row))
            lines.append(f"video seconds:  min {seconds[0]:.1f}, p50 {seconds[1]:.1f}, max {seconds[2]:.1f}; "
                         f"{self.videos_with_soundtrack} of {len(self.video_seconds)} with a soundtrack")  # fmt: skip
        lines.append("user turns:     " + _counts(self.turns_per_row))
        if self.lengths:
            lines.append(
                "length (tokens with feature slots): "
                + ", ".join(f"{k} {v}" for k, v in self.length_percentiles().items())
            )
        if self.ok:
            lines.append("no problems found")
        for kind in PROBLEM_KINDS:
            items = self.problems.get(kind, [])
            if items:
                lines.append(f"{kind}: {len(items)} row{'s' * (len(items) != 1)}")
                lines += [f"  {row}: {message.removeprefix(f'row {row}: ')}" for row, message in items[:listed]]
                if len(items) > listed:
                    lines.append(f"  ... and {len(items) - listed} more")
        return "\n".join(lines)


def _counts(counter: Counter) -> str:
    return ", ".join(f"{key}: {counter[key]}" for key in sorted(counter)) or "-"


def _check_media(kind: str, item, processor) -> tuple[str, str] | None:
    """(problem kind, message) for a file that cannot serve as its tag's kind, else None."""
    path = Path(str(item))
    if not str(item).startswith(URL_PREFIXES) and not path.exists():
        return "missing file", f"{kind} file {item} does not exist"
    rate = processor.feature_extractor.sampling_rate
    loaders = {
        "image": lambda: load_image(item),
        "audio": lambda: load_audio(item, rate),
        "video": lambda: load_video(item, num_frames=1, load_audio_from_video=False),
    }
    try:
        loaders[kind]()
        return None
    except ValueError as error:
        for other in (other for other in loaders if other != kind):
            try:
                loaders[other]()
            except ValueError:
                continue
            return "wrong media kind", f"{item} is {other}, but its tag says {kind}"
        return "unreadable media", f"{kind} file {item}: {error}"


def validate_dataset(path, processor, block_size: int = 8192, limit: int | None = None) -> ValidationReport:
    """Check every row (or the first `limit`) of the data at `path`; streams, so size does not matter."""
    report = ValidationReport()
    rows = load_rows(path, streaming=True)
    for index, row in enumerate(tqdm(rows, desc="mmmmodal data validate", unit="row", total=limit)):
        if limit is not None and index >= limit:
            break
        report.rows += 1
        row_id = row.get("_row_id", str(index))
        try:
            conversation = conversation_from_row(row, row.get("_base_dir"), row_id)
        except UnusableRow as error:
            report.problems["unusable row"].append((row_id, str(error)))
            continue
        report.kinds[media_kind(conversation)] += 1
        report.images_per_row[len(conversation.images)] += 1
        report.audio_per_row[len(conversation.audio)] += 1
        report.videos_per_row[len(conversation.videos)] += 1
        report.turns_per_row[sum(m["role"] == "user" for m in conversation.messages)] += 1
        try:  # decodes every file as its tag's kind and tokenizes with the feature slots
            length = len(encode_conversation(processor, conversation, block_size=None)["input_ids"])
        except UnusableRow as error:
            # Only a failed row pays for the diagnosis: which file is missing, unreadable or of the other kind.
            media_problems = [
                p for kind, item in media_in_order(conversation) if (p := _check_media(kind, item, processor))
            ]
            for kind, message in media_problems:
                report.problems[kind].append((row_id, message))
            if not media_problems:
                report.problems["unusable row"].append((row_id, str(error)))
            continue
        report.lengths.append(length)
        for video in conversation.videos:  # its duration and whether it has a soundtrack, for the summary
            read = load_video(video, num_frames=1, sampling_rate=processor.feature_extractor.sampling_rate)
            report.video_seconds.append(read.duration)
            report.videos_with_soundtrack += read.soundtrack is not None
        if length > block_size:
            report.problems["too long"].append(
                (row_id, f"{length} tokens, {length - block_size} over the block of {block_size}")
            )
    return report


def write_length_histogram(lengths: list[int], path: str | Path, block_size: int, bins: int = 40) -> Path:
    """A bar chart of row lengths (PNG), the block size marked in red."""
    from PIL import Image, ImageDraw

    width, height, margin = 900, 360, 50
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    top = max(max(lengths, default=1), block_size)
    counts, edges = np.histogram(lengths, bins=bins, range=(0, top))
    peak = max(int(counts.max()), 1) if len(counts) else 1
    bar = (width - 2 * margin) / bins
    for index, count in enumerate(counts):
        x0 = margin + index * bar
        y0 = height - margin - (height - 2 * margin) * count / peak
        draw.rectangle([x0 + 1, y0, x0 + bar - 1, height - margin], fill=(70, 110, 180))
    x_block = margin + (width - 2 * margin) * block_size / top
    draw.line([x_block, margin, x_block, height - margin], fill=(200, 40, 40), width=2)
    draw.text(
        (margin, 15),
        f"row length in tokens (with feature slots), {len(lengths)} rows; red: block {block_size}",
        fill="black",
    )
    draw.text((margin, height - margin + 10), "0", fill="black")
    draw.text((width - margin - 40, height - margin + 10), str(int(edges[-1])), fill="black")
    draw.text((5, margin), str(peak), fill="black")
    path = Path(path)
    canvas.save(path)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("mmmmodal data validate", __doc__)
    parser.add_argument(
        "data",
        help="JSONL/JSON/Parquet file, a folder of them, a dataset saved with `save_to_disk` or a Hub dataset id "
        "(`owner/name`); `FOLDER:split` for one split of several, in either row format",
    )
    parser.add_argument("--processor", required=True, help="model folder or Hub id whose processor tokenizes the rows")
    parser.add_argument(
        "--block-size", type=positive(int), default=8192, help="longest row training will take (its --block_size)"
    )
    parser.add_argument("--limit", type=positive(int), default=None, help="check only the first N rows")
    parser.add_argument("--report", help="write the full report as JSON here")
    parser.add_argument("--histogram", help="write a PNG histogram of row lengths here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from PIL import Image
    from transformers import AutoProcessor

    Image.init()  # every image format Pillow has, for the histogram's suffix
    writable = sorted(ext for ext, kind in Image.registered_extensions().items() if kind in Image.SAVE)
    if args.histogram and Path(args.histogram).suffix.lower() not in writable:
        raise InputError(f"--histogram {args.histogram}: name an image file Pillow writes, such as .png")

    with loading(args.processor, "a processor", needs=None):
        processor = AutoProcessor.from_pretrained(args.processor, trust_remote_code=True)
    report = validate_dataset(args.data, processor, args.block_size, args.limit)
    print(report.summary())
    for path in (args.report, args.histogram):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    if args.report:
        Path(args.report).write_text(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
    if args.histogram:
        write_length_histogram(report.lengths, args.histogram, args.block_size)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
