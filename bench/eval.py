"""`mmmmodal eval` throughput: turns scored per second on the same rows, batched `generate` against one turn at a time.

Rows: 32 conversations of two turns, each user turn with a 640x480 image and a 5 s clip (64 scored turns),
answered with up to 16 new tokens by the bench's small model (4-layer 512-wide LM, 5-layer towers, 384 px,
30 s windows). Baseline: the same command at `--batch-size 1`. Each configuration runs into a fresh folder
(no resuming), interleaved over the repeats. With `--base-url` (a running `mmmmodal serve` of the same
folder, which this script writes to `--folder`), the openai backend is timed too.

    python bench/eval.py [--repeats 3] [--batch-size 16] [--base-url http://127.0.0.1:8000/v1 --folder DIR] [--quick]
"""

import argparse
import json
import tempfile
from pathlib import Path

import soundfile
from common import clip, image, interleaved_medians, parse_arguments, quick, report, small_model, small_processor

from mmmmodal_hf.evaluation import EvalSettings, evaluate


def write_rows(folder: Path, rows: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for row in range(rows):
        turns = []
        for turn in range(2):
            name = f"{row}_{turn}"
            image(row * 2 + turn).save(folder / f"{name}.png")
            soundfile.write(folder / f"{name}.wav", clip(row * 2 + turn, seconds=1.0 if quick() else 5.0), 16000)
            media = [{"type": "image", "path": f"{name}.png"}, {"type": "audio", "path": f"{name}.wav"}]
            turns += [
                {"role": "user", "content": [*media, {"type": "text", "text": "What do you see and hear?"}]},
                {"role": "assistant", "content": "A picture and a tone."},
            ]
        lines.append(json.dumps({"kind": "describe", "language": "en", "messages": turns}))
    path = folder / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--base-url", help="a running `mmmmodal serve` of --folder, to time the openai backend too")
    parser.add_argument("--folder", help="where to write (or find) the model folder the server serves")
    args = parse_arguments(parser, rows=4, batch_size=4)
    scratch = Path(tempfile.mkdtemp(prefix="mmmmodal-bench-eval-"))
    folder = Path(args.folder) if args.folder else scratch / "model"
    if not (folder / "config.json").exists():
        processor = small_processor()
        small_model(processor).save_pretrained(folder)
        processor.save_pretrained(folder)
    rows = write_rows(scratch / "rows", args.rows)
    runs = {"count": 0}

    def run(**settings):
        def go():
            runs["count"] += 1
            common = dict(model=str(folder), data=[str(rows)], max_new_tokens=16)
            evaluate(EvalSettings(**common, **settings), scratch / f"out{runs['count']}", say=lambda _: None)

        return go

    functions = {"batched": run(batch_size=args.batch_size), "one_at_a_time": run(batch_size=1)}
    if args.base_url:
        # The server names the model by the folder it serves, as `model` here does.
        functions["openai"] = run(batch_size=args.batch_size, backend="openai", base_url=args.base_url)
    times = interleaved_medians(functions, repeats=args.repeats, warmup=0)
    turns = 2 * args.rows
    row = {name + "_turns_per_s": turns / seconds for name, seconds in times.items()}
    row["batched_vs_one_at_a_time_speedup"] = times["one_at_a_time"] / times["batched"]
    if args.base_url:
        row["openai_vs_batched_speedup"] = times["batched"] / times["openai"]
    extra = {
        "conversations": args.rows,
        "turns": turns,
        "batch_size": args.batch_size,
        "goal": "batched > one at a time",
    }
    report("mmmmodal eval: turns scored per second", [row], extra)


if __name__ == "__main__":
    main()
