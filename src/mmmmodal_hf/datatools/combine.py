"""`mmmmodal data combine`: join single-media rows into multi-image, multi-audio, multi-turn conversations.

The paper's recipe (section 4): image rows, audio rows and relationship rows are randomly joined,
so that conversations hold several images and clips over several turns. Each output row draws
its kind from `--mix` (image: only image rows joined; audio: only audio rows; video: only video rows;
mixed: rows of at least two media kinds, or a mixed relationship row) and how many rows it joins from
`--rows-per-output`. Turns are appended in order and every tag keeps its own file, in order.
Deterministic for a seed; rows are read from memory-mapped Arrow tables, not loaded as Python.
"""

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..cli_errors import InputError
from ..cli_help import command_parser, positive
from ..data import Conversation, UnusableRow, load_rows, row_conversation
from ..media_mmmmodal import URL_PREFIXES
from .rows import check_output, media_kind, to_published, write_rows

KINDS = ("image", "audio", "video", "mixed")


def parse_distribution(text: str, cast=str) -> dict:
    """'image=0.4,audio=0.3,mixed=0.3' or '1:0.3,2:0.7' -> normalised {key: probability}; `InputError` naming
    what is wrong otherwise."""
    values = {}
    for part in (part for part in text.split(",") if part.strip()):
        key, _, value = part.replace(":", "=").partition("=")
        try:
            values[cast(key.strip())] = float(value)
        except ValueError:
            raise InputError(f"{part.strip()!r} is not KEY=PROBABILITY (or KEY:PROBABILITY) in {text!r}") from None
    total = sum(values.values())
    if not values or not math.isfinite(total) or total <= 0 or any(v < 0 for v in values.values()):
        raise InputError(f"probabilities must be non-negative numbers, not all zero: {text!r}")
    return {key: value / total for key, value in values.items()}


def join(conversations: list[Conversation]) -> Conversation:
    """One conversation holding the others' turns in order (a system message only from the first)."""
    messages, images, audio, videos = [], [], [], []
    for number, conversation in enumerate(conversations):
        messages += [m for m in conversation.messages if number == 0 or m["role"] != "system"]
        images += conversation.images
        audio += conversation.audio
        videos += conversation.videos
    row_id = "+".join(c.row_id for c in conversations)
    return Conversation(messages=messages, images=images, audio=audio, row_id=row_id, videos=videos)


