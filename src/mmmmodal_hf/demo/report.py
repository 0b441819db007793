"""The demo's report folder: metrics JSON, every held-out answer, the sample chats, and one PNG."""

import json
from pathlib import Path

from PIL import Image, ImageDraw

from .world import KINDS

_WIDTH, _HEIGHT, _MARGIN = 1000, 420, 50


def write_report(folder: Path, metrics: dict, results: list[dict], transcripts: list[list[dict]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    with open(folder / "heldout_answers.jsonl", "w") as handle:
        for row in results:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    (folder / "sample_chats.json").write_text(json.dumps(transcripts, indent=2, ensure_ascii=False))
    (folder / "sample_chats.md").write_text(_chats_markdown(transcripts))
    draw_report(metrics).save(folder / "report.png")
    return folder


def _chats_markdown(transcripts: list[list[dict]]) -> str:
    lines = ["# Sample chats (reloaded through AutoModel with trust_remote_code)", ""]
    for number, chat in enumerate(transcripts, 1):
        lines.append(f"## Chat {number}")
        for message in chat:
            content = message["content"]
            if isinstance(content, list):
                parts = [
                    f"[{b['type']}: {Path(b['path']).name}]" if b["type"] != "text" else b["text"] for b in content
                ]
                content = " ".join(parts)
            lines.append(f"- **{message['role']}**: {content}")
        lines.append("")
    return "\n".join(lines)


BAR, BELOW_CHANCE = (40, 150, 70), (200, 50, 50)  # a kind answered no better than guessing stands out
QUICK_LABEL = "quick run (--quick): a pipeline check, not the full demo"


def draw_report(metrics: dict) -> Image.Image:
    """Left: training loss by step (align, then finetune). Right: accuracy per kind against chance."""
    image = Image.new("RGB", (_WIDTH, _HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    half = _WIDTH // 2
    if metrics.get("settings", {}).get("quick_run"):
        draw.text((_MARGIN, 2), QUICK_LABEL, fill=(160, 30, 30))
    _draw_losses(draw, metrics["losses"], (_MARGIN, _MARGIN, half - _MARGIN // 2, _HEIGHT - _MARGIN))
    _draw_accuracy(
        draw,
        metrics["accuracy"],
        metrics.get("kinds", KINDS),
        (half + _MARGIN // 2, _MARGIN, _WIDTH - _MARGIN // 2, _HEIGHT - _MARGIN),
    )
    return image


def _draw_losses(draw, losses, box):
    left, top, right, bottom = box
    draw.text((left, top - 35), "training loss (align: orange, finetune: blue)", fill="black")
    draw.rectangle(box, outline="black")
    if not losses:
        return
    # Steps on one axis: finetune's count on from align's last.
    align_steps = max((row["step"] for row in losses if row["stage"] == "align"), default=0)
    steps = [row["step"] + (align_steps if row["stage"] == "finetune" else 0) for row in losses]
    last, peak = max(steps) or 1, max(row["loss"] for row in losses) or 1.0
    points = {"align": [], "finetune": []}
    for step, row in zip(steps, losses):
        x = left + (right - left) * step / last
        y = bottom - (bottom - top) * row["loss"] / peak
        points.setdefault(row["stage"], []).append((x, y))
    for stage, colour in (("align", (230, 120, 20)), ("finetune", (30, 80, 220))):
        if len(points[stage]) > 1:
            draw.line(points[stage], fill=colour, width=2)
    for fraction in (0.0, 0.5, 1.0):  # loss ticks
        y = bottom - (bottom - top) * fraction
        draw.line((left - 4, y, left, y), fill="black")
        draw.text((left - 40, y - 6), f"{peak * fraction:.2g}", fill="black")
    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):  # step ticks
        x = left + (right - left) * fraction
        draw.line((x, bottom, x, bottom + 4), fill="black")
        draw.text((x - 12, bottom + 6), str(round(last * fraction)), fill="black")
    draw.text(((left + right) // 2 - 15, bottom + 22), "step", fill="black")


def _draw_accuracy(draw, table, kinds, box):
    left, top, right, bottom = box
    draw.text((left, top - 35), "held-out exact match per kind (grey: chance, line: 90% target)", fill="black")
    draw.text((left, top - 24), "red bar: no better than chance", fill=BELOW_CHANCE)
    draw.rectangle(box, outline="black")
    width = (right - left) / len(kinds)
    for index, kind in enumerate(kinds):
        x0 = left + index * width + 4
        x1 = x0 + width - 8
        accuracy, chance = table[kind]["accuracy"], table[kind]["chance"]
        colour = BAR if accuracy > chance else BELOW_CHANCE
        draw.rectangle((x0, bottom - (bottom - top) * accuracy, x1, bottom), fill=colour)
        draw.line((x0, bottom - (bottom - top) * chance, x1, bottom - (bottom - top) * chance), fill="grey", width=3)
        draw.text((x0, bottom + 4), kind.replace("_", "\n"), fill="black")
        draw.text((x0, bottom - (bottom - top) * accuracy - 14), f"{accuracy:.0%}", fill="black")
    target = bottom - (bottom - top) * 0.9
    draw.line((left, target, right, target), fill=(200, 30, 30), width=1)