def combine_rows(
    sources: list[str | Path],
    output: str | Path,
    count: int | None = None,
    mix: dict[str, float] | None = None,
    rows_per_output: dict[int, float] | None = None,
    seed: int = 0,
) -> dict:
    """Write `count` combined rows to `output` (.jsonl or .parquet); returns what was made."""
    mix = mix or {"image": 0.4, "audio": 0.3, "mixed": 0.3}
    rows_per_output = rows_per_output or {1: 0.25, 2: 0.35, 3: 0.25, 4: 0.15}
    if set(mix) - set(KINDS):
        raise InputError(f"--mix kinds are {', '.join(KINDS)}; got {', '.join(sorted(mix))}")
    if min(rows_per_output) < 1 or max(rows_per_output) > 4:
        raise InputError("--rows-per-output takes 1 to 4 rows (a row and up to 3 more)")
    check_output(output)
    tables = [load_rows(source) for source in sources]
    pools: dict[str, list[tuple[int, int]]] = {kind: [] for kind in (*KINDS, "text")}
    unusable = 0
    for table_index, table in enumerate(tables):
        for row_index, row in enumerate(tqdm(table, desc=f"indexing {Path(sources[table_index]).name}", unit="row")):
            try:
                kind = media_kind(_conversation(row, row_index))
            except UnusableRow:
                unusable += 1
                continue
            pools[kind].append((table_index, row_index))
    for kind, probability in mix.items():
        if probability > 0 and kind != "mixed" and not pools[kind]:
            raise InputError(f"--mix asks for {kind} rows but the sources hold none")
    held = [kind for kind in ("image", "audio", "video") if pools[kind]]  # the kinds a mixed row joins rows of
    if mix.get("mixed", 0) > 0 and not pools["mixed"] and len(held) < 2:
        raise InputError(
            "--mix asks for mixed rows but the sources hold neither mixed rows nor rows of two media kinds"
        )

    rng = np.random.default_rng(seed)
    count = count if count is not None else sum(len(p) for p in pools.values())
    kinds, sizes = list(mix), list(rows_per_output)
    made = Counter()
    joined_counts, images_per_row, audio_per_row, videos_per_row = Counter(), Counter(), Counter(), Counter()
    output = Path(output)

    def fetch(ref):
        table_index, row_index = ref
        return _conversation(tables[table_index][row_index], row_index)

    def pick(pool):
        return pool[int(rng.integers(len(pool)))]

    def generate():
        for _ in tqdm(range(count), desc="mmmmodal data combine", unit="row"):
            kind = kinds[rng.choice(len(kinds), p=[mix[k] for k in kinds])]
            size = sizes[rng.choice(len(sizes), p=[rows_per_output[s] for s in sizes])]
            if kind == "mixed":
                if size == 1 and pools["mixed"]:
                    refs = [pick(pools["mixed"])]
                else:
                    size = max(size, 2)
                    pair = held if len(held) <= 2 else [held[i] for i in sorted(rng.choice(3, 2, replace=False))]
                    refs = [pick(pools[kind]) for kind in pair] if len(pair) == 2 else []
                    refs = refs or [pick(pools["mixed"]) for _ in range(2)]
                    every = pools["image"] + pools["audio"] + pools["video"] + pools["mixed"]
                    refs += [pick(every) for _ in range(size - len(refs))]
                    rng.shuffle(refs)
            else:
                refs = [pick(pools[kind]) for _ in range(size)]
            conversation = join([fetch(ref) for ref in refs])
            made[media_kind(conversation)] += 1
            joined_counts[len(refs)] += 1
            images_per_row[len(conversation.images)] += 1
            audio_per_row[len(conversation.audio)] += 1
            videos_per_row[len(conversation.videos)] += 1
            yield to_published(conversation, relative_to=output.parent.resolve())

    write_rows(generate(), output)
    return {
        "output": str(output),
        "rows": count,
        "kinds": dict(made),
        "rows_joined": dict(sorted(joined_counts.items())),
        "images_per_row": dict(sorted(images_per_row.items())),
        "audio_per_row": dict(sorted(audio_per_row.items())),
        "videos_per_row": dict(sorted(videos_per_row.items())),
        "source_rows": {kind: len(pool) for kind, pool in pools.items()},
        "unusable_source_rows": unusable,
    }


def _conversation(row: dict, index: int) -> Conversation:
    conversation = row_conversation(row, index)
    if any(isinstance(m, bytes) for m in (*conversation.images, *conversation.audio, *conversation.videos)):
        raise UnusableRow(f"row {conversation.row_id}: its media are inline (base64); a published row names files")
    # Paths resolved against the source file's folder become absolute, so they can be re-anchored on output.
    for kind in ("images", "audio", "videos"):
        setattr(
            conversation, kind, [str(Path(p).resolve()) if _is_local(p) else p for p in getattr(conversation, kind)]
        )
    return conversation


def _is_local(item) -> bool:
    return isinstance(item, str) and not item.startswith(URL_PREFIXES)


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("mmmmodal data combine", __doc__)
    parser.add_argument(
        "sources",
        nargs="+",
        help="JSONL/JSON/Parquet files, folders of them, datasets saved with `save_to_disk` or Hub dataset ids, of "
        "single-media rows",
    )
    parser.add_argument("--output", required=True, help="a .jsonl or .parquet file")
    parser.add_argument("--rows", type=positive(int), default=None,
                        help="rows to write (None: as many as the sources hold)")  # fmt: skip
    parser.add_argument("--mix", default="image=0.4,audio=0.3,mixed=0.3",
                        help="kind of each output row, of image, audio, video, mixed")  # fmt: skip
    parser.add_argument("--rows-per-output", default="1:0.25,2:0.35,3:0.25,4:0.15", help="rows joined into one")
    parser.add_argument("--seed", type=int, default=0, help="seed of the drawing of rows")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = combine_rows(
        args.sources,
        args.output,
        args.rows,
        parse_distribution(args.mix),
        parse_distribution(args.rows_per_output, int),
        args.seed,
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
